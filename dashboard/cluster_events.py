"""Cluster events: one history of the cluster's agreed changes of state, shared by every instance.

The leader records each change of a region's agreed state (`cluster.cluster_transitions`) under a
key of its own, in the same etcd transaction that checks it still leads:

    events/<at in microseconds, 20 digits>-<region>   {at, region, old_state, new_state, reason,
                                                       leader, vantage: {instance: {state, reason, at}}}

Every instance copies the entries it has not seen into its own SQLite history as kind
`cluster_state`, actor `cluster` (beside its own view's `state` events, which stay as they were:
maintenance summaries and error budgets read those). The maintenance audit trail
(`maintenance/events/...`, written by the instance where a window was started, extended or ended)
is copied the same way (`copy_new`). A copy knows what it has seen by etcd revision: it reads only
the keys written after the revision of its last read (entries are written once, never changed) and
stores the new revision with the events it adds, in one SQLite transaction; so each event is copied
once, across restarts, whatever order the keys sort in and whichever leader wrote them.

Rollup (the leader's, at most once a minute, `ClusterEventLog.trim`): `events/` stays bounded. An
entry is deleted only when all of these hold:

- it is older than `raw_retention_hours` (as long as an instance keeps its raw samples; each
  instance's copy in SQLite is kept like every other event, for good);
- it is not one of its region's newest `KEEP_PER_REGION` entries (a region that changed long ago
  keeps its last changes for an instance that comes back or joins);
- every live instance has copied it: each says, in its verdicts, the revision its copy has reached,
  and nothing created after the lowest of those goes.

An instance that was away (dead, or cut off longer than its verdicts live) longer than the
retention misses the entries trimmed meanwhile. It is told: the trim keeps, in `events/~trimmed`
(after every entry), the highest revision it deleted; a copy that finds it above the revision its
last copy reached records a `cluster_events_missed` event saying so, once.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from .agreement import Agreed
from .config import Settings
from .control import ControlUnavailable
from .etcd import EtcdClient, delete_op, prefix_end, put_op, value_is
from .model import NewEvent, Transition
from .store import Store

log = logging.getLogger(__name__)

CLUSTER_STATE = "cluster_state"  # the kind of a copied agreed change in each instance's history
CLUSTER_ACTOR = "cluster"
# app_state: the etcd revision up to which this instance has copied each kind of cluster event.
EVENTS_WATERMARK = "cluster_events_revision"
MAINTENANCE_WATERMARK = "cluster_maintenance_events_revision"
MISSED = "cluster_events_missed"
TRIMMED_KEY = "~trimmed"  # under events/, after every entry: {"revision": the highest deleted, "at"}
# The verdicts' field saying how far this instance's copy of the cluster events has got.
VERDICT_FIELD = "events_revision"
KEEP_PER_REGION = 20
TRIM_EVERY_SECONDS = 60.0
# Deletes per etcd transaction: below etcd's default --max-txn-ops (128), with the marker's put.
TRIM_BATCH = 100


def event_key(events_prefix: str, at: float, region: str) -> str:
    return f"{events_prefix}{int(at * 1_000_000):020d}-{region}"


def _key_parts(events_prefix: str, key: str) -> tuple[float, str] | None:
    """(at, region) of an entry's key; None for a key that is not one."""
    digits, dash, region = key.removeprefix(events_prefix).partition("-")
    if not dash or not region or len(digits) != 20 or not digits.isdigit():
        return None
    return int(digits) / 1_000_000, region


def cluster_event_of(text: str) -> NewEvent:
    """An entry of `events/` as a row of this instance's history (ValueError etc. for garbage)."""
    raw = json.loads(text)
    vantage = raw.get("vantage") or {}
    if not isinstance(vantage, dict):
        raise ValueError("vantage: not a map")
    views = {str(name): {"state": str(view["state"]), "reason": str(view.get("reason") or "")}
             for name, view in sorted(vantage.items())}
    return NewEvent(at=float(raw["at"]), region=str(raw["region"]), kind=CLUSTER_STATE,
                    old_state=str(raw["old_state"]), new_state=str(raw["new_state"]), reason=str(raw["reason"]),
                    actor=CLUSTER_ACTOR, details={"leader": str(raw.get("leader") or ""), "vantage": views})


def _missed(text: str, reached: int, revision: int, now: float) -> NewEvent | None:
    """The note of entries trimmed before this copy could take them (None: nothing missed)."""
    trimmed = int(json.loads(text)["revision"])
    if not reached or trimmed <= reached:  # a first copy has no history to be continuous with
        return None
    return NewEvent(at=now, region=None, kind=MISSED, actor=CLUSTER_ACTOR, reason=(
        "cluster events were trimmed before this instance could copy them (it was away longer than "
        "raw_retention_hours): its history of the cluster's agreed changes has a gap"),
        details={"copied_up_to_revision": reached, "trimmed_up_to_revision": trimmed, "read_at_revision": revision})


def copy_new(etcd: EtcdClient, store: Store, prefix: str, watermark: str,
             parse: Callable[[str], NewEvent]) -> int:
    """Copy the keys under `prefix` written since this instance's last copy into its history;
    returns how many were added. Never raises: what is not copied now is copied next time."""
    try:
        reached = store.cluster_events_watermark(watermark)
        kvs, revision = etcd.get_range(prefix, prefix_end(prefix), changed_after=reached)
        restarted = revision < reached
        if restarted:  # etcd's data was lost: its revisions started again, below this copy's mark
            log.warning("event=cluster_events_copy_restarted prefix=%s reached=%d revision=%d", prefix, reached,
                        revision)
            reached = 0
            kvs, revision = etcd.get_range(prefix, prefix_end(prefix))
    except ControlUnavailable:
        return 0  # said by the banner and /healthz already
    except sqlite3.Error as exc:
        log.warning("event=cluster_events_not_copied prefix=%s error=%r", prefix, str(exc))
        return 0
    events: list[tuple[int, NewEvent]] = []
    for kv in kvs:
        try:
            if kv.key == prefix + TRIMMED_KEY:
                missed = _missed(kv.value, reached, revision, time.time())
                if missed is not None:
                    events.append((kv.mod_revision, missed))
                continue
            events.append((kv.mod_revision, parse(kv.value)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Only dashboards write these keys: a fault to log, never a reason to stop copying the rest.
            log.error("event=cluster_event_unreadable key=%s error=%r", kv.key, str(exc))
    try:
        return store.copy_cluster_events(watermark, events, revision, restarted=restarted)
    except sqlite3.Error as exc:
        log.warning("event=cluster_events_not_copied prefix=%s error=%r", prefix, str(exc))
        return 0


class ClusterEventLog:
    """This instance's side of the cluster events: recording (as leader), copying in, trimming."""

    def __init__(self, settings: Settings, etcd: EtcdClient, local: Store) -> None:
        cluster = settings.cluster
        assert cluster is not None, "ClusterEventLog needs dashboard.cluster.etcd_endpoints"
        self.etcd = etcd
        self.local = local
        self.prefix = f"{cluster.key_prefix}events/"
        self.verdicts_prefix = f"{cluster.key_prefix}verdicts/"
        self.retention_seconds = settings.dashboard.raw_retention_hours * 3600
        self._trimmed_at = 0.0

    def record_op(self, transition: Transition, agreed: Agreed, leader: str) -> dict[str, Any]:
        """The put of one agreed change, for the leader's transaction."""
        body = {"at": transition.at, "region": transition.region, "old_state": transition.old_state,
                "new_state": transition.new_state, "reason": transition.reason, "leader": leader,
                "vantage": {name: v.as_dict() for name, v in agreed.vantage.items()}}
        return put_op(event_key(self.prefix, transition.at, transition.region), json.dumps(body, sort_keys=True))

    def copy_new(self) -> int:
        return copy_new(self.etcd, self.local, self.prefix, EVENTS_WATERMARK, cluster_event_of)

    def copied_revision(self) -> int:
        """How far this instance's copy has got, for its verdicts (0 when its database cannot say)."""
        try:
            return self.local.cluster_events_watermark(EVENTS_WATERMARK)
        except sqlite3.Error:
            return 0

    def trim_if_due(self, leader_key: str, leader: str, now: float | None = None) -> int:
        now = time.time() if now is None else now
        if now - self._trimmed_at < TRIM_EVERY_SECONDS:
            return 0
        self._trimmed_at = now
        try:
            return self.trim(leader_key, leader, now)
        except ControlUnavailable as exc:
            log.warning("event=cluster_events_not_trimmed error=%r", str(exc))
            return 0

    def trim(self, leader_key: str, leader: str, now: float | None = None) -> int:
        """Delete the entries the rules of the module docstring let go, in transactions that hold only
        while `leader` leads; returns how many went. Raises ControlUnavailable."""
        now = time.time() if now is None else now
        cutoff = now - self.retention_seconds
        copied_by_all = self._copied_by_every_live_instance()
        kvs, _ = self.etcd.get_range(self.prefix, prefix_end(self.prefix), keys_only=True)
        by_region: dict[str, list[tuple[float, str, int]]] = {}
        for kv in kvs:
            parts = _key_parts(self.prefix, kv.key)
            if kv.key == self.prefix + TRIMMED_KEY:
                continue
            if parts is None:
                log.error("event=cluster_event_key_unreadable key=%s", kv.key)
                continue
            by_region.setdefault(parts[1], []).append((parts[0], kv.key, kv.mod_revision))
        doomed = [(written, key) for entries in by_region.values()
                  for at, key, written in sorted(entries)[:-KEEP_PER_REGION]
                  if at < cutoff and (copied_by_all is None or written <= copied_by_all)]
        deleted = 0
        marker = self.prefix + TRIMMED_KEY
        found = self.etcd.get(marker) if doomed else None
        try:
            trimmed = int(json.loads(found.value)["revision"]) if found is not None else 0
        except (ValueError, KeyError, TypeError):
            log.error("event=cluster_events_marker_unreadable key=%s", marker)
            trimmed = 0
        for start in range(0, len(doomed), TRIM_BATCH):
            batch = doomed[start:start + TRIM_BATCH]
            # What went, for an instance that comes back later than its copy could keep up (module doc).
            trimmed = max(trimmed, *(written for written, _ in batch))
            ops = [delete_op(key) for _, key in batch]
            ops.append(put_op(marker, json.dumps({"revision": trimmed, "at": now})))
            still_leads, _ = self.etcd.txn([value_is(leader_key, leader)], ops)
            if not still_leads:
                break
            deleted += len(batch)
        if deleted:
            log.info("event=cluster_events_trimmed deleted=%d kept=%d", deleted, len(kvs) - deleted)
        return deleted

    def _copied_by_every_live_instance(self) -> int | None:
        """The lowest revision every live instance's copy has reached (None: no instance says)."""
        kvs, _ = self.etcd.get_prefix(self.verdicts_prefix)
        reached = []
        for kv in kvs:
            try:
                value = json.loads(kv.value).get(VERDICT_FIELD)
            except (ValueError, AttributeError):
                continue
            if isinstance(value, int):
                reached.append(value)
        return min(reached) if reached else None
