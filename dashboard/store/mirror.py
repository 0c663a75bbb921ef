"""Cluster mode's local copy of the shared routing table, kept in the same tables standalone uses.

In a cluster the overrides, the version and the audit trail live in etcd. Each instance keeps the
last table it read from there in its own `overrides` and `routing_state`, and the audit events in
its own `events`: its pages and history read them as ever, and while etcd cannot be reached the
instance still knows (and publishes) the last table the cluster agreed on. The cluster's agreed
changes of state and the maintenance audit trail are copied into `events` likewise, once each
(`copy_cluster_events`).
"""
from __future__ import annotations

import json
import sqlite3

from ..model import NewEvent, Override
from .connection import Database

# app_state: the newest cluster audit event copied into `events` (its routing version).
MIRRORED_AUDIT_VERSION = "cluster_audit_version"


class MirrorQueries(Database):
    def mirror_routing(self, overrides: list[Override], version: int, updated_at: float,
                       audit: list[tuple[int, NewEvent]]) -> None:
        """Replace the local copy with the cluster's table at `version`, and add the audit events
        (each with its routing version) not copied yet; all in one transaction."""
        with self.transaction() as conn:
            conn.execute("delete from overrides")
            for o in overrides:
                conn.execute(
                    "insert into overrides (region, target_region, read_only, reason, actor, since, until, forced)"
                    " values (:region, :target_region, :read_only, :reason, :actor, :since, :until, :forced)",
                    {**o, "read_only": int(o["read_only"]), "forced": int(o["forced"])},
                )
            conn.execute("update routing_state set version = ?, updated_at = ? where id = 1", (version, updated_at))
            copied = int(self.get_state(MIRRORED_AUDIT_VERSION) or 0)
            for audit_version, event in sorted(audit, key=lambda pair: pair[0]):
                if audit_version <= copied:
                    continue
                _insert_event(conn, event)
                copied = audit_version
            self.set_state(MIRRORED_AUDIT_VERSION, str(copied))

    def mirrored_audit_version(self) -> int:
        return int(self.get_state(MIRRORED_AUDIT_VERSION) or 0)

    def copy_cluster_events(self, watermark: str, events: list[tuple[int, NewEvent]], revision: int, *,
                            restarted: bool = False) -> int:
        """Add events read from etcd (each with the etcd revision that created it) that are newer than
        this copy's watermark (app_state `watermark`), and move the watermark to `revision`, the
        revision of the read. One transaction that reads the watermark again, so two processes of one
        instance copying at once (the poller, the web after a change) add each event once. An event
        the history holds already (same time, kind, region and details: written here by an earlier
        version, which recorded its own maintenance events itself) is not added again. `restarted`:
        etcd's revisions started again (its data was lost), so the watermark goes back to `revision`."""
        with self.transaction() as conn:
            copied = 0 if restarted else int(self.get_state(watermark) or 0)
            added = 0
            for created, event in sorted(events, key=lambda pair: pair[0]):
                if created <= copied or any(
                        json.loads(row[0] or "null") == event.details for row in conn.execute(
                            "select details_json from events where at = ? and kind = ? and region is ?",
                            (event.at, event.kind, event.region))):
                    continue
                _insert_event(conn, event)
                added += 1
            self.set_state(watermark, str(revision if restarted else max(copied, revision)))
        return added

    def cluster_events_watermark(self, watermark: str) -> int:
        return int(self.get_state(watermark) or 0)


def _insert_event(conn: sqlite3.Connection, event: NewEvent) -> None:
    """One event copied from the cluster into this instance's history, as it was recorded there."""
    conn.execute(
        "insert into events (at, region, kind, old_state, new_state, reason, actor, details_json)"
        " values (?, ?, ?, ?, ?, ?, ?, ?)",
        (event.at, event.region, event.kind, event.old_state, event.new_state, event.reason,
         event.actor, json.dumps(event.details) if event.details else None),
    )
