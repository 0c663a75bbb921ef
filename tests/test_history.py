"""History that stays fast and small: rollups, retention, the size bound, chart sources, query plans.

Real SQLite files and real settings files throughout; samples are written through the store's own
functions (or `seed_history`, which uses them) and every expectation is computed from the raw rows.
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from dashboard import charts, history
from dashboard.config import Settings, load_settings
from dashboard.demo.seed import seed_history
from dashboard.health import RegionState
from dashboard.history import (
    ROLLUP_LAG_SECONDS,
    RetentionResult,
    maintenance_step,
    retention_step,
    rollup_step,
    size_notice,
    size_step,
    summarise,
    watermark,
)
from dashboard.poller import Poller, PollerBusy
from dashboard.probes import DEPLOYMENT, HEALTH
from dashboard.scheduler import PollingService
from dashboard.store import Sample, Store

from .conftest import deployment_block, write_config

# Hour-aligned (500 000 hours), so minute, five-minute and hour buckets all start at NOW.
NOW = 1_800_000_000.0
REGIONS = ["us-east-1", "eu-west-1"]
MB = 1024 * 1024


# -- helpers -------------------------------------------------------------------------------------



def add_regions(store: Store, regions: list[str], at: float = NOW) -> None:
    """The `regions` rows the poller writes beside its samples."""
    with store.transaction():
        for region in regions:
            state = RegionState(region=region, state="up", reason="healthy", since=at, last_poll_at=at, revision=1)
            assert store.compare_and_set_state(state, 0)


def health(ts: float, region: str = "us-east-1", ok: bool = True, latency: float | None = 50.0,
           rate: float | None = None) -> Sample:
    return Sample(ts, region, HEALTH, ok, 200 if ok else 500, latency, "" if ok else "health: HTTP 500", rate)


def deployment(ts: float, region: str = "us-east-1", ok: bool = True) -> Sample:
    return Sample(ts, region, DEPLOYMENT, ok, 200 if ok else 500, 9999.0, "" if ok else "deployment: HTTP 500")


def insert(store: Store, samples: list[Sample]) -> None:
    with store.transaction():
        store.insert_samples(samples)


def rows(store: Store, sql: str, params: tuple = ()) -> list[tuple]:
    return store.db.conn.execute(sql, params).fetchall()


def scalar(store: Store, sql: str, params: tuple = ()) -> Any:
    return store.db.conn.execute(sql, params).fetchone()[0]


def rollups(store: Store, table: str) -> list[tuple]:
    return rows(store, f"select * from {table} order by 1, 2")


def catch_up(store: Store, now: float) -> None:
    """Roll up everything rollable at `now` (until both watermarks stop moving)."""
    while True:
        before = (watermark(store, "rollup_minute"), watermark(store, "rollup_hour"))
        rollup_step(store, now, max_transactions=500)
        if (watermark(store, "rollup_minute"), watermark(store, "rollup_hour")) == before:
            return


def window_bounds(window: str, interval: float, now: float) -> tuple[float, float]:
    """The [start, end) a series covers, as charts.series cuts it."""
    bucket = charts.bucket_seconds(charts.WINDOWS[window], interval)
    end = math.floor(now / bucket) * bucket + bucket
    return end - charts.WINDOWS[window] - bucket, end


def raw_counts(store: Store, region: str, start: float, end: float) -> tuple[int, int]:
    """(polls, failed polls) of a region's health samples in [start, end), straight from the table."""
    polls, failed = rows(store, "select count(*), coalesce(sum(1 - ok), 0) from samples where region = ?"
                                " and endpoint = 'health' and ts >= ? and ts < ?", (region, start, end))[0]
    return polls, failed


def series_counts(data: dict) -> tuple[int, int]:
    return sum(p["polls"] for p in data["points"]), sum(p["failed"] for p in data["points"])


# -- rollup_step ---------------------------------------------------------------------------------

def test_rollup_step_writes_exact_minute_and_hour_rows_of_completed_buckets_only(make_store):
    store, _ = make_store()
    add_regions(store, REGIONS)
    m0 = NOW - 3600  # the first minute of the last completed hour
    answered = [health(m0 + 1 + 2 * i, latency=10.0 * (i + 1), rate=(0.1 if i < 4 else 0.3 if i < 8 else None))
                for i in range(20)]  # latencies 10..200 ms
    failed = [
        health(m0 + 45, ok=False, latency=5000.0),  # a timeout: its latency is the deadline, not the region's
        Sample(m0 + 50, "us-east-1", HEALTH, False, 200, 30.0, "health says 'error'", 0.5),  # failed, but reports
    ]
    later = [
        health(m0 + 5 * 60 + 7, latency=40.0, rate=0.0),
        health(m0 + 59 * 60 + 59, ok=False, latency=1.0),  # refused, in the hour's last minute
        health(m0 + 2 * 60 + 1, region="eu-west-1", latency=80.0),
        health(m0 + 2 * 60 + 2, region="eu-west-1", latency=70.0),
    ]
    # Deployment probes are not polls of the region's health: never in a rollup.
    noise = [deployment(m0 + 3, ok=False), deployment(m0 + 5 * 60 + 8), deployment(m0 + 2 * 60 + 1, "eu-west-1")]
    in_progress = [health(NOW + 10, latency=33.0)]  # the current minute and hour: not complete yet
    insert(store, answered + failed + later + noise + in_progress)

    minute_rate = sum([0.1] * 4 + [0.3] * 4 + [0.5]) / 9
    hour_rate = sum([0.1] * 4 + [0.3] * 4 + [0.5] + [0.0]) / 10
    written = rollup_step(store, now=NOW + 60 + ROLLUP_LAG_SECONDS - 1)

    assert rollups(store, "rollup_minute") == sorted([
        # region, minute, polls, failures, p50, p95, max (answered polls only), mean reported rate, reported polls
        ("us-east-1", m0, 22, 2, 100.0, 190.0, 200.0, minute_rate, 9),
        ("us-east-1", m0 + 5 * 60, 1, 0, 40.0, 40.0, 40.0, 0.0, 1),
        ("us-east-1", m0 + 59 * 60, 1, 1, None, None, None, None, 0),
        ("eu-west-1", m0 + 2 * 60, 2, 0, 70.0, 80.0, 80.0, None, 0),
    ])
    assert rollups(store, "rollup_hour") == sorted([
        # 21 answered latencies: 10, 20, 30, 40, 40, 50 .. 200: nearest-rank p50 is the 11th, p95 the 20th
        ("us-east-1", m0, 24, 3, 100.0, 190.0, 200.0, hour_rate, 10),
        ("eu-west-1", m0, 2, 0, 70.0, 80.0, 80.0, None, 0),
    ])
    assert written == 6
    # The minute NOW ends at NOW + 60; it is rolled up once it is ROLLUP_LAG_SECONDS in the past.
    assert watermark(store, "rollup_minute") == NOW
    assert watermark(store, "rollup_hour") == NOW

    assert rollup_step(store, now=NOW + 60 + ROLLUP_LAG_SECONDS) == 1
    assert rows(store, "select * from rollup_minute where minute = ?", (NOW,)) == [
        ("us-east-1", NOW, 1, 0, 33.0, 33.0, 33.0, None, 0)]
    assert watermark(store, "rollup_minute") == NOW + 60
    assert watermark(store, "rollup_hour") == NOW  # the hour NOW is not over


def test_rollup_step_run_again_changes_nothing_and_rolling_up_again_gives_the_same_rows(make_store):
    store, settings = make_store()
    seed_history(store, settings, days=0.1, interval_seconds=30, now=NOW, rng_seed=3)
    catch_up(store, NOW)
    minute, hour = rollups(store, "rollup_minute"), rollups(store, "rollup_hour")
    marks = (watermark(store, "rollup_minute"), watermark(store, "rollup_hour"))
    assert minute and hour

    assert rollup_step(store, NOW) == 0
    assert (rollups(store, "rollup_minute"), rollups(store, "rollup_hour")) == (minute, hour)

    # Forget how far the rollups reached: the same buckets are written again, replaced, not doubled.
    with store.transaction() as conn:
        conn.execute("delete from app_state where name in ('rollup_minute_until', 'rollup_hour_until')")
    catch_up(store, NOW)
    assert (rollups(store, "rollup_minute"), rollups(store, "rollup_hour")) == (minute, hour)
    assert (watermark(store, "rollup_minute"), watermark(store, "rollup_hour")) == marks


def test_rollup_step_progress_is_bounded_per_call_and_repeated_calls_catch_up(make_store):
    store, _ = make_store()
    add_regions(store, REGIONS)
    start = NOW - 10 * 3600
    samples = [health(start + 30 * i, region, ok=i % 7 != 0, latency=20.0 + i % 50)
               for i in range(10 * 120) for region in REGIONS]
    insert(store, samples)

    minute_target, hour_target = NOW - ROLLUP_LAG_SECONDS, NOW - 3600
    minute_span, hour_span = history.ROLLUP_SPAN["rollup_minute"], history.ROLLUP_SPAN["rollup_hour"]
    calls = 0
    while rollup_step(store, NOW, max_transactions=1):
        calls += 1
        # One transaction per table per call: each watermark moves by at most one span.
        assert watermark(store, "rollup_minute") == min(start + calls * minute_span, minute_target)
        assert watermark(store, "rollup_hour") == min(start + calls * hour_span, hour_target)
    assert calls == math.ceil((minute_target - start) / minute_span) == 20

    expected_minutes = rows(store, "select region, cast(ts / 60 as integer) * 60, count(*), sum(1 - ok)"
                                   " from samples where endpoint = 'health' and ts < ?"
                                   " group by 1, 2 order by 1, 2", (minute_target,))
    assert rows(store, "select region, minute, polls, failures from rollup_minute order by 1, 2") == expected_minutes
    expected_hours = rows(store, "select region, cast(ts / 3600 as integer) * 3600, count(*), sum(1 - ok) from samples"
                                 " where endpoint = 'health' and ts < ? group by 1, 2 order by 1, 2", (hour_target,))
    assert rows(store, "select region, hour, polls, failures from rollup_hour order by 1, 2") == expected_hours


def test_summarise_ignores_the_latency_of_failed_polls_and_of_polls_without_one():
    samples = [(1.0, 1, 30.0, None), (2.0, 0, 5000.0, None), (3.0, 1, None, 0.2), (4.0, 1, 10.0, 0.4)]
    assert summarise(samples) == (4, 1, 10.0, 30.0, 30.0, pytest.approx(0.3), 2)
    assert summarise([(1.0, 0, 5000.0, None)]) == (1, 1, None, None, None, None, 0)


# -- retention_step ------------------------------------------------------------------------------

def test_retention_keeps_raw_samples_past_retention_until_both_rollups_cover_them(make_store):
    store, settings = make_store(raw_retention_hours=1)
    add_regions(store, ["us-east-1"])
    times = [NOW - 3 * 3600 + 60 * i for i in range(181)]  # every minute of the last three hours
    insert(store, [s for t in times for s in (health(t), deployment(t))])

    assert retention_step(store, settings, NOW) == RetentionResult(0, 0, 0)
    assert scalar(store, "select count(*) from samples") == 2 * 181

    # Two transactions: minute rollups reach NOW - 2 h, hour rollups NOW - 1 h.
    rollup_step(store, NOW, max_transactions=2)
    assert watermark(store, "rollup_minute") == NOW - 2 * 3600
    assert watermark(store, "rollup_hour") == NOW - 3600
    result = retention_step(store, settings, NOW)
    assert result.samples == 2 * 60  # health and deployment samples before NOW - 2 h
    # Older than the one hour of raw retention, but not yet in a minute rollup: still there.
    assert scalar(store, "select min(ts) from samples where endpoint = 'health'") == NOW - 2 * 3600
    assert scalar(store, "select min(ts) from samples where endpoint = 'deployment'") == NOW - 2 * 3600

    catch_up(store, NOW)
    assert retention_step(store, settings, NOW).samples == 2 * 60
    assert scalar(store, "select min(ts) from samples") == NOW - 3600
    assert scalar(store, "select count(*) from samples") == 2 * 61


def test_retention_deletes_rollups_past_their_retention_in_batches_and_never_events_or_regions(
        make_store, monkeypatch):
    store, settings = make_store(minute_rollup_retention_days=1, hour_rollup_retention_days=2)
    add_regions(store, REGIONS)
    with store.transaction():
        for region in REGIONS:
            store.put_rollups("rollup_minute", [(region, int(NOW) - 60 * k, 4, 1, 50.0, 90.0, 99.0, None, 0)
                                                for k in range(1, 1541)])  # 100 minutes past a day
            store.put_rollups("rollup_hour", [(region, int(NOW) - 3600 * k, 240, 1, 50.0, 90.0, 99.0, 0.01, 240)
                                              for k in range(1, 61)])  # 12 hours past two days
        # Events of every age, older than any retention: never pruned.
        for days in (1000, 400, 31, 3, 0):
            store.insert_event(at=NOW - days * 86400, region="us-east-1", kind="state", reason=f"{days} days ago",
                               old_state="up", new_state="down")
            store.insert_event(at=NOW - days * 86400, region=None, kind="failover", reason="audit", actor="cli:x")
    events = rows(store, "select * from events order by id")
    regions = rows(store, "select * from regions order by region")

    monkeypatch.setattr(history, "DELETE_BATCH", 30)
    deletes: list[int] = []
    real_delete = store.delete_rollups_before

    def counting_delete(table: str, region: str, cutoff: int, limit: int) -> int:
        deletes.append(real_delete(table, region, cutoff, limit))
        return deletes[-1]

    monkeypatch.setattr(store, "delete_rollups_before", counting_delete)

    first = retention_step(store, settings, NOW, max_transactions=5)
    assert 0 < first.minute_rollups + first.hour_rollups <= 5 * 30  # bounded: five transactions at most
    results = [first]
    while sum((results[-1].samples, results[-1].minute_rollups, results[-1].hour_rollups)):
        results.append(retention_step(store, settings, NOW))
    assert sum(r.minute_rollups for r in results) == 2 * 100
    assert sum(r.hour_rollups for r in results) == 2 * 12
    assert max(deletes) == 30  # each delete takes one batch at most
    assert all(0 <= n <= 30 for n in deletes)

    for region in REGIONS:
        minutes = [m for (m,) in rows(store, "select minute from rollup_minute where region = ?", (region,))]
        assert min(minutes) == NOW - 86400 and len(minutes) == 1440
        hours = [h for (h,) in rows(store, "select hour from rollup_hour where region = ?", (region,))]
        assert min(hours) == NOW - 2 * 86400 and len(hours) == 48
    assert rows(store, "select * from events order by id") == events
    assert rows(store, "select * from regions order by region") == regions


# -- size_step -----------------------------------------------------------------------------------

def fill_hour_rollups(store: Store, regions: list[str], days: int) -> None:
    with store.transaction():
        for region in regions:
            store.put_rollups("rollup_hour", [(region, int(NOW) - 3600 * k, 240, 2, 55.0, 95.0, 180.0, 0.002, 240)
                                              for k in range(1, days * 24 + 1)])


def fill_minute_rollups(store: Store, regions: list[str], days: int) -> None:
    with store.transaction():
        for region in regions:
            store.put_rollups("rollup_minute", [(region, int(NOW) - 60 * k, 4, 0, 55.0, 95.0, 180.0, 0.002, 4)
                                                for k in range(1, days * 1440 + 1)])


def add_events(store: Store, regions: list[str]) -> None:
    with store.transaction():
        for day in range(0, 500, 10):
            for region in regions[:3]:
                store.insert_event(at=NOW - day * 86400, region=region, kind="state", reason="x",
                                   old_state="up", new_state="down")


def shrink(store: Store, settings: Settings, now: float = NOW) -> int:
    """Run size_step until it stops dropping (the scheduler runs it every minute)."""
    total = 0
    for _ in range(100):
        dropped = size_step(store, settings, now)
        total += dropped
        if not dropped:
            return total
    raise AssertionError("size_step never stopped dropping")


def test_size_bound_drops_the_oldest_hour_rollups_first_and_says_so(make_store):
    regions = REGIONS + ["ap-southeast-1"]
    store, settings = make_store(regions=regions, max_database_mb=10)
    add_regions(store, regions)
    fill_hour_rollups(store, regions, days=400)
    fill_minute_rollups(store, regions, days=25)
    insert(store, [s for t in range(0, 3600, 15)
                   for s in (health(NOW - t, regions[0]), deployment(NOW - t, regions[0]))])
    add_events(store, regions)
    assert store.used_bytes() > 10 * MB
    oldest_hour = scalar(store, "select min(hour) from rollup_hour")
    minutes = rollups(store, "rollup_minute")
    samples = scalar(store, "select count(*) from samples")
    events = rows(store, "select * from events order by id")
    assert size_notice(store) is None

    dropped = shrink(store, settings)

    assert store.used_bytes() <= 10 * MB
    notice = size_notice(store)
    assert notice is not None
    assert notice["limit_mb"] == 10 and notice["at"] == NOW
    remaining_oldest = scalar(store, "select min(hour) from rollup_hour")
    assert oldest_hour < notice["dropped_before"] <= remaining_oldest
    # Only hour rollups older than the cutoff went; everything newer, and everything else, is intact.
    assert dropped == 3 * (400 * 24) - scalar(store, "select count(*) from rollup_hour")
    assert scalar(store, "select count(*) from rollup_hour") == 3 * ((NOW - notice["dropped_before"]) // 3600)
    assert rollups(store, "rollup_minute") == minutes
    assert scalar(store, "select count(*) from samples") == samples
    assert rows(store, "select * from events order by id") == events


def test_size_bound_drops_minute_rollups_only_after_the_hour_rollups_older_than_them(make_store):
    regions = [f"region-{i}" for i in range(5)]
    store, settings = make_store(regions=regions, max_database_mb=10)
    add_regions(store, regions)
    fill_hour_rollups(store, regions, days=60)
    fill_minute_rollups(store, regions, days=30)
    add_events(store, regions)
    assert store.used_bytes() > 10 * MB
    oldest_minute = scalar(store, "select min(minute) from rollup_minute")
    events = rows(store, "select * from events order by id")

    shrink(store, settings)

    assert store.used_bytes() <= 10 * MB
    notice = size_notice(store)
    new_oldest_minute = scalar(store, "select min(minute) from rollup_minute")
    new_oldest_hour = scalar(store, "select min(hour) from rollup_hour")
    assert new_oldest_minute > oldest_minute, "the limit needed minute rollups to go too"
    # Every hour rollup older than the minute rollups went before any minute rollup did; from then on
    # the oldest day of either goes first, so the two end within a day of each other.
    assert new_oldest_hour > oldest_minute
    assert abs(new_oldest_hour - new_oldest_minute) <= 86400
    assert notice["dropped_before"] <= min(new_oldest_hour, new_oldest_minute) + 86400
    assert scalar(store, "select count(*) from rollup_minute where minute >= ?", (notice["dropped_before"],)) == \
        len(regions) * ((NOW - notice["dropped_before"]) // 60)
    assert rows(store, "select * from events order by id") == events


def test_size_bound_below_the_limit_does_nothing(make_store):
    store, settings = make_store(max_database_mb=10)
    seed_history(store, settings, days=0.2, interval_seconds=30, now=NOW)
    catch_up(store, NOW)
    before = {t: rows(store, f"select * from {t} order by 1, 2") for t in ("samples", "rollup_minute", "rollup_hour",
                                                                          "events")}
    assert store.used_bytes() < 10 * MB
    assert size_step(store, settings, NOW) == 0
    assert size_notice(store) is None
    assert {t: rows(store, f"select * from {t} order by 1, 2") for t in before} == before


def test_size_bound_with_only_events_left_drops_nothing_and_claims_no_drop(make_store):
    """Events are never pruned; a database that is over the limit because of them has nothing to drop."""
    store, settings = make_store(max_database_mb=10)
    add_regions(store, REGIONS)
    with store.transaction():
        for i in range(20_000):
            store.insert_event(at=NOW - 20_000 + i, region=REGIONS[i % 2], kind="failover", actor="cli:x",
                               reason=f"{i}: " + "a long reason " * 40)
    assert store.used_bytes() > 10 * MB

    assert size_step(store, settings, NOW) == 0
    assert scalar(store, "select count(*) from events") == 20_000
    notice = size_notice(store)
    # Nothing was dropped, so the notice must not say history up to some time was dropped, least of
    # all up to a time in the future.
    assert notice is None or notice["dropped_before"] <= NOW, notice


# -- charts: which table each window reads, and no double counting ---------------------------------

EXPECTED_SOURCES = {"1h": "samples", "6h": "samples", "24h": "rollup_minute", "7d": "rollup_minute",
                    "30d": "rollup_hour", "1y": "rollup_hour"}


@pytest.fixture
def three_days(make_store) -> tuple[Store, Settings]:
    """Three days of one poll a minute for two regions, rolled up as far as NOW allows (raw kept)."""
    store, settings = make_store(poll_interval_seconds=60, raw_retention_hours=1)
    seed_history(store, settings, days=3, now=NOW, rng_seed=5)
    # Failed polls in every window, whatever the generator drew (between the seeded polls).
    insert(store, [health(NOW - ago + 10 * i + 5, region, ok=False, latency=5000.0)
                   for ago in (40 * 3600, 5 * 3600, 30 * 60) for i in range(5) for region in REGIONS])
    catch_up(store, NOW)
    return store, settings


def test_each_window_reads_the_coarsest_table_with_enough_points(three_days):
    store, settings = three_days
    region = REGIONS[0]
    # Mark one minute rollup and one hour rollup inside every window (two hours ago, both rolled up),
    # so each series shows which table it read.
    with store.transaction() as conn:
        conn.execute("update rollup_minute set polls = polls + 1000 where region = ? and minute = ?",
                     (region, NOW - 7200))
        conn.execute("update rollup_hour set polls = polls + 100000 where region = ? and hour = ?",
                     (region, NOW - 7200))
    extra = {"samples": 0, "rollup_minute": 1000, "rollup_hour": 100_000}
    for window, source in EXPECTED_SOURCES.items():
        data = charts.series(store, region, "error_rate", window, 60, now=NOW)
        assert data["source"] == source, window
        start, end = window_bounds(window, 60, NOW)
        polls, _ = raw_counts(store, region, start, end)
        assert series_counts(data)[0] == polls + extra[source], window
        assert len(data["points"]) <= charts.MAX_POINTS + 2


@pytest.mark.parametrize("window", ["24h", "7d", "30d", "1y"])
def test_long_windows_count_every_poll_once_from_rollups_and_the_raw_tail(three_days, window):
    store, settings = three_days
    expected = {region: raw_counts(store, region, *window_bounds(window, 60, NOW)) for region in REGIONS}
    # Raw samples older than an hour go: the series must come from rollups plus the raw tail.
    while retention_step(store, settings, NOW).samples:
        pass
    assert scalar(store, "select min(ts) from samples") >= NOW - 3600
    for region in REGIONS:
        data = charts.series(store, region, "error_rate", window, 60, now=NOW)
        assert series_counts(data) == expected[region], region
        assert expected[region][1] >= 15 if window != "24h" else expected[region][1] >= 10
        latency = charts.series(store, region, "latency", window, 60, now=NOW)
        assert latency["points"] and all(p["p50_ms"] <= p["p95_ms"] for p in latency["points"])


def test_a_24h_series_shows_the_last_minutes_before_they_are_rolled_up(three_days):
    store, _ = three_days
    region = REGIONS[0]
    insert(store, [health(NOW + t, region, ok=False, latency=5000.0) for t in (20, 40, 70, 100)])
    now = NOW + 120
    rollup_step(store, now)
    assert watermark(store, "rollup_minute") == NOW - 60  # the failures are not in any rollup yet

    data = charts.series(store, region, "error_rate", "24h", 60, now=now)
    last = data["points"][-1]
    assert last["t"] == charts.iso(NOW)
    assert (last["polls"], last["failed"]) == raw_counts(store, region, NOW, NOW + 300)
    assert last["failed"] >= 4
    assert series_counts(data) == raw_counts(store, region, *window_bounds("24h", 60, now))


@pytest.mark.parametrize("window", ["1h", "6h"])
def test_raw_error_rate_charts_plot_the_rate_per_minute_not_one_dot_per_poll(make_store, window):
    store, _ = make_store(poll_interval_seconds=15)
    add_regions(store, REGIONS)
    region = REGIONS[0]
    # Four polls a minute over the last ten minutes; in the third minute one of the four fails,
    # in the seventh three do.
    failing = {(2, 1), (6, 0), (6, 2), (6, 3)}
    minutes = range(-10, 0)
    insert(store, [health(NOW + 60 * m + 15 * i + 1, region, ok=(m + 10, i) not in failing)
                   for m in minutes for i in range(4)])
    data = charts.series(store, region, "error_rate", window, 15, now=NOW)
    assert data["bucket_seconds"] == 60
    by_minute = {p["t"]: (p["failed"], p["polls"], p["error_rate"]) for p in data["points"]}
    assert by_minute == {
        charts.iso(NOW + 60 * m): ((1, 4, 0.25) if m == -8 else (3, 4, 0.75) if m == -4 else (0, 4, 0.0))
        for m in minutes
    }
    # Latency keeps its finer buckets: percentiles of a poll or two are still exact values.
    assert charts.series(store, region, "latency", "1h", 15, now=NOW)["bucket_seconds"] == 15


def test_error_rate_ticks_show_as_many_decimals_as_small_rates_need(make_store):
    store, _ = make_store()
    figure = charts.figure(charts.series(store, REGIONS[0], "error_rate", "1h", 15, now=NOW))
    tickformat = figure["layout"]["yaxis"]["tickformat"]
    # d3-format's "~%" trims trailing zeros from a percentage of enough precision; ".0%" rounded
    # 0.5 % to "0%" (and 1.5 % to "2%"). The browser test checks the drawn tick labels.
    assert tickformat == "~%"


# -- query plans ---------------------------------------------------------------------------------

BIG_TABLES = ("samples", "events", "rollup_minute", "rollup_hour", "health_counts")
INDEXED = re.compile(r"USING (INDEX|COVERING INDEX|PRIMARY KEY|INTEGER PRIMARY KEY)\b")
KINDS = ("state", "version", "failover", "failback", "lapse")

# (name, call, ordered by the index and cut by LIMIT, full scan allowed (and why))
HOT_QUERIES: list[tuple[str, Callable[[Store, int], Any], bool, str | None]] = [
    ("error_rate (status page)", lambda s, _: s.error_rate("us-east-1", NOW - 300), False, None),
    ("poll_counts", lambda s, _: s.poll_counts("us-east-1", NOW - 3600, NOW), False, None),
    # Partial minutes, partial hours and whole hours at both ends: every part of the statement.
    ("window_counts (fleet, 1 day)",
     lambda s, _: s.window_counts(REGIONS + ["ap-southeast-1"], NOW - 86400 - 1234.5, NOW - 3599.5), False, None),
    ("recent_samples", lambda s, _: s.recent_samples("us-east-1", limit=50), True, None),
    ("poll_buckets", lambda s, _: s.poll_buckets("us-east-1", NOW - 3600, NOW, 10, NOW - 3600), False, None),
    ("latency_samples", lambda s, _: s.latency_samples("us-east-1", NOW - 3600, NOW, 10, NOW - 3600), False, None),
    ("rollup_rows minute", lambda s, _: s.rollup_rows("rollup_minute", "us-east-1", int(NOW) - 86400, int(NOW)),
     False, None),
    ("rollup_rows hour", lambda s, _: s.rollup_rows("rollup_hour", "us-east-1", int(NOW) - 30 * 86400, int(NOW)),
     False, None),
    ("events(region)", lambda s, _: s.events(region="us-east-1", limit=30), True, None),
    ("events(region, before)", lambda s, mid: s.events(region="us-east-1", limit=51, before=mid), True, None),
    # Walks the rowid from the newest backwards and stops after LIMIT rows: reads 50 rows, not the table.
    ("events()", lambda s, _: s.events(limit=50), True, "events"),
    ("events(before)", lambda s, mid: s.events(limit=51, before=mid), True, None),
    ("events_between", lambda s, _: s.events_between("us-east-1", NOW - 86400, NOW, KINDS), False, None),
    # One row per region: reading them all is the query (it is called with every configured region).
    ("region_states", lambda s, _: s.region_states(REGIONS + ["ap-southeast-1"]), False, "regions"),
]


def statements(store: Store, call: Callable[[], Any]) -> list[str]:
    """The SQL a store function really runs, parameters bound (sqlite3's trace callback)."""
    seen: list[str] = []
    store.db.conn.set_trace_callback(seen.append)
    try:
        call()
    finally:
        store.db.conn.set_trace_callback(None)
    return [sql for sql in seen if re.match(r"\s*(select|with|delete|update)\b", sql, re.I)]


def plan(store: Store, sql: str) -> list[tuple[int, int, str]]:
    """EXPLAIN QUERY PLAN as (node, parent, detail) rows."""
    return [(row[0], row[1], row[3]) for row in store.db.conn.execute("explain query plan " + sql)]


def reads(detail: str) -> str | None:
    """The big table a plan node reads directly (SEARCH or SCAN), if any."""
    match = re.match(r"(SEARCH|SCAN) (\w+)", detail)
    return match.group(2) if match and match.group(2) in BIG_TABLES else None


def plan_problems(nodes: list[tuple[int, int, str]], ordered: bool, scan_ok: str | None) -> list[str]:
    problems = []
    for node, parent, detail in nodes:
        table = reads(detail)
        if table and detail.startswith("SCAN") and table != scan_ok:
            problems.append(f"full scan: {detail}")
        # A sort is fine over a bounded subquery's rows; sorting every row read from a big table to
        # keep the first few is what an index in the right order avoids.
        if ordered and "TEMP B-TREE FOR ORDER BY" in detail and any(
                p == parent and reads(d) for n, p, d in nodes if n != node):
            problems.append(f"sorts every matching row before the LIMIT: {detail}")
    if scan_ok is None and not any(INDEXED.search(detail) for *_, detail in nodes):
        problems.append("no index or primary key used")
    return problems


@pytest.fixture(scope="module", params=[False, True], ids=["fresh-db", "after-analyze"])
def planned(request, tmp_path_factory) -> Iterator[tuple[Store, int]]:
    """A database with a day of history and many events; once as the app leaves it (no statistics),
    once after ANALYZE / `PRAGMA optimize` gave the planner statistics (as an operator may run)."""
    regions = REGIONS + ["ap-southeast-1"]
    folder = tmp_path_factory.mktemp("plans")
    path = write_config(folder / "config.yaml", deployment_block(regions), database="plans.db",
                        poll_interval_seconds=30)
    settings = load_settings(str(path), environ={})
    store = Store(settings.database_path)
    seed_history(store, settings, days=1, now=NOW, rng_seed=2)
    catch_up(store, NOW)
    with store.transaction():
        for i in range(3000):
            store.insert_event(at=NOW - 86400 + i * 20, region=f"region-{i % 10}" if i % 3 else regions[i % 3],
                               kind="state", reason="x", old_state="up", new_state="down")
    middle = scalar(store, "select id from events order by id limit 1 offset 1500")
    if request.param:
        with store.db.ensure_autocommit_on():
            store.db.execute("analyze")
    yield store, middle
    store.close()


@pytest.mark.parametrize("name, call, ordered, scan_ok", HOT_QUERIES, ids=[q[0] for q in HOT_QUERIES])
def test_hot_query_uses_an_index(planned, name, call, ordered, scan_ok):
    store, middle = planned
    sqls = statements(store, lambda: call(store, middle))
    assert sqls, f"{name} ran no SQL"
    report = {sql: plan(store, sql) for sql in sqls}
    problems = {sql: plan_problems(lines, ordered, scan_ok) for sql, lines in report.items()}
    bad = {sql: {"plan": [d for *_, d in report[sql]], "problems": found} for sql, found in problems.items() if found}
    assert not bad, json.dumps(bad, indent=1)


@pytest.mark.parametrize("analyzed", [False, True], ids=["fresh-db", "after-analyze"])
def test_maintenance_queries_use_indexes_too(make_store, analyzed):
    """Rollup, retention and size bound run every minute beside polling: none of them scans a big table."""
    store, settings = make_store(max_database_mb=10)
    seed_history(store, settings, days=0.2, interval_seconds=30, now=NOW)
    fill_hour_rollups(store, REGIONS, days=3)
    if analyzed:
        with store.db.ensure_autocommit_on():
            store.db.execute("analyze")
    sqls = set(statements(store, lambda: maintenance_step(store, settings, NOW + 3 * 86400)))
    assert any("rollup_minute" in sql for sql in sqls) and any(sql.startswith("delete") for sql in sqls)
    problems = {sql: plan_problems(plan(store, sql), False, None) for sql in sqls}
    bad = {sql: {"plan": [d for *_, d in plan(store, sql)], "problems": found}
           for sql, found in problems.items() if found}
    assert not bad, json.dumps(bad, indent=1)


# -- dashboard seed-history ----------------------------------------------------------------------

def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD_CONFIG", "REVERSEAI_DEPLOYMENT_REGIONS")}
    return subprocess.run([sys.executable, "-m", "dashboard.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_seed_history_writes_a_config_and_a_rolled_up_database_status_reads(tmp_path):
    folder = tmp_path / "fleet"
    began = time.time()
    result = run_cli("seed-history", "--write-config", str(folder), "--regions", "3", "--days", "3")
    assert result.returncode == 0, result.stderr
    config = folder / "config.yaml"
    assert str(config) in result.stdout

    store = Store(folder / "dashboard.db")
    try:
        names = [f"region-{i:03d}" for i in range(3)]
        for table, column in (("rollup_minute", "minute"), ("rollup_hour", "hour")):
            assert [r for (r,) in rows(store, f"select distinct region from {table} order by 1")] == names
            assert scalar(store, f"select min({column}) from {table}") <= began - 3 * 86400 + 3600
        # Raw samples only within the raw retention (48 h); the days before are in the rollups.
        assert scalar(store, "select min(ts) from samples") >= began - 48 * 3600
        assert scalar(store, "select count(distinct region) from samples") == 3
        polls = scalar(store, "select sum(polls) from rollup_hour") + scalar(
            store, "select count(*) from samples where endpoint = 'health' and ts >= ?",
            (watermark(store, "rollup_hour"),))
        assert polls == 3 * (3 * 86400 // 15 + 1)  # one health poll per region every 15 s, none lost
        assert scalar(store, "select count(*) from events") > 0
    finally:
        store.close()

    status = run_cli("--config", str(config), "status", "--json")
    assert status.returncode in (0, 1), status.stderr
    assert [r["region"] for r in json.loads(status.stdout)["regions"]] == names


def test_seed_history_config_points_at_loopback_that_refuses_every_probe_at_once(tmp_path):
    # Serving a seeded config polls it: no probe may leave the machine, nor wait for a timeout.
    folder = tmp_path / "fleet"
    result = run_cli("seed-history", "--write-config", str(folder), "--regions", "2", "--days", "0.01")
    assert result.returncode == 0, result.stderr
    settings = load_settings(str(folder / "config.yaml"), environ={})
    for region in settings.regions:
        host = urlsplit(settings.base_url(region)).hostname
        assert host is not None and ipaddress.ip_address(host).is_loopback, settings.base_url(region)

    # Long enough that a refusal and a timeout cannot be mistaken for each other.
    slow_timeout = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(
        update={"timeout_seconds": 30.0})})
    store = Store(settings.database_path)
    poller = Poller(slow_timeout, store)
    try:
        report = poller.run_cycle()
        assert report.stored
        assert sorted((r.region, r.ok, r.reason) for r in report.results) == sorted(
            (region, False, "connection refused") for region in settings.regions for _ in (HEALTH, DEPLOYMENT))
        for region in settings.regions:
            latest = store.recent_samples(region, limit=2)
            assert {s["endpoint"] for s in latest} == {HEALTH, DEPLOYMENT}
            assert [(s["ok"], s["reason"].endswith("connection refused")) for s in latest] == [(0, True)] * 2
    finally:
        poller.close()
        store.close()


@pytest.fixture
def three_region_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.yaml", deployment_block(["us-east-1", "eu-west-1", "ap-southeast-1"]),
                        database="dashboard.db")


@pytest.mark.parametrize("args, named", [
    (["--regions", "0"], "--regions"),
    (["--regions", "5"], "--regions"),
    (["--days", "0"], "--days"),
    (["--days", "1000"], "--days"),
], ids=["no-regions", "more-regions-than-configured", "no-days", "too-many-days"])
def test_seed_history_refuses_bad_sizes_on_a_config(three_region_config, args, named):
    result = run_cli("seed-history", "--config", str(three_region_config), *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert named in result.stderr
    assert not (three_region_config.parent / "dashboard.db").exists()


@pytest.mark.parametrize("args, named", [
    (["--regions", "0", "--days", "0.01"], "--regions"),
    (["--regions", "3", "--days", "0"], "--days"),
    (["--regions", "3", "--days", "1000"], "--days"),
], ids=["no-regions", "no-days", "too-many-days"])
def test_seed_history_with_write_config_refuses_bad_sizes_and_writes_nothing(tmp_path, args, named):
    folder = tmp_path / "fleet"
    result = run_cli("seed-history", "--write-config", str(folder), *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert named in result.stderr
    # Nothing left behind: the same command with a good size can be run next.
    assert not (folder / "config.yaml").exists()
    assert not (folder / "dashboard.db").exists()


# -- the scheduler's maintenance job -------------------------------------------------------------

def test_maintenance_runs_only_in_the_process_holding_the_poller_lease(fleet, poller_for):
    poller: Poller = poller_for(fleet)
    store = poller.store
    service = PollingService(poller)
    regions = poller.settings.regions
    add_regions(store, regions, at=time.time() - 3600)
    old = time.time() - 2 * 3600
    insert(store, [health(old + 15 * i, region) for i in range(120) for region in regions])

    assert store.acquire_lease("another-host:1", ttl_seconds=60).acquired
    assert service.run_maintenance() is None
    with pytest.raises(PollerBusy):
        poller.run_cycle()
    assert service.run_maintenance() is None
    assert watermark(store, "rollup_minute") is None
    assert scalar(store, "select count(*) from rollup_minute") == 0

    store.release_lease("another-host:1")
    poller.run_cycle()
    assert poller.holds_lease()
    result = service.run_maintenance()
    assert result is not None and result["rolled_up"] > 0
    assert [r for (r,) in rows(store, "select distinct region from rollup_minute order by 1")] == sorted(regions)
    assert scalar(store, "select sum(polls) from rollup_minute") == 120 * len(regions)

    poller.release_lease()
    assert service.run_maintenance() is None
