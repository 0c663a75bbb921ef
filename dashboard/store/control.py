"""The SQLite backend of the control state: overrides, routing version, audit events, poller lease,
maintenance windows."""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ..model import LeaseResult, MaintenanceWindow, NewEvent, Override, RoutingSnapshot
from .connection import Database


def _override(row: dict) -> Override:
    return Override(region=row["region"], target_region=row["target_region"], read_only=bool(row["read_only"]),
                    reason=row["reason"], actor=row["actor"], since=row["since"], until=row["until"],
                    forced=bool(row["forced"]))


def _insert_event(conn: sqlite3.Connection, event: NewEvent) -> None:
    conn.execute(
        "insert into events (at, region, kind, old_state, new_state, reason, actor, details_json)"
        " values (?, ?, ?, ?, ?, ?, ?, ?)",
        (event.at, event.region, event.kind, event.old_state, event.new_state, event.reason, event.actor,
         json.dumps(event.details) if event.details else None),
    )


def _window(row: dict) -> MaintenanceWindow:
    return MaintenanceWindow(id=row["id"], region=row["region"], starts_at=row["starts_at"], ends_at=row["ends_at"],
                             reason=row["reason"], actor=row["actor"], created_at=row["created_at"],
                             ended_at=row["ended_at"], end_kind=row["end_kind"])


class ControlQueries(Database):
    """Implements `control.ControlState` on the dashboard's own database (standalone mode)."""

    def overrides(self) -> list[Override]:
        return [_override(row) for row in self.db.query("select * from overrides order by region")]

    def routing_version(self) -> int:
        return int(self.conn.execute("select version from routing_state where id = 1").fetchone()[0])

    def routing(self) -> RoutingSnapshot:
        # One read transaction, so the overrides and the version belong together.
        conn = self.conn
        if conn.in_transaction:
            return RoutingSnapshot(self.overrides(), self.routing_version())
        conn.execute("BEGIN")
        try:
            return RoutingSnapshot(self.overrides(), self.routing_version())
        finally:
            conn.execute("COMMIT")

    def commit_routing(self, expected_version: int, *, event: NewEvent, now: float,
                       put: Override | None = None, delete: str | None = None) -> int | None:
        with self.durable_transaction() as conn:
            if self.routing_version() != expected_version:
                return None
            if put is not None:
                conn.execute(
                    "insert or replace into overrides (region, target_region, read_only, reason, actor, since,"
                    " until, forced) values (:region, :target_region, :read_only, :reason, :actor, :since,"
                    " :until, :forced)",
                    {**put, "read_only": int(put["read_only"]), "forced": int(put["forced"])},
                )
            if delete is not None:
                conn.execute("delete from overrides where region = ?", (delete,))
            conn.execute("update routing_state set version = version + 1, updated_at = ? where id = 1", (now,))
            conn.execute(
                "insert into events (at, region, kind, old_state, new_state, reason, actor, details_json)"
                " values (?, ?, ?, ?, ?, ?, ?, ?)",
                (event.at, event.region, event.kind, event.old_state, event.new_state, event.reason, event.actor,
                 json.dumps(event.details) if event.details else None),
            )
            return expected_version + 1

    # -- the poller lease ------------------------------------------------------------------------

    def acquire_lease(self, holder: str, ttl_seconds: float, now: float | None = None) -> LeaseResult:
        now = time.time() if now is None else now
        with self.transaction() as conn:
            conn.execute(
                "insert into poller_lease (id, holder, acquired_at, expires_at) values (1, ?, ?, ?)"
                " on conflict(id) do update set holder = excluded.holder,"
                " acquired_at = case when poller_lease.holder = excluded.holder"
                "   then poller_lease.acquired_at else excluded.acquired_at end,"
                " expires_at = excluded.expires_at"
                " where poller_lease.holder = excluded.holder or poller_lease.expires_at < ?",
                (holder, now, now + ttl_seconds, now),
            )
            current, expires_at = conn.execute("select holder, expires_at from poller_lease where id = 1").fetchone()
        return LeaseResult(current == holder, current, expires_at)

    def release_lease(self, holder: str) -> None:
        with self.transaction() as conn:
            conn.execute("delete from poller_lease where id = 1 and holder = ?", (holder,))

    # -- maintenance windows ---------------------------------------------------------------------

    def maintenance_windows(self, *, region: str | None = None, start: float | None = None,
                            end: float | None = None, open_only: bool = False) -> list[MaintenanceWindow]:
        where: list[str] = []
        params: list[Any] = []
        if region is not None:
            where.append("region = ?")
            params.append(region)
        if start is not None:  # still covering something at or after `start`
            where.append("min(ends_at, coalesce(ended_at, ends_at)) > ?")
            params.append(start)
        if end is not None:
            where.append("starts_at < ?")
            params.append(end)
        if open_only:
            where.append("ended_at is null")
        sql = "select * from maintenance_windows"
        if where:
            sql += " where " + " and ".join(where)
        return [_window(row) for row in self.db.query(sql + " order by starts_at, id", params)]

    def add_maintenance(self, window: MaintenanceWindow, *, event: NewEvent) -> int:
        with self.transaction() as conn:
            cursor = conn.execute(
                "insert into maintenance_windows (region, starts_at, ends_at, reason, actor, created_at, ended_at,"
                " end_kind) values (?, ?, ?, ?, ?, ?, ?, ?)",
                (window["region"], window["starts_at"], window["ends_at"], window["reason"], window["actor"],
                 window["created_at"], window["ended_at"], window["end_kind"]))
            window_id = int(cursor.lastrowid or 0)
            details = {**(event.details or {}), "window_id": window_id}
            _insert_event(conn, NewEvent(event.at, event.region, event.kind, event.reason, event.old_state,
                                         event.new_state, event.actor, details))
            return window_id

    def replace_maintenance_windows(self, windows: list[MaintenanceWindow]) -> None:
        """Cluster mode: make the local table a copy of the cluster's windows (ids kept), so this
        instance still knows them while etcd is unreachable."""
        with self.transaction() as conn:
            conn.execute("delete from maintenance_windows")
            conn.executemany(
                "insert into maintenance_windows (id, region, starts_at, ends_at, reason, actor, created_at, ended_at,"
                " end_kind) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(w["id"], w["region"], w["starts_at"], w["ends_at"], w["reason"], w["actor"], w["created_at"],
                  w["ended_at"], w["end_kind"]) for w in windows])

    def change_maintenance(self, window_id: int, *, expected_ends_at: float, event: NewEvent,
                           ends_at: float | None = None, ended_at: float | None = None,
                           end_kind: str | None = None) -> bool:
        with self.transaction() as conn:
            changed = conn.execute(
                "update maintenance_windows set ends_at = coalesce(?, ends_at), ended_at = ?, end_kind = ?"
                " where id = ? and ended_at is null and ends_at = ?",
                (ends_at, ended_at, end_kind, window_id, expected_ends_at)).rowcount
            if changed:
                _insert_event(conn, event)
            return bool(changed)
