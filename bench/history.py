"""Benchmark history (issue 5): growth and size, the overview under load, the poll cycle on 30 days.

Prints each part as a table beside its baseline, in one run:

- growth: a few regions seeded for `--growth-days` days at the default 15 s interval, one day per
  transaction, with the scheduler's `history.maintenance_step` run until idle after every day (as if
  the dashboard had run all along). Live bytes (`Store.used_bytes`) after every day give the growth
  per region per day, before and after the minute rollups reach their 30 days; `dbstat` gives the
  bytes per row of each table, from which the steady state of the default retention (48 h raw,
  30 d minute, 400 d hour rollups) is projected. Baseline: the same history kept raw, never pruned.
  A third row runs 20 regions with `maintenance_step` exactly as the scheduler calls it.
- concurrency: a `SimulatedFleet(20, layout="ports")` in its own process, a `Runtime` (web app on
  waitress, poller every 5 s, maintenance, as `dashboard serve` runs them) in this process on 30
  days of history, and `--clients` threads in a third process each GETting `/fragments/overview`
  (`HX-Request: true`) every `--period` s for `--duration` s. Page latency as the clients see it
  (and as the app sees it, from a WSGI wrapper), and how late each poll cycle started against the
  scheduler's 5 s grid. Baselines: the same clients without a poller, and the poller with one client
  (a request every `--period`/4 s).
- cycle: bench/poll_cycle.py's 200-region cycle (each region answering after 100 ms), on an empty
  database and on one holding 30 days of history for the 200 regions, cycles alternating.

    python bench/history.py [--part growth|concurrency|cycle] [--keep DIR] ...

30 days of 200 regions is 69 million raw samples, more than the default retention ever keeps, so
parts concurrency and cycle seed the state retention leaves behind instead: 48 h of raw samples
through `seed_history` (15 s interval), maintained by `history.maintenance_step`, and before that
minute and hour rollups back to 30 days, written through `Store.put_rollups` as copies of the
rollups of those 48 h, shifted back two days at a time. The rollups are never read by a poll
cycle or the overview; they give the database its size. `--full-seed` seeds the concurrency
part's 30 days through `seed_history` instead, with maintenance after every day (about 3 minutes).
"""
from __future__ import annotations

import argparse
import http.client
import math
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from poll_cycle import _timed, serve_fleet

from dashboard import history
from dashboard.config import Settings, load_settings
from dashboard.demo.seed import seed_history
from dashboard.poller import CycleReport, Poller
from dashboard.store import Store

DAY = 86400.0
HISTORY_INTERVAL = 15.0  # the default poll interval, at which every history here is seeded
MB = 1e6
OVERVIEW = "/fragments/overview"


# -- shared ----------------------------------------------------------------------------------------

def write_settings(folder: Path, name: str, deployment: dict, **dashboard) -> Settings:
    """Settings through a real config file and the real loader."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"deployment": deployment, "dashboard": {
        "database": str(folder / f"{name}.db"), "routing_file": str(folder / f"{name}-routing.json"),
        **dashboard}}), encoding="utf-8")
    return load_settings(str(path), environ={})


def fleet_block(regions: int) -> dict:
    """A history-only fleet (nothing answers at these addresses)."""
    names = [f"region-{i:03d}" for i in range(regions)]
    return {"region": names[0], "primary_region": names[0], "regions": names,
            "region_base_urls": {r: f"http://127.0.0.1:9/{r}" for r in names}}


def maintain(store: Store, settings: Settings, now: float) -> None:
    """The scheduler's maintenance round, repeated until it has nothing left to do at `now`."""
    while True:
        result = history.maintenance_step(store, settings, now)
        pruned = result["pruned"]
        if not (result["rolled_up"] or pruned.samples or pruned.minute_rollups or pruned.hour_rollups
                or result["size_dropped"]):
            return


def seed_by_day(store: Store, settings: Settings, days: float, now: float, after_day=None):
    """`seed_history` one day per transaction; `after_day(t, day)` runs after each, t its last poll."""
    per_day = round(DAY / HISTORY_INTERVAL)

    def progress(done: int, total: int) -> None:
        if after_day is not None:
            after_day(now - (total - done) * HISTORY_INTERVAL, done / per_day)

    return seed_history(store, settings, days=days, now=now, interval_seconds=HISTORY_INTERVAL,
                        batch_cycles=per_day, progress=progress)


def seed_compact(store: Store, settings: Settings, days: float, now: float) -> str:
    """The state `days` of polling leaves under the default retention, without writing `days` of raw.

    48 h of raw samples through `seed_history`, rolled up by `history.maintenance_step`; then the minute
    and hour rollups of those 48 h copied back, two days at a time, to `days` ago."""
    raw_hours = settings.dashboard.raw_retention_hours
    began = time.perf_counter()
    summary = seed_history(store, settings, days=raw_hours * 3600 / DAY, now=now, interval_seconds=HISTORY_INTERVAL)
    seeded = time.perf_counter() - began
    maintain(store, settings, now)
    rolled = time.perf_counter() - began - seeded
    span = int(raw_hours * 3600)  # a whole number of hours, so copied buckets stay aligned
    copied = 0
    for table, size in history.TABLES.items():
        oldest = int(math.floor((now - days * DAY) / size) * size)
        for region in settings.regions:
            rows = store.rollup_rows(table, region, 0, 2**62)
            if not rows:
                continue
            first = rows[0][0]
            batch = []
            for k in range(1, math.ceil((first - oldest) / span) + 1):
                shift = k * span
                batch.extend((region, bucket - shift, *rest) for bucket, *rest in rows
                             if oldest <= bucket - shift < first)
            with store.transaction():
                store.put_rollups(table, batch)
            copied += len(batch)
    return (f"seeded {summary.samples:,} raw samples ({raw_hours:g} h) in {seeded:.0f} s, rolled up in "
            f"{rolled:.0f} s, {copied:,} older rollup rows copied back to {days:g} days in "
            f"{time.perf_counter() - began - seeded - rolled:.0f} s")


def checkpoint(path: Path) -> None:
    """Fold the WAL into the database file, so every run starts from the same place."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("pragma wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def table_rows(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {name: conn.execute(f'select count(*) from "{name}"').fetchone()[0]
                for name in ("samples", "rollup_minute", "rollup_hour", "events")}
    finally:
        conn.close()


def page_bytes(path: Path) -> dict[str, int]:
    """Bytes of pages per table and index, from SQLite's dbstat virtual table."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("select name, sum(pgsize) from dbstat group by name").fetchall())
    finally:
        conn.close()


def with_indexes(pages: dict[str, int], table: str) -> int:
    """Bytes of a table's pages and its indexes' (named `<table>_...` in this schema)."""
    return sum(size for name, size in pages.items() if name == table or name.startswith(table + "_"))


def quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def fmt_bytes(n: float) -> str:
    if abs(n) >= 1e6:
        return f"{n / MB:,.2f} MB"
    return f"{n / 1e3:,.1f} kB"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for k, row in enumerate([header, *rows]):
        print("  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in
                                enumerate(zip(row, widths, strict=True))))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


# -- part 1: growth and size -------------------------------------------------------------------------

@dataclass
class DayRecord:
    day: float
    used: int
    rows: dict[str, int] = field(default_factory=dict)


def grow(folder: Path, name: str, regions: int, days: float, now: float,
         maintained: bool) -> tuple[Settings, list[DayRecord]]:
    settings = write_settings(folder, name, fleet_block(regions))
    store = Store(settings.database_path)
    records: list[DayRecord] = []

    def after_day(t: float, day: float) -> None:
        if maintained:
            maintain(store, settings, t)
        records.append(DayRecord(day, store.used_bytes()))

    try:
        began = time.perf_counter()
        summary = seed_by_day(store, settings, days, now, after_day)
        print(f"  {name}: {summary.samples:,} samples, {summary.events} events, {regions} regions x {days:g} days"
              f"{' with maintenance after every day' if maintained else ', never pruned'}: "
              f"{time.perf_counter() - began:.0f} s")
    finally:
        store.close()
    checkpoint(settings.database_path)
    return settings, records


def per_region_day(records: list[DayRecord], regions: int, first: float, last: float) -> float:
    """Mean growth of live bytes per region per day over whole days (first, last]."""
    by_day = {round(r.day, 6): r.used for r in records}
    return (by_day[last] - by_day[first]) / (last - first) / regions


def part_growth(args, folder: Path) -> None:
    regions, days = args.growth_regions, float(args.growth_days)
    if days < 33:
        raise SystemExit("--growth-days must be at least 33 (minute rollups are kept 30 days)")
    now = time.time()
    print(f"growth: {regions} regions, {days:g} days at a {HISTORY_INTERVAL:g} s interval")
    kept, kept_days = grow(folder, "growth-kept", regions, days, now, maintained=True)
    raw, raw_days = grow(folder, "growth-raw", regions, days, now, maintained=False)
    # The scheduler's own budget on a fleet past seven regions (docs/performance.md, issue 3).
    big_regions, big_days = 20, 4.0
    big, big_records = grow(folder, "growth-20", big_regions, big_days, now, maintained=True)

    cfg = kept.dashboard
    rows_end = table_rows(kept.database_path)
    pages = page_bytes(kept.database_path)
    table_bytes = {name: with_indexes(pages, name) for name in rows_end}
    per_row = {name: table_bytes[name] / max(rows_end[name], 1) for name in rows_end}
    raw_pages = page_bytes(raw.database_path)
    raw_rows = table_rows(raw.database_path)
    raw_per_row = with_indexes(raw_pages, "samples") / raw_rows["samples"]
    polls_per_day = DAY / HISTORY_INTERVAL
    events_per_region_day = rows_end["events"] / regions / days
    steady_rows = {
        "samples": 2 * polls_per_day * cfg.raw_retention_hours / 24,
        "rollup_minute": cfg.minute_rollup_retention_days * 1440,
        "rollup_hour": cfg.hour_rollup_retention_days * 24,
        "events": events_per_region_day * cfg.hour_rollup_retention_days,
    }
    steady = {name: steady_rows[name] * per_row[name] for name in steady_rows}
    steady_total = sum(steady.values())
    fixed = sum(pages.values()) - sum(table_bytes.values())

    last = kept_days[-1].day
    filling = per_region_day(kept_days, regions, 3.0, 30.0)
    steady_growth = per_region_day(kept_days, regions, 32.0, math.floor(last))
    raw_growth = per_region_day(raw_days, regions, 3.0, math.floor(last))
    big_growth = per_region_day(big_records, big_regions, 3.0, 4.0)
    conn = sqlite3.connect(f"file:{big.database_path}?mode=ro", uri=True)
    try:
        oldest = conn.execute("select region, min(ts) from samples group by region").fetchall()
    finally:
        conn.close()
    unpruned = sum(1 for _, ts in oldest if ts < now - (cfg.raw_retention_hours + 1) * 3600)

    print()
    print(f"growth of live bytes (Store.used_bytes) per region per day, 15 s interval ({regions} regions "
          f"unless said)")
    header = ["history", "per region per day", "target"]
    table = [
        ["48 h raw + rollups, days 3-30 (minute rollups filling)", fmt_bytes(filling), "<= 1 MB"],
        [f"48 h raw + rollups, days 32-{math.floor(last)} (raw and minute steady)", fmt_bytes(steady_growth),
         "<= 1 MB"],
        ["after 30 d, computed: 24 hour rollups + events a day, at their bytes per row",
         fmt_bytes(24 * per_row["rollup_hour"] + events_per_region_day * per_row["events"]), "<= 1 MB"],
        ["baseline: raw only, never pruned, days 3-" f"{math.floor(last)}", fmt_bytes(raw_growth), ""],
        [f"20 regions, maintenance_step as scheduled, day 4 ({unpruned} of 20 regions never pruned)",
         fmt_bytes(big_growth), "<= 1 MB"],
    ]
    print_table(header, table)

    print()
    print(f"bytes per row, from dbstat after {last:g} days ({regions} regions)")
    header2 = ["table (with its indexes)", "rows", "bytes", "bytes per row"]
    table2 = [
        *([label, f"{rows_end[name]:,}", fmt_bytes(table_bytes[name]), f"{per_row[name]:.1f}"] for name, label in (
            ("samples", "samples (48 h raw)"), ("rollup_minute", "rollup_minute"), ("rollup_hour", "rollup_hour"),
            ("events", "events"))),
        ["baseline: samples, raw only", f"{raw_rows['samples']:,}", fmt_bytes(with_indexes(raw_pages, "samples")),
         f"{raw_per_row:.1f}"],
    ]
    print_table(header2, table2)

    print()
    print("size per region with the default retention (48 h raw, 30 d minute, 400 d hour rollups)")
    header3 = ["part", "rows per region", "bytes per region"]
    table3 = [
        [f"raw samples, {cfg.raw_retention_hours:g} h", f"{steady_rows['samples']:,.0f}", fmt_bytes(steady['samples'])],
        [f"minute rollups, {cfg.minute_rollup_retention_days:g} d", f"{steady_rows['rollup_minute']:,.0f}",
         fmt_bytes(steady['rollup_minute'])],
        [f"hour rollups, {cfg.hour_rollup_retention_days:g} d", f"{steady_rows['rollup_hour']:,.0f}",
         fmt_bytes(steady['rollup_hour'])],
        [f"events after {cfg.hour_rollup_retention_days:g} d (never pruned)", f"{steady_rows['events']:,.0f}",
         fmt_bytes(steady['events'])],
        ["steady state, projected (target <= 10 MB)", "", fmt_bytes(steady_total)],
        [f"measured after {last:g} days", "", fmt_bytes(kept_days[-1].used / regions)],
        [f"baseline raw only: measured after {last:g} days", "", fmt_bytes(raw_days[-1].used / regions)],
        [f"baseline raw only: after {cfg.hour_rollup_retention_days:g} days, projected", "",
         fmt_bytes(raw_growth * cfg.hour_rollup_retention_days)],
    ]
    print_table(header3, table3)
    print(f"  plus {fmt_bytes(fixed)} per database (schema, regions, state); file after {last:g} days: "
          f"{fmt_bytes(os.path.getsize(kept.database_path))} (live {fmt_bytes(kept_days[-1].used)})")


# -- part 2: concurrency ----------------------------------------------------------------------------

def _run_clients(port: int, clients: int, period: float, duration: float, conn) -> None:
    """`clients` threads, each GETting the overview fragment every `period` s, on a fixed grid."""
    conn.send("ready")
    start_at = conn.recv()
    results: list[tuple[float, float, int, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        mine = []
        http_conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        due = start_at + i * period / clients
        try:
            while due < start_at + duration:
                pause = due - time.time()
                if pause > 0:
                    time.sleep(pause)
                sent, t0 = time.time(), time.perf_counter()
                http_conn.request("GET", OVERVIEW, headers={"HX-Request": "true"})
                response = http_conn.getresponse()
                body = response.read()
                mine.append((sent, time.perf_counter() - t0, response.status, len(body)))
                due += period
        except Exception as exc:  # noqa: BLE001 - reported, not raised, so the run ends cleanly
            with lock:
                errors.append(f"client {i}: {exc!r}")
        finally:
            http_conn.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn.send((results, errors))


@dataclass
class LoadRun:
    name: str
    clients: int
    latencies: list[float] = field(default_factory=list)  # client side, seconds
    server: list[float] = field(default_factory=list)  # inside the WSGI app, seconds
    errors: list[str] = field(default_factory=list)
    cycles: list[CycleReport] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    skipped: int = 0
    maintenance: list[float] = field(default_factory=list)
    body_bytes: int = 0


class _TimedApp:
    """WSGI wrapper noting how long the app takes for each overview request."""

    def __init__(self, app, sink: list[float]) -> None:
        self.app, self.sink = app, sink

    def __call__(self, environ, start_response):
        t0 = time.perf_counter()
        try:
            return self.app(environ, start_response)
        finally:
            if environ.get("PATH_INFO") == OVERVIEW:
                self.sink.append(time.perf_counter() - t0)


def load_run(settings: Settings, name: str, clients: int, period: float, duration: float,
             poller: bool) -> LoadRun:
    """One run: the Runtime (with or without its poller) and a client process for `duration` s."""
    from dashboard.runtime import Runtime
    from dashboard.web.server import start_server

    run = LoadRun(name, clients)
    cycles: list[CycleReport] = []
    runtime = Runtime(settings, on_cycle=cycles.append)
    runtime.app.wsgi_app = _TimedApp(runtime.app.wsgi_app, run.server)
    maintenance = runtime.service.run_maintenance

    def timed_maintenance():
        t0 = time.perf_counter()
        try:
            return maintenance()
        finally:
            run.maintenance.append(time.perf_counter() - t0)

    runtime.service.run_maintenance = timed_maintenance  # the scheduler calls this attribute
    if poller:
        runtime.start("127.0.0.1", 0)
    else:
        runtime.server = start_server(runtime.app, "127.0.0.1", 0)
    port = runtime.server.effective_port
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_run_clients, args=(port, clients, period, duration, child), daemon=True)
    process.start()
    try:
        if poller:
            deadline = time.time() + 30
            while not cycles and time.time() < deadline:
                time.sleep(0.1)
            job = runtime.service._scheduler.get_job("poll-cycle")
            interval = settings.dashboard.poll_interval_seconds
            anchor = job.trigger.start_date.timestamp()
        parent.recv()  # the client process has started
        time.sleep(1.0)
        start_at = time.time() + 0.5
        parent.send(start_at)
        results, errors = parent.recv()
        end_at = time.time()
        process.join(timeout=10)
    finally:
        runtime.stop()
    run.errors = errors + [f"HTTP {status}" for *_, status, _ in results if status != 200]
    run.latencies = [latency for _, latency, _, _ in results]
    run.body_bytes = int(statistics.median(size for *_, size in results)) if results else 0
    if poller:
        window = [c for c in cycles if start_at <= c.started_at <= end_at]
        run.cycles = window
        for c in window:
            k = math.floor((c.started_at - anchor) / interval + 1e-9)
            run.lateness.append(c.started_at - (anchor + k * interval))
        slots = math.floor((end_at - anchor) / interval) - math.ceil((start_at - anchor) / interval) + 1
        run.skipped = max(0, slots - len(window))
    return run


def part_concurrency(args, folder: Path) -> None:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    fleet = ctx.Process(target=serve_fleet, args=(20, args.fleet_delay, child), daemon=True)
    fleet.start()
    block = parent.recv()
    try:
        print(f"concurrency: 20 regions on a SimulatedFleet (own process, answering after "
              f"{args.fleet_delay * 1000:.0f} ms), poll interval 5 s, {args.clients} clients every {args.period:g} s")
        settings = write_settings(folder, "load", block, poll_interval_seconds=5, timeout_seconds=4)
        seed_settings = write_settings(folder, "load-seed", block, database=str(settings.database_path),
                                       poll_interval_seconds=HISTORY_INTERVAL)
        store = Store(settings.database_path)
        now = time.time()
        try:
            if args.full_seed:
                began = time.perf_counter()
                summary = seed_by_day(store, seed_settings, 30, now,
                                      lambda t, day: maintain(store, seed_settings, t))
                print(f"  seeded 30 days through seed_history ({summary.samples:,} samples) with maintenance "
                      f"after every day: {time.perf_counter() - began:.0f} s")
            else:
                print("  " + seed_compact(store, seed_settings, 30, now))
            used = store.used_bytes()
        finally:
            store.close()
        checkpoint(settings.database_path)
        rows = table_rows(settings.database_path)
        print(f"  database: {used / MB:.0f} MB live; " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
        runs = []
        for name, clients, duration, poller in (
            (f"{args.clients} clients + poller (target)", args.clients, args.duration, True),
            (f"baseline: {args.clients} clients, no poller", args.clients, args.baseline_duration, False),
            (f"baseline: poller + 1 client every {args.period / 4:g} s", 1, args.baseline_duration, True),
        ):
            period = args.period if clients > 1 else args.period / 4  # one client, more requests to rank
            run = load_run(settings, name, clients, period, duration, poller)
            print(f"  {name}: {len(run.latencies)} requests of {run.body_bytes / 1e3:.0f} kB in {duration:g} s"
                  + (f", {len(run.cycles)} cycles" if poller else "")
                  + (f", maintenance rounds {', '.join(f'{m:.2f} s' for m in run.maintenance)}"
                     if run.maintenance else "")
                  + (f"; ERRORS: {run.errors[:3]} ({len(run.errors)})" if run.errors else ""))
            runs.append(run)
    finally:
        parent.send("stop")
        fleet.join(timeout=10)

    print()
    print(f"GET {OVERVIEW} (HX-Request), page latency as the clients see it (and inside the app); "
          "poll cycles against the 5 s grid")
    header = ["run", "requests", "median", "p95", "max", "app p95", "cycles", "cycle max",
              "start late median", "start late max", "skipped"]
    table = []
    for run in runs:
        ms = sorted(x * 1000 for x in run.latencies)
        app = sorted(x * 1000 for x in run.server)
        row = [run.name, str(len(ms)), f"{statistics.median(ms):.1f} ms", f"{quantile(ms, 0.95):.1f} ms",
               f"{ms[-1]:.1f} ms", f"{quantile(app, 0.95):.1f} ms" if app else "-"]
        if run.cycles:
            late = sorted(x * 1000 for x in run.lateness)
            row += [str(len(run.cycles)), f"{max(c.duration_seconds for c in run.cycles) * 1000:.0f} ms",
                    f"{statistics.median(late):.1f} ms", f"{late[-1]:.1f} ms", str(run.skipped)]
        else:
            row += ["-", "-", "-", "-", "-"]
        table.append(row)
    print_table(header, table)
    print("  targets: page p95 <= 100 ms, no cycle starting more than 1 s late (first row)")


# -- part 3: the 200-region cycle on 30 days ---------------------------------------------------------

def part_cycle(args, folder: Path) -> None:

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    fleet = ctx.Process(target=serve_fleet, args=(args.cycle_regions, args.delay, child), daemon=True)
    fleet.start()
    block = parent.recv()
    probes = 2 * args.cycle_regions
    try:
        print(f"cycle: {args.cycle_regions} regions (distinct ports) answering after {args.delay * 1000:.0f} ms, "
              f"{probes} probes a cycle")
        empty = write_settings(folder, "cycle-empty", block, timeout_seconds=10)
        seeded = write_settings(folder, "cycle-30d", block, timeout_seconds=10)
        store = Store(seeded.database_path)
        try:
            print("  " + seed_compact(store, seeded, 30, time.time()))
            used = store.used_bytes()
        finally:
            store.close()
        checkpoint(seeded.database_path)
        rows = table_rows(seeded.database_path)
        print(f"  database: {used / MB:.0f} MB live; " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
        timings: dict[str, list[tuple[float, float, float]]] = {"empty": [], "30d": []}
        stores, pollers = {}, {}
        for name, settings in (("empty", empty), ("30d", seeded)):
            stores[name] = Store(settings.database_path)
            pollers[name] = Poller(settings, stores[name])
        writes: dict[str, list[float]] = {name: [] for name in pollers}
        for name, poller in pollers.items():
            original = poller.store_cycle  # timing the SQLite half of the cycle

            def timed_write(at, results, original=original, sink=writes[name]):
                t0 = time.perf_counter()
                try:
                    return original(at, results)
                finally:
                    sink.append(time.perf_counter() - t0)

            poller.store_cycle = timed_write
        try:
            for poller in pollers.values():
                poller.run_cycle()  # warm-up: connections opened once; the seeded regions come back from stale
                poller.run_cycle()
            for name in pollers:
                writes[name].clear()
            for _ in range(args.cycles):
                for name, poller in pollers.items():
                    wall, cpu = _timed(poller.run_cycle)
                    timings[name].append((wall, cpu, writes[name][-1]))
        finally:
            for name in pollers:
                pollers[name].release_lease()
                pollers[name].close()
                stores[name].close()
    finally:
        parent.send("stop")
        fleet.join(timeout=10)

    print()
    print(f"Poller.run_cycle, {args.cycle_regions} regions, median (max) of {args.cycles} cycles, alternating")
    header = ["database", "wall per cycle", "CPU per probe", "SQLite write (in wall)", "target"]
    table = []
    for name, label in (("30d", "30 days of history"), ("empty", "baseline: empty")):
        walls = [w for w, _, _ in timings[name]]
        cpus = [c / probes * 1000 for _, c, _ in timings[name]]
        ws = [x for _, _, x in timings[name]]
        table.append([label, f"{statistics.median(walls):.3f} s ({max(walls):.3f})",
                      f"{statistics.median(cpus):.2f} ms ({max(cpus):.2f})",
                      f"{statistics.median(ws) * 1000:.0f} ms ({max(ws) * 1000:.0f})",
                      "<= 0.5 s" if name == "30d" else ""])
    print_table(header, table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["growth", "concurrency", "cycle"], action="append",
                        help="run only this part (repeatable); default all three")
    parser.add_argument("--keep", type=Path, help="keep the databases in this folder (default: a temporary one)")
    parser.add_argument("--growth-regions", type=int, default=4)
    parser.add_argument("--growth-days", type=int, default=35)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--period", type=float, default=2.0, help="seconds between one client's requests")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the target run")
    parser.add_argument("--baseline-duration", type=float, default=30.0, help="seconds of each baseline run")
    parser.add_argument("--fleet-delay", type=float, default=0.1, help="seconds the 20 regions take to answer")
    parser.add_argument("--full-seed", action="store_true",
                        help="concurrency: seed all 30 days through seed_history (slow) instead of 48 h + rollups")
    parser.add_argument("--cycle-regions", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.1, help="seconds the cycle part's regions take to answer")
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    parts = args.part or ["growth", "concurrency", "cycle"]
    began = time.perf_counter()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, Python {sys.version.split()[0]}, "
          f"SQLite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory(prefix="history-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for part in parts:
            t0 = time.perf_counter()
            {"growth": part_growth, "concurrency": part_concurrency, "cycle": part_cycle}[part](args, folder)
            print(f"  ({part}: {time.perf_counter() - t0:.0f} s)")
            print()
    print(f"total {time.perf_counter() - began:.0f} s; load average now "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
