"""Cluster mode's costs, beside standalone's, on one machine (loopback): not a timed test.

1. Propagation: a routing change on instance A (POST /api/v1/routing/overrides, then DELETE),
   until instance C's routing file holds the new version: median and p95 over N changes (goal:
   p95 <= 100 ms on loopback). Standalone's figure: the change until its own routing file has it.
2. Detection: a region starts failing (HTTP 500) until the dashboard says `down`: standalone (its
   own view), and cluster mode (the agreed state on instance C: a quorum of vantage points).

Real etcd (Debian's etcd-server, three members), real `dashboard serve` processes, the simulated
fleet; everything on loopback, bounded in count and time, stopped at the end.

    .venv/bin/python bench/cluster.py [--changes 100] [--detections 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dashboard.demo.simulator import SimulatedFleet
from tests.cluster_helpers import Instance
from tests.etcd_helpers import EtcdCluster

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]


def wait_for(check, timeout: float = 30.0, interval: float = 0.001) -> float:
    """Seconds until `check()` is true (polling every `interval`); raises after `timeout`."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("condition not met")
        time.sleep(interval)
    return time.perf_counter() - start


def propagation(writer: Instance, reader: Instance, changes: int) -> tuple[list[float], list[float]]:
    """Milliseconds from sending each change to `writer` until `reader`'s routing file has it, and
    from `writer`'s answer (the change committed) until then."""
    figures, after_answer = [], []
    for i in range(changes):
        start = time.perf_counter()
        if i % 2 == 0:
            answer = writer.send("POST", "/api/v1/routing/overrides",
                                 {"region": "eu-west-1", "reason": f"bench {i}", "confirm_healthy": True})
        else:
            answer = writer.send("DELETE", "/api/v1/routing/overrides/eu-west-1", {"reason": f"bench {i}"})
        assert answer.status_code in (200, 201), answer.text
        version = answer.json()["version"]
        answered = time.perf_counter()
        wait_for(lambda v=version: (reader.routing_file_version() or 0) >= v)
        figures.append((time.perf_counter() - start) * 1000)
        after_answer.append((time.perf_counter() - answered) * 1000)
    return figures, after_answer


def detection(fleet: SimulatedFleet, reader: Instance, times: int) -> list[float]:
    """Seconds from a region starting to fail until `reader` says it is down (then it recovers)."""
    figures = []
    for _ in range(times):
        fleet.set("ap-southeast-1", mode="http_500")
        start = time.perf_counter()
        wait_for(lambda: reader.states()["ap-southeast-1"] == "down", interval=0.02)
        figures.append(time.perf_counter() - start)
        fleet.reset("ap-southeast-1")
        wait_for(lambda: reader.states()["ap-southeast-1"] == "up", interval=0.05)
    return figures


def summary(name: str, figures: list[float], unit: str) -> str:
    ordered = sorted(figures)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return (f"{name:<44} n={len(figures):<4} median {statistics.median(figures):8.1f} {unit}   "
            f"p95 {p95:8.1f} {unit}   max {max(figures):8.1f} {unit}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--detections", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, SimulatedFleet(REGIONS, primary_region="us-east-1") as fleet:
        root = Path(folder)
        lines = []
        standalone = Instance(root / "standalone", fleet, "us-east-1", [], cluster=None).start()
        try:
            wait_for(lambda: set(standalone.states().values()) == {"up"}, interval=0.1)
            total, _ = propagation(standalone, standalone, args.changes)
            lines.append(summary("standalone: change -> own routing file", total, "ms"))
            lines.append(summary("standalone: failing -> down", detection(fleet, standalone, args.detections), "s"))
        finally:
            standalone.stop()
        with EtcdCluster(root / "etcd", size=3) as etcd:
            instances = [Instance(root / r, fleet, r, etcd.endpoints, probe_source_address=f"127.0.0.{11 + i}")
                         for i, r in enumerate(REGIONS)]
            try:
                for instance in instances:
                    instance.start()
                for instance in instances:
                    wait_for(lambda i=instance: set(i.states().values()) == {"up"}, interval=0.1)
                a, c = instances[0], instances[2]
                total, after_answer = propagation(a, c, args.changes)
                lines.append(summary("cluster: change on A -> C's routing file", total, "ms"))
                lines.append(summary("cluster: A's answer -> C's routing file", after_answer, "ms"))
                lines.append(summary("cluster: failing -> down (agreed, on C)", detection(fleet, c, args.detections),
                                     "s"))
            finally:
                for instance in instances:
                    instance.stop()
        print("poll interval 1 s, failure_threshold 3, verdict TTL 3 s; three etcd members on loopback")
        for line in lines:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
