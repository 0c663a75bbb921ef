"""Cluster mode's costs, beside standalone's, on one machine (loopback): not a timed test.

1. Propagation: a routing change on instance A (POST /api/v1/routing/overrides, then DELETE, sent
   on one keep-alive connection as a browser or a script would), until instance C's routing file
   holds the new version: median and p95 over N changes (goal: p95 <= 100 ms on loopback). A
   watcher thread (inotify, as in bench/failover.py) notes when each version lands in C's folder,
   while A is still answering: C often has it before A's answer is back. Also A's answer time,
   and, through the bench's own etcd watch, when the change was committed: A's part of the time
   (until the commit) and C's part (the commit until C's file).
   Standalone's figure: the change until its own routing file has it.
2. Detection: a region starts failing (HTTP 500) until the dashboard says `down`: standalone (its
   own view), and cluster mode (the agreed state on instance C: a quorum of vantage points).

With `--baseline DIR` (a checkout of the code before a change: `git worktree add --detach DIR
<commit>`), every figure is measured for both checkouts in the same run: both sets of instances run
at once (the baseline's cluster under its own key prefix of the same etcd members), the changes
alternate between them in blocks of ten, and one failing region is detected by both, so a busy
machine weighs on both alike.

Real etcd (Debian's etcd-server, three members), real `dashboard serve` processes, the simulated
fleet; everything on loopback, bounded in count and time, stopped at the end.

    .venv/bin/python bench/cluster.py [--changes 100] [--detections 5] [--baseline DIR]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.failover import Watcher
from dashboard.demo.simulator import SimulatedFleet
from tests.cluster_helpers import Instance
from tests.etcd_helpers import EtcdCluster
from tests.routing_helpers import BEARER

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]


def wait_for(check, timeout: float = 30.0, interval: float = 0.001) -> float:
    """Seconds until `check()` is true (polling every `interval`); raises after `timeout`."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("condition not met")
        time.sleep(interval)
    return time.perf_counter() - start


class CommitWatch:
    """The bench's own etcd watch on a cluster's `routing/version`: when each version was committed
    (seen from outside, as C's watch sees it), to split a change's time into A's part (until the
    commit) and C's part (the commit until C's file)."""

    def __init__(self, endpoint: str, key_prefix: str) -> None:
        self.seen: dict[int, float] = {}
        self._cond = threading.Condition()
        self._client = httpx.Client(timeout=httpx.Timeout(5.0, read=None))
        key = base64.b64encode(f"{key_prefix}routing/version".encode()).decode()
        self._thread = threading.Thread(target=self._run, args=(endpoint, key), name="commit-watch", daemon=True)
        self._thread.start()

    def _run(self, endpoint: str, key: str) -> None:
        try:
            with self._client.stream("POST", endpoint + "/v3/watch", json={"create_request": {"key": key}}) as stream:
                for line in stream.iter_lines():
                    at = time.perf_counter()
                    for event in json.loads(line).get("result", {}).get("events", []):
                        version = int(base64.b64decode(event["kv"].get("value", "")) or 0)
                        with self._cond:
                            self.seen.setdefault(version, at)
                            self._cond.notify_all()
        except (httpx.HTTPError, RuntimeError):  # closed at the end
            pass

    def wait_for(self, version: int, timeout: float = 30.0) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: version in self.seen, timeout):
                raise TimeoutError(f"etcd never reported version {version}")
            return self.seen[version]

    def close(self) -> None:
        self._client.close()


@dataclass
class Side:
    """One checkout's instances (A writes, C reads), and what was measured on them."""

    name: str
    writer: Instance
    reader: Instance
    to_file: list[float] = field(default_factory=list)  # ms: request sent -> C's file has the version
    to_answer: list[float] = field(default_factory=list)  # ms: request sent -> A's answer read
    detections: list[float] = field(default_factory=list)  # s: region failing -> C says down
    commits: CommitWatch | None = None  # cluster mode: when etcd reports each version committed
    to_commit: list[float] = field(default_factory=list)  # ms: request sent -> the commit seen
    commit_to_file: list[float] = field(default_factory=list)  # ms: the commit seen -> C's file has it
    version: int = 0


def propagation(side: Side, client: httpx.Client, watcher: Watcher, changes: int) -> None:
    """`changes` changes on the side's writer, each timed until its reader's routing file has it."""
    for _ in range(changes):
        i = side.version
        start = time.perf_counter()
        if i % 2 == 0:
            answer = client.post(side.writer.url + "/api/v1/routing/overrides", headers=BEARER,
                                 json={"region": "eu-west-1", "reason": f"bench {i}", "confirm_healthy": True})
        else:
            answer = client.request("DELETE", side.writer.url + "/api/v1/routing/overrides/eu-west-1",
                                    headers=BEARER, json={"reason": f"bench {i}"})
        answered = time.perf_counter()
        assert answer.status_code in (200, 201), answer.text
        side.version = version = answer.json()["version"]
        landed = watcher.wait_for(side.reader.routing_file.name, version, timeout=30)
        side.to_file.append((landed - start) * 1000)
        side.to_answer.append((answered - start) * 1000)
        if side.commits is not None:
            committed = side.commits.wait_for(version)
            side.to_commit.append((committed - start) * 1000)
            side.commit_to_file.append((landed - committed) * 1000)


def detection(fleet: SimulatedFleet, sides: list[Side], times: int) -> None:
    """Seconds from a region starting to fail until each side's reader says it is down (then it
    recovers); every side watches the same failure."""
    for _ in range(times):
        fleet.set("ap-southeast-1", mode="http_500")
        start = time.perf_counter()
        waiting = list(sides)
        while waiting:
            for side in list(waiting):
                if side.reader.states()["ap-southeast-1"] == "down":
                    side.detections.append(time.perf_counter() - start)
                    waiting.remove(side)
            if time.perf_counter() - start > 60:
                raise TimeoutError("a region never turned down")
            time.sleep(0.02)
        fleet.reset("ap-southeast-1")
        for side in sides:
            wait_for(lambda s=side: s.reader.states()["ap-southeast-1"] == "up", interval=0.05)


def measure(sides: list[Side], fleet: SimulatedFleet, changes: int, detections: int) -> None:
    """Changes in blocks of ten, taking turns between the sides; then the detections."""
    watchers = {side.name: Watcher(side.reader.directory, "auto").start([side.reader.routing_file.name])
                for side in sides}
    try:
        with httpx.Client(timeout=15) as client:
            for side in sides:
                # The token's first check pays werkzeug's password hash; this warm-up (a failback of
                # nothing, refused) pays it outside the timings, as bench/failover.py does.
                refused = client.request("DELETE", side.writer.url + "/api/v1/routing/overrides/eu-west-1",
                                         headers=BEARER, json={"reason": "warm-up"})
                assert refused.status_code >= 400, refused.text
            done = 0
            while done < changes:
                block = min(10, changes - done)
                for side in sides:
                    propagation(side, client, watchers[side.name], block)
                done += block
    finally:
        for watcher in watchers.values():
            watcher.stop()
    detection(fleet, sides, detections)


def wait_until_polling(instances: list[Instance], cluster: bool) -> None:
    """Every instance sees every region up and, in a cluster, every instance's own poller (which
    holds its routing watch) has written its verdicts: before that, the agreed states can look
    fine while an instance's poller is still starting."""
    for instance in instances:
        wait_for(lambda i=instance: set(i.states().values()) == {"up"}, interval=0.1)
        if cluster:
            wait_for(lambda i=instance: any(m["name"] == i.region and m["live"]
                                            for m in i.json("/api/v1/cluster")["members"]), interval=0.1)


def git_commit(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "describe", "--always", "--dirty"], capture_output=True,
                          text=True, check=True).stdout.strip()


def summary(name: str, figures: list[float], unit: str) -> str:
    if not figures:
        return f"{name:<70} n=0"
    ordered = sorted(figures)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return (f"{name:<70} n={len(figures):<4} median {statistics.median(figures):8.1f} {unit}   "
            f"p95 {p95:8.1f} {unit}   max {max(figures):8.1f} {unit}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--detections", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code before the change, measured beside")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "dashboard" / "cli.py").exists():
        parser.error(f"--baseline: {args.baseline} is not a checkout of the dashboard")
    checkouts = [(f"today {git_commit(REPO_ROOT)}", REPO_ROOT)]
    if args.baseline is not None:
        checkouts.insert(0, (f"baseline {git_commit(args.baseline)}", args.baseline.resolve()))
    lines = []
    with tempfile.TemporaryDirectory() as folder, SimulatedFleet(REGIONS, primary_region="us-east-1") as fleet:
        root = Path(folder)
        standalone = [Instance(root / f"standalone-{n}", fleet, "us-east-1", [], code=code, cluster=None)
                      for n, (_, code) in enumerate(checkouts)]
        try:
            for instance in standalone:
                instance.start()
            wait_until_polling(standalone, cluster=False)
            sides = [Side(name, i, i) for (name, _), i in zip(checkouts, standalone, strict=True)]
            measure(sides, fleet, args.changes, args.detections)
            for side in sides:
                lines.append(summary(f"{side.name}: standalone: change -> own routing file", side.to_file, "ms"))
                lines.append(summary(f"{side.name}: standalone: change -> answer", side.to_answer, "ms"))
                lines.append(summary(f"{side.name}: standalone: failing -> down", side.detections, "s"))
        finally:
            for instance in standalone:
                instance.stop()
        with EtcdCluster(root / "etcd", size=3) as etcd:
            sets = [[Instance(root / f"cluster-{n}" / r, fleet, r, etcd.endpoints, code=code,
                              probe_source_address=f"127.0.0.{11 + i}",
                              cluster={"etcd_endpoints": etcd.endpoints, "key_prefix": f"/bench-{n}/"})
                     for i, r in enumerate(REGIONS)] for n, (_, code) in enumerate(checkouts)]
            try:
                for instances in sets:
                    for instance in instances:
                        instance.start()
                for instances in sets:
                    wait_until_polling(instances, cluster=True)
                sides = [Side(name, instances[0], instances[2],
                              commits=CommitWatch(etcd.endpoints[0], f"/bench-{n}/"))
                         for n, ((name, _), instances) in enumerate(zip(checkouts, sets, strict=True))]
                try:
                    measure(sides, fleet, args.changes, args.detections)
                finally:
                    for side in sides:
                        if side.commits is not None:
                            side.commits.close()
                for side in sides:
                    lines.append(summary(f"{side.name}: cluster: change on A -> C's routing file", side.to_file, "ms"))
                    lines.append(summary(f"{side.name}: cluster: change on A -> A's answer", side.to_answer, "ms"))
                    lines.append(summary(f"{side.name}: cluster: change on A -> commit seen in etcd", side.to_commit,
                                         "ms"))
                    lines.append(summary(f"{side.name}: cluster: commit seen in etcd -> C's routing file",
                                         side.commit_to_file, "ms"))
                    lines.append(summary(f"{side.name}: cluster: failing -> down (agreed, on C)", side.detections,
                                         "s"))
            finally:
                for instances in sets:
                    for instance in instances:
                        instance.stop()
        print("poll interval 1 s, failure_threshold 3, verdict TTL 3 s; three etcd members on loopback; "
              f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        # Each figure's lines together, the baseline's first (a stable sort on the figure's name).
        for line in sorted(lines, key=lambda text: text.split(": ", 1)[1].split(" n=")[0].rstrip()):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
