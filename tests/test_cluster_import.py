"""A routing table the cluster does not have is carried from an instance's own copy, with real etcd:
a standalone install moved to cluster mode brings its overrides, instances starting at once import
once, and an emptied etcd never rolls a router back (its version goes on above what routers hold)."""
from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard.cluster import BREAK_GLASS_STATE, EtcdControl, record_break_glass
from dashboard.config import load_settings
from dashboard.demo.simulator import SimulatedFleet
from dashboard.etcd import EtcdClient, delete_op
from dashboard.model import NewEvent, Override
from dashboard.store import Store

from .cluster_helpers import Instance
from .conftest import REGIONS, deployment_block, wait_until, write_config
from .etcd_helpers import EtcdCluster, require_etcd


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    binary = require_etcd()
    with EtcdCluster(tmp_path_factory.mktemp("etcd-import"), size=1, binary=binary) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def import_fleet() -> Iterator[SimulatedFleet]:
    with SimulatedFleet(REGIONS, primary_region="us-east-1") as running:
        yield running


def _audit(etcd: EtcdCluster, prefix: str) -> list[dict]:
    """The cluster's audit trail under `prefix`, oldest first, read straight from etcd."""
    kvs, _ = EtcdClient(etcd.endpoints).get_prefix(f"{prefix}audit/")
    return [json.loads(kv.value) for kv in kvs]


def _cluster_version(etcd: EtcdCluster, prefix: str) -> int | None:
    found = EtcdClient(etcd.endpoints).get(f"{prefix}routing/version")
    return None if found is None else int(found.value)


def _routing_kinds(instance: Instance) -> list[str]:
    """The kinds of the routing events in an instance's own history, newest first."""
    return [e["kind"] for e in instance.json("/api/v1/events?limit=100")["events"]
            if e["kind"] in ("failover", "failback", "lapse", "imported", "version_raised", "superseded")]


def _override(region: str, *, until: float | None = None, reason: str = "standalone drill") -> Override:
    return Override(region=region, target_region="us-east-1", read_only=True, reason=reason, actor="alice",
                    since=time.time(), until=until, forced=False)


def _commit(store: Store, override: Override | None = None, delete: str | None = None) -> int:
    """A standalone change on the instance's own database, as `dashboard failover` makes it."""
    version = store.routing().version
    kind = "failover" if override is not None else "failback"
    region = override["region"] if override is not None else delete
    event = NewEvent(at=time.time(), region=region, kind=kind, reason="standalone drill", actor="alice",
                     details={"version": version + 1})
    made = store.commit_routing(version, event=event, now=time.time(), put=override, delete=delete)
    assert made == version + 1
    return made


def test_a_standalone_install_moved_to_cluster_mode_carries_its_overrides_to_every_instance(
        etcd: EtcdCluster, import_fleet: SimulatedFleet, tmp_path: Path) -> None:
    prefix = "/import-standalone/"
    # A standalone install with a history: v3, one override in force and one that has expired.
    standalone = Instance(tmp_path / "eu-west-1", import_fleet, "eu-west-1", [], cluster=None)
    store = Store(standalone.directory / "dashboard.db")
    try:
        _commit(store, _override("ap-southeast-1"))
        _commit(store, _override("eu-west-1", until=time.time() - 60))
        _commit(store, _override("eu-west-1", until=time.time() - 60, reason="renewed, expired again"))
        assert store.routing().version == 3
    finally:
        store.close()
    cluster = {"etcd_endpoints": etcd.endpoints, "key_prefix": prefix}
    moved = Instance(standalone.directory, import_fleet, "eu-west-1", etcd.endpoints, cluster=cluster).start()
    joined = Instance(tmp_path / "us-east-1", import_fleet, "us-east-1", etcd.endpoints, cluster=cluster)
    try:
        table = moved.json("/api/v1/routing")
        assert table["version"] == 4
        assert table["regions"]["ap-southeast-1"]["override"]["reason"] == "standalone drill"
        assert table["regions"]["eu-west-1"]["override"] is None  # expired: not carried
        assert _cluster_version(etcd, prefix) == 4
        audit = _audit(etcd, prefix)
        assert [e["kind"] for e in audit] == ["imported"]
        assert audit[0]["actor"] == "instance:eu-west-1"
        assert audit[0]["details"] == {
            "version": 4, "instance": "eu-west-1", "local_version": 3, "expired": ["eu-west-1"], "break_glass": None,
            "overrides": {"ap-southeast-1": {"target_region": "us-east-1", "read_only": True}}}
        assert "expired, not imported: eu-west-1" in audit[0]["reason"]
        wait_until(lambda: moved.routing_file_version() == 4, "the moved instance's routing file at v4")
        # Its own history (the standalone audit trail) stays, with the import after it.
        assert _routing_kinds(moved) == ["imported", "failover", "failover", "failover"]
        # A new instance joining the cluster publishes the imported table; nothing more is imported.
        joined.start()
        wait_until(lambda: joined.routing_file_version() == 4, "the joined instance's routing file at v4")
        published = json.loads(joined.routing_file.read_text())
        assert published["regions"]["ap-southeast-1"]["override"]["reason"] == "standalone drill"
        assert _routing_kinds(joined) == ["imported"]
        assert [e["kind"] for e in _audit(etcd, prefix)] == ["imported"]
    finally:
        joined.stop()
        moved.stop()


def _control(etcd: EtcdCluster, tmp_path: Path, name: str, prefix: str) -> tuple[EtcdControl, Store]:
    path = write_config(tmp_path / f"{name}.yaml", {**deployment_block(REGIONS), "region": name},
                        database=f"{name}.db", cluster={"etcd_endpoints": etcd.endpoints, "key_prefix": prefix})
    settings = load_settings(str(path), environ={})
    store = Store(settings.database_path)
    return EtcdControl(settings, EtcdClient.for_settings(settings, environ={}), store), store


def test_two_instances_with_local_tables_starting_at_once_import_once_and_end_above_both(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    prefix = "/import-race/"
    first, first_store = _control(etcd, tmp_path, "eu-west-1", prefix)
    second, second_store = _control(etcd, tmp_path, "ap-southeast-1", prefix)
    try:
        _commit(first_store, _override("eu-west-1", reason="first's table"))  # v1
        for _ in range(2):  # v4, with ap-southeast-1 overridden
            _commit(second_store, _override("ap-southeast-1", reason="second's table"))
            _commit(second_store, delete="ap-southeast-1")
        _commit(second_store, _override("ap-southeast-1", reason="second's table"))
        assert (first_store.routing().version, second_store.routing().version) == (1, 5)
        start = threading.Barrier(2)
        seen = {}

        def read(name: str, control: EtcdControl) -> None:
            start.wait()
            seen[name] = control.routing()

        threads = [threading.Thread(target=read, args=pair) for pair in [("first", first), ("second", second)]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        audit = _audit(etcd, prefix)
        assert [e["kind"] for e in audit].count("imported") == 1, audit
        winner = next(e for e in audit if e["kind"] == "imported")["details"]["instance"]
        # Whoever won, both instances end on one table, above every version either of them held.
        assert seen["second"].version == 6  # the one that held v5 never returns less than v6
        final = first.routing()
        assert final == second.routing() == first_store.routing() == second_store.routing()
        assert final.version == 6
        reason = "first's table" if winner == "eu-west-1" else "second's table"
        assert [o["reason"] for o in final.overrides] == [reason]
        if winner == "eu-west-1":  # imported at v2, below second's v5: second raised it
            assert [e["kind"] for e in audit] == ["imported", "version_raised"]
            assert audit[1]["details"]["instance"] == "ap-southeast-1"
    finally:
        first_store.close()
        second_store.close()


def test_a_break_glass_change_made_before_the_cluster_came_back_empty_is_carried_not_superseded(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    control, store = _control(etcd, tmp_path, "eu-west-1", "/import-break-glass/")
    try:
        _commit(store, _override("eu-west-1", reason="failover --local"))
        record_break_glass(store, "oncall", "failover eu-west-1 --local", 1)
        snap = control.routing()
        assert snap.version == 2 and [o["reason"] for o in snap.overrides] == ["failover --local"]
        audit = _audit(etcd, "/import-break-glass/")
        assert [e["kind"] for e in audit] == ["imported"]
        assert audit[0]["details"]["break_glass"]["actor"] == "oncall"
        assert not store.get_state(BREAK_GLASS_STATE)
        assert control.routing().version == 2  # nothing superseded afterwards
    finally:
        store.close()


def test_a_cluster_table_older_than_an_instances_copy_stands_at_a_version_above_it(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    """etcd restored from an older backup: its table wins, but routers holding v3 must take it."""
    prefix = "/import-restored/"
    control, store = _control(etcd, tmp_path, "eu-west-1", prefix)
    try:
        for version in range(3):
            region = "eu-west-1" if version % 2 == 0 else None
            event = NewEvent(at=time.time(), region="eu-west-1", kind="failover" if region else "failback",
                             reason="drill", actor="alice", details={"version": version + 1})
            put = _override("eu-west-1", reason="in the backup") if region else None
            assert control.commit_routing(version, event=event, now=time.time(), put=put,
                                          delete=None if region else "eu-west-1") == version + 1
        assert store.routing().version == 3 and store.routing().overrides[0]["reason"] == "in the backup"
        # The backup was taken at v2 (no override); put it back as etcd's restore would.
        EtcdClient(etcd.endpoints).put(f"{prefix}routing/version", "2")
        EtcdClient(etcd.endpoints).txn([], [delete_op(f"{prefix}routing/overrides/eu-west-1")])
        snap = control.routing()
        assert (snap.version, snap.overrides) == (4, [])
        assert store.routing() == snap
        raised = _audit(etcd, prefix)[-1]
        assert raised["kind"] == "version_raised"
        assert {k: raised["details"][k] for k in ("cluster_version", "local_version", "cluster", "local")} == {
            "cluster_version": 2, "local_version": 3, "cluster": {},
            "local": {"eu-west-1": {"target_region": "us-east-1", "read_only": True}}}
    finally:
        store.close()


def test_an_emptied_etcd_takes_the_table_back_above_the_routers_version_and_no_file_goes_back(
        import_fleet: SimulatedFleet, tmp_path: Path) -> None:
    binary = require_etcd()
    prefix = "/import-emptied/"
    with EtcdCluster(tmp_path / "etcd", size=1, binary=binary) as etcd:
        cluster = {"etcd_endpoints": etcd.endpoints, "key_prefix": prefix}
        instances = [Instance(tmp_path / region, import_fleet, region, etcd.endpoints, cluster=cluster)
                     for region in ("us-east-1", "eu-west-1")]
        a, b = instances
        try:
            for instance in instances:
                instance.start()
            for instance in instances:
                wait_until(lambda i=instance: set(i.states().values()) == {"up"}, f"{instance.region} sees all up",
                           timeout=30)
            # Five changes: the routers hold v5, with ap-southeast-1 overridden.
            for region, method in [("eu-west-1", "POST"), ("eu-west-1", "DELETE")] * 2 + [("ap-southeast-1", "POST")]:
                if method == "POST":
                    answer = a.send("POST", "/api/v1/routing/overrides",
                                    {"region": region, "reason": "before the loss", "confirm_healthy": True})
                    assert answer.status_code == 201, answer.text
                else:
                    answer = a.send("DELETE", f"/api/v1/routing/overrides/{region}", {"reason": "failback"})
                    assert answer.status_code == 200, answer.text
            for instance in instances:
                wait_until(lambda i=instance: i.routing_file_version() == 5, f"{instance.region}'s routing file at v5")
            # Watch every routing file while etcd's data is lost and the table comes back.
            seen: dict[str, list[int]] = {i.region: [] for i in instances}
            done = threading.Event()

            def watch() -> None:
                while not done.is_set():
                    for instance in instances:
                        version = instance.routing_file_version()
                        if version is not None and (not seen[instance.region] or seen[instance.region][-1] != version):
                            seen[instance.region].append(version)
                    done.wait(0.01)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                member = etcd.members[0]
                member.stop()
                shutil.rmtree(member.directory / "data")
                member.start()
                etcd.wait_healthy()
                for instance in instances:
                    wait_until(lambda i=instance: (i.routing_file_version() or 0) > 5,
                               f"{instance.region}'s routing file above v5", timeout=30)
            finally:
                done.set()
                watcher.join(10)
            version = _cluster_version(etcd, prefix)
            assert version is not None and version > 5
            audit = _audit(etcd, prefix)
            assert [e["kind"] for e in audit] == ["imported"], audit
            assert audit[0]["details"]["local_version"] == 5
            assert audit[0]["details"]["overrides"] == {"ap-southeast-1": {"target_region": "us-east-1",
                                                                           "read_only": True}}
            for instance in instances:
                wait_until(lambda i=instance: i.routing_file_version() == version,
                           f"{instance.region}'s routing file at v{version}")
                published = json.loads(instance.routing_file.read_text())
                assert published["regions"]["ap-southeast-1"]["override"]["reason"] == "before the loss"
                assert seen[instance.region] == sorted(seen[instance.region]), seen
                assert seen[instance.region][0] == 5
            # And the cluster goes on from there: a change is one version further on every instance.
            answer = b.send("DELETE", "/api/v1/routing/overrides/ap-southeast-1", {"reason": "after the loss"})
            assert answer.status_code == 200, answer.text
            for instance in instances:
                wait_until(lambda i=instance: i.routing_file_version() == version + 1,
                           f"{instance.region}'s routing file at v{version + 1}")
        finally:
            for instance in instances:
                instance.stop()
