"""Region states and the event history: what the poller leaves after each cycle, and every change."""
from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from ..model import UNKNOWN, EventRow, NewEvent, RegionRow, RegionState, RegionUpdate, ReportedIdentity
from .connection import Database


@functools.lru_cache(maxsize=64)
def _fleet_view(raw: str) -> tuple[str, ...]:
    """A stored fleet view, parsed once: at 200 regions every region reports the same list of 200
    names, and parsing it per region per status read was most of the read."""
    return tuple(json.loads(raw))

class StateQueries(Database):
    """The `regions` rows (state, counters, latest details) and the `events` history."""

    def region_states(self, regions: Sequence[str]) -> dict[str, RegionState]:
        """Stored state of each region; a region never stored is unknown."""
        rows = {
            row["region"]: row
            for row in self.db.query(
                "select region, state, reason, since, consecutive_failures, consecutive_successes,"
                " last_poll_at, revision from regions"
            )
        }
        states = {}
        for region in regions:
            row = rows.get(region)
            states[region] = RegionState(
                region=region,
                state=row["state"],
                reason=row["reason"] or "",
                since=row["since"],
                consecutive_failures=row["consecutive_failures"] or 0,
                consecutive_successes=row["consecutive_successes"] or 0,
                last_poll_at=row["last_poll_at"],
                revision=row["revision"],
            ) if row else RegionState(region=region)
        return states

    def compare_and_set_state(self, new: RegionState, expected_revision: int) -> bool:
        """Write a region's state only if nobody changed it since `expected_revision` was read."""
        conn = self.conn
        values = (
            new.state, new.reason, new.since, new.consecutive_failures, new.consecutive_successes,
            new.last_poll_at, new.revision,
        )
        if expected_revision == 0:
            cursor = conn.execute(
                "insert into regions (region, state, reason, since, consecutive_failures,"
                " consecutive_successes, last_poll_at, revision) values (?, ?, ?, ?, ?, ?, ?, ?)"
                " on conflict(region) do update set state = excluded.state, reason = excluded.reason,"
                " since = excluded.since, consecutive_failures = excluded.consecutive_failures,"
                " consecutive_successes = excluded.consecutive_successes,"
                " last_poll_at = excluded.last_poll_at, revision = excluded.revision"
                " where regions.revision = 0",
                (new.region, *values),
            )
        else:
            cursor = conn.execute(
                "update regions set state = ?, reason = ?, since = ?, consecutive_failures = ?,"
                " consecutive_successes = ?, last_poll_at = ?, revision = ?"
                " where region = ? and revision = ?",
                (*values, new.region, expected_revision),
            )
        return cursor.rowcount == 1

    def update_region_details(
        self,
        region: str,
        *,
        latency_ms: float | None,
        reported_error_rate: float | None,
        markers: dict[str, Any],
    ) -> None:
        self.conn.execute(
            "update regions set latency_ms = ?, reported_error_rate = ?, markers_json = ? where region = ?",
            (latency_ms, reported_error_rate, json.dumps(markers), region),
        )

    def update_deployment(self, region: str, payload: Any, version: str | None, at: float) -> None:
        """Keep the latest deployment payload of a region, and what it says the region is in columns."""
        identity = ReportedIdentity.of(payload)
        self.conn.execute(
            "update regions set deployment_at = ?, version = ?, reported_region = ?,"
            " reported_primary_region = ?, reported_regions_json = ? where region = ?",
            (at, version, identity.region, identity.primary_region,
             None if identity.regions is None else json.dumps(identity.regions), region),
        )
        # Mostly the same payload every cycle: compared in place, and then nothing is written.
        self.conn.execute(
            "insert into region_deployments values (?, ?) on conflict (region) do update"
            " set payload = excluded.payload where payload is not excluded.payload",
            (region, json.dumps(payload)),
        )

    def region_deployment(self, region: str) -> Any:
        """A region's latest deployment payload as it sent it (None before any answer): the one
        place the stored payload is parsed, for the region's own page and API."""
        row = self.conn.execute("select payload from region_deployments where region = ?", (region,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def stored_versions(self) -> dict[str, str | None]:
        return {row["region"]: row["version"] for row in self.db.query("select region, version from regions")}

    def region_rows(self, regions: Sequence[str] | None = None) -> list[RegionRow]:
        """What is stored about each region, for pages and the CLI (markers decoded, the payload
        left out); a region never stored is unknown, "not polled yet"."""
        # Never the payload: one fat region must not slow every page that shows the status.
        rows = {row["region"]: row for row in self.db.query(
            "select region, state, reason, since, consecutive_failures, consecutive_successes, last_poll_at,"
            " revision, latency_ms, reported_error_rate, version, reported_region, reported_primary_region,"
            " reported_regions_json, deployment_at, markers_json from regions")}
        names = list(regions) if regions is not None else sorted(rows)
        result = []
        for region in names:
            row = rows.get(region) or {}
            fleet_view = row.get("reported_regions_json")
            result.append(RegionRow(
                region=region,
                state=row.get("state") or UNKNOWN,
                reason=row.get("reason", "not polled yet"),
                since=row.get("since"),
                consecutive_failures=row.get("consecutive_failures") or 0,
                consecutive_successes=row.get("consecutive_successes") or 0,
                last_poll_at=row.get("last_poll_at"),
                revision=row.get("revision") or 0,
                latency_ms=row.get("latency_ms"),
                reported_error_rate=row.get("reported_error_rate"),
                version=row.get("version"),
                reported_region=row.get("reported_region"),
                reported_primary_region=row.get("reported_primary_region"),
                reported_regions=list(_fleet_view(fleet_view)) if fleet_view else None,
                deployment_at=row.get("deployment_at"),
                markers=json.loads(row.get("markers_json") or "{}"),
            ))
        return result

    def last_poll_at(self) -> float | None:
        """When any region was last polled: how fresh the whole picture is."""
        row = self.conn.execute("select max(last_poll_at) from regions").fetchone()
        return row[0] if row else None

    def write_region_update(self, update: RegionUpdate) -> bool:
        """One region's row after a cycle, as a compare-and-set; False when someone wrote under us."""
        if not self.compare_and_set_state(update.state, update.expected_revision):
            return False
        region = update.state.region
        if update.deployment_at is not None:
            self.update_deployment(region, update.deployment, update.version, update.deployment_at)
        self.update_region_details(region, latency_ms=update.latency_ms,
                                   reported_error_rate=update.reported_error_rate, markers=update.markers)
        return True

    # -- events ----------------------------------------------------------------------------------

    def add_event(self, event: NewEvent) -> int:
        return self.insert_event(at=event.at, region=event.region, kind=event.kind, reason=event.reason,
                                 old_state=event.old_state, new_state=event.new_state, actor=event.actor,
                                 details=event.details)

    def insert_event(
        self,
        *,
        at: float,
        region: str | None,
        kind: str,
        reason: str,
        old_state: str | None = None,
        new_state: str | None = None,
        actor: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        cursor = self.conn.execute(
            "insert into events (at, region, kind, old_state, new_state, reason, actor, details_json)"
            " values (?, ?, ?, ?, ?, ?, ?, ?)",
            (at, region, kind, old_state, new_state, reason, actor, json.dumps(details) if details else None),
        )
        return int(cursor.lastrowid or 0)

    def events(
        self, *, region: str | None = None, limit: int = 50, before: int | None = None, kind: str | None = None
    ) -> list[EventRow]:
        """Events newest first; `before` is an event id, for paging."""
        where: list[str] = []
        params: list[Any] = []
        if region is not None:
            where.append("region = ?")
            params.append(region)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        sql = "select * from events"
        if where:
            sql += " where " + " and ".join(where)
        sql += " order by id desc limit ?"
        rows: list[EventRow] = []
        for row in self.db.query(sql, [*params, limit]):
            raw = row.pop("details_json")
            row["details"] = json.loads(raw) if raw else None
            rows.append(row)  # type: ignore[arg-type]  # the columns of EventRow, as stored
        return rows

    def events_between(self, region: str, start: float, end: float, kinds: Sequence[str]) -> list[dict[str, Any]]:
        marks = ",".join("?" for _ in kinds)
        return list(self.db.query(
            f"select id, at, kind, old_state, new_state, reason from events"
            f" where region = ? and at >= ? and at < ? and kind in ({marks}) order by at",
            [region, start, end, *kinds],
        ))
