"""Benchmark page reads (issue 3): 20 regions with 30 days of history at a 15 s interval.

Prints, side by side in one run, the median and p95 of real HTTP requests to the app on waitress
(loopback, one keep-alive `httpx.Client`, one request at a time) for `GET /api/v1/status`, the
overview fragment and region-007's 24 h and 30 d series (error rate and latency), against two
copies of the same app: one on the seeded history, one on an empty history (one poll per region),
so the cost of history shows. Requests alternate between the two apps, so a noisy neighbour on
the machine slows both alike. Every response must be a 200, and the seeded series must hold points.

    python bench/pages.py [--db PATH] [--reseed] [--requests 200] [--warmup 5] [--profile NAME]

The history is seeded by `dashboard.demo.seed.seed_history` into `--db` (default: under the system's
temporary folder), then the scheduler's history maintenance (`history.maintenance_step`: rollups,
retention, size bound) runs until it has caught up, so the database is in the state 30 days of
running leave it in. Later runs reuse it when it holds the same history (a file beside it records
what was seeded): topped up to the present, as a running poller would have kept it, and maintained
again; seeded afresh once top-ups add up to more than two days, or with `--reseed`.
`--profile NAME` (e.g. `series-30d-latency`) also runs cProfile over that request in-process and
prints where the time goes.
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.config import Settings, load_settings
from dashboard.demo.seed import seed_history
from dashboard.history import maintenance_step
from dashboard.store import Store
from dashboard.web import create_app
from dashboard.web.server import start_server, stop_server

REGIONS = [f"region-{i:03d}" for i in range(20)]
DAYS = 30
INTERVAL_SECONDS = 15.0
RNG_SEED = 0
SERIES_REGION = "region-007"
DEFAULT_DB = Path(tempfile.gettempdir()) / "dashboard-bench" / "pages-20x30d.db"
# Past this much topping up, seed afresh: the database should hold about `DAYS` of history.
MAX_TOP_UP_DAYS = 2.0
WSGI_THREADS = 4


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    target_ms: float
    headers: dict[str, str] | None = None
    series: bool = False


ENDPOINTS = [
    Endpoint("status", "/api/v1/status", 50),
    Endpoint("overview-fragment", "/fragments/overview", 50, {"HX-Request": "true"}),
    Endpoint("series-24h-error-rate", f"/api/v1/regions/{SERIES_REGION}/series?metric=error_rate&window=24h", 100,
             series=True),
    Endpoint("series-24h-latency", f"/api/v1/regions/{SERIES_REGION}/series?metric=latency&window=24h", 100,
             series=True),
    Endpoint("series-30d-error-rate", f"/api/v1/regions/{SERIES_REGION}/series?metric=error_rate&window=30d", 200,
             series=True),
    Endpoint("series-30d-latency", f"/api/v1/regions/{SERIES_REGION}/series?metric=latency&window=30d", 200,
             series=True),
    Endpoint("series-1y-error-rate", f"/api/v1/regions/{SERIES_REGION}/series?metric=error_rate&window=1y", 200,
             series=True),
    Endpoint("series-1y-latency", f"/api/v1/regions/{SERIES_REGION}/series?metric=latency&window=1y", 200,
             series=True),
]


def write_settings(folder: Path, name: str, database: Path) -> Settings:
    """Settings for the 20-region fleet through a real config file and the real loader."""
    deployment = {
        "region": REGIONS[0],
        "primary_region": REGIONS[0],
        "regions": REGIONS,
        "region_base_urls": {region: f"http://127.0.0.1:9/{region}" for region in REGIONS},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"deployment": deployment, "dashboard": {
        "database": str(database), "poll_interval_seconds": INTERVAL_SECONDS,
        "routing_file": str(folder / f"{name}-routing.json")}}), encoding="utf-8")
    return load_settings(str(path), environ={})


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _progress(label: str):
    """A progress line: rewritten in place on a terminal, every tenth of the way otherwise."""
    started = time.perf_counter()
    tty = sys.stdout.isatty()
    shown = [0]

    def report(done: int, total: int) -> None:
        line = f"  {label}: {done}/{total} cycles, {time.perf_counter() - started:.0f} s"
        if tty:
            print("\r" + line, end="\n" if done == total else "", flush=True)
        elif done * 10 // total > shown[0] or done == total:
            shown[0] = done * 10 // total
            print(line, flush=True)

    return report


def maintain(store: Store, settings: Settings) -> str:
    """Run the scheduler's history maintenance (rollups, retention, size bound) until it has caught up."""
    started = time.perf_counter()
    rolled = pruned = dropped = rounds = 0
    while True:
        result = maintenance_step(store, settings)
        rounds += 1
        round_pruned = sum(dataclasses.astuple(result["pruned"]))
        rolled, pruned, dropped = rolled + result["rolled_up"], pruned + round_pruned, dropped + result["size_dropped"]
        if not (result["rolled_up"] or round_pruned or result["size_dropped"]):
            break
    return (f"maintenance: {rolled:,} rollup rows, {pruned:,} rows pruned, {dropped:,} dropped for size, "
            f"in {rounds} rounds, {time.perf_counter() - started:.1f} s")


def backfill_year(db: Path, regions: list[str]) -> str:
    """Hourly rollups for the 335 days before the seeded 30, as a dashboard running for a year has.

    Seeding a year of raw samples would take an hour and be pruned to rollups anyway; the 1 y
    window reads only rollup_hour, so its rows are what the figure depends on. Idempotent."""
    import random

    store = Store(db)
    try:
        # Anchored on the clock, not on the oldest row, so a rerun rewrites the same hours.
        oldest = int((time.time() - DAYS * 86400) // 3600 * 3600)
        first = oldest - (365 - DAYS) * 86400
        rng = random.Random(RNG_SEED)
        rows = []
        for region in regions:
            base = rng.uniform(20, 150)
            for hour in range(first, oldest, 3600):
                polls = 240
                failures = 0 if rng.random() > 0.01 else rng.randint(1, 240)
                p50 = base * rng.uniform(0.8, 1.2)
                rows.append((region, hour, polls, failures, p50, p50 * 2.2, p50 * 4, rng.uniform(0, 0.02), polls))
        with store.transaction():
            store.put_rollups("rollup_hour", rows)
        return f"backfilled {len(rows):,} hourly rollups so the 1 y window spans a year"
    finally:
        store.close()


def _count_samples(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("select count(*) from samples").fetchone()[0]
    finally:
        conn.close()


def prepare_history(folder: Path, db: Path, reseed: bool) -> tuple[Settings, list[str]]:
    """The seeded database, reused when it holds this history; returns its settings and what was done.

    After seeding or topping up, the scheduler's maintenance runs until it has caught up, so the
    database is in the state a dashboard that has run for `DAYS` days is in."""
    meta_path = Path(str(db) + ".seed.json")
    wanted = {"regions": len(REGIONS), "days": DAYS, "interval_seconds": INTERVAL_SECONDS, "rng_seed": RNG_SEED}
    settings = write_settings(folder, "history", db)
    meta = None
    if not reseed and db.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = None
    if meta is not None and {k: meta.get(k) for k in wanted} == wanted:
        count = _count_samples(db)
        now = time.time()
        gap = now - meta["now"]
        topped_up = meta.get("topped_up_days", 0) + gap / 86400
        if count == meta["samples"] and topped_up <= MAX_TOP_UP_DAYS:
            seeded = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta["seeded_at"]))
            notes = [f"reused {db} (seeded {seeded}, {meta['seed_samples']:,} samples in {meta['seed_seconds']:.1f} s)"]
            if gap >= 2 * INTERVAL_SECONDS:
                store = Store(db)
                try:
                    # The first new poll one interval after the last seeded one, as a poller would go on.
                    summary = seed_history(store, settings, days=(gap - INTERVAL_SECONDS) / 86400, now=now,
                                           interval_seconds=INTERVAL_SECONDS, rng_seed=int(meta["now"]),
                                           progress=_progress("topping up"))
                    notes.append(f"topped up {gap / 3600:.1f} h to the present: {summary.samples:,} samples in "
                                 f"{summary.seconds:.1f} s")
                    notes.append(maintain(store, settings))
                finally:
                    store.close()
                meta.update(now=now, samples=_count_samples(db), topped_up_days=topped_up)
                meta_path.write_text(json.dumps(meta, indent=2))
            return settings, notes
        why = "its row count differs" if count != meta["samples"] else f"it was topped up {topped_up:.1f} days"
        print(f"  {db} no longer holds the right history ({why}): seeding afresh")
    _remove_database(db)
    meta_path.unlink(missing_ok=True)
    store = Store(db)
    now = time.time()
    try:
        summary = seed_history(store, settings, days=DAYS, interval_seconds=INTERVAL_SECONDS, now=now,
                               rng_seed=RNG_SEED, progress=_progress("seeding"))
        rate = summary.samples / summary.seconds
        notes = [f"seeded {db}: {summary.samples:,} samples, {summary.events} events in {summary.seconds:.1f} s "
                 f"({rate:,.0f} samples/s)", maintain(store, settings)]
    finally:
        store.close()
    meta_path.write_text(json.dumps({**wanted, "now": now, "samples": _count_samples(db), "seeded_at": now,
                                     "seed_samples": summary.samples, "seed_seconds": summary.seconds,
                                     "topped_up_days": 0}, indent=2))
    return settings, notes


def prepare_baseline(folder: Path) -> Settings:
    """The same fleet with an empty history: one poll per region (maintained like the history)."""
    db = folder / "baseline.db"
    settings = write_settings(folder, "baseline", db)
    store = Store(db)
    try:
        seed_history(store, settings, days=0, interval_seconds=INTERVAL_SECONDS, rng_seed=RNG_SEED)
        maintain(store, settings)
    finally:
        store.close()
    return settings


class Served:
    """The real app on waitress in a background thread, and a keep-alive client for it."""

    def __init__(self, settings: Settings) -> None:
        self.store = Store(settings.database_path)
        self.app = create_app(settings, store=self.store)
        self.server = start_server(self.app, "127.0.0.1", 0, threads=WSGI_THREADS)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.server.effective_port}", timeout=60)
        self.shapes: dict[str, str] = {}  # per series endpoint: how many points, from which table

    def get(self, endpoint: Endpoint, check_points: bool) -> float:
        """Milliseconds for one request, from sending it to its whole body read."""
        t0 = time.perf_counter()
        response = self.client.get(endpoint.path, headers=endpoint.headers)
        elapsed = (time.perf_counter() - t0) * 1000
        if response.status_code != 200:
            raise SystemExit(f"GET {endpoint.path}: {response.status_code} {response.text[:300]}")
        if check_points and endpoint.series:
            body = response.json()
            if not body["points"]:
                raise SystemExit(f"GET {endpoint.path}: no points in a series over the seeded history")
            source = f" from {body['source']}" if body.get("source") else ""
            self.shapes[endpoint.name] = f"{len(body['points'])} points of {body['bucket_seconds']} s{source}"
        return elapsed

    def close(self) -> None:
        self.client.close()
        # The product's own stop: from the server's loop, so no worker pulls a closed trigger.
        stop_server(self.server)
        self.store.close()


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[94]


def measure(history: Served, baseline: Served, requests: int,
            warmup: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per endpoint: (history timings, baseline timings), requests alternating between the two apps."""
    results = {}
    for endpoint in ENDPOINTS:
        for _ in range(warmup):
            history.get(endpoint, check_points=True)
            baseline.get(endpoint, check_points=False)
        timed_history, timed_baseline = [], []
        for _ in range(requests):
            timed_history.append(history.get(endpoint, check_points=True))
            timed_baseline.append(baseline.get(endpoint, check_points=False))
        results[endpoint.name] = (timed_history, timed_baseline)
    return results


def profile(settings: Settings, endpoint: Endpoint, requests: int) -> str:
    """cProfile of `requests` of one endpoint through the app in-process (no HTTP): the top of cumulative time."""
    store = Store(settings.database_path)
    try:
        client = create_app(settings, store=store).test_client()
        client.get(endpoint.path, headers=endpoint.headers)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests):
            response = client.get(endpoint.path, headers=endpoint.headers)
            if response.status_code != 200:
                raise SystemExit(f"GET {endpoint.path} in-process: {response.status_code}")
        profiler.disable()
    finally:
        store.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def database_report(path: Path) -> list[str]:
    size = sum(Path(str(path) + suffix).stat().st_size for suffix in ("", "-wal", "-shm")
               if Path(str(path) + suffix).exists())
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [name for (name,) in conn.execute("select name from sqlite_master where type = 'table'"
                                                   " and name not like 'sqlite_%' order by name")]
        counts = {name: conn.execute(f'select count(*) from "{name}"').fetchone()[0] for name in tables}
        first, last = conn.execute("select min(ts), max(ts) from samples").fetchone()
        per_region = [n for (n,) in conn.execute("select count(*) from samples group by region")]
    finally:
        conn.close()
    lines = [f"database {path}: {size / 1e6:,.0f} MB (with -wal and -shm)"]
    if first is not None:
        lines.append(f"  samples from {time.strftime('%Y-%m-%d %H:%M', time.localtime(first))} to "
                     f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(last))} ({(last - first) / 86400:.1f} days)")
    lines.append("  rows: " + ", ".join(f"{name} {count:,}" for name, count in counts.items() if count))
    if per_region:
        lines.append(f"  raw samples per region: {min(per_region):,} to {max(per_region):,}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"the seeded database (default {DEFAULT_DB})")
    parser.add_argument("--reseed", action="store_true", help="seed afresh even when --db holds the history")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per endpoint and app")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per endpoint and app first")
    parser.add_argument("--profile", choices=[e.name for e in ENDPOINTS], action="append", default=[],
                        help="also profile this endpoint in-process on the history (repeatable)")
    args = parser.parse_args()
    if args.requests < 2:
        parser.error("--requests must be at least 2")

    db = args.db.resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pages-bench-") as tmp:
        folder = Path(tmp)
        history_settings, notes = prepare_history(folder, db, args.reseed)
        notes.append(backfill_year(db, REGIONS))
        for note in notes:
            print(note)
        baseline_settings = prepare_baseline(folder)
        history, baseline = Served(history_settings), Served(baseline_settings)
        try:
            started = time.perf_counter()
            results = measure(history, baseline, args.requests, args.warmup)
            took = time.perf_counter() - started
        finally:
            history.close()
            baseline.close()
        profiles = [(name, profile(history_settings, next(e for e in ENDPOINTS if e.name == name), 20))
                    for name in args.profile]
        load_after = os.getloadavg()

        print()
        print(f"pages: {len(REGIONS)} regions, {DAYS} days at {INTERVAL_SECONDS:g} s; series of {SERIES_REGION}; "
              f"{args.requests} requests per endpoint and app after {args.warmup} warm-up, one at a time, "
              f"alternating apps; waitress with {WSGI_THREADS} threads; {took:.0f} s")
        print(f"{'endpoint':<24} {'target p95':>10} | {'history median':>14} {'p95':>9} | "
              f"{'empty median':>12} {'p95':>9} | met?")
        missed = []
        for endpoint in ENDPOINTS:
            timed_history, timed_baseline = results[endpoint.name]
            met = p95(timed_history) <= endpoint.target_ms
            if not met:
                missed.append(endpoint.name)
            print(f"{endpoint.name:<24} {endpoint.target_ms:>7.0f} ms | {statistics.median(timed_history):>11.1f} ms "
                  f"{p95(timed_history):>6.1f} ms | {statistics.median(timed_baseline):>9.1f} ms "
                  f"{p95(timed_baseline):>6.1f} ms | {'yes' if met else 'NO'}")
        print(f"series of {SERIES_REGION} over the history: "
              + "; ".join(f"{name.removeprefix('series-')} {shape}" for name, shape in history.shapes.items()))
        print()
        for line in database_report(db):
            print(line)
        print(f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before and {load_after[0]:.2f} "
              f"after; Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
        for name, text in profiles:
            print(f"\nprofile of 20 requests of {name}, in-process (no HTTP):")
            print(text)
    print("targets: " + ("all met" if not missed else "MISSED: " + ", ".join(missed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
