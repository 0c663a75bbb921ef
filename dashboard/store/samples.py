"""Samples and rollups: every probe as a row, and the per-minute / per-hour summaries charts read.

Every read of samples is "some regions' health polls over a time range", answered from the
(region, endpoint, ts) index; queries over many regions name them (`region in (...)`) so SQLite
seeks the index once per region instead of scanning it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..model import Sample, SampleRow, WindowCounts
from .connection import Database

ROLLUP_BUCKET_COLUMNS = {"rollup_minute": "minute", "rollup_hour": "hour"}
MINUTE, HOUR, DAY = 60, 3600, 86400
# The bucket widths of `health_counts`, in seconds, each a multiple of the one before (UTC days).
COUNT_WIDTHS = (MINUTE, HOUR, DAY)
# "No end": later than any sample, including one stamped by a clock running ahead (finite, so
# the SQL it is bound into can be printed and explained).
OPEN_END = 1e18


def bucket_of(ts: float, width: int) -> int:
    """The start of the bucket of `width` seconds that holds `ts`."""
    return math.floor(ts / width) * width


@dataclass(frozen=True)
class WindowSpans:
    """A window [since, until] cut into whole buckets of `health_counts` and raw edges."""

    buckets: tuple[tuple[int, float, float], ...]  # (width, first bucket, end): bucket >= first and < end
    raw: tuple[tuple[float, float, bool], ...]  # (from, to, to included) over raw samples' ts


def window_spans(since: float, until: float | None = None) -> WindowSpans:
    """Cut [since, until] (until None: no end) into whole days, hours and minutes, and raw edges.

    Every instant of the window lies in exactly one piece, so the counts add up exactly: raw from
    `since` to the first whole minute, minutes to the first whole hour, hours to the first whole
    day, days, then hours, minutes and raw again down to `until`. So a 30-day window reads about
    30 days, 48 hours and 120 minutes per region, not 43,200 minutes. With no end, the last day
    bucket (still filling) is open-ended."""
    starts = [math.ceil(since / width) * width for width in COUNT_WIDTHS]
    raw_start = (since, starts[0], False)
    if until is None:
        left = tuple((width, starts[i], starts[i + 1]) for i, width in enumerate(COUNT_WIDTHS[:-1]))
        return WindowSpans(buckets=left + ((COUNT_WIDTHS[-1], starts[-1], OPEN_END),), raw=(raw_start,))
    ends = [math.floor(until / width) * width for width in COUNT_WIDTHS]
    if ends[0] <= starts[0]:  # within one minute, or across one boundary: raw only
        return WindowSpans(buckets=(), raw=((since, until, True),))
    # The widest width with at least one whole bucket inside the window holds the middle.
    top = max(i for i in range(len(COUNT_WIDTHS)) if starts[i] < ends[i])
    left = tuple((COUNT_WIDTHS[i], starts[i], starts[i + 1]) for i in range(top))
    right = tuple((COUNT_WIDTHS[i], ends[i + 1], ends[i]) for i in reversed(range(top)))
    buckets = tuple(span for span in (*left, (COUNT_WIDTHS[top], starts[top], ends[top]), *right)
                    if span[1] < span[2])
    return WindowSpans(buckets=buckets, raw=(raw_start, (ends[0], until, True)))


def _bucket_column(table: str) -> str:
    try:
        return ROLLUP_BUCKET_COLUMNS[table]
    except KeyError:
        raise ValueError(f"not a rollup table: {table!r}") from None


class SampleQueries(Database):
    """Raw samples and their rollups."""

    def insert_samples(self, samples: Iterable[Sample]) -> None:
        """Insert samples, and add their health polls to the per-minute, -hour and -day counts."""
        samples = list(samples)
        self.conn.executemany(
            "insert into samples (ts, region, endpoint, ok, http_status, latency_ms, reason,"
            " reported_error_rate) values (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (s.ts, s.region, s.endpoint, int(s.ok), s.http_status, s.latency_ms, s.reason or None,
                 s.reported_error_rate)
                for s in samples
            ],
        )
        tallies: dict[tuple[str, int, int], list[int]] = {}
        for sample in samples:
            if sample.endpoint != "health":
                continue
            for width in COUNT_WIDTHS:
                tally = tallies.setdefault((sample.region, width, bucket_of(sample.ts, width)), [0, 0])
                tally[0] += 1
                tally[1] += not sample.ok
        self.conn.executemany(
            "insert into health_counts values (?, ?, ?, ?, ?) on conflict (region, width, bucket)"
            " do update set polls = polls + excluded.polls, failed = failed + excluded.failed",
            [(region, width, bucket, polls, failed) for (region, width, bucket), (polls, failed) in tallies.items()],
        )

    def window_counts(self, regions: Sequence[str], since: float,
                      until: float | None = None) -> dict[str, WindowCounts]:
        """(failed polls, polls) of each region's health endpoint in [since, until], in one query.

        Exact to the poll, and its cost does not grow with the polls in the window: whole days,
        hours and minutes come from `health_counts`, and only the partial minutes at the two
        edges from raw samples (`window_spans`). Minute counts are kept as long as raw samples, so
        a window reaching further back than `raw_retention_hours` starts at the hour (callers of
        long windows align `since` to an hour)."""
        counts = {region: WindowCounts() for region in regions}
        spans = window_spans(since, until)
        parts: list[str] = []
        params: list[object] = [json.dumps(list(regions))]
        for width, lo, hi in spans.buckets:
            parts.append("select region, sum(polls) as polls, sum(failed) as failed from health_counts"
                         " where region in (select value from wanted) and width = ? and bucket >= ? and bucket < ?"
                         " group by region")
            params += [width, lo, hi]
        for lo, hi, closed in spans.raw:
            parts.append("select region, count(*) as polls, sum(1 - ok) as failed from samples"
                         " where region in (select value from wanted) and endpoint = 'health'"
                         f" and ts >= ? and ts {'<=' if closed else '<'} ? group by region")
            params += [lo, hi]
        # Each part sums per region in the order its index gives (no sort); the outer sum adds up
        # at most a few rows per region.
        rows = self.conn.execute(
            "with wanted as (select value from json_each(?))"
            " select region, sum(polls), sum(failed) from (" + " union all ".join(parts) + ") group by region",
            params,
        )
        for region, polls, failed in rows:
            counts[region] = WindowCounts(failed=int(failed), polls=int(polls))
        return counts

    def window_counts_from_samples(self, regions: Sequence[str], since: float,
                                   until: float | None = None) -> dict[str, WindowCounts]:
        """The same counts as `window_counts`, counted over raw samples: the reference the tests
        and the benchmark hold the counts against, not a read path."""
        until = OPEN_END if until is None else until
        counts = {region: WindowCounts() for region in regions}
        for region, polls, failed in self.conn.execute(
            "select region, count(*), coalesce(sum(1 - ok), 0) from samples"
            " where region in (select value from json_each(?)) and endpoint = 'health' and ts >= ? and ts <= ?"
            " group by region",
            (json.dumps(list(regions)), since, until),
        ):
            counts[region] = WindowCounts(failed=int(failed), polls=int(polls))
        return counts

    def poll_counts(self, region: str, since: float, until: float | None = None) -> tuple[int, int]:
        """(failed polls, polls) of one region's health endpoint in [since, until]."""
        counts = self.window_counts([region], since, until)[region]
        return counts.failed, counts.polls

    def error_rates(self, regions: Sequence[str], since: float, until: float | None = None) -> dict[str, float | None]:
        """Failed polls / polls in the window per region; None where nothing was polled in it."""
        return {region: (c.failed / c.polls if c.polls else None)
                for region, c in self.window_counts(regions, since, until).items()}

    def error_rate(self, region: str, since: float, until: float | None = None) -> float | None:
        """Failed polls / polls in the window; None when nothing was polled in it."""
        return self.error_rates([region], since, until)[region]

    def recent_samples(self, region: str, limit: int = 50) -> list[SampleRow]:
        """A region's latest probes, both endpoints, newest first.

        One index range per endpoint, read backwards: ordering all of a region's samples by time
        would sort days of rows to return fifty."""
        return list(
            self.db.query(  # type: ignore[arg-type]  # the columns of SampleRow, as stored
                "select * from (select * from samples where region = :region and endpoint = 'health'"
                " order by ts desc limit :limit)"
                " union all select * from (select * from samples where region = :region"
                " and endpoint = 'deployment' order by ts desc limit :limit)"
                " order by ts desc, id desc limit :limit",
                {"region": region, "limit": limit},
            )
        )

    # -- series for charts -----------------------------------------------------------------------

    def poll_buckets(self, region: str, start: float, end: float, bucket_seconds: float,
                     origin: float) -> list[tuple[int, int, int, float | None, int]]:
        """Per bucket (counted from `origin`) of a region's health polls in [start, end):
        (bucket, polls, failed polls, sum of reported error rates, how many reported one)."""
        return self.conn.execute(
            "select cast((ts - :origin) / :bucket as integer) as bucket, count(*), sum(1 - ok),"
            " sum(reported_error_rate), count(reported_error_rate)"
            " from samples where region = :region and endpoint = 'health' and ts >= :start and ts < :end"
            " group by bucket order by bucket",
            {"region": region, "start": start, "end": end, "bucket": bucket_seconds, "origin": origin},
        ).fetchall()

    def latency_samples(self, region: str, start: float, end: float, bucket_seconds: float,
                        origin: float) -> list[tuple[int, float]]:
        """(bucket, latency) of a region's answered health polls in [start, end), for percentiles."""
        return self.conn.execute(
            "select cast((ts - ?) / ? as integer), latency_ms from samples"
            " where region = ? and endpoint = 'health' and ts >= ? and ts < ? and ok = 1"
            " and latency_ms is not null",
            (origin, bucket_seconds, region, start, end),
        ).fetchall()

    def health_samples_between(self, region: str, start: float,
                               end: float) -> list[tuple[float, int, float | None, float | None]]:
        """(ts, ok, latency_ms, reported_error_rate) of a region's health polls in [start, end)."""
        return self.conn.execute(
            "select ts, ok, latency_ms, reported_error_rate from samples"
            " where region = ? and endpoint = 'health' and ts >= ? and ts < ? order by ts",
            (region, start, end),
        ).fetchall()

    # -- rollups, retention, size ----------------------------------------------------------------

    def sample_regions(self) -> list[str]:
        """Every region with stored rows, configured now or not (retention covers them all)."""
        # Every region ever polled or seeded has a row in regions, and rows there are never deleted.
        return [row[0] for row in self.conn.execute("select region from regions order by region")]

    def first_health_sample_at(self) -> float | None:
        """The oldest health sample of any region: one index seek per region, in one statement."""
        row = self.conn.execute(
            "select min((select min(ts) from samples where samples.region = regions.region"
            " and endpoint = 'health')) from regions"
        ).fetchone()
        return row[0] if row else None

    def put_rollups(self, table: str, rows: Iterable[tuple]) -> None:
        """Insert or replace rows of rollup_minute / rollup_hour:
        (region, bucket, polls, failures, p50, p95, max, reported_error_rate, reported_polls)."""
        _bucket_column(table)
        self.conn.executemany(f"insert or replace into {table} values (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def rollup_rows(self, table: str, region: str, start: int, end: int) -> list[tuple]:
        """(bucket, polls, failures, p50, p95, max, reported_error_rate, reported_polls) in [start, end)."""
        column = _bucket_column(table)
        return self.conn.execute(
            f"select {column}, polls, failures, latency_p50, latency_p95, latency_max, reported_error_rate,"
            f" reported_polls from {table} where region = ? and {column} >= ? and {column} < ?"
            f" order by {column}",
            (region, start, end),
        ).fetchall()

    def delete_samples_before(self, region: str, cutoff: float, limit: int) -> int:
        """Delete up to `limit` of a region's oldest samples older than cutoff; returns how many."""
        cursor = self.conn.execute(
            "delete from samples where id in (select id from samples where region = ? and endpoint = 'health'"
            " and ts < ? limit ?) or id in (select id from samples where region = ? and endpoint = 'deployment'"
            " and ts < ? limit ?)",
            (region, cutoff, limit, region, cutoff, limit),
        )
        return cursor.rowcount

    def delete_rollups_before(self, table: str, region: str, cutoff: int, limit: int) -> int:
        column = _bucket_column(table)
        cursor = self.conn.execute(
            f"delete from {table} where region = ? and {column} in"
            f" (select {column} from {table} where region = ? and {column} < ? order by {column} limit ?)",
            (region, region, cutoff, limit),
        )
        return cursor.rowcount

    def delete_counts_before(self, width: int, region: str, cutoff: float, limit: int) -> int:
        """Delete up to `limit` of a region's oldest `health_counts` buckets of `width` before cutoff."""
        cursor = self.conn.execute(
            "delete from health_counts where region = ? and width = ? and bucket in"
            " (select bucket from health_counts where region = ? and width = ? and bucket < ? order by bucket limit ?)",
            (region, width, region, width, cutoff, limit),
        )
        return cursor.rowcount

    def oldest_rollup(self, table: str) -> int | None:
        """The oldest bucket of a rollup table: one primary-key seek per region, in one statement."""
        column = _bucket_column(table)
        row = self.conn.execute(
            f"select min((select min({column}) from {table} where {table}.region = regions.region)) from regions"
        ).fetchone()
        return row[0] if row else None
