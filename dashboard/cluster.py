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
import time
from typing import Any

from .config import Settings
from .control import ControlState, ControlUnavailable
from .etcd import EtcdClient, absent, delete_op, put_op, value_is
from .model import LeaseResult, NewEvent, Override, RoutingSnapshot
from .store import Store

log = logging.getLogger(__name__)

AUDIT_DIGITS = 12


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
        if snap.version != self._mirrored:
            try:
                self._mirror(snap)
            except (ControlUnavailable, sqlite3.Error) as exc:  # copied at the next read
                log.warning("event=cluster_mirror_deferred version=%d error=%r", snap.version, str(exc))
        return snap

    def cluster_routing(self) -> RoutingSnapshot:
        """The cluster's table, or ControlUnavailable."""
        kvs, _ = self.etcd.get_prefix(f"{self.prefix}routing/")
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
        succeeded, _ = self.etcd.txn(compare, ops)
        if not succeeded:
            return None
        log.info("event=cluster_routing_committed version=%d kind=%s region=%s", version, event.kind, event.region)
        self.routing()  # the local copy and audit trail, at once, for this instance's pages
        return version

    def acquire_lease(self, holder: str, ttl_seconds: float, now: float | None = None) -> LeaseResult:
        return self.local.acquire_lease(holder, ttl_seconds, now)

    def release_lease(self, holder: str) -> None:
        self.local.release_lease(holder)

    # -- the local copy ----------------------------------------------------------------------------

    def _mirror(self, snap: RoutingSnapshot) -> None:
        """Copy the cluster's table and the audit events this instance has not seen into its SQLite."""
        copied = self.local.mirrored_audit_version()
        audit: list[tuple[int, NewEvent]] = []
        if snap.version > copied:
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
    if settings.cluster is None:
        return store
    return EtcdControl(settings, EtcdClient.for_settings(settings), store)


def describe_mode(settings: Settings) -> dict[str, Any]:
    cluster = settings.cluster
    if cluster is None:
        return {"mode": "standalone"}
    return {"mode": "cluster", "instance": settings.cluster_name, "etcd_endpoints": cluster.etcd_endpoints}
