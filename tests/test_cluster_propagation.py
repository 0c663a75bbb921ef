"""How a routing change travels in cluster mode, on real etcd members: into the committing
instance's own copy without a second read, and through the routing watch to another instance's
routing file, also when etcd drops the watch (members stopped and started again under it). No
scheduler runs here, so only the watch can bring a change to the file."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dashboard.cluster import EtcdControl
from dashboard.config import load_settings
from dashboard.etcd import EtcdClient
from dashboard.model import NewEvent, Override
from dashboard.routing import Router
from dashboard.store import Store

from .conftest import REGIONS, deployment_block, wait_until, write_config
from .etcd_helpers import EtcdCluster, EtcdMember, require_etcd


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    binary = require_etcd()
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), size=3, binary=binary) as cluster:
        yield cluster


class Side:
    """One instance's control state in etcd (through the given members only), its own SQLite, and
    a router publishing to its own routing file."""

    def __init__(self, tmp_path: Path, name: str, endpoints: list[str], prefix: str) -> None:
        path = write_config(tmp_path / f"{name}.yaml", {**deployment_block(REGIONS), "region": name},
                            database=f"{name}.db", routing_file=f"{name}-routing.json",
                            cluster={"etcd_endpoints": endpoints, "key_prefix": prefix})
        self.settings = load_settings(str(path), environ={})
        self.store = Store(self.settings.database_path)
        self.control = EtcdControl(self.settings, EtcdClient.for_settings(self.settings, environ={}), self.store)
        self.router = Router(self.settings, self.store, control=self.control)
        self.routing_file = tmp_path / f"{name}-routing.json"
        self._stop_watch: Callable[[], None] | None = None

    def watch(self) -> None:
        """Publish on every change of the cluster's table, then copy it, as the poller process does."""
        self._stop_watch = self.control.watch_routing(
            lambda: self.control.publish_then_copy(lambda snap: self.router.retry_publishers(snapshot=snap)))

    def flip(self) -> int:
        """Fail eu-west-1 over, or back when it is over: one change, committed; its version."""
        snap = self.control.routing()
        overridden = any(o["region"] == "eu-west-1" for o in snap.overrides)
        event = NewEvent(at=time.time(), region="eu-west-1", kind="failback" if overridden else "failover",
                         reason="watch test", actor="t", details={"version": snap.version + 1})
        put = None if overridden else Override(region="eu-west-1", target_region="us-east-1", read_only=True,
                                               reason="watch test", actor="t", since=time.time(), until=None,
                                               forced=False)
        version = self.control.commit_routing(snap.version, event=event, now=time.time(), put=put,
                                              delete="eu-west-1" if overridden else None)
        assert version == snap.version + 1
        return version

    def file_version(self) -> int | None:
        try:
            return int(json.loads(self.routing_file.read_text())["version"])
        except (OSError, ValueError, KeyError):
            return None

    def close(self) -> None:
        self.store.close()


def _close(reader: Side, writer: Side) -> None:
    """Stop the reader's watch and wait for its thread to end (woken by one more change), so no
    thread outlives the test; then close both."""
    if reader._stop_watch is not None:
        reader._stop_watch()
        writer.flip()
        wait_until(lambda: not any(t.name == "routing-watch" and t.is_alive() for t in threading.enumerate()),
                   "the watch thread ended")
    reader.close()
    writer.close()


def test_a_committed_change_is_in_the_local_copy_at_once_and_every_audit_event_is_copied_once(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    first = Side(tmp_path, "eu-west-1", [m.client_url for m in etcd.members], "/mirror-copy/")
    second = Side(tmp_path, "us-east-1", [m.client_url for m in etcd.members], "/mirror-copy/")
    try:
        assert first.flip() == 1
        # No read since: the transaction's own answer filled the copy, with the audit event written.
        local = first.store.routing()
        assert (local.version, [o["region"] for o in local.overrides]) == (1, ["eu-west-1"])
        assert [(e["kind"], e["details"]["version"], e["details"]["instance"]) for e in first.store.events()] == [
            ("failover", 1, "eu-west-1")]
        # Two changes elsewhere that `first` never reads: its next commit must copy them too.
        assert (second.flip(), second.flip()) == (2, 3)
        assert first.control.commit_routing(3, event=NewEvent(at=time.time(), region="ap-southeast-1",
                                                              kind="failover", reason="copy test", actor="t",
                                                              details={"version": 4}),
                                            now=time.time(),
                                            put=Override(region="ap-southeast-1", target_region="us-east-1",
                                                         read_only=True, reason="copy test", actor="t",
                                                         since=time.time(), until=None, forced=False)) == 4
        local = first.store.routing()
        assert (local.version, sorted(o["region"] for o in local.overrides)) == (4, ["ap-southeast-1", "eu-west-1"])
        assert sorted((e["details"]["version"], e["kind"], e["details"]["instance"])
                      for e in first.store.events()) == [
            (1, "failover", "eu-west-1"), (2, "failback", "us-east-1"), (3, "failover", "us-east-1"),
            (4, "failover", "eu-west-1")]
    finally:
        first.close()
        second.close()


def _restart(etcd: EtcdCluster, member: EtcdMember) -> None:
    member.start()
    etcd.wait_healthy()


def _watching_one_member(etcd: EtcdCluster, tmp_path: Path, prefix: str) -> tuple[Side, Side]:
    """A reader that knows only the first member, watching it, and a writer on the others; one change
    made and in the reader's file. While that member is stopped no watch can run anywhere, so what
    changes meanwhile reaches the file only through the watch resuming where it left off."""
    watched, others = etcd.members[0], etcd.members[1:]
    reader = Side(tmp_path, "eu-west-1", [watched.client_url], prefix)
    writer = Side(tmp_path, "us-east-1", [m.client_url for m in others], prefix)
    reader.watch()
    wait_until(lambda: reader.control.etcd.watch_endpoint == watched.client_url, "the watch is open")
    first = writer.flip()
    wait_until(lambda: reader.file_version() == first, "the first change in the reader's file")
    return reader, writer


def test_changes_made_while_the_watched_member_was_stopped_reach_the_routing_file_once_it_is_back(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    watched = etcd.members[0]
    reader, writer = _watching_one_member(etcd, tmp_path, "/watch-restart/")
    try:
        watched.stop()
        wait_until(lambda: reader.control.etcd.watch_endpoint is None, "the watch broke with its member")
        for _ in range(3):
            last = writer.flip()
        _restart(etcd, watched)
        wait_until(lambda: reader.file_version() == last, "the changes made meanwhile in the reader's file")
        # Published first, then copied into the reader's own database with every audit event.
        wait_until(lambda: reader.store.routing().version == last, "the reader's local copy")
        assert sorted(e["details"]["version"] for e in reader.store.events()) == list(range(1, last + 1))
        table = json.loads(reader.routing_file.read_text())
        assert table["regions"]["eu-west-1"]["serving_region"] == (
            "us-east-1" if writer.control.routing().overrides else "eu-west-1")
        # The watch is back on its member: the next change arrives through it too.
        after = writer.flip()
        wait_until(lambda: reader.file_version() == after, "a change after the restart in the reader's file")
    finally:
        if not watched.running:
            _restart(etcd, watched)
        _close(reader, writer)


def test_a_watch_whose_member_stops_moves_to_another_member_and_misses_no_change(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    reader = Side(tmp_path, "eu-west-1", [m.client_url for m in etcd.members], "/watch-move/")
    writer = Side(tmp_path, "us-east-1", [m.client_url for m in etcd.members], "/watch-move/")
    stopped: list[EtcdMember] = []
    try:
        reader.watch()
        for _ in range(2):  # the member it watches stops, twice (the first one started again between)
            endpoint = wait_until(lambda: reader.control.etcd.watch_endpoint, "a watch is open")
            member = next(m for m in etcd.members if m.client_url == endpoint)
            before = writer.flip()
            wait_until(lambda v=before: reader.file_version() == v, "a change in the reader's file")
            member.stop()
            stopped.append(member)
            last = writer.flip()
            wait_until(lambda v=last: reader.file_version() == v, "the change made after the member stopped")
            assert reader.control.etcd.watch_endpoint != endpoint
            _restart(etcd, member)
    finally:
        for member in stopped:
            if not member.running:
                _restart(etcd, member)
        _close(reader, writer)


def test_a_watch_resuming_after_etcd_compacted_what_it_missed_still_brings_the_latest_table(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    watched = etcd.members[0]
    reader, writer = _watching_one_member(etcd, tmp_path, "/watch-compact/")
    try:
        watched.stop()
        for _ in range(3):
            last = writer.flip()
        # etcd forgets the history the watch would replay: it must read the whole table instead.
        revision = writer.control.etcd.get_prefix("/watch-compact/")[1]
        writer.control.etcd.call("compaction", lambda client: client.post(
            client.get_url("/kv/compaction"), json={"revision": str(revision), "physical": True}))
        _restart(etcd, watched)
        wait_until(lambda: reader.file_version() == last, "the latest table in the reader's file")
    finally:
        if not watched.running:
            _restart(etcd, watched)
        _close(reader, writer)
