"""Benchmark the closed loop (issue 13): from the API request to traffic served by the new region.

For each path, 50 changes (`--changes`) alternating `POST /api/v1/routing/overrides` (fail eu-west-1
over to us-east-1, read-only) and `DELETE /api/v1/routing/overrides/eu-west-1`, sent to a real
`dashboard serve` (its own process, waitress, bearer token, one keep-alive client):

- routing file alone: API request -> the routing file replaced by the new version (a watcher thread);
- HAProxy (runtime API) and nginx (`nginx -t` + `nginx -s reload`): API request -> the first request
  for eu-west-1 answered by the new region through the router. A prober thread sends one request
  after another for eu-west-1, each on a new connection (a new client), and notes when each answer
  came and who sent it. For nginx also: -> the last answer by the old region (after a reload, old
  workers take new connections until they handle the master's QUIT), i.e. when the switch is whole.

Meanwhile a steady stream of requests (`--stream-rate` a second, GET eu-west-1, GET us-east-1 and
POST us-east-1 in turn, on one keep-alive connection as a real client would) goes through the
router, also for `--gap` seconds after each change has settled; every answer that is not 2xx and
every request that fails is counted. The routers are Debian's nginx and HAProxy started from
deploy/ (tests/edge_helpers.py, as the tests run them); the simulated fleet and the dashboard run
in their own processes.

    python bench/routers.py [--changes 50] [--stream-rate 200] [--gap 0.1] [--paths file,haproxy,nginx]
"""
from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml
from werkzeug.security import generate_password_hash

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from failover import Watcher  # bench/ is on sys.path when this script runs

from tests.edge_helpers import ROUTERS, EdgeRouter, binary, free_port, wait_for

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]
REGION, TARGET = "eu-west-1", "us-east-1"
GOALS_P95_MS = {"haproxy": 50.0, "nginx": 500.0}
LABELS = {"file": "routing file alone", "haproxy": "HAProxy (runtime API)", "nginx": "nginx (test + reload)"}


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[94]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DASHBOARD_CONFIG", "REVERSEAI_DEPLOYMENT_REGIONS")}


def start_fleet(log: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """The simulated fleet in its own process; returns it and its deployment block."""
    process = subprocess.Popen([sys.executable, "-m", "dashboard.demo.simulator", "--regions", ",".join(REGIONS),
                                "--json"], cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                               stderr=open(log, "ab"), text=True)  # noqa: SIM115 - the child owns it
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        if line.startswith("# control API"):
            break
        lines.append(line)
    return process, json.loads("".join(lines))["deployment"]


class Prober(threading.Thread):
    """Requests for eu-west-1 one after another, each on a new connection; notes when each answer
    came and which region sent it (None: not a 200)."""

    def __init__(self, router: EdgeRouter) -> None:
        super().__init__(name="prober", daemon=True)
        self.router = router
        self.times: list[float] = []
        self.regions: list[str | None] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not self.stopping.is_set():
                try:
                    region = self.router.served_by(client, REGION)
                except httpx.HTTPError:
                    region = None
                with self.lock:
                    self.times.append(time.perf_counter())
                    self.regions.append(region)

    def _after(self, since: float) -> list[tuple[float, str | None]]:
        with self.lock:
            start = bisect.bisect_right(self.times, since)
            return list(zip(self.times[start:], self.regions[start:], strict=True))

    def first(self, since: float, region: str, timeout: float = 10.0) -> float:
        """When the first answer by `region` after `since` came."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((at for at, who in self._after(since) if who == region), None)
            if found is not None:
                return found
            time.sleep(0.0005)
        raise SystemExit(f"{self.router.kind}: no answer from {region} within {timeout:g} s")

    def last(self, since: float, region: str) -> float | None:
        """When the last answer by `region` after `since` came."""
        return max((at for at, who in self._after(since) if who == region), default=None)


class Stream(threading.Thread):
    """A steady stream of requests through the router on one keep-alive connection; counts every
    answer that is not 2xx and every request that fails, and sends a failed one once more on a new
    connection (as browsers do for a kept-alive connection the server closed) to see if it passes."""

    def __init__(self, router: EdgeRouter, rate: float) -> None:
        super().__init__(name="stream", daemon=True)
        self.router = router
        self.interval = 1.0 / rate
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()  # "<method> <exception>"
        self.passed_when_resent = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        requests = [(REGION, "GET"), (TARGET, "GET"), (TARGET, "POST")]
        next_at = time.perf_counter()
        with httpx.Client(timeout=5) as client:
            while not self.stopping.is_set():
                region, method = requests[self.sent % len(requests)]
                self.sent += 1
                try:
                    self.statuses[self.router.request(client, region, method).status_code] += 1
                except httpx.HTTPError as exc:
                    self.errors[f"{method} {type(exc).__name__}"] += 1
                    try:  # the failed connection is gone from the pool: this one is new
                        self.passed_when_resent += self.router.request(client, region, method).is_success
                    except httpx.HTTPError:
                        pass
                next_at += self.interval
                pause = next_at - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)

    def non_2xx(self) -> int:
        return sum(c for s, c in self.statuses.items() if not 200 <= s < 300)

    def failed(self) -> int:
        return sum(self.errors.values())

    def summary(self) -> str:
        bad = {status: count for status, count in self.statuses.items() if not 200 <= status < 300}
        failed = ""
        if self.errors:
            failed = f" ({', '.join(f'{n} {what}' for what, n in sorted(self.errors.items()))}; " \
                     f"{self.passed_when_resent} passed when sent again on a new connection)"
        return (f"{self.sent} requests: {self.non_2xx()} answers not 2xx{f' {bad}' if bad else ''}, "
                f"{self.failed()} failed without an answer{failed}")


class Loop:
    """One dashboard (`dashboard serve`) publishing to one router, or to the routing file alone."""

    def __init__(self, kind: str, folder: Path, deployment: dict[str, Any]) -> None:
        self.kind = kind
        self.folder = folder
        folder.mkdir()
        upstreams = {region: int(urlsplit(url).port or 0) for region, url in deployment["region_base_urls"].items()}
        self.router: EdgeRouter | None = ROUTERS[kind](folder / "router", upstreams) if kind in ROUTERS else None
        self.token = secrets.token_urlsafe(32)
        self.config = folder / "config.yaml"
        self.config.write_text(yaml.safe_dump({"deployment": deployment, "dashboard": {
            "database": "bench.db", "routing_file": "routing.json", "poll_interval_seconds": 2,
            "timeout_seconds": 1, "log_level": "WARNING",
            "auth": {"api_tokens": {"bench": generate_password_hash(self.token, method="pbkdf2:sha256:1000")}},
            "publish": [self.router.publisher()] if self.router else [],
        }}), encoding="utf-8")
        self.port = free_port()
        self.server: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30,
                                   headers={"Authorization": f"Bearer {self.token}"})

    def start(self) -> None:
        log = open(self.folder / "dashboard.log", "ab")  # noqa: SIM115 - the child owns it
        if self.router is not None:
            # As an operator would: the maps first (the router is not up yet, so that part fails).
            subprocess.run([sys.executable, "-m", "dashboard.cli", "routing", "--config", str(self.config)],
                           cwd=REPO_ROOT, env=_env(), stdout=log, stderr=log, check=False)
            self.router.start()
        self.server = subprocess.Popen([sys.executable, "-m", "dashboard.cli", "serve", "--config", str(self.config),
                                        "--port", str(self.port)], cwd=REPO_ROOT, env=_env(), stdout=log, stderr=log)

        def all_up() -> bool:
            try:
                summary = self.client.get("/api/v1/status").json()["summary"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return summary.get("up") == len(REGIONS)

        wait_for(all_up, f"{self.kind}: dashboard serving with every region up", timeout=60, interval=0.2)
        self.client.get("/api/v1/routing")  # the token's first (slower) check, outside the timings

    def stop(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.terminate()
            self.server.wait(30)
        if self.router is not None:
            self.router.stop()

    def change(self, failover: bool) -> tuple[float, float, dict[str, Any]]:
        """One change through the API: (sent at, answered at, the answer)."""
        if failover:
            body = {"region": REGION, "target_region": TARGET, "read_only": True, "confirm_healthy": True,
                    "reason": "bench"}
            t0 = time.perf_counter()
            response = self.client.post("/api/v1/routing/overrides", json=body)
        else:
            t0 = time.perf_counter()
            response = self.client.request("DELETE", f"/api/v1/routing/overrides/{REGION}", json={"reason": "bench"})
        answered = time.perf_counter()
        if response.status_code not in (200, 201):
            raise SystemExit(f"{self.kind}: {response.request.method} refused: {response.status_code} {response.text}")
        return t0, answered, response.json()


def run_path(kind: str, folder: Path, deployment: dict[str, Any], changes: int, rate: float,
             gap: float) -> dict[str, Any]:
    path = Loop(kind, folder, deployment)
    path.start()
    result: dict[str, Any] = {"to_traffic": [], "to_whole": [], "to_answer": [], "stream": ""}
    try:
        if path.router is None:
            watcher = Watcher(folder, "auto").start(["routing.json"])
            try:
                for i in range(changes):
                    t0, answered, body = path.change(i % 2 == 0)
                    result["to_traffic"].append((watcher.wait_for("routing.json", body["version"]) - t0) * 1000)
                    result["to_answer"].append((answered - t0) * 1000)
                    time.sleep(gap)
            finally:
                watcher.stop()
            return result
        router = path.router
        prober, stream = Prober(router), Stream(router, rate)
        prober.start()
        stream.start()
        try:
            for i in range(changes):
                failover = i % 2 == 0
                new, old = (TARGET, REGION) if failover else (REGION, TARGET)
                t0, answered, body = path.change(failover)
                published = next(p for p in body["published"] if p["type"] == kind)
                if published["error"] is not None:
                    raise SystemExit(f"{kind} did not apply version {body['version']}: {published['error']}")
                first = prober.first(t0, new)
                # Settled: no old worker left that could take a new connection (nginx), then a new answer.
                wait_for(router.settled, f"{kind} settled", timeout=10, interval=0.001)
                settled_at = time.perf_counter()
                prober.first(settled_at, new)
                last_old = prober.last(t0, old)
                result["to_traffic"].append((first - t0) * 1000)
                result["to_whole"].append(((last_old if last_old and last_old > first else first) - t0) * 1000)
                result["to_answer"].append((answered - t0) * 1000)
                time.sleep(gap)  # the stream keeps going between changes, as traffic would
        finally:
            prober.stopping.set()
            stream.stopping.set()
            prober.join(10)
            stream.join(10)
        result["stream"] = stream.summary()
        result["stream_non_2xx"] = stream.non_2xx()
        result["stream_failed"] = stream.failed()
        return result
    finally:
        path.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50, help="changes per path, alternating fail over/back")
    parser.add_argument("--stream-rate", type=float, default=200.0, help="requests a second of the steady stream")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between one change settling and the next")
    parser.add_argument("--paths", default="file,haproxy,nginx", help="which of file, haproxy, nginx to run")
    args = parser.parse_args()
    # The prober and the stream share this process with the API client: a short GIL switch interval
    # keeps them from holding up the client's answer (by up to 5 ms with the default).
    sys.setswitchinterval(0.0005)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if args.changes < 2 or not set(paths) <= set(LABELS):
        parser.error("--changes must be at least 2 and --paths a list of file, haproxy, nginx")
    for kind in paths:
        if kind in ROUTERS and binary(kind) is None:
            parser.error(f"{kind} is not installed (Debian: apt-get install {kind})")

    results = {}
    with tempfile.TemporaryDirectory(prefix="routers-bench-") as tmp:
        logging.basicConfig(level=logging.WARNING)
        fleet, deployment = start_fleet(Path(tmp) / "fleet.log")
        try:
            for kind in paths:
                results[kind] = run_path(kind, Path(tmp) / kind, deployment, args.changes, args.stream_rate,
                                         args.gap)
        finally:
            fleet.terminate()
            fleet.wait(30)

    load = os.getloadavg()[0]
    print(f"closed loop: {args.changes} changes per path, alternating fail {REGION} over to {TARGET} (read-only) "
          f"and back, through `dashboard serve`; {os.cpu_count()} CPUs, load average {load:.1f} at the end")
    print(f"{'path':<70} {'median':>9} {'p95':>9}  goal")
    for kind, result in results.items():
        label = LABELS[kind]
        goal = f"p95 <= {GOALS_P95_MS[kind]:.0f} ms" if kind in GOALS_P95_MS else ""
        what = "API -> file replaced" if kind == "file" else "API -> first request served by the new region"
        rows = [(f"{label}: {what}", result["to_traffic"], goal)]
        if kind == "nginx":
            rows.append((f"{label}: API -> last request served by the old region", result["to_whole"], ""))
        rows.append((f"{label}: API -> API answer", result["to_answer"], ""))
        for name, samples, target in rows:
            print(f"{name:<70} {statistics.median(samples):>6.1f} ms {p95(samples):>6.1f} ms  {target}")
    verdicts = []
    for kind, result in results.items():
        if kind in GOALS_P95_MS:
            met = p95(result["to_traffic"]) <= GOALS_P95_MS[kind]
            verdicts.append(f"{kind} p95 <= {GOALS_P95_MS[kind]:.0f} ms: {'met' if met else 'MISSED'}")
            print(f"steady stream through {kind}: {result['stream']}")
            clean = result["stream_non_2xx"] == 0 and result["stream_failed"] == 0
            verdicts.append(f"no failed request through {kind}: {'met' if clean else 'MISSED'}")
    print("goals: " + "; ".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
