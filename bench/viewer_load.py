"""Benchmark viewer load against the poller (issue 17): today's layout beside the poller process.

One run, for each layout and each viewer count:

- a `SimulatedFleet` of `--regions` healthy regions in its own process, each answering after
  `--answer-ms` (the fleet's own answer time);
- the dashboard in this process as `Runtime` builds it: "before" (the layout before issue 17: the
  poller beside the web app, no lag bound, no request shedding; both switched off here by patching
  `poller.LAG_BOUND_MS` and the server's queue limit), "one process" (the same layout with the lag
  bound and shedding) or "poller process" (`serve` now: the poller is a supervised child, the web
  process only reads the database), on a copy of one database seeded with `--history-hours`;
- `--viewers` threads in a third process, each GETting `/api/v1/status` and `/fragments/overview`
  every `--period` s for `--duration` s.

Printed per run: false verdicts (regions that left `up`: all are healthy, goal 0), the probe latency
p95 the poller measured for the health endpoint vs the fleet's answer time, how late cycles started
against the scheduler's grid (p95, max), the poller's worst event-loop lag (poller process only: from
its heartbeat), and the viewers' p95 and their 503s (shed requests).

    python bench/viewer_load.py [--regions 200] [--viewers 20 50] [--duration 60] ...
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from poll_cycle import serve_fleet
from viewers import p95, viewers

from dashboard import poller as poller_module
from dashboard import runtime as runtime_module
from dashboard.config import Settings, load_settings
from dashboard.demo.seed import seed_history
from dashboard.heartbeat import read_heartbeat
from dashboard.poller import LAG_BOUND_MS
from dashboard.runtime import Runtime
from dashboard.store import Store
from dashboard.web.server import start_server


def write_config(folder: Path, deployment: dict, interval: float) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"deployment": deployment, "dashboard": {
        "database": "dashboard.db", "routing_file": "routing.json", "poll_interval_seconds": interval,
        "timeout_seconds": min(5.0, interval / 2), "log_level": "WARNING"}}), encoding="utf-8")
    return path


def wait_all_up(url: str, regions: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < deadline:
            try:
                states = [r["state"] for r in client.get("/api/v1/status").json()["regions"]]
            except (httpx.HTTPError, ValueError):
                states = []
            if len(states) == regions and all(s == "up" for s in states):
                return
            time.sleep(0.5)
        reasons = {r["reason"] for r in client.get("/api/v1/status").json()["regions"] if r["state"] != "up"}
    raise SystemExit(f"the fleet did not come up: {sorted(reasons)[:5]}")


def one_run(settings: Settings, layout: str, count: int, args: argparse.Namespace) -> dict:
    before = layout == "before"
    poller_module.LAG_BOUND_MS = float("inf") if before else LAG_BOUND_MS
    runtime_module.start_server = functools.partial(start_server, queue_limit=1 << 30) if before else start_server
    runtime = Runtime(settings, poller_process=layout == "poller process")
    url = runtime.start("127.0.0.1", 0)
    try:
        wait_all_up(url, args.regions)
        store = runtime.store
        start = time.time()
        worst_lag = [0.0]
        stop = threading.Event()

        def watch_lag() -> None:
            while not stop.wait(0.5):
                beat = read_heartbeat(store)
                if beat is not None and beat.lag_ms is not None and beat.at >= start:
                    worst_lag[0] = max(worst_lag[0], beat.lag_ms)

        watcher = threading.Thread(target=watch_lag, daemon=True)
        watcher.start()
        here, there = mp.Pipe()
        proc = mp.Process(target=viewers, args=(url, count, args.period, args.duration, there))
        proc.start()
        requests = here.recv()
        proc.join()
        latencies = [r.seconds for r in requests if r.status]
        shed, errors = sum(r.status == 503 for r in requests), sum(not r.status for r in requests)
        end = time.time()
        stop.set()
        watcher.join()
        left_up = list(store.db.query(
            "select region, new_state, reason from events where kind = 'state' and at >= ? and old_state = 'up'",
            [start]))
        measured = [r["latency_ms"] for r in store.db.query(
            "select latency_ms from samples"
            " where endpoint = 'health' and ts >= ? and ts <= ? and latency_ms is not null",
            [start, end])]
        firsts = [r["ts"] for r in store.db.query(
            "select ts from samples where region = ? and endpoint = 'health' and ts >= ? order by ts",
            [settings.regions[0], start])]
        interval = settings.dashboard.poll_interval_seconds
        # How much longer than an interval each gap between two cycles' starts was.
        late = [max(0.0, b - a - interval) for a, b in zip(firsts, firsts[1:], strict=False)] or [0.0]
        return {
            "layout": layout, "viewers": count, "false": len(left_up),
            "reasons": sorted({r["reason"].split(":")[0] for r in left_up}),
            "probe_p95": p95(measured), "cycles": len(firsts),
            "late_p95": p95(late) * 1000, "late_max": max(late) * 1000,
            "lag": worst_lag[0] if layout == "poller process" else float("nan"),
            "view_p95": p95(latencies) * 1000, "view_median": statistics.median(latencies) * 1000 if latencies else 0,
            "requests": len(latencies), "shed": shed, "errors": errors,
        }
    finally:
        runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regions", type=int, default=200)
    parser.add_argument("--viewers", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of viewer load per run")
    parser.add_argument("--period", type=float, default=2.0, help="seconds between a viewer's page pairs")
    parser.add_argument("--interval", type=float, default=15.0, help="poll interval")
    parser.add_argument("--answer-ms", type=float, default=50.0, help="the fleet's own answer time")
    parser.add_argument("--history-hours", type=float, default=12.0)
    parser.add_argument("--layouts", nargs="+", default=["before", "one process", "poller process"])
    args = parser.parse_args()

    here, there = mp.Pipe()
    fleet = mp.Process(target=serve_fleet, args=(args.regions, args.answer_ms / 1000, there))
    fleet.start()
    deployment = here.recv()
    folder = Path(tempfile.mkdtemp(prefix="viewer-load-"))
    try:
        seeded = folder / "seeded"
        seeded.mkdir()
        config = write_config(seeded, deployment, args.interval)
        settings = load_settings(str(config), environ={})
        store = Store(settings.database_path)
        t = time.perf_counter()
        # ending an hour ago: its failures are outside the error-rate window, so every region starts up
        seed_history(store, settings, days=args.history_hours / 24, now=time.time() - 3600)
        store.close()
        print(f"seeded {args.history_hours:g} h of {args.regions} regions in {time.perf_counter() - t:.0f} s; "
              f"fleet answers after {args.answer_ms:g} ms; poll every {args.interval:g} s; "
              f"{args.duration:g} s of viewers per run, each GETting status + overview every {args.period:g} s",
              flush=True)
        rows = []
        for count in args.viewers:
            for layout in args.layouts:
                run_dir = folder / f"{layout.replace(' ', '-')}-{count}"
                shutil.copytree(seeded, run_dir)
                rows.append(one_run(load_settings(str(run_dir / "config.yaml"), environ={}), layout, count, args))
                print(rows[-1], flush=True)
        print()
        print("false verdicts: regions that left up (all are healthy); late: how much longer than an interval the "
              "gaps between cycle starts were; loop lag: the poller's worst, from its heartbeat")
        print(f"{'layout':<16}{'viewers':>8}{'false verdicts':>16}{'probe p95 ms':>14}{'fleet ms':>10}"
              f"{'cycles':>7}{'late p95/max ms':>18}{'loop lag ms':>13}{'viewer p50/p95 ms':>19}{'503s':>7}{'reqs':>7}")
        for r in rows:
            print(f"{r['layout']:<16}{r['viewers']:>8}{r['false']:>16}{r['probe_p95']:>14.0f}{args.answer_ms:>10.0f}{r['cycles']:>7}"
                  f"{r['late_p95']:>9.0f}/{r['late_max']:<8.0f}{r['lag']:>13.0f}"
                  f"{r['view_median']:>9.0f}/{r['view_p95']:<9.0f}{r['shed']:>7}{r['requests']:>7}")
    finally:
        here.send("stop")
        fleet.join()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
