"""The control state every dashboard instance must agree on, behind one narrow interface.

Routing overrides with the table's version, the audit event of each change, and the poller lease.
The rules (`routing.py`), the poller and the web layer talk only to `ControlState`, so a second
backend (etcd, for a cluster of dashboards in several regions) implements these few methods and
nothing else changes. Today's backend is the SQLite store (`store.control.ControlQueries`).
"""
from __future__ import annotations

from typing import Protocol

from .model import LeaseResult, NewEvent, Override, RoutingSnapshot


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


class ControlUnavailable(Exception):
    """The shared control state cannot be reached (etcd unreachable or without quorum): nothing was
    written. The web answers 503 `cluster_unavailable`; the CLI names the break-glass path."""
