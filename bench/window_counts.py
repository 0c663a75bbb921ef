"""Benchmark the windowed error-rate reads of every status read (issue 16), three designs side by side.

Every `GET /api/v1/status`, overview fragment and `/metrics` scrape reads each configured region's
failed polls / polls over the last 5 minutes and the last hour. Three ways to answer, on the same
real SQLite file, one after another in one run:

- **raw** (the code before issue 16): count the raw health samples in the window. Its cost grows
  with the polls in the window: regions x window / interval rows per read.
- **rollups + tail**: whole minutes from `rollup_minute` up to its watermark, the rest (at least
  the 3 minutes of rollup lag, and the partial first minute) from raw samples.
- **counts** (what `SampleQueries.window_counts` does now): whole minutes and hours from
  `health_counts`, which each cycle's own transaction adds to, and only the partial minutes at the
  edges from raw samples.

All three must give the same counts (checked). Also printed: what keeping the counts costs each
cycle's write (`insert_samples` of one cycle, with and without the counts' upsert).

    python bench/window_counts.py [--reads 200] [--days 2] [--regions 200]

Two fleets: `--regions` regions with `--days` of history at the default 15 s interval (the
fleet-scale issue's measurement), and 20 regions with one hour at a 1 s interval (its soak, where
the hour's raw rows were the cost).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from history import fleet_block, maintain, write_settings  # bench/history.py

from dashboard.demo.seed import seed_history
from dashboard.history import watermark
from dashboard.model import DEPLOYMENT, HEALTH, Sample, WindowCounts
from dashboard.status import LONG_WINDOW_SECONDS, SHORT_WINDOW_SECONDS
from dashboard.store import Store

Reader = Callable[[Store, Sequence[str], float], dict[str, WindowCounts]]


def raw_counts(store: Store, regions: Sequence[str], since: float) -> dict[str, WindowCounts]:
    return store.window_counts_from_samples(regions, since)


def rollup_tail_counts(store: Store, regions: Sequence[str], since: float) -> dict[str, WindowCounts]:
    """Whole minutes from rollup_minute up to its watermark, raw samples for the rest."""
    first_minute = math.ceil(since / 60) * 60
    rolled_until = max(first_minute, min(watermark(store, "rollup_minute") or first_minute, 1e18))
    counts = {region: WindowCounts() for region in regions}
    for region, polls, failed in store.conn.execute(
        "with wanted as (select value from json_each(?))"
        " select region, sum(polls), sum(failed) from ("
        " select region, polls, failures as failed from rollup_minute where region in (select value from wanted)"
        "  and minute >= ? and minute < ?"
        " union all select region, 1 as polls, 1 - ok as failed from samples"
        "  where region in (select value from wanted) and endpoint = 'health' and ts >= ? and ts < ?"
        " union all select region, 1, 1 - ok from samples"
        "  where region in (select value from wanted) and endpoint = 'health' and ts >= ?"
        ") group by region",
        (json.dumps(list(regions)), first_minute, rolled_until, since, first_minute, rolled_until),
    ):
        counts[region] = WindowCounts(failed=int(failed), polls=int(polls))
    return counts


def health_counts(store: Store, regions: Sequence[str], since: float) -> dict[str, WindowCounts]:
    return store.window_counts(regions, since)


DESIGNS: dict[str, Reader] = {"raw": raw_counts, "rollups + tail": rollup_tail_counts, "counts": health_counts}


def seeded(folder: Path, name: str, regions: int, days: float, interval: float, now: float) -> tuple[Store, list[str]]:
    settings = write_settings(folder, name, fleet_block(regions), poll_interval_seconds=interval,
                              timeout_seconds=min(5.0, interval / 2))
    store = Store(settings.database_path)
    started = time.perf_counter()
    seed_history(store, settings, days=days, now=now, interval_seconds=interval, rng_seed=1)
    maintain(store, settings, now)  # rollups caught up, as a running scheduler keeps them
    print(f"  seeded {name}: {regions} regions x {days:g} d at {interval:g} s"
          f" in {time.perf_counter() - started:.0f} s", flush=True)
    return store, settings.regions


def status_read(reader: Reader, store: Store, regions: Sequence[str], now: float) -> None:
    """What one status read asks: both windows, every region."""
    reader(store, regions, now - SHORT_WINDOW_SECONDS)
    reader(store, regions, now - LONG_WINDOW_SECONDS)


def measure(store: Store, regions: Sequence[str], now: float, reads: int) -> dict[str, tuple[float, float]]:
    """Median and p95 ms of a status read's window counts per design, reads interleaved."""
    for since in (now - SHORT_WINDOW_SECONDS, now - LONG_WINDOW_SECONDS):
        answers = {name: reader(store, regions, since) for name, reader in DESIGNS.items()}
        assert answers["raw"] == answers["rollups + tail"] == answers["counts"], "the designs disagree"
        assert sum(c.polls for c in answers["raw"].values()) > 0, "no polls in the window"
    timings: dict[str, list[float]] = {name: [] for name in DESIGNS}
    for _ in range(reads):
        for name, reader in DESIGNS.items():
            started = time.perf_counter()
            status_read(reader, store, regions, now)
            timings[name].append((time.perf_counter() - started) * 1000)
    return {name: (statistics.median(t), statistics.quantiles(t, n=20)[18]) for name, t in timings.items()}


def write_cost(store: Store, regions: Sequence[str], now: float, cycles: int) -> tuple[float, float]:
    """Median ms to insert one cycle's samples: raw rows only, then with the counts' upsert."""
    def cycle(at: float) -> list[Sample]:
        return [Sample(at, r, endpoint, True, 200, 40.0, "") for r in regions for endpoint in (HEALTH, DEPLOYMENT)]

    raw_only, with_counts = [], []
    for i in range(cycles):
        at = now + 15 * (i + 1)
        samples = cycle(at)
        started = time.perf_counter()
        with store.transaction():
            store.conn.executemany(
                "insert into samples (ts, region, endpoint, ok, http_status, latency_ms, reason,"
                " reported_error_rate) values (?, ?, ?, ?, ?, ?, ?, ?)",
                [(s.ts, s.region, s.endpoint, int(s.ok), s.http_status, s.latency_ms, None, None) for s in samples])
        raw_only.append((time.perf_counter() - started) * 1000)
        samples = cycle(at + 7.5)
        started = time.perf_counter()
        with store.transaction():
            store.insert_samples(samples)
        with_counts.append((time.perf_counter() - started) * 1000)
    return statistics.median(raw_only), statistics.median(with_counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=200, help="status reads per design (default 200)")
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--regions", type=int, default=200)
    args = parser.parse_args()
    now = math.floor(time.time())
    fleets = [(f"{args.regions}x{args.days:g}d@15s", args.regions, args.days, 15.0), ("20x1h@1s", 20, 1 / 24, 1.0)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-window-counts-") as tmp:
        for name, regions, days, interval in fleets:
            store, names = seeded(Path(tmp), name, regions, days, interval, now)
            figures = measure(store, names, now, args.reads)
            write = write_cost(store, names, now, 30)
            rows.append((name, figures, write))
            store.close()
    print(f"\nOne status read's window counts (5 min and 1 h, every region), ms, {args.reads} reads each:")
    print(f"{'fleet':<16}" + "".join(f"{name:>24}" for name in DESIGNS))
    for name, figures, _ in rows:
        print(f"{name:<16}" + "".join(f"{f'{p50:.2f} / {p95:.2f}':>24}" for p50, p95 in figures.values()))
    print("  (median / p95)")
    print("\nOne cycle's samples written (health + deployment, every region), median ms:")
    for name, _, (raw_only, with_counts) in rows:
        print(f"{name:<16}  samples only {raw_only:6.2f}   with counts {with_counts:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
