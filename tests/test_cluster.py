"""Cluster mode end to end: three real etcd members and three `dashboard serve` instances (one per
simulated region) on loopback, started once for the module and shared by its tests (each test
leaves the routing table as it found it)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bs4 import BeautifulSoup

from dashboard.agreement import Agreed, Verdict
from dashboard.cluster import EtcdControl, applied_summary
from dashboard.cluster_events import (
    EVENTS_WATERMARK,
    KEEP_PER_REGION,
    MAINTENANCE_WATERMARK,
    VERDICT_FIELD,
    ClusterEventLog,
    cluster_event_of,
)
from dashboard.config import load_settings
from dashboard.control import ControlUnavailable
from dashboard.demo.simulator import SimulatedFleet
from dashboard.etcd import EtcdClient, prefix_end
from dashboard.model import MaintenanceWindow, NewEvent, Override, Transition
from dashboard.store import Store

from .cluster_helpers import Instance
from .conftest import REGIONS, deployment_block, wait_until, write_config
from .etcd_helpers import EtcdCluster, require_etcd
from .test_notify import Receiver
from .web_helpers import Dash

VANTAGE_ADDRESSES = {region: f"127.0.0.{11 + i}" for i, region in enumerate(REGIONS)}


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    binary = require_etcd()
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), size=3, binary=binary) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster_fleet() -> Iterator[SimulatedFleet]:
    with SimulatedFleet(REGIONS, primary_region="us-east-1") as running:
        yield running


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """One webhook receiver for every instance: the cluster's notices must arrive once, not once each."""
    running = Receiver()
    yield running
    running.close()


@pytest.fixture(scope="module")
def instances(etcd: EtcdCluster, cluster_fleet: SimulatedFleet, receiver: Receiver,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Instance]]:
    """One instance per region, each polling the whole fleet; returned once every instance sees every
    region up (a failover target must have been polled)."""
    root = tmp_path_factory.mktemp("instances")
    # Each instance probes from its own loopback address, so the fleet can partition one of them.
    notifications = {"webhooks": [{"name": "ops", "url": receiver.url}], "min_interval_seconds": 0}
    made = {region: Instance(root / region, cluster_fleet, region, etcd.endpoints, notifications=notifications,
                             probe_source_address=VANTAGE_ADDRESSES[region]) for region in REGIONS}
    try:
        for instance in made.values():
            instance.start()
        for instance in made.values():
            wait_until(lambda i=instance: set(i.states().values()) == {"up"}, f"{instance.region} sees all up",
                       timeout=30)
        yield made
    finally:
        for instance in made.values():
            instance.stop()


def _region(instance: Instance, region: str) -> dict:
    return next(r for r in instance.json("/api/v1/status")["regions"] if r["region"] == region)


def test_every_instance_shows_every_vantage_points_view_beside_the_agreed_state(
        instances: dict[str, Instance]) -> None:
    for instance in instances.values():
        row = wait_until(lambda i=instance: (r := _region(i, "eu-west-1")) and len(r["vantage"]) == 3 and r,
                         f"{instance.region} sees three vantage points")
        assert (row["state"], row["disputed"]) == ("up", False)
        assert {name: view["state"] for name, view in row["vantage"].items()} == dict.fromkeys(REGIONS, "up")


def _state_notices(receiver: Receiver, region: str, new_state: str) -> list[dict]:
    return [r.body for r in receiver.delivered()
            if r.body["kind"] == "state_change" and r.body["region"] == region and r.body["new_state"] == new_state]


def _cluster_events(instance: Instance, region: str, new_state: str) -> list[dict]:
    return [e for e in instance.json(f"/api/v1/events?region={region}&limit=500")["events"]
            if e["kind"] == "cluster_state" and e["new_state"] == new_state]


def test_a_region_down_for_every_vantage_point_is_down_on_every_instance(
        instances: dict[str, Instance], cluster_fleet: SimulatedFleet, receiver: Receiver) -> None:
    before = len(_state_notices(receiver, "eu-west-1", "down"))
    events_before = {name: (len(_cluster_events(i, "eu-west-1", "down")), len(_cluster_events(i, "eu-west-1", "up")))
                     for name, i in instances.items()}
    cluster_fleet.set("eu-west-1", mode="http_500")
    try:
        for instance in instances.values():
            # failure_threshold (3) x interval (1 s), plus a cycle for the last verdict to arrive
            row = wait_until(lambda i=instance: (r := _region(i, "eu-west-1"))["state"] == "down" and r,
                             f"eu-west-1 down on {instance.region}", timeout=20)
            # Down as soon as a majority sees it so (the third vantage point may be a cycle behind).
            assert row["disputed"] is False
            assert row["reason"].startswith("down from ")
            row = wait_until(lambda i=instance: (r := _region(i, "eu-west-1"))["reason"].startswith(
                "down from every vantage point") and r, f"every vantage point's view on {instance.region}")
            assert {view["state"] for view in row["vantage"].values()} == {"down"}
        # One notice for the cluster, from its leader, however many instances saw it.
        wait_until(lambda: len(_state_notices(receiver, "eu-west-1", "down")) > before, "the down notice")
        assert len(_state_notices(receiver, "eu-west-1", "down")) == before + 1
    finally:
        cluster_fleet.reset("eu-west-1")
    for instance in instances.values():
        wait_until(lambda i=instance: _region(i, "eu-west-1")["state"] == "up", f"eu-west-1 up on {instance.region}",
                   timeout=20)
    # The cluster's history: the agreed change is one event on every instance (copied from the
    # leader's record), not one per vantage point; the change back to up came after it.
    for name, instance in instances.items():
        down_before, up_before = events_before[name]
        wait_until(lambda i=instance, n=up_before: len(_cluster_events(i, "eu-west-1", "up")) > n,
                   f"the cluster's change back to up in {name}'s history", timeout=20)
        downs = _cluster_events(instance, "eu-west-1", "down")
        assert len(downs) == down_before + 1, downs
        assert downs[0]["actor"] == "cluster" and downs[0]["reason"].startswith("down from ")
        assert set(downs[0]["details"]["vantage"]) == set(REGIONS)
        # The events page shows it as the cluster's change, with the views it was agreed from.
        page = BeautifulSoup(instance.get("/events?region=eu-west-1&limit=500").text, "html.parser")
        row = page.select_one(f'tr.event-cluster_state[data-event-id="{downs[0]["id"]}"]')
        assert row is not None and row.select_one(".tag-cluster") is not None
        assert {li["data-vantage"] for li in row.select(".event-vantage li")} == set(REGIONS)


def test_a_region_failing_from_one_vantage_point_only_is_nowhere_down_and_disputed_everywhere(
        instances: dict[str, Instance], cluster_fleet: SimulatedFleet) -> None:
    cut_off = REGIONS[0]
    cluster_fleet.set("ap-southeast-1", partitioned_from=[VANTAGE_ADDRESSES[cut_off]])
    try:
        for instance in instances.values():
            row = wait_until(lambda i=instance: (r := _region(i, "ap-southeast-1"))["disputed"] and r,
                             f"ap-southeast-1 disputed on {instance.region}", timeout=20)
            assert row["state"] == "degraded"
            assert row["reason"].startswith(f"down from {cut_off} only; up from ")
            assert row["vantage"][cut_off]["state"] == "down"
            assert row["markers"]["disputed"] == row["reason"]
        # The region page shows who sees what.
        page = BeautifulSoup(instances[REGIONS[1]].get("/regions/ap-southeast-1").text, "html.parser")
        rows = {tr["data-vantage"]: tr.select_one(".vantage-state").get_text(strip=True)
                for tr in page.select("#vantage-table tr.vantage-row")}
        assert rows == {cut_off: "down", REGIONS[1]: "up", REGIONS[2]: "up"}
        assert page.select_one(".tag-disputed") is not None
        # Nowhere down: a failover that needs it down (a healthy region) is still refused everywhere.
        refused = instances[REGIONS[2]].send("POST", "/api/v1/routing/overrides",
                                             {"region": "ap-southeast-1", "reason": "it is down, surely"})
        assert refused.status_code == 409 and refused.json()["error"] == "region_disputed"
        assert all(_region(i, "ap-southeast-1")["state"] != "down" for i in instances.values())
    finally:
        cluster_fleet.reset("ap-southeast-1")
    for instance in instances.values():
        wait_until(lambda i=instance: not _region(i, "ap-southeast-1")["disputed"],
                   f"ap-southeast-1 no longer disputed on {instance.region}", timeout=20)


def _version(instance: Instance) -> int:
    return int(instance.json("/api/v1/routing")["version"])


def _fail_back_everything(instance: Instance) -> None:
    for region, entry in instance.json("/api/v1/routing")["regions"].items():
        if entry["override"] is not None:
            answer = instance.send("DELETE", f"/api/v1/routing/overrides/{region}", {"reason": "test cleanup"})
            assert answer.status_code == 200, answer.text


def test_two_concurrent_changes_on_two_instances_one_wins_and_every_routing_file_converges(
        instances: dict[str, Instance]) -> None:
    a, b, c = (instances[region] for region in REGIONS)
    version = _version(a)
    assert _version(b) == version == _version(c)
    start = threading.Barrier(2)
    answers: dict[str, httpx.Response] = {}

    def change(instance: Instance, region: str) -> None:
        start.wait()
        answers[instance.region] = instance.send("POST", "/api/v1/routing/overrides", {
            "region": region, "reason": f"drill from {instance.region}", "confirm_healthy": True,
            "expected_version": version})

    threads = [threading.Thread(target=change, args=(a, "eu-west-1")),
               threading.Thread(target=change, args=(b, "ap-southeast-1"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert sorted(r.status_code for r in answers.values()) == [201, 409], {k: r.text for k, r in answers.items()}
        loser = next(r for r in answers.values() if r.status_code == 409)
        assert loser.json()["error"] == "conflict"
        winner = next(name for name, r in answers.items() if r.status_code == 201)
        # Every instance, the one that took no part included, publishes the winning table.
        for instance in instances.values():
            wait_until(lambda i=instance: i.routing_file_version() == version + 1,
                       f"{instance.region}'s routing file at version {version + 1}")
            assert _version(instance) == version + 1
        overridden = [r for r, e in c.json("/api/v1/routing")["regions"].items() if e["override"]]
        assert overridden == ["eu-west-1" if winner == a.region else "ap-southeast-1"]
        # The audit trail is the cluster's: the third instance shows who made the change, and where.
        event = wait_until(lambda: next((e for e in c.json("/api/v1/events?limit=50")["events"]
                                         if e["kind"] == "failover" and e["details"]["version"] == version + 1),
                                        None), "the failover in the third instance's history")
        assert event["details"]["instance"] == winner
        assert event["reason"] == f"drill from {winner}"
        # Every instance reports what it applied; the routing page says who applied what.
        line = f"v{version + 1} applied by {', '.join(sorted(REGIONS))}"
        wait_until(lambda: (p := BeautifulSoup(c.get("/routing").text, "html.parser").select_one("#cluster-applied"))
                   and p.get_text(strip=True) == line, f"the routing page saying {line!r}")
    finally:
        _fail_back_everything(a)
    for instance in instances.values():
        wait_until(lambda i=instance: i.routing_file_version() == version + 2, f"{instance.region} failed back")


def test_a_maintenance_window_started_on_one_instance_is_in_force_on_every_instance(
        instances: dict[str, Instance]) -> None:
    a, _, c = (instances[region] for region in REGIONS)
    started = a.send("POST", "/api/v1/maintenance", {"region": "eu-west-1", "reason": "cluster drill",
                                                     "duration_minutes": 30})
    assert started.status_code == 201, started.text
    window_id = started.json()["id"]
    try:
        # The start is in every instance's history, once: copied from the cluster's audit trail.
        for instance in instances.values():
            wait_until(lambda i=instance: _maintenance_events(i, "maintenance_start", window_id),
                       f"the maintenance start in {instance.region}'s history")
        listed = c.json("/api/v1/maintenance")["windows"]
        assert [(w["id"], w["region"], w["reason"]) for w in listed] == [(window_id, "eu-west-1", "cluster drill")]
        assert "maintenance" in _region(c, "eu-west-1")["markers"]
        # Failing over to it is refused on the other instance too: the rule reads the shared windows.
        refused = c.send("POST", "/api/v1/routing/overrides", {"region": "ap-southeast-1", "target_region": "eu-west-1",
                                                              "reason": "drill", "confirm_healthy": True})
        assert (refused.status_code, refused.json()["error"]) == (409, "target_in_maintenance")
    finally:
        ended = c.send("DELETE", f"/api/v1/maintenance/{window_id}", {"reason": "drill over"})
    assert ended.status_code == 200, ended.text
    assert a.json("/api/v1/maintenance")["windows"] == []
    assert "maintenance" not in _region(a, "eu-west-1")["markers"]
    ended_on_a = wait_until(lambda: _maintenance_events(a, "maintenance_end", window_id),
                            "the end (on C) in A's history")
    assert ended_on_a[0]["details"]["instance"] == c.region and ended_on_a[0]["reason"] == "drill over"
    for instance in instances.values():
        wait_until(lambda i=instance: _maintenance_events(i, "maintenance_end", window_id),
                   f"the maintenance end in {instance.region}'s history")
        assert len(_maintenance_events(instance, "maintenance_start", window_id)) == 1
        assert len(_maintenance_events(instance, "maintenance_end", window_id)) == 1
    row = BeautifulSoup(c.get("/events?region=eu-west-1").text, "html.parser").select_one("tr.event-maintenance_start")
    assert row is not None and "cluster drill" in row.select_one(".event-reason").get_text()


def _maintenance_events(instance: Instance, kind: str, window_id: int) -> list[dict]:
    return [e for e in instance.json("/api/v1/events?limit=500")["events"]
            if e["kind"] == kind and (e["details"] or {}).get("window_id") == window_id]


def test_only_the_leader_lapses_an_expired_override_and_a_maintenance_window_once_cluster_wide(
        etcd: EtcdCluster, instances: dict[str, Instance], receiver: Receiver, tmp_path: Path) -> None:
    a, b, c = (instances[region] for region in REGIONS)
    leader = wait_until(lambda: a.json("/api/v1/cluster")["leader"], "a leader")
    # An override that expires in a moment (the API takes a minute at least: written here through
    # the same etcd control state the instances use, with the instances' key prefix).
    writer, store = _control(etcd.endpoints, tmp_path, "us-east-1", "/test-cluster/")
    try:
        version = writer.cluster_routing().version
        override = Override(region="eu-west-1", target_region="us-east-1", read_only=True, reason="short drill",
                            actor="t", since=time.time(), until=time.time() + 1, forced=False)
        event = NewEvent(at=time.time(), region="eu-west-1", kind="failover", reason="short drill", actor="t",
                         details={"version": version + 1})
        assert writer.commit_routing(version, event=event, now=time.time(), put=override) == version + 1
    finally:
        store.close()
    window = a.send("POST", "/api/v1/maintenance", {"region": "ap-southeast-1", "reason": "short window",
                                                    "duration_minutes": 0.02})
    assert window.status_code == 201, window.text
    window_id = window.json()["id"]
    followers = [i for i in instances.values() if i.region != leader]

    def lapsed_once_followers_read() -> bool:
        for follower in followers:  # reads that lapse what has expired, standalone; here the leader's work
            follower.json("/api/v1/routing")
            follower.json("/api/v1/maintenance")
        return bool(_maintenance_events(a, "maintenance_lapse", window_id)) and any(
            e["kind"] == "lapse" and e["details"]["version"] == version + 2
            for e in a.json("/api/v1/events?limit=500")["events"])

    wait_until(lapsed_once_followers_read, "the override and the window lapsed", timeout=30)
    for instance in instances.values():
        lapse = wait_until(lambda i=instance: [e for e in i.json("/api/v1/events?limit=500")["events"]
                                               if e["kind"] == "lapse" and e["details"]["version"] == version + 2],
                           f"the override's lapse in {instance.region}'s history", timeout=30)
        assert len(lapse) == 1 and lapse[0]["details"]["instance"] == leader
        over = wait_until(lambda i=instance: _maintenance_events(i, "maintenance_lapse", window_id),
                          f"the window's lapse in {instance.region}'s history", timeout=30)
        assert len(over) == 1 and over[0]["details"]["instance"] == leader
    assert all(e["override"] is None for e in b.json("/api/v1/routing")["regions"].values())
    assert c.json("/api/v1/cluster")["leader"] == leader  # the same leader all along
    # One notice of each, cluster-wide, from the leader.
    wait_until(lambda: [r for r in receiver.delivered() if r.body["kind"] == "lapse"
                        and r.body["details"]["version"] == version + 2], "the lapse notice")
    wait_until(lambda: [r for r in receiver.delivered() if r.body["kind"] == "maintenance_summary"
                        and r.body["details"]["window_id"] == window_id], "the maintenance summary")
    notices = [r.body for r in receiver.delivered()
               if (r.body["kind"] == "lapse" and r.body["details"]["version"] == version + 2)
               or (r.body["kind"] == "maintenance_summary" and r.body["details"]["window_id"] == window_id)]
    assert sorted(n["kind"] for n in notices) == ["lapse", "maintenance_summary"]


def test_a_change_on_one_instance_is_refused_by_the_rules_of_the_shared_table(
        instances: dict[str, Instance]) -> None:
    """Rules see the cluster's overrides, whichever instance is asked: no chain through another instance."""
    a, b = instances[REGIONS[0]], instances[REGIONS[1]]
    made = a.send("POST", "/api/v1/routing/overrides", {"region": "eu-west-1", "reason": "drill",
                                                        "confirm_healthy": True})
    try:
        assert made.status_code == 201, made.text
        chained = b.send("POST", "/api/v1/routing/overrides", {
            "region": "ap-southeast-1", "target_region": "eu-west-1", "reason": "chain", "confirm_healthy": True})
        assert chained.status_code == 409, chained.text
        assert chained.json()["error"] == "target_overridden"
    finally:
        _fail_back_everything(b)
    assert all(e["override"] is None for e in a.json("/api/v1/routing")["regions"].values())


def test_the_state_survives_a_restart_of_every_instance_and_every_etcd_member(
        etcd: EtcdCluster, instances: dict[str, Instance], tmp_path: Path) -> None:
    a = instances[REGIONS[0]]
    made = a.send("POST", "/api/v1/routing/overrides",
                  {"region": "ap-southeast-1", "reason": "restart drill", "confirm_healthy": True})
    assert made.status_code == 201, made.text
    version = made.json()["version"]
    try:
        for instance in instances.values():
            instance.stop()
        etcd.stop()
        etcd.start()
        for instance in instances.values():
            instance.start()
        for instance in instances.values():
            table = instance.json("/api/v1/routing")
            assert table["version"] == version
            assert table["regions"]["ap-southeast-1"]["override"]["reason"] == "restart drill"
            events = instance.json("/api/v1/events?limit=100")["events"]
            assert any(e["kind"] == "failover" and e["details"]["version"] == version for e in events)
        for instance in instances.values():
            wait_until(lambda i=instance: set(i.states().values()) == {"up"}, f"{instance.region} sees all up",
                       timeout=30)
            # What each instance copied from the cluster before the restart is not copied again.
            copied = [(e["kind"], e["region"], e["at"]) for e in instance.json("/api/v1/events?limit=500")["events"]
                      if e["kind"] == "cluster_state" or e["kind"].startswith("maintenance_")]
            assert copied and len(copied) == len(set(copied)), copied
    finally:
        _fail_back_everything(a)


def test_killing_the_leaders_instance_lapses_its_verdicts_elects_a_new_leader_and_notices_stay_single(
        instances: dict[str, Instance], cluster_fleet: SimulatedFleet, receiver: Receiver) -> None:
    report = wait_until(lambda: (r := instances[REGIONS[0]].json("/api/v1/cluster"))["leader"]
                        and sorted(m["name"] for m in r["members"] if m["live"]) == sorted(REGIONS) and r,
                        "a leader and three live members")
    assert report["mode"] == "cluster" and report["etcd"]["reachable"]
    victim = instances[report["leader"]]
    survivors = [i for i in instances.values() if i is not victim]
    victim.kill()
    try:
        for instance in survivors:
            # Its verdicts lapse (verdict TTL 3 s) and another instance leads (leader lease 3 s).
            wait_until(lambda i=instance: len(_region(i, "eu-west-1")["vantage"]) == 2,
                       f"{victim.region}'s verdicts lapsed on {instance.region}", timeout=20)
            wait_until(lambda i=instance: i.json("/api/v1/cluster")["leader"] in {s.region for s in survivors},
                       f"a new leader seen from {instance.region}", timeout=20)
        members = {m["name"]: m["live"] for m in survivors[0].json("/api/v1/cluster")["members"]}
        assert members[victim.region] is False
        before = len(_state_notices(receiver, "eu-west-1", "down"))
        cluster_fleet.set("eu-west-1", mode="http_500")
        for instance in survivors:
            wait_until(lambda i=instance: _region(i, "eu-west-1")["reason"].startswith("down from every vantage"),
                       f"eu-west-1 down from both survivors on {instance.region}", timeout=20)
        wait_until(lambda: len(_state_notices(receiver, "eu-west-1", "down")) > before, "the down notice")
        assert len(_state_notices(receiver, "eu-west-1", "down")) == before + 1
        metrics = survivors[0].get("/metrics").text
        assert "dashboard_cluster_etcd_reachable 1.0" in metrics
        assert "dashboard_cluster_live_vantage_points 2.0" in metrics
        health = survivors[0].json("/healthz")["cluster"]
        assert health["etcd_reachable"] and health["leader"] in {s.region for s in survivors}
    finally:
        cluster_fleet.reset("eu-west-1")
        victim.start()
    for instance in instances.values():
        wait_until(lambda i=instance: len(_region(i, "eu-west-1")["vantage"]) == 3
                   and _region(i, "eu-west-1")["state"] == "up", f"{instance.region} sees all three again",
                   timeout=30)


def test_losing_etcd_quorum_freezes_routing_until_break_glass_and_the_cluster_table_wins_on_return(
        etcd: EtcdCluster, instances: dict[str, Instance]) -> None:
    a, b = instances[REGIONS[0]], instances[REGIONS[1]]
    first, second = etcd.members[1], etcd.members[2]
    try:
        # One member of three gone: nothing changes.
        first.stop()
        made = a.send("POST", "/api/v1/routing/overrides", {"region": "ap-southeast-1", "reason": "one member down",
                                                            "confirm_healthy": True})
        assert made.status_code == 201, made.text
        _fail_back_everything(b)
        cluster_version = _version(a)
        # Two of three gone: no quorum. Changes are refused, pages say so, polling goes on.
        second.stop()
        refused = a.send("POST", "/api/v1/routing/overrides", {"region": "eu-west-1", "reason": "no quorum",
                                                               "confirm_healthy": True})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "cluster_unavailable"
        assert "--local" in refused.json()["message"]
        banner = wait_until(lambda: BeautifulSoup(a.get("/").text, "html.parser").select_one("#cluster-banner"),
                            "the cluster-unreachable banner")
        assert "this instance's view only" in banner.get_text()
        # Break glass on instance A: its own routing only.
        done = subprocess.run([sys.executable, "-m", "dashboard.cli", "failover", "eu-west-1", "--local",
                               "--reason", "etcd lost quorum, eu-west-1 failing", "--confirm-healthy", "--actor",
                               "oncall", "--config", str(a.config)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(a.routing_file.read_text())["regions"]["eu-west-1"]["override"]["actor"] == "oncall"
        assert json.loads(b.routing_file.read_text())["regions"]["eu-west-1"]["override"] is None
    finally:
        first.start()
        second.start()
        etcd.wait_healthy()
    # The cluster is back: its table wins everywhere, and the local change is recorded as superseded.
    wait_until(lambda: (v := a.routing_file_version()) is not None and v > cluster_version + 1
               and json.loads(a.routing_file.read_text())["regions"]["eu-west-1"]["override"] is None,
               "A publishing the cluster's table again", timeout=30)
    for instance in instances.values():
        superseded = wait_until(lambda i=instance: next((e for e in i.json("/api/v1/events?limit=100")["events"]
                                                         if e["kind"] == "superseded"), None),
                                f"the superseded local change in {instance.region}'s history", timeout=20)
        assert superseded["details"]["instance"] == a.region
        assert superseded["details"]["local"] == {"eu-west-1": {"target_region": "us-east-1", "read_only": True}}
    assert not BeautifulSoup(a.get("/").text, "html.parser").select_one("#cluster-banner")


# -- the etcd control state on its own (the same etcd members, keys of its own) ---------------------


def _control(etcd_endpoints: list[str], tmp_path: Path, name: str, prefix: str) -> tuple[EtcdControl, Store]:
    path = write_config(tmp_path / f"{name}.yaml", {**deployment_block(REGIONS), "region": name},
                        database=f"{name}.db",
                        cluster={"etcd_endpoints": etcd_endpoints, "key_prefix": prefix})
    settings = load_settings(str(path), environ={})
    store = Store(settings.database_path)
    return EtcdControl(settings, EtcdClient.for_settings(settings, environ={}), store), store


def _event(region: str) -> NewEvent:
    return NewEvent(at=time.time(), region=region, kind="failover", reason="test", actor="t",
                    details={"version": 1})


def _override(region: str) -> Override:
    return Override(region=region, target_region="us-east-1", read_only=True, reason="test", actor="t",
                    since=time.time(), until=None, forced=False)


def test_two_commits_on_the_same_version_through_two_instances_exactly_one_wins(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    first, first_store = _control(etcd.endpoints, tmp_path, "eu-west-1", "/cas-test/")
    second, second_store = _control(etcd.endpoints, tmp_path, "ap-southeast-1", "/cas-test/")
    try:
        assert first.routing().version == 0 == second.routing().version
        assert first.commit_routing(0, event=_event("eu-west-1"), now=time.time(), put=_override("eu-west-1")) == 1
        assert second.commit_routing(0, event=_event("ap-southeast-1"), now=time.time(),
                                     put=_override("ap-southeast-1")) is None
        snap = second.routing()
        assert (snap.version, [o["region"] for o in snap.overrides]) == (1, ["eu-west-1"])
        # Each instance's own copy holds the cluster's table and its audit event.
        assert second_store.routing().version == 1
        assert [(e["kind"], e["details"]["instance"]) for e in second_store.events()] == [("failover", "eu-west-1")]
    finally:
        first_store.close()
        second_store.close()


def test_maintenance_windows_in_etcd_take_one_id_each_and_change_by_compare_and_set(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    first, first_store = _control(etcd.endpoints, tmp_path, "eu-west-1", "/maintenance-test/")
    second, second_store = _control(etcd.endpoints, tmp_path, "ap-southeast-1", "/maintenance-test/")
    now = time.time()
    window = MaintenanceWindow(id=0, region="eu-west-1", starts_at=now, ends_at=now + 3600, reason="migrate",
                               actor="alice", created_at=now, ended_at=None, end_kind=None)
    try:
        start = NewEvent(at=now, region="eu-west-1", kind="maintenance_start", reason="migrate", actor="alice")
        assert first.add_maintenance(window, event=start) == 1
        assert second.add_maintenance({**window, "region": "us-east-1"}, event=start) == 2
        seen = second.maintenance_windows(open_only=True)
        assert [(w["id"], w["region"]) for w in seen] == [(1, "eu-west-1"), (2, "us-east-1")]
        assert [w["id"] for w in first.maintenance_windows(region="eu-west-1", start=now + 10, end=now + 20)] == [1]
        # Two instances ending the same window at once: exactly one does it.
        end = NewEvent(at=now + 5, region="eu-west-1", kind="maintenance_end", reason="done", actor="bob")
        assert first.change_maintenance(1, expected_ends_at=now + 3600, event=end, ended_at=now + 5,
                                        end_kind="ended")
        assert not second.change_maintenance(1, expected_ends_at=now + 3600, event=end, ended_at=now + 6,
                                             end_kind="ended")
        assert [w["id"] for w in second.maintenance_windows(open_only=True)] == [2]
        # Each instance keeps a copy for when etcd is unreachable, and its own audit events.
        assert second_store.maintenance_windows(open_only=True) == second.maintenance_windows(open_only=True)
        # Each instance's history holds every instance's maintenance audit events, once each.
        assert [(e["kind"], e["details"]["window_id"]) for e in first_store.events()] == [
            ("maintenance_end", 1), ("maintenance_start", 2), ("maintenance_start", 1)]
        assert first.copy_maintenance_events() == 0
        # A history that has them already (an earlier version wrote its own; its mark lost) gets none twice.
        with first_store.transaction():
            first_store.set_state(MAINTENANCE_WATERMARK, "0")
        assert first.copy_maintenance_events() == 0
        assert len(first_store.events()) == 3
    finally:
        first_store.close()
        second_store.close()


def test_with_etcd_unreachable_reads_serve_the_local_copy_and_changes_are_refused(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    reachable, store = _control(etcd.endpoints, tmp_path, "eu-west-1", "/unreachable-test/")
    assert reachable.commit_routing(0, event=_event("eu-west-1"), now=time.time(), put=_override("eu-west-1")) == 1
    store.close()
    nowhere = [f"http://127.0.0.1:{port}" for port in _closed_ports(2)]  # nothing listens there
    cut_off, store = _control(nowhere, tmp_path, "eu-west-1", "/unreachable-test/")
    try:
        snap = cut_off.routing()
        assert (snap.version, [o["region"] for o in snap.overrides]) == (1, ["eu-west-1"])
        with pytest.raises(ControlUnavailable, match="etcd unreachable"):
            cut_off.commit_routing(1, event=_event("ap-southeast-1"), now=time.time(), put=_override("ap-southeast-1"))
        assert cut_off.etcd.unavailable_since is not None
    finally:
        store.close()


def test_the_leader_trims_old_cluster_events_but_keeps_each_regions_newest_and_what_a_live_instance_lacks(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    path = write_config(tmp_path / "trim.yaml", {**deployment_block(REGIONS), "region": "us-east-1"},
                        database="trim.db", raw_retention_hours=1,
                        cluster={"etcd_endpoints": etcd.endpoints, "key_prefix": "/trim-test/"})
    settings = load_settings(str(path), environ={})
    client = EtcdClient.for_settings(settings, environ={})
    store = Store(settings.database_path)
    log = ClusterEventLog(settings, client, store)
    now = time.time()
    views = {name: Verdict(name, "down", "HTTP 500", now) for name in REGIONS}

    def record(region: str, at: float) -> None:
        change = Transition(region, "up", "down", "down from every vantage point: HTTP 500", at)
        assert client.txn([], [log.record_op(change, Agreed("down", change.reason, False, views), "us-east-1")])[0]

    old = now - 2 * 3600  # past the retention (1 h)
    for i in range(KEEP_PER_REGION + 5):
        record("eu-west-1", old + i)
    for i in range(3):
        record("us-east-1", old + i)
    for i in range(KEEP_PER_REGION + 2):
        record("ap-southeast-1", now - 60 + i)  # within the retention
    try:
        # Every entry reaches this instance's history once, as the cluster's change.
        assert log.copy_new() == 2 * KEEP_PER_REGION + 10
        assert log.copy_new() == 0
        row = store.events(kind="cluster_state", limit=1)[0]
        assert (row["actor"], row["new_state"], set(row["details"]["vantage"])) == ("cluster", "down", set(REGIONS))
        keys = client.get_prefix("/trim-test/events/")[0]
        # A copy reads only what was created since its last read (etcd filters, not the copy).
        newest = client.get_range("/trim-test/events/", prefix_end("/trim-test/events/"),
                                  changed_after=max(kv.mod_revision for kv in keys) - 1)[0]
        assert len(newest) == 1
        eu = [kv for kv in keys if kv.key.endswith("-eu-west-1")]
        # A live instance that has copied only the first three of eu-west-1's old entries holds back the rest.
        client.put("/trim-test/verdicts/eu-west-1", json.dumps({VERDICT_FIELD: eu[2].mod_revision}))
        client.put("/trim-test/leader", "eu-west-1")
        assert log.trim("/trim-test/leader", "us-east-1") == 0  # not the leader: nothing goes
        client.put("/trim-test/leader", "us-east-1")
        assert log.trim("/trim-test/leader", "us-east-1") == 3
        client.put("/trim-test/verdicts/eu-west-1", json.dumps({VERDICT_FIELD: log.copied_revision()}))
        assert log.trim("/trim-test/leader", "us-east-1") == 2
        left = [kv.key for kv in client.get_prefix("/trim-test/events/")[0] if not kv.key.endswith("/~trimmed")]
        # Each region's newest entries stay, however old; recent ones all stay.
        assert left == [kv.key for kv in keys if kv.key not in {k.key for k in eu[:5]}]
        assert sum(key.endswith("-eu-west-1") for key in left) == KEEP_PER_REGION
        assert sum(key.endswith("-us-east-1") for key in left) == 3
        assert sum(key.endswith("-ap-southeast-1") for key in left) == KEEP_PER_REGION + 2
        assert log.copy_new() == 0  # the trimming leaves this instance's history alone
        assert len(store.events(kind="cluster_state", limit=500)) == 2 * KEEP_PER_REGION + 10
        # An instance that had copied only the first entry before it went away is told what it missed.
        away_store = Store(tmp_path / "away.db")
        try:
            with away_store.transaction():
                away_store.set_state(EVENTS_WATERMARK, str(eu[0].mod_revision))
            away = ClusterEventLog(settings, client, away_store)
            assert away.copy_new() == len(left) + 1  # every entry left (all written after the first), the note
            missed = away_store.events(kind="cluster_events_missed")
            assert len(missed) == 1 and missed[0]["details"]["trimmed_up_to_revision"] == eu[4].mod_revision
            assert away.copy_new() == 0
            # etcd's data lost and restored empty: its revisions start again, below this copy's mark.
            with away_store.transaction():
                away_store.set_state(EVENTS_WATERMARK, str(10**12))
            record("us-east-1", now)
            assert away.copy_new() == 1  # the new entry; none of the others twice
            assert away_store.cluster_events_watermark(EVENTS_WATERMARK) < 10**12
        finally:
            away_store.close()
    finally:
        store.close()


def test_a_cluster_event_shows_its_remote_text_escaped_on_the_events_and_region_pages(dash: Dash) -> None:
    """Reason, vantage names and states come from other instances through etcd: shown as text only."""
    markup = '<b>x</b>"><script>alert(1)</script>'
    region = dash.settings.regions[0]
    entry = {"at": time.time(), "region": region, "old_state": "up", "new_state": "down", "leader": markup,
             "reason": f"down from every vantage point: {markup}",
             "vantage": {markup: {"state": markup, "reason": markup, "at": None}}}
    assert dash.store.copy_cluster_events("cluster_events_revision", [(7, cluster_event_of(json.dumps(entry)))], 7) == 1
    for path in ("/events", f"/regions/{region}"):
        page = BeautifulSoup(dash.client.get(path).get_data(as_text=True), "html.parser")
        row = page.select_one("tr.event-cluster_state")
        assert row is not None and row.select_one(".tag-cluster") is not None, path
        assert row.select("script") == [] and row.select("b") == [], path
        assert markup in row.select_one(".event-reason").get_text()
        assert [li["data-vantage"] for li in row.select(".event-vantage li")] == [markup]


def _closed_ports(count: int) -> list[int]:
    ports = []
    for _ in range(count):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def test_the_applied_line_names_who_is_behind() -> None:
    assert applied_summary({"us-east-1": 12, "eu-west-1": 12, "ap-south-1": 11}, 12) == (
        "v12 applied by eu-west-1, us-east-1; ap-south-1 still on v11")
    assert applied_summary({"a": 3}, 4) == "v4 applied by no instance yet; a still on v3"


def test_an_instance_started_while_etcd_is_unreachable_serves_its_own_view_and_refuses_changes(
        cluster_fleet: SimulatedFleet, tmp_path: Path) -> None:
    nowhere = [f"http://127.0.0.1:{port}" for port in _closed_ports(3)]
    instance = Instance(tmp_path / "alone", cluster_fleet, "eu-west-1", nowhere).start()
    try:
        wait_until(lambda: set(instance.states().values()) == {"up"}, "its own view of the fleet", timeout=30)
        row = _region(instance, "us-east-1")
        assert list(row["vantage"]) == ["eu-west-1"]
        refused = instance.send("POST", "/api/v1/routing/overrides",
                                {"region": "ap-southeast-1", "reason": "x", "confirm_healthy": True})
        assert (refused.status_code, refused.json()["error"]) == (503, "cluster_unavailable")
        assert BeautifulSoup(instance.get("/").text, "html.parser").select_one("#cluster-banner") is not None
        report = instance.json("/api/v1/cluster")
        assert report["etcd"]["reachable"] is False and report["leader"] is None
        assert instance.routing_file_version() == 0  # it publishes the table it has: none yet
    finally:
        instance.stop()


def test_etcd_authentication_takes_the_password_from_the_variable_the_config_names(tmp_path: Path) -> None:
    binary = require_etcd()
    with EtcdCluster(tmp_path / "etcd-auth", size=1, binary=binary) as secured:
        gateway = secured.endpoints[0] + "/v3/auth"
        for path, body in [("/user/add", {"name": "root", "password": "s3cret-root"}), ("/role/add", {"name": "root"}),
                           ("/user/grant", {"user": "root", "role": "root"}), ("/enable", {})]:
            assert httpx.post(gateway + path, json=body, timeout=10).status_code == 200, path
        text = {**deployment_block(REGIONS), "region": "eu-west-1"}

        def control_with(password: str) -> tuple[EtcdControl, Store]:
            environ = {"ETCD_PASSWORD": password}
            path = write_config(tmp_path / "auth.yaml", text, database="auth.db", cluster={
                "etcd_endpoints": secured.endpoints, "username": "root", "password_env": "ETCD_PASSWORD"})
            settings = load_settings(str(path), environ=environ)
            store = Store(settings.database_path)
            return EtcdControl(settings, EtcdClient.for_settings(settings, environ=environ), store), store

        wrong, store = control_with("not-the-password")
        try:
            with pytest.raises(ControlUnavailable, match="authentication failed"):
                wrong.cluster_routing()
        finally:
            store.close()
        right, store = control_with("s3cret-root")
        try:
            assert right.commit_routing(0, event=_event("eu-west-1"), now=time.time(), put=_override("eu-west-1")) == 1
            assert right.cluster_routing().version == 1
            # Without a token, etcd refuses: the dashboard's reads really went through authentication.
            assert "user name is empty" in httpx.post(secured.endpoints[0] + "/v3/kv/range", json={"key": "Lw=="}).text
            assert "s3cret-root" not in str(right.etcd.last_error)
        finally:
            store.close()
