"""Cluster mode: the control state in etcd, shared by one dashboard instance per region.

Keys under `dashboard.cluster.key_prefix`:

    routing/version              the routing table's version ("12")
    routing/overrides/<region>   one override (JSON)
    audit/<version, 12 digits>   the audit event of the change that made that version (JSON)

A change is one etcd transaction: it compares `routing/version` with the version the change was
prepared on, and only then writes the override, the new version and the audit event together; two
changes prepared on the same version cannot both win. Each instance keeps a copy of the last table
it read (and of the audit trail) in its own SQLite (`store.mirror`), which its pages read as ever and
which it serves while etcd cannot be reached.

The poller lease stays in the instance's own SQLite: it guards the instance's own database, and an
instance cut off from etcd must go on polling.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from . import health
from .agreement import Agreed, Verdict, agree
from .cluster_events import MAINTENANCE_WATERMARK, VERDICT_FIELD, ClusterEventLog, copy_new
from .config import Settings
from .control import ControlState, ControlUnavailable
from .etcd import EtcdClient, KeyValue, absent, delete_op, prefix_range_op, put_op, range_kvs, range_op, value_is
from .model import (
    LeaseResult,
    MaintenanceWindow,
    NewEvent,
    Override,
    RegionStatus,
    RoutingSnapshot,
    Transition,
    window_end,
)
from .store import Store

log = logging.getLogger(__name__)

AUDIT_DIGITS = 12
# app_state: set by `failover --local` (what was changed, by whom); cleared once superseded.
BREAK_GLASS_STATE = "cluster_break_glass"


def _compact(overrides: list[Override]) -> dict[str, Any]:
    return {o["region"]: {"target_region": o["target_region"], "read_only": bool(o["read_only"])}
            for o in overrides}


def record_break_glass(store: Store, actor: str, command: str, version: int) -> None:
    """Remember that this instance's routing was changed locally (`--local`), to be superseded later."""
    with store.transaction():
        store.set_state(BREAK_GLASS_STATE, json.dumps({"actor": actor, "command": command, "version": version,
                                                       "at": time.time()}))


def _override_json(override: Override) -> str:
    return json.dumps(dict(override), sort_keys=True)


def _override_of(text: str) -> Override:
    raw = json.loads(text)
    return Override(region=str(raw["region"]), target_region=str(raw["target_region"]),
                    read_only=bool(raw["read_only"]), reason=str(raw["reason"]), actor=str(raw["actor"]),
                    since=float(raw["since"]), until=None if raw.get("until") is None else float(raw["until"]),
                    forced=bool(raw.get("forced", False)))


def _event_json(event: NewEvent) -> str:
    return json.dumps({"at": event.at, "region": event.region, "kind": event.kind, "reason": event.reason,
                       "old_state": event.old_state, "new_state": event.new_state, "actor": event.actor,
                       "details": event.details}, sort_keys=True)


def _event_of(text: str) -> NewEvent:
    raw = json.loads(text)
    return NewEvent(at=float(raw["at"]), region=raw.get("region"), kind=str(raw["kind"]), reason=str(raw["reason"]),
                    old_state=raw.get("old_state"), new_state=raw.get("new_state"), actor=raw.get("actor"),
                    details=raw.get("details"))


# Rounds of carrying this instance's table over while other instances do the same (one is enough
# unless an instance that was behind wins the import: then one more raises the version).
CATCH_UP_ROUNDS = 3
# Instances taking a window id at the same moment retry the counter's compare-and-set this often.
MAINTENANCE_RETRIES = 5


def _window_matches(window: MaintenanceWindow, region: str | None, start: float | None, end: float | None,
                    open_only: bool) -> bool:
    """The SQLite store's filter (store/control.py), for windows read from etcd."""
    return ((region is None or window["region"] == region)
            and (start is None or window_end(window) > start)
            and (end is None or window["starts_at"] < end)
            and (not open_only or window["ended_at"] is None))


class EtcdControl:
    """Implements `control.ControlState` on etcd, with this instance's SQLite as its local copy."""

    def __init__(self, settings: Settings, etcd: EtcdClient, local: Store) -> None:
        cluster = settings.cluster
        assert cluster is not None, "EtcdControl needs dashboard.cluster.etcd_endpoints"
        self.settings = settings
        self.etcd = etcd
        self.local = local
        self.name = settings.cluster_name
        self.prefix = cluster.key_prefix
        self.version_key = f"{self.prefix}routing/version"
        self.overrides_prefix = f"{self.prefix}routing/overrides/"
        self.audit_prefix = f"{self.prefix}audit/"
        self._mirrored: int | None = None  # the version the local copy holds, once known
        self._reported: int | None = None  # the applied version last said in etcd
        self._applied_pending: int | None = None  # the applied version to say next
        self._applied_told = threading.Event()
        self._applied_lock = threading.Lock()
        self._applied_thread: threading.Thread | None = None
        self._mirrored_windows: list[str] | None = None  # the maintenance windows the local copy holds

    def audit_key(self, version: int) -> str:
        return f"{self.audit_prefix}{version:0{AUDIT_DIGITS}d}"

    # -- ControlState ------------------------------------------------------------------------------

    def routing(self) -> RoutingSnapshot:
        """The cluster's table, read in one request; while etcd is unreachable, the local copy of the
        last table read (the one this instance publishes)."""
        try:
            snap = self.cluster_routing()
        except ControlUnavailable:
            return self.local.routing()
        if snap.version < (self._mirrored if self._mirrored is not None else self._local_version()):
            snap = self._catch_up(snap)  # etcd lost its data, or a standalone install moved to cluster mode
        if self.local.get_state(BREAK_GLASS_STATE):
            snap = self._supersede_local_changes(snap)
        if snap.version != self._mirrored:
            try:
                self._mirror(snap)
            except (ControlUnavailable, sqlite3.Error) as exc:  # copied at the next read
                log.warning("event=cluster_mirror_deferred version=%d error=%r", snap.version, str(exc))
        return snap

    def publish_then_copy(self, publish: Callable[[RoutingSnapshot], object]) -> None:
        """Hand the cluster's table, straight from etcd, to `publish` (this instance's publishers),
        and only then copy it into the local copy: routers wait for the table, the pages can wait a
        few milliseconds for the copy. While a local change waits to be superseded, or etcd cannot be
        reached, `publish` gets what `routing()` says (copied first, as ever)."""
        if self.local.get_state(BREAK_GLASS_STATE):
            publish(self.routing())
            return
        try:
            snap = self.cluster_routing()
        except ControlUnavailable:
            publish(self.local.routing())
            return
        publish(snap)
        if snap.version != self._mirrored:
            try:
                self._mirror(snap)
            except (ControlUnavailable, sqlite3.Error) as exc:  # copied at the next read
                log.warning("event=cluster_mirror_deferred version=%d error=%r", snap.version, str(exc))

    def cluster_routing(self) -> RoutingSnapshot:
        """The cluster's table, or ControlUnavailable."""
        kvs, _ = self.etcd.get_prefix(f"{self.prefix}routing/")
        return self._snapshot_of(kvs)

    def _snapshot_of(self, kvs: list[KeyValue]) -> RoutingSnapshot:
        """The table in the keys under `routing/`, or ControlUnavailable when they do not parse."""
        version = 0
        overrides: list[Override] = []
        try:
            for kv in kvs:
                if kv.key == self.version_key:
                    version = int(kv.value)
                elif kv.key.startswith(self.overrides_prefix):
                    overrides.append(_override_of(kv.value))
        except (ValueError, KeyError, TypeError) as exc:
            # Only dashboards write these keys; garbage there is a fault to see, never a table to publish.
            raise ControlUnavailable(f"the cluster's routing keys under {self.prefix} do not parse ({exc})") from None
        return RoutingSnapshot(sorted(overrides, key=lambda o: o["region"]), version)

    def commit_routing(self, expected_version: int, *, event: NewEvent, now: float,
                       put: Override | None = None, delete: str | None = None) -> int | None:
        version = expected_version + 1
        details = {**(event.details or {}), "instance": self.name}
        recorded = NewEvent(at=event.at, region=event.region, kind=event.kind, reason=event.reason,
                            old_state=event.old_state, new_state=event.new_state, actor=event.actor, details=details)
        compare = [absent(self.version_key) if expected_version == 0 else value_is(self.version_key,
                                                                                   str(expected_version))]
        ops = [put_op(self.version_key, str(version)), put_op(self.audit_key(version), _event_json(recorded))]
        if put is not None:
            ops.append(put_op(self.overrides_prefix + put["region"], _override_json(put)))
        if delete is not None:
            ops.append(delete_op(self.overrides_prefix + delete))
        # The table as this transaction leaves it, read in the same round trip: the local copy needs
        # no second read.
        ops.append(prefix_range_op(f"{self.prefix}routing/"))
        succeeded, responses = self.etcd.txn(compare, ops)
        if not succeeded:
            return None
        log.info("event=cluster_routing_committed version=%d kind=%s region=%s", version, event.kind, event.region)
        # The local copy and audit trail, at once, for this instance's pages.
        try:
            if self.local.get_state(BREAK_GLASS_STATE):
                self.routing()  # a local change to supersede first: the slow path does that
            else:
                # The audit event as etcd now holds it (its JSON read back), exactly as a read would copy it.
                self._mirror(self._snapshot_of(range_kvs(responses[-1])),
                             just_written=(version, _event_of(_event_json(recorded))))
        except (ControlUnavailable, sqlite3.Error) as exc:  # copied at the next read
            log.warning("event=cluster_mirror_deferred version=%d error=%r", version, str(exc))
        return version

    # -- maintenance windows (issue 15): shared through etcd like the routing table ------------------

    def _window_key(self, window_id: int) -> str:
        return f"{self.prefix}maintenance/windows/{window_id:012d}"

    def _event_key(self, window_id: int, event: NewEvent) -> str:
        return f"{self.prefix}maintenance/events/{window_id:012d}/{int(event.at * 1e6):020d}-{event.kind}"

    def maintenance_windows(self, *, region: str | None = None, start: float | None = None,
                            end: float | None = None, open_only: bool = False) -> list[MaintenanceWindow]:
        """The cluster's windows (every instance's), filtered as the SQLite store filters them; while
        etcd is unreachable, the local copy of the windows last read."""
        try:
            kvs, _ = self.etcd.get_prefix(f"{self.prefix}maintenance/windows/")
            raw = [kv.value for kv in kvs]
            windows = [MaintenanceWindow(**json.loads(text)) for text in raw]  # type: ignore[typeddict-item]
        except ControlUnavailable:
            return self.local.maintenance_windows(region=region, start=start, end=end, open_only=open_only)
        except (ValueError, TypeError) as exc:
            raise ControlUnavailable(
                f"the cluster's maintenance keys under {self.prefix} do not parse ({exc})") from None
        if raw != self._mirrored_windows:
            try:
                self.local.replace_maintenance_windows(windows)
                self._mirrored_windows = raw
            except sqlite3.Error as exc:  # copied at the next read
                log.warning("event=cluster_maintenance_mirror_deferred error=%r", str(exc))
        return sorted((w for w in windows if _window_matches(w, region, start, end, open_only)),
                      key=lambda w: (w["starts_at"], w["id"]))

    def add_maintenance(self, window: MaintenanceWindow, *, event: NewEvent) -> int:
        """One transaction: the next id (compare-and-set on the counter), the window, its audit event."""
        counter = f"{self.prefix}maintenance/next_id"
        for _ in range(MAINTENANCE_RETRIES):
            current = self.etcd.get(counter)
            window_id = int(current.value) if current is not None else 1
            stored = MaintenanceWindow(**{**window, "id": window_id})
            recorded = self._recorded(event, window_id)
            succeeded, _ = self.etcd.txn(
                [absent(counter) if current is None else value_is(counter, current.value)],
                [put_op(counter, str(window_id + 1)), put_op(self._window_key(window_id), json.dumps(stored)),
                 put_op(self._event_key(window_id, recorded), _event_json(recorded))])
            if succeeded:
                self._record_locally(recorded)
                return window_id
        raise ControlUnavailable("could not take a maintenance window id: too many instances at once, try again")

    def change_maintenance(self, window_id: int, *, expected_ends_at: float, event: NewEvent,
                           ends_at: float | None = None, ended_at: float | None = None,
                           end_kind: str | None = None) -> bool:
        """Compare-and-set on the window's stored text: False when it ended or moved meanwhile."""
        key = self._window_key(window_id)
        current = self.etcd.get(key)
        if current is None:
            return False
        window = json.loads(current.value)
        if window["ended_at"] is not None or window["ends_at"] != expected_ends_at:
            return False
        window.update(ends_at=window["ends_at"] if ends_at is None else ends_at, ended_at=ended_at, end_kind=end_kind)
        recorded = self._recorded(event, window_id)
        succeeded, _ = self.etcd.txn([value_is(key, current.value)],
                                     [put_op(key, json.dumps(window)),
                                      put_op(self._event_key(window_id, recorded), _event_json(recorded))])
        if succeeded:
            self._record_locally(recorded)
        return succeeded

    def _recorded(self, event: NewEvent, window_id: int) -> NewEvent:
        details = {**(event.details or {}), "window_id": window_id, "instance": self.name}
        return NewEvent(at=event.at, region=event.region, kind=event.kind, reason=event.reason,
                        old_state=event.old_state, new_state=event.new_state, actor=event.actor, details=details)

    def _record_locally(self, event: NewEvent) -> None:
        """The audit event in this instance's own history too, at once (its events page, the
        summaries): copied from etcd with every other instance's not copied yet, each once."""
        self.copy_maintenance_events()

    def copy_maintenance_events(self) -> int:
        """The maintenance audit events of every instance this instance's history lacks (its poller
        calls this after each cycle); never raises."""
        return copy_new(self.etcd, self.local, f"{self.prefix}maintenance/events/", MAINTENANCE_WATERMARK,
                        _event_of)

    def report_applied(self, version: int) -> None:
        """Say in etcd which table version every publisher of this instance has applied: soon, from a
        thread of its own, so that an etcd write for people's eyes never holds up a change's answer
        (the latest version told wins; versions told meanwhile are skipped)."""
        with self._applied_lock:
            self._applied_pending = version
            if self._applied_thread is None:
                self._applied_thread = threading.Thread(target=self._report_applied_forever, name="applied-report",
                                                        daemon=True)
                self._applied_thread.start()
        self._applied_told.set()

    def _report_applied_forever(self) -> None:
        while True:
            self._applied_told.wait()
            self._applied_told.clear()
            with self._applied_lock:
                version = self._applied_pending
            if version is None or version == self._reported:
                continue
            try:
                self.etcd.put(f"{self.prefix}applied/{self.name}", json.dumps({"version": version, "at": time.time()}))
                self._reported = version
            except ControlUnavailable as exc:  # said again after the next publish
                log.warning("event=applied_not_reported version=%d error=%r", version, str(exc))

    def applied(self) -> dict[str, int]:
        """instance -> the routing version it has applied, as each reported it; {} when unreachable."""
        prefix = f"{self.prefix}applied/"
        try:
            kvs, _ = self.etcd.get_prefix(prefix)
        except ControlUnavailable:
            return {}
        applied = {}
        for kv in kvs:
            try:
                applied[kv.key.removeprefix(prefix)] = int(json.loads(kv.value)["version"])
            except (ValueError, KeyError, TypeError):
                log.error("event=applied_unreadable key=%s", kv.key)
        return applied

    def watch_routing(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """Call `on_change` (in a thread of its own) after every change of the cluster's routing keys;
        returns the function that stops the watch."""
        stop = threading.Event()
        thread = threading.Thread(target=self.etcd.watch_prefix, args=(f"{self.prefix}routing/", on_change, stop),
                                  name="routing-watch", daemon=True)
        thread.start()

        def stop_watch() -> None:
            stop.set()

        return stop_watch

    def acquire_lease(self, holder: str, ttl_seconds: float, now: float | None = None) -> LeaseResult:
        return self.local.acquire_lease(holder, ttl_seconds, now)

    def release_lease(self, holder: str) -> None:
        self.local.release_lease(holder)

    # -- break-glass: local changes made while the cluster was unreachable ----------------------------

    def _supersede_local_changes(self, snap: RoutingSnapshot) -> RoutingSnapshot:
        """The cluster is back after `failover --local`: its table wins. Record that in the cluster's
        audit trail (what the local change was, and what replaces it) with a version above every
        version this instance published, so every router takes the cluster's table again."""
        local = self.local.routing()
        version = max(snap.version, local.version) + 1
        event = NewEvent(
            at=time.time(), region=None, kind="superseded", actor=f"instance:{self.name}",
            reason=(f"{self.name}'s local routing (v{local.version}, changed with --local while the cluster was "
                    "unreachable) is superseded by the cluster's table"),
            details={"version": version, "instance": self.name, "local_version": local.version,
                     "local": _compact(local.overrides), "cluster": _compact(snap.overrides),
                     "break_glass": json.loads(self.local.get_state(BREAK_GLASS_STATE) or "{}")})
        compare = [absent(self.version_key) if snap.version == 0 else value_is(self.version_key, str(snap.version))]
        succeeded, _ = self.etcd.txn(compare, [put_op(self.version_key, str(version)),
                                               put_op(self.audit_key(version), _event_json(event))])
        if not succeeded:  # someone changed the table meanwhile: try again on the next read
            return snap
        self.local.set_state(BREAK_GLASS_STATE, "")
        log.warning("event=local_routing_superseded instance=%s local_version=%d version=%d", self.name,
                    local.version, version)
        return RoutingSnapshot(snap.overrides, version)

    # -- a table the cluster lacks: carried from this instance's copy (docs/cluster.md) --------------

    def _local_version(self) -> int:
        """The newest version this instance holds, so may have published: its table's version, or the
        last cluster audit event it copied, whichever is higher."""
        return max(self.local.routing_version(), self.local.mirrored_audit_version())

    def _catch_up(self, snap: RoutingSnapshot) -> RoutingSnapshot:
        """Carry this instance's copy over until the cluster's table is not behind it (another instance
        may win meanwhile: a few rounds at most); the cluster's table as it is afterwards."""
        if snap.version and self.local.get_state(BREAK_GLASS_STATE):
            return snap  # behind because of `failover --local`: superseded instead, which raises the version
        for _ in range(CATCH_UP_ROUNDS):
            if snap.version >= self._local_version():
                break
            snap = self._carry_local_table(snap)
        return snap

    def _carry_local_table(self, snap: RoutingSnapshot) -> RoutingSnapshot:
        """One transaction that puts the cluster's table above this instance's copy, so no router (which
        never takes an older version) is left behind:

        - no table in the cluster (the version key absent: a standalone install moved to cluster mode,
          or etcd's data lost): import this instance's overrides at a version above its own, holding
          only while the key is still absent, so exactly one instance wins and the others mirror it;
        - a table older than this instance's (etcd restored from an older backup, or imported by an
          instance that was behind): the cluster's table stands, at a version above this instance's.
        """
        local = self.local.routing()
        version = self._local_version() + 1
        now = time.time()
        break_glass: str | None = None
        if snap.version == 0:
            # An override that has lapsed already is not carried: it would only lapse again at once.
            carried = [o for o in local.overrides if o["until"] is None or o["until"] > now]
            expired = sorted(o["region"] for o in local.overrides if o not in carried)
            break_glass = self.local.get_state(BREAK_GLASS_STATE) or None
            event = NewEvent(
                at=now, region=None, kind="imported", actor=f"instance:{self.name}",
                reason=(f"the cluster had no routing table: {self.name} imported its own (v{local.version}, "
                        f"{len(carried)} override(s)) as v{version}"
                        + (f"; expired, not imported: {', '.join(expired)}" if expired else "")),
                details={"version": version, "instance": self.name, "local_version": local.version,
                         "overrides": _compact(carried), "expired": expired,
                         "break_glass": json.loads(break_glass) if break_glass else None})
            stray = {o["region"] for o in snap.overrides} - {o["region"] for o in carried}
            compare = [absent(self.version_key)]
            ops = [put_op(self.overrides_prefix + o["region"], _override_json(o)) for o in carried]
            ops += [delete_op(self.overrides_prefix + region) for region in sorted(stray)]
        else:
            event = NewEvent(
                at=now, region=None, kind="version_raised", actor=f"instance:{self.name}",
                reason=(f"the cluster's routing table (v{snap.version}) is older than the v{local.version} "
                        f"{self.name} holds: the cluster's table stands, as v{version}, so every router takes it"),
                details={"version": version, "instance": self.name, "cluster_version": snap.version,
                         "local_version": local.version, "cluster": _compact(snap.overrides),
                         "local": _compact(local.overrides)})
            compare = [value_is(self.version_key, str(snap.version))]
            ops = []
        ops += [put_op(self.version_key, str(version)), put_op(self.audit_key(version), _event_json(event))]
        succeeded, _ = self.etcd.txn(compare, ops)
        if succeeded:
            if break_glass:  # carried into the cluster's table, so not superseded
                self.local.set_state(BREAK_GLASS_STATE, "")
            log.warning("event=cluster_routing_%s instance=%s cluster_version=%d local_version=%d version=%d",
                        event.kind, self.name, snap.version, local.version, version)
        return self.cluster_routing()

    # -- the local copy ----------------------------------------------------------------------------

    def _mirror(self, snap: RoutingSnapshot, just_written: tuple[int, NewEvent] | None = None) -> None:
        """Copy the cluster's table and the audit events this instance has not seen into its SQLite.
        `just_written`: the audit event this instance committed with the table's version (no need
        to read it back when it is the only one the copy lacks)."""
        copied = self.local.mirrored_audit_version()
        audit: list[tuple[int, NewEvent]] = []
        if just_written is not None and snap.version == just_written[0] == copied + 1:
            audit.append(just_written)
        elif snap.version > copied:
            kvs, _ = self.etcd.get_range(self.audit_key(copied + 1), self.audit_key(snap.version + 1))
            for kv in kvs:
                try:
                    audit.append((int(kv.key.removeprefix(self.audit_prefix)), _event_of(kv.value)))
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("event=cluster_audit_unreadable key=%s error=%r", kv.key, str(exc))
        self.local.mirror_routing(snap.overrides, snap.version, time.time(), audit)
        self._mirrored = snap.version


def control_for(settings: Settings, store: Store) -> ControlState:
    """The control state this configuration asks for, chosen once at start: the SQLite store in
    standalone mode, etcd (with the store as its local copy) in cluster mode."""
    return cluster_for(settings, store)[0]


def cluster_for(settings: Settings, store: Store) -> tuple[ControlState, Vantages | None]:
    """The control state and, in cluster mode, the vantage points' verdicts (one etcd client for both)."""
    if settings.cluster is None:
        return store, None
    etcd = EtcdClient.for_settings(settings)
    return EtcdControl(settings, etcd, store), Vantages(settings, etcd, store)


def describe_mode(settings: Settings) -> dict[str, Any]:
    cluster = settings.cluster
    if cluster is None:
        return {"mode": "standalone"}
    return {"mode": "cluster", "instance": settings.cluster_name, "etcd_endpoints": cluster.etcd_endpoints}


# -- verdicts: every instance's view of every region, under a lease ---------------------------------


def own_verdicts(settings: Settings, store: Store, now: float | None = None) -> dict[str, Verdict]:
    """This instance's view of every region, from its own database (stale applied)."""
    now = time.time() if now is None else now
    name = settings.cluster_name
    verdicts = {}
    for region, stored in store.region_states(settings.regions).items():
        state, reason = health.effective_state(stored, now, settings.stale_after_seconds)
        verdicts[region] = Verdict(name, state, reason, stored.last_poll_at)
    return verdicts


class Vantages:
    """Every live instance's verdicts in etcd: written after each of this instance's cycles under a
    lease of `verdict_ttl_seconds` (a dead instance's view lapses by itself), read to agree."""

    def __init__(self, settings: Settings, etcd: EtcdClient, local: Store) -> None:
        cluster = settings.cluster
        assert cluster is not None, "Vantages needs dashboard.cluster.etcd_endpoints"
        self.settings = settings
        self.etcd = etcd
        self.local = local
        self.name = settings.cluster_name
        self.down_quorum = cluster.down_quorum
        self.prefix = f"{cluster.key_prefix}verdicts/"
        self.ttl = settings.verdict_ttl_seconds
        self._lease = 0
        self.last_write_error: str | None = None
        self.events = ClusterEventLog(settings, etcd, local)

    # -- writing (the process that polls) --------------------------------------------------------------

    def write(self, now: float | None = None) -> bool:
        """Put this instance's verdicts under its lease (renewed, or granted anew once lapsed); False
        when etcd cannot be reached (the next cycle tries again)."""
        now = time.time() if now is None else now
        body = {"instance": self.name, "at": now, VERDICT_FIELD: self.events.copied_revision(),
                "regions": {r: v.as_dict() for r, v in own_verdicts(self.settings, self.local, now).items()}}
        try:
            if not self._lease or not self.etcd.keep_alive(self._lease):
                self._lease = self.etcd.grant_lease(self.ttl)
            self.etcd.put(self.prefix + self.name, json.dumps(body, sort_keys=True), lease=self._lease)
        except ControlUnavailable as exc:
            if self.last_write_error is None:
                log.warning("event=verdicts_not_written error=%r", str(exc))
            self.last_write_error = str(exc)
            self._lease = 0 if "lease" in str(exc) else self._lease
            return False
        self.last_write_error = None
        return True

    def withdraw(self) -> None:
        """Take this instance's verdicts back at once (a clean stop); they lapse by themselves otherwise."""
        lease, self._lease = self._lease, 0
        if lease:
            try:
                self.etcd.revoke(lease)
            except ControlUnavailable as exc:
                log.warning("event=verdicts_not_withdrawn error=%r", str(exc))

    # -- reading (every process that shows or decides) ---------------------------------------------------

    def views(self, now: float | None = None) -> tuple[dict[str, dict[str, Verdict]], bool]:
        """region -> instance -> verdict, this instance's own from its database; and whether the
        other instances' verdicts could be read (False: etcd unreachable, this instance's view only)."""
        own = own_verdicts(self.settings, self.local, now)
        views: dict[str, dict[str, Verdict]] = {region: {} for region in self.settings.regions}
        reachable = True
        try:
            kvs, _ = self.etcd.get_prefix(self.prefix)
        except ControlUnavailable:
            kvs, reachable = [], False
        for kv in kvs:
            instance = kv.key.removeprefix(self.prefix)
            if instance == self.name:
                continue
            try:
                regions = json.loads(kv.value)["regions"]
                for region, raw in regions.items():
                    if region in views:
                        views[region][instance] = Verdict(instance, str(raw["state"]), str(raw.get("reason") or ""),
                                                          raw.get("at"))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("event=verdict_unreadable instance=%r error=%r", instance, str(exc))
        for region, verdict in own.items():
            views[region][self.name] = verdict
        return views, reachable

    def agreed(self, now: float | None = None) -> tuple[dict[str, Agreed], bool]:
        views, reachable = self.views(now)
        return {region: agree(v, self.down_quorum) for region, v in views.items()}, reachable

    def for_rules(self, now: float | None = None) -> tuple[dict[str, str], frozenset[str]]:
        """Each region's cluster state and the disputed regions: what the safety rules decide on."""
        agreed = self.agreed(now)[0]
        return {region: a.state for region, a in agreed.items()}, frozenset(r for r, a in agreed.items() if a.disputed)

    def apply(self, regions: list[RegionStatus], now: float | None = None) -> list[RegionStatus]:
        """This instance's view of the fleet with each region's state, reason and markers agreed by the
        cluster, and every vantage point's view beside it."""
        agreed, _ = self.agreed(now)
        shown = []
        for row in regions:
            a = agreed.get(row["region"])
            if a is None:
                shown.append(row)
                continue
            markers = dict(row["markers"])
            if a.disputed:
                markers["disputed"] = a.reason
            if a.state != health.STALE:
                markers.pop("stale", None)
            shown.append(RegionStatus({**row, "state": a.state, "reason": a.reason, "markers": markers,
                                       "disputed": a.disputed,
                                       "vantage": {name: v.as_dict() for name, v in a.vantage.items()}}))
        return shown


def applied_summary(applied: dict[str, int], version: int) -> str:
    """"v12 applied by us-east-1, eu-west-1; ap-south-1 still on v11": who applied what, for people."""
    if not applied:
        return f"v{version}: no instance has reported what it applied (cluster unreachable?)"
    current = sorted(name for name, v in applied.items() if v >= version)
    behind = sorted((name, v) for name, v in applied.items() if v < version)
    parts = [f"v{version} applied by {', '.join(current)}" if current else f"v{version} applied by no instance yet"]
    parts += [f"{name} still on v{v}" for name, v in behind]
    return "; ".join(parts)


# -- the leader: singleton work once for the whole cluster ------------------------------------------

# The leader's lease: a new leader within about this long of the old one dying.
LEADER_TTL_SECONDS = 3
LEADER_STEP_SECONDS = 1.0


class Leadership:
    """An etcd election through a lease-bound key: the instance whose key holds `leader` does the
    cluster's singleton work (state notices, the cluster events and their rollup, override expiry and
    the lapse of maintenance windows). Campaigns and renews every second in its own thread."""

    def __init__(self, settings: Settings, etcd: EtcdClient) -> None:
        cluster = settings.cluster
        assert cluster is not None, "Leadership needs dashboard.cluster.etcd_endpoints"
        self.etcd = etcd
        self.name = settings.cluster_name
        self.key = f"{cluster.key_prefix}leader"
        self._lease = 0
        self.is_leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> bool:
        """Renew, or campaign: whether this instance leads now."""
        try:
            if self._lease and not self.etcd.keep_alive(self._lease):
                self._lease = 0  # lapsed (we were cut off too long): its key is gone with it
            if not self._lease:
                self._lease = self.etcd.grant_lease(LEADER_TTL_SECONDS)
            won, responses = self.etcd.txn([absent(self.key)], [put_op(self.key, self.name, self._lease)],
                                           [range_op(self.key)])
            if won:
                leads = True
            else:
                kvs = responses[0].get("response_range", {}).get("kvs", []) if responses else []
                leads = bool(kvs) and int(kvs[0].get("lease", 0)) == self._lease
        except ControlUnavailable:
            leads = False
        if leads != self.is_leader:
            log.warning("event=%s instance=%s", "leader_elected" if leads else "leadership_lost", self.name)
        self.is_leader = leads
        return leads

    def current(self) -> str | None:
        """The instance that leads now, as etcd says (None: none, or etcd unreachable)."""
        try:
            kv = self.etcd.get(self.key)
        except ControlUnavailable:
            return None
        return kv.value if kv is not None else None

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self.step()
                self._stop.wait(LEADER_STEP_SECONDS)

        self._thread = threading.Thread(target=run, name="cluster-leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Step down at once (a clean stop): another instance leads within a second."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        lease, self._lease, self.is_leader = self._lease, 0, False
        if lease:
            try:
                self.etcd.revoke(lease)
            except ControlUnavailable as exc:
                log.warning("event=leadership_not_released error=%r", str(exc))


def cluster_transitions(vantages: Vantages, leadership: Leadership, now: float | None = None) -> list[Transition]:
    """The leader's step after each of its cycles: the changes of the agreed states since the last
    ones recorded in etcd, recorded there (only while this instance still leads) and returned for
    the notifier. Others get []. The record in etcd is what a new leader starts from, so a change is
    announced once cluster-wide, whoever leads."""
    if not leadership.is_leader:
        return []
    now = time.time() if now is None else now
    agreed, reachable = vantages.agreed(now)
    if not reachable:
        return []
    prefix = f"{vantages.settings.cluster.key_prefix}agreed/" if vantages.settings.cluster else ""
    try:
        kvs, _ = vantages.etcd.get_prefix(prefix)
        before = {kv.key.removeprefix(prefix): json.loads(kv.value)["state"] for kv in kvs}
    except (ControlUnavailable, ValueError, KeyError, TypeError) as exc:
        log.warning("event=cluster_states_unread error=%r", str(exc))
        return []
    transitions, ops = [], []
    for region, a in agreed.items():
        old = before.get(region)
        if old == a.state:
            continue
        ops.append(put_op(prefix + region, json.dumps({"state": a.state, "reason": a.reason, "at": now})))
        if old is not None and a.state != health.UNKNOWN:  # a region seen for the first time is no news
            transition = Transition(region, old, a.state, a.reason, now)
            transitions.append(transition)
            # The cluster's history of agreed changes: recorded with the state, by the same leader.
            ops.append(vantages.events.record_op(transition, a, leadership.name))
    if not ops:
        return []
    try:
        still_leads, _ = vantages.etcd.txn([value_is(leadership.key, leadership.name)], ops)
    except ControlUnavailable as exc:
        log.warning("event=cluster_states_unwritten error=%r", str(exc))
        return []
    return transitions if still_leads else []


def cluster_step(vantages: Vantages, leadership: Leadership, control: ControlState | None = None,
                 now: float | None = None) -> list[Transition]:
    """The cluster work of the process that polls, after each of its cycles: write this instance's
    verdicts; as leader, record the agreed changes (returned, to announce) and keep the cluster's
    events bounded; and copy into this instance's history the cluster events and maintenance audit
    events it has not seen. Others get []."""
    vantages.write(now)
    transitions = cluster_transitions(vantages, leadership, now)
    if leadership.is_leader:
        vantages.events.trim_if_due(leadership.key, leadership.name, now)
    vantages.events.copy_new()
    if isinstance(control, EtcdControl):
        control.copy_maintenance_events()
    return transitions


# -- what GET /api/v1/cluster, /healthz and /metrics say ---------------------------------------------


def cluster_report(settings: Settings, vantages: Vantages | None, now: float | None = None) -> dict[str, Any]:
    """Mode, this instance, every known instance (live: its verdicts have not lapsed; last seen; the
    routing version it applied), the leader, and etcd's health as this instance sees it."""
    now = time.time() if now is None else now
    cluster = settings.cluster
    if cluster is None or vantages is None:
        return {"mode": "standalone", "instance": settings.cluster_name, "leader": None, "members": [], "etcd": None}
    etcd = vantages.etcd
    prefix = cluster.key_prefix
    members: dict[str, dict[str, Any]] = {}
    leader: str | None = None
    status: dict[str, Any] = {}
    try:
        kvs, _ = etcd.get_prefix(f"{prefix}verdicts/")
        for kv in kvs:
            body = json.loads(kv.value)
            members[kv.key.removeprefix(f"{prefix}verdicts/")] = {"live": True, "last_seen": body.get("at")}
        kvs, _ = etcd.get_prefix(f"{prefix}applied/")
        for kv in kvs:
            name = kv.key.removeprefix(f"{prefix}applied/")
            members.setdefault(name, {"live": False, "last_seen": None})["applied_version"] = \
                int(json.loads(kv.value)["version"])
        found = etcd.get(f"{prefix}leader")
        leader = found.value if found is not None else None
        status = etcd.status()
    except ControlUnavailable:
        pass
    except (ValueError, KeyError, TypeError) as exc:
        log.error("event=cluster_keys_unreadable error=%r", str(exc))
    reachable = etcd.unavailable_since is None
    return {
        "mode": "cluster",
        "instance": settings.cluster_name,
        "leader": leader,
        "down_quorum": cluster.down_quorum,
        "verdict_ttl_seconds": settings.verdict_ttl_seconds,
        "members": [{"name": name, "live": m["live"], "last_seen": m["last_seen"],
                     "applied_version": m.get("applied_version")} for name, m in sorted(members.items())],
        "etcd": {"reachable": reachable, "unreachable_since": etcd.unavailable_since,
                 "error": etcd.last_error if not reachable else None, "endpoints": etcd.endpoints,
                 "version": status.get("version"), "leader_member": status.get("leader")},
    }


def cluster_problems(report: dict[str, Any]) -> list[str]:
    """What is wrong with the cluster as this instance sees it (for /healthz; empty when standalone)."""
    if report["mode"] != "cluster":
        return []
    problems = []
    if not report["etcd"]["reachable"]:
        problems.append("etcd is unreachable (or without quorum): this instance shows its own view only and "
                        "refuses routing changes")
    else:
        if report["leader"] is None:
            problems.append("no cluster leader: state notices wait for one")
        if not any(m["live"] and m["name"] == report["instance"] for m in report["members"]):
            problems.append("this instance's verdicts are not in etcd (its poller is not writing them)")
    return problems
