"""Benchmark the dashboard at fleet scale (issue 16): do pages cost the same after minutes as at the start?

One run, for each checkout (`--baseline DIR`, then this one), on the same fleet and the same seeded
history:

- a `SimulatedFleet` of `--regions` healthy regions on loopback, in its own process, each answering
  after `--answer-ms`;
- `--days` of history at `--interval` seeded once, by the baseline's own `dashboard seed-history`
  (rolled up and past retention as a real database is; the checkout under test migrates its copy at
  start, as an upgrade would);
- the real `dashboard serve` of that checkout (waitress, the poller in its own process), started with
  this interpreter and PYTHONPATH pointing at the checkout, on a copy of the seeded folder;
- `--viewers` viewers in a third process (`viewers.py`), each GETting `/api/v1/status` and
  `/fragments/overview` every `--period` s for `--duration` s.

Printed per checkout: status and overview p50/p95 in the first and the last minute of viewers, the
poll cycle's mean wall time (from serve's /metrics) and the poller process's CPU per probe, how
late cycles started against the interval (max), and the RSS of the web and poller processes at the
start, after a minute and at the end.

    git worktree add /work/wt-fleet-base 31e0e3d
    python bench/fleet_scale.py --baseline /work/wt-fleet-base [--duration 300] [--regions 200] ...
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from poll_cycle import serve_fleet
from viewers import OVERVIEW_PATH, STATUS_PATH, Request, percentile, viewers

from dashboard.processes import stop_process

HERE = Path(__file__).resolve().parent.parent
MINUTE = 60.0


def git_commit(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "describe", "--always", "--dirty"], capture_output=True,
                          text=True, check=True).stdout.strip()


def environment(checkout: Path) -> dict[str, str]:
    """This interpreter's environment with `checkout` first on the import path (and no config from outside).

    Run it with cwd=checkout too: `python -m` puts the working folder before PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD_CONFIG", "REVERSEAI_DEPLOYMENT_REGIONS")}
    env["PYTHONPATH"] = str(checkout)
    return env


def write_config(folder: Path, deployment: dict, interval: float) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"deployment": deployment, "dashboard": {
        "database": "dashboard.db", "routing_file": "routing.json", "poll_interval_seconds": interval,
        "timeout_seconds": min(5.0, interval / 2), "log_level": "WARNING"}}), encoding="utf-8")
    return path


def seed(folder: Path, checkout: Path, days: float) -> None:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dashboard.cli", "seed-history", "--config", str(folder / "config.yaml"),
                    "--days", str(days)], env=environment(checkout), cwd=checkout, check=True, capture_output=True,
                   text=True)
    print(f"seeded {days:g} days in {time.perf_counter() - t:.0f} s "
          f"({(folder / 'dashboard.db').stat().st_size / 1e6:.0f} MB)", flush=True)


# -- the serve process and its poller child, seen from outside -----------------------------------

def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Snapshot:
    """The processes' memory and the poller's counters at one moment."""

    web_rss: float
    poller_rss: float
    poller_cpu: float
    probes: float
    cycle_seconds: float  # sum of cycle durations so far
    cycles: float


def metrics_text(client: httpx.Client, timeout: float = 30) -> str:
    """serve's /metrics; under the viewers' load it may shed the request (503): ask again."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/metrics")
        if response.status_code == 200 or time.monotonic() > deadline:
            response.raise_for_status()
            return response.text
        time.sleep(0.1)


def snapshot(client: httpx.Client, web: int, poller: int) -> Snapshot:
    probes = cycle_sum = cycle_count = 0.0
    for family in text_string_to_metric_families(metrics_text(client)):
        for sample in family.samples:
            if sample.name == "dashboard_probes_total":
                probes += sample.value
            elif sample.name == "dashboard_poll_cycle_duration_seconds_sum":
                cycle_sum += sample.value
            elif sample.name == "dashboard_poll_cycle_duration_seconds_count":
                cycle_count += sample.value
    return Snapshot(rss_mb(web), rss_mb(poller), cpu_seconds(poller), probes, cycle_sum, cycle_count)


@dataclass
class Result:
    name: str
    requests: list[Request]
    duration: float
    snaps: dict[str, Snapshot] = field(default_factory=dict)
    late_max: float = 0.0
    cycles: int = 0

    def latencies(self, path: str, first_minute: bool) -> list[float]:
        lo, hi = (0.0, MINUTE) if first_minute else (self.duration - MINUTE, self.duration)
        return [r.seconds * 1000 for r in self.requests if r.path == path and r.status == 200 and lo <= r.at < hi]

    def failed(self) -> int:
        return sum(r.status != 200 for r in self.requests)


def start_serve(folder: Path, checkout: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "dashboard.cli", "serve", "--config", str(folder / "config.yaml"),
                             "--port", "0"],
                            env=environment(checkout), cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "dashboard: serving http://127.0.0.1:PORT ; polling ..."
    if "serving " not in line:
        proc.kill()
        raise SystemExit(f"dashboard serve did not start: {line!r}")
    return proc, line.split("serving ", 1)[1].split()[0]


def wait_polled(client: httpx.Client, regions: int, since: float, timeout: float = 180) -> None:
    """Until the new poller has stored a poll of every region (the first cycle is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            polled = [r["last_poll_at"] or 0 for r in client.get(STATUS_PATH).json()["regions"]]
        except (httpx.HTTPError, ValueError, KeyError):
            polled = []
        if len(polled) == regions and min(polled) >= since:
            return
        time.sleep(0.5)
    raise SystemExit(f"the poller did not poll all {regions} regions within {timeout:g} s")


def late_cycles(database: Path, region: str, since: float, interval: float) -> tuple[int, float]:
    """Cycles since `since` and the most any gap between two cycle starts exceeded the interval (s)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        starts = [ts for (ts,) in db.execute(
            "select ts from samples where region = ? and endpoint = 'health' and ts >= ? order by ts",
            [region, since])]
    late = [max(0.0, b - a - interval) for a, b in zip(starts, starts[1:], strict=False)] or [0.0]
    return len(starts), max(late)


def one_run(name: str, checkout: Path, folder: Path, regions: list[str], args: argparse.Namespace) -> Result:
    began = time.time()
    serve, url = start_serve(folder, checkout)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            wait_polled(client, len(regions), began)
            pollers = children(serve.pid)
            if len(pollers) != 1:
                raise SystemExit(f"expected one poller process under serve, found {pollers}")
            poller = pollers[0]
            here, there = mp.Pipe()
            # Daemonic: should this run fail, the crowd does not outlive it.
            crowd = mp.Process(target=viewers, args=(url, args.viewers, args.period, args.duration, there),
                               daemon=True)
            load_began = time.time()
            snaps = {"start": snapshot(client, serve.pid, poller)}
            crowd.start()
            if not here.poll(MINUTE):
                snaps["minute 1"] = snapshot(client, serve.pid, poller)
            requests = here.recv()
            crowd.join()
            snaps["end"] = snapshot(client, serve.pid, poller)
        result = Result(name, requests, args.duration, snaps)
        result.cycles, result.late_max = late_cycles(folder / "dashboard.db", regions[0], load_began, args.interval)
        return result
    finally:
        stop_process(serve, signal.SIGINT, timeout=60)  # serve stops the web server, then its poller


def report(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(f"{args.regions} regions, {args.days:g} days seeded at {args.interval:g} s, polled every "
          f"{args.interval:g} s; "
          f"{args.viewers} viewers each GETting status + overview fragment every {args.period:g} s for "
          f"{args.duration:g} s. Latencies in ms (p50/p95) in the first and the last minute of viewers.")
    print(f"{'code':<22}{'status min 1':>14}{'status end':>12}{'overview min 1':>16}{'overview end':>14}"
          f"{'non-200':>9}{'requests':>9}{'cycle s':>9}{'CPU ms/probe':>14}{'cycles':>8}{'late max s':>12}"
          f"{'web RSS MB start/1m/end':>26}{'poller RSS MB':>17}")
    for r in results:
        def cell(path: str, first: bool, r: Result = r) -> str:
            values = r.latencies(path, first)
            return f"{percentile(values, 0.5):.0f}/{percentile(values, 0.95):.0f}"

        start, end = r.snaps["start"], r.snaps["end"]
        minute = r.snaps.get("minute 1", start)
        cycles = end.cycles - start.cycles
        cycle = (end.cycle_seconds - start.cycle_seconds) / cycles if cycles else float("nan")
        probes = end.probes - start.probes
        cpu = (end.poller_cpu - start.poller_cpu) / probes * 1000 if probes else float("nan")
        print(f"{r.name:<22}{cell(STATUS_PATH, True):>14}{cell(STATUS_PATH, False):>12}"
              f"{cell(OVERVIEW_PATH, True):>16}{cell(OVERVIEW_PATH, False):>14}"
              f"{r.failed():>9}{len(r.requests):>9}{cycle:>9.2f}{cpu:>14.2f}"
              f"{r.cycles:>8}{r.late_max:>12.2f}"
              f"{f'{start.web_rss:.0f}/{minute.web_rss:.0f}/{end.web_rss:.0f}':>26}"
              f"{f'{start.poller_rss:.0f}/{minute.poller_rss:.0f}/{end.poller_rss:.0f}':>17}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the code before the change")
    parser.add_argument("--regions", type=int, default=200)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of viewers per checkout (default 300)")
    parser.add_argument("--period", type=float, default=2.0, help="seconds between a viewer's refreshes")
    parser.add_argument("--interval", type=float, default=15.0, help="poll interval, seeded and live")
    parser.add_argument("--days", type=float, default=2.0, help="days of seeded history")
    parser.add_argument("--answer-ms", type=float, default=50.0, help="the fleet's own answer time")
    args = parser.parse_args()
    if args.duration < 2 * MINUTE:
        parser.error("--duration must be at least 120 s: the first and the last minute are compared")
    if not (args.baseline / "dashboard" / "cli.py").exists():
        parser.error(f"--baseline: {args.baseline} is not a checkout of the dashboard")

    here, there = mp.Pipe()
    fleet = mp.Process(target=serve_fleet, args=(args.regions, args.answer_ms / 1000, there))
    fleet.start()
    folder = Path(tempfile.mkdtemp(prefix="fleet-scale-"))
    try:
        deployment = here.recv()
        seeded = folder / "seeded"
        seeded.mkdir()
        write_config(seeded, deployment, args.interval)
        seed(seeded, args.baseline, args.days)
        results = []
        for name, checkout in ((f"baseline {git_commit(args.baseline)}", args.baseline),
                               (f"today {git_commit(HERE)}", HERE)):
            run_dir = folder / name.split()[0]
            shutil.copytree(seeded, run_dir)
            print(f"{name}: serving {checkout}", flush=True)
            results.append(one_run(name, checkout, run_dir, deployment["regions"], args))
            shutil.rmtree(run_dir, ignore_errors=True)
        report(results, args)
    finally:
        here.send("stop")
        fleet.join()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
