"""The control state every dashboard instance must agree on, behind one narrow interface.

Routing overrides with the table's version, the audit event of each change, the poller lease, and
maintenance windows (issue 15).
The rules (`routing.py`), the poller and the web layer talk only to `ControlState`, so a second
backend (etcd, for a cluster of dashboards in several regions) implements these few methods and
nothing else changes. Today's backend is the SQLite store (`store.control.ControlQueries`).
"""
from __future__ import annotations

from typing import Protocol

from .model import LeaseResult, MaintenanceWindow, NewEvent, Override, RoutingSnapshot


class ControlState(Protocol):
    """Shared control state: read a consistent snapshot, change it only by compare-and-set."""

    def routing(self) -> RoutingSnapshot:
        """The overrides in force and the version of the routing table they make, read together."""
        ...

    def commit_routing(self, expected_version: int, *, event: NewEvent, now: float,
                       put: Override | None = None, delete: str | None = None) -> int | None:
        """Apply one change if the version is still `expected_version`: put or delete an override,
        bump the version, record the audit event, all at once. Returns the new version, or None
        when the table changed since it was read (nothing written; read again and retry)."""
        ...

    def acquire_lease(self, holder: str, ttl_seconds: float, now: float | None = None) -> LeaseResult:
        """Take or renew the right to poll; refused while another holder's lease runs."""
        ...

    def release_lease(self, holder: str) -> None:
        """Give the lease up (it lapses by itself anyway when the holder dies)."""
        ...

    # -- maintenance windows (issue 15) -----------------------------------------------------------

    def maintenance_windows(self, *, region: str | None = None, start: float | None = None,
                            end: float | None = None, open_only: bool = False) -> list[MaintenanceWindow]:
        """Windows (of one region, or all) that cover some of [start, end), oldest start first;
        `open_only`: only those not ended or lapsed yet (current and future ones)."""
        ...

    def add_maintenance(self, window: MaintenanceWindow, *, event: NewEvent) -> int:
        """Store a new window (its `id` is ignored) with its audit event, at once; returns its id."""
        ...

    def change_maintenance(self, window_id: int, *, expected_ends_at: float, event: NewEvent,
                           ends_at: float | None = None, ended_at: float | None = None,
                           end_kind: str | None = None) -> bool:
        """Extend (`ends_at`) or end (`ended_at`, `end_kind`) an open window if it is still open and
        still ends at `expected_ends_at`, recording the audit event; False when someone changed it
        first (nothing written: read again)."""
        ...


class ControlUnavailable(Exception):
    """The shared control state cannot be reached (etcd unreachable or without quorum): nothing was
    written. The web answers 503 `cluster_unavailable`; the CLI names the break-glass path."""
