"""History that stays fast and small: rollups, retention and a size bound, as small step functions.

Raw samples are kept for `raw_retention_hours`; per-minute and hourly rollups of the health polls
(polls, failures, latency p50/p95/max, reported error rate) for much longer. Every step works in
short transactions of bounded size, so the scheduler can run them beside polling and pages without
holding the database long enough to delay either. Events are never pruned.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .store import Store

log = logging.getLogger(__name__)

MINUTE, HOUR = 60, 3600
TABLES = {"rollup_minute": MINUTE, "rollup_hour": HOUR}
# A minute is rolled up once it is this far in the past, so results the poller wrote late
# (kept in memory while the database was busy) still land in it.
ROLLUP_LAG_SECONDS = 180
# How much raw time one transaction rolls up, and how many rows one delete removes.
ROLLUP_SPAN = {"rollup_minute": 30 * MINUTE, "rollup_hour": 2 * HOUR}
DELETE_BATCH = 5000
SIZE_STATE = "size_limit"
# The two widths of `health_counts`, by the name retention knows them by.
COUNT_TABLES = {"counts_minute": MINUTE, "counts_hour": HOUR, "counts_day": 24 * HOUR}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(samples: list[tuple[float, int, float | None, float | None]]) -> tuple:
    """(polls, failures, p50, p95, max, reported error rate, reported polls) of health samples.

    Latency is of answered polls only (a timeout's latency is the deadline, not the region's)."""
    latencies = sorted(lat for _, ok, lat, _ in samples if ok and lat is not None)
    reported = [rate for *_, rate in samples if rate is not None]
    return (
        len(samples),
        sum(1 for _, ok, _, _ in samples if not ok),
        percentile(latencies, 0.5) if latencies else None,
        percentile(latencies, 0.95) if latencies else None,
        latencies[-1] if latencies else None,
        sum(reported) / len(reported) if reported else None,
        len(reported),
    )


def _watermark_key(table: str) -> str:
    return f"{table}_until"


def watermark(store: Store, table: str) -> float | None:
    """Rollups of this table cover everything before this time."""
    value = store.get_state(_watermark_key(table))
    return float(value) if value is not None else None


def rollup_step(store: Store, now: float | None = None, *, max_transactions: int = 20) -> int:
    """Roll up completed minutes and hours, a bounded span per transaction; returns buckets written."""
    now = time.time() if now is None else now
    written = 0
    for table, size in TABLES.items():
        for _ in range(max_transactions):
            start = watermark(store, table)
            if start is None:
                first = store.first_health_sample_at()
                if first is None:
                    break
                start = math.floor(first / size) * size
            end_limit = math.floor((now - ROLLUP_LAG_SECONDS) / size) * size
            end = min(start + ROLLUP_SPAN[table], end_limit)
            if end <= start:
                break
            with store.transaction():
                rows: list[tuple[Any, ...]] = []
                for region in store.sample_regions():
                    by_bucket: dict[int, list] = {}
                    for sample in store.health_samples_between(region, start, end):
                        by_bucket.setdefault(int(sample[0] // size * size), []).append(sample)
                    rows.extend((region, bucket, *summarise(samples)) for bucket, samples in by_bucket.items())
                store.put_rollups(table, rows)
                store.set_state(_watermark_key(table), repr(float(end)))
            written += len(rows)
    return written


@dataclass(frozen=True)
class RetentionResult:
    samples: int = 0
    minute_rollups: int = 0
    hour_rollups: int = 0
    counts: int = 0


def retention_step(store: Store, settings: Settings, now: float | None = None, *,
                   max_transactions: int = 20) -> RetentionResult:
    """Delete raw samples and rollups past their retention, in batches; only what is rolled up."""
    now = time.time() if now is None else now
    cfg = settings.dashboard
    # Raw samples go only once both rollups cover them: nothing is lost that a chart needs.
    covered = min((watermark(store, t) or 0.0) for t in TABLES)
    raw_cutoff = min(now - cfg.raw_retention_hours * HOUR, covered)
    cutoffs = {
        "samples": raw_cutoff,
        "rollup_minute": now - cfg.minute_rollup_retention_days * 86400,
        "rollup_hour": now - cfg.hour_rollup_retention_days * 86400,
        # Minute counts an hour longer than raw samples, so a window starting at the raw
        # retention's edge still finds whole minutes; hour and day counts as long as hourly rollups.
        "counts_minute": raw_cutoff - HOUR,
        "counts_hour": now - cfg.hour_rollup_retention_days * 86400,
        "counts_day": now - cfg.hour_rollup_retention_days * 86400,
    }
    deleted = {name: 0 for name in cutoffs}
    # The budget counts only transactions that deleted something: a region with nothing to prune
    # costs one indexed look-up, and every region is reached on every run however many there are.
    budget = max_transactions
    for region in store.sample_regions():
        for name, cutoff in cutoffs.items():
            while budget > 0:
                with store.transaction():
                    if name == "samples":
                        count = store.delete_samples_before(region, cutoff, DELETE_BATCH)
                    elif name in COUNT_TABLES:
                        count = store.delete_counts_before(COUNT_TABLES[name], region, cutoff, DELETE_BATCH)
                    else:
                        count = store.delete_rollups_before(name, region, int(cutoff), DELETE_BATCH)
                deleted[name] += count
                if count:
                    budget -= 1
                if count < DELETE_BATCH:
                    break
    return RetentionResult(deleted["samples"], deleted["rollup_minute"], deleted["rollup_hour"],
                           deleted["counts_minute"] + deleted["counts_hour"] + deleted["counts_day"])


def size_step(store: Store, settings: Settings, now: float | None = None, *, max_transactions: int = 50) -> int:
    """Keep the database under `max_database_mb`: the oldest history goes first, a day at a time.

    Rollups go before raw samples (they are the oldest); events are never touched. What was
    dropped is remembered in app_state so the dashboard can say so."""
    now = time.time() if now is None else now
    limit = settings.dashboard.max_database_mb * 1024 * 1024
    dropped = 0
    for _ in range(max_transactions):
        if store.used_bytes() <= limit:
            break
        oldest = {t: store.oldest_rollup(t) for t in TABLES}
        candidates = [(v, t) for t, v in oldest.items() if v is not None]
        if not candidates and store.first_health_sample_at() is None:
            log.error("event=size_limit_unreachable used_mb=%.1f limit_mb=%s reason=only_events_left",
                      store.used_bytes() / 1e6, settings.dashboard.max_database_mb)
            break  # events are never pruned: nothing left that may go
        cutoff: float
        first: float
        with store.transaction():
            if candidates:
                first, table = min(candidates)
                cutoff = first + 86400
                count = sum(store.delete_rollups_before(table, region, cutoff, DELETE_BATCH)
                            for region in store.sample_regions())
                # The counts of the same day go with it: they are as old, and as many rows.
                for width in COUNT_TABLES.values():
                    for region in store.sample_regions():
                        store.delete_counts_before(width, region, cutoff, DELETE_BATCH)
            else:
                first = store.first_health_sample_at() or now
                cutoff = first + HOUR
                table = "samples"
                count = sum(store.delete_samples_before(region, cutoff, DELETE_BATCH)
                            for region in store.sample_regions())
            if count == 0:
                break
            previous = json.loads(store.get_state(SIZE_STATE) or "{}")
            store.set_state(SIZE_STATE, json.dumps({
                "at": now, "limit_mb": settings.dashboard.max_database_mb,
                "dropped_before": max(cutoff, previous.get("dropped_before", 0)),
            }))
        dropped += count
        log.warning("event=size_limit_prune table=%s before=%s rows=%d limit_mb=%s", table, cutoff, count,
                    settings.dashboard.max_database_mb)
    return dropped


def size_notice(store: Store) -> dict[str, Any] | None:
    """What the size bound dropped, for the banner; None when it never had to."""
    raw = store.get_state(SIZE_STATE)
    return json.loads(raw) if raw else None


def maintenance_step(store: Store, settings: Settings, now: float | None = None) -> dict[str, Any]:
    """One round of rollup, retention and size bound: what the scheduler runs every minute."""
    now = time.time() if now is None else now
    rolled = rollup_step(store, now)
    pruned = retention_step(store, settings, now)
    dropped = size_step(store, settings, now)
    return {"rolled_up": rolled, "pruned": pruned, "size_dropped": dropped}
