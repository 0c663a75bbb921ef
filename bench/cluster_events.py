"""What the cluster's history costs each poll cycle, beside the cycle's cluster work without it.

After each cycle, the process that polls does its cluster work. Before the cluster events it was
`Vantages.write` + `cluster_transitions` (the baseline, still the first half of the step); now it is
`cluster_step`, which adds copying new cluster events and maintenance audit events (two etcd range
reads that find nothing new in a quiet cycle) and, on the leader, at most once a minute, the trim.
Both are timed here in one run, on the leader and on a follower, against three real etcd members on
loopback; then the trim of a prefix of `--entries` old entries, and one copy of `--entries` entries
into a fresh database. Not a timed test.

    .venv/bin/python bench/cluster_events.py [--cycles 200] [--entries 5000]
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

from dashboard.agreement import Agreed, Verdict
from dashboard.cluster import EtcdControl, Leadership, Vantages, cluster_step, cluster_transitions
from dashboard.cluster_events import ClusterEventLog
from dashboard.config import load_settings
from dashboard.etcd import EtcdClient
from dashboard.model import Transition
from dashboard.store import Store
from tests.conftest import deployment_block, write_config
from tests.etcd_helpers import EtcdCluster, etcd_binary

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]


def figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return f"median {statistics.median(ordered):6.2f} ms   p95 {p95:6.2f} ms   max {ordered[-1]:6.2f} ms"


def instance(root: Path, endpoints: list[str], name: str, prefix: str):
    path = write_config(root / f"{name}.yaml", {**deployment_block(REGIONS), "region": name},
                        database=f"{name}.db", raw_retention_hours=1,
                        cluster={"etcd_endpoints": endpoints, "key_prefix": prefix})
    settings = load_settings(str(path), environ={})
    store = Store(settings.database_path)
    etcd = EtcdClient.for_settings(settings, environ={})
    return settings, store, EtcdControl(settings, etcd, store), Vantages(settings, etcd, store)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--entries", type=int, default=5000)
    args = parser.parse_args()
    binary = etcd_binary()
    if binary is None:
        print("etcd not found: install Debian's etcd-server", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp, EtcdCluster(Path(tmp) / "etcd", size=3, binary=binary) as etcd:
        root = Path(tmp)
        made = [instance(root, etcd.endpoints, name, "/bench-events/") for name in REGIONS]
        leaderships = [Leadership(settings, vantages.etcd) for settings, _, _, vantages in made]
        assert leaderships[0].step(), "the first instance should win the election"
        for leadership in leaderships[1:]:
            leadership.step()
        print(f"cluster work after each cycle, {args.cycles} cycles each, three etcd members on loopback:")
        for index, role in ((0, "leader"), (1, "follower")):
            _, _, control, vantages = made[index]
            leadership = leaderships[index]
            baseline, step = [], []
            for _ in range(args.cycles):
                start = time.perf_counter()
                vantages.write()
                cluster_transitions(vantages, leadership)
                baseline.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                cluster_step(vantages, leadership, control)
                step.append((time.perf_counter() - start) * 1000)
            print(f"  {role:8s} baseline (verdicts + agreed changes): {figures(baseline)}")
            print(f"  {role:8s} cluster_step (+ copies, trim):        {figures(step)}")
        for _, store, _, _ in made:
            store.close()

        settings, store, _, vantages = instance(root, etcd.endpoints, "us-east-1", "/bench-trim/")
        log = ClusterEventLog(settings, vantages.etcd, store)
        views = {name: Verdict(name, "down", "HTTP 500", time.time()) for name in REGIONS}
        old = time.time() - 3600 - args.entries - 60  # every entry past the retention (1 h)
        for i in range(args.entries):
            change = Transition(REGIONS[i % 3], "up", "down", "down from every vantage point", old + i)
            vantages.etcd.txn([], [log.record_op(change, Agreed("down", "x", False, views), "us-east-1")])
        start = time.perf_counter()
        copied = log.copy_new()
        print(f"copy of {copied} cluster events into a fresh database: {(time.perf_counter() - start) * 1000:.0f} ms")
        vantages.etcd.put("/bench-trim/leader", "us-east-1")
        start = time.perf_counter()
        deleted = log.trim("/bench-trim/leader", "us-east-1")
        print(f"trim of {args.entries} old entries ({deleted} deleted, {args.entries - deleted} kept): "
              f"{(time.perf_counter() - start) * 1000:.0f} ms")
        start = time.perf_counter()
        log.trim("/bench-trim/leader", "us-east-1")
        print(f"trim with nothing to delete ({args.entries - deleted} entries): "
              f"{(time.perf_counter() - start) * 1000:.0f} ms")
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
