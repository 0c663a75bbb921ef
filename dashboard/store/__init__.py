"""Every SQL statement of the dashboard, one module per concern over one connection class.

- `connection`: the SQLite file, per-thread connections, transactions, app_state, size;
- `schema`: the migrations;
- `samples`: raw samples and rollups;
- `states`: region states and the event history;
- `control`: the control state (overrides, routing version, audit, poller lease), the SQLite
  backend of `dashboard.control.ControlState`;
- `auth`: the login throttle and the app's own secrets;
- `outbox`: the notification outbox (one row per notice and receiver, until delivered).
- `publishers`: what each publisher of the routing table last applied, and its last error.
- `mirror`: cluster mode's local copy of the routing table and audit trail that live in etcd.

`Store` is all of them on one database; code that needs only one concern can say so in its types.
"""
from __future__ import annotations

from ..model import CycleResult, LeaseResult, Sample
from .auth import AuthQueries
from .connection import BUSY_TIMEOUT_MS, Database
from .control import ControlQueries
from .mirror import MirrorQueries
from .outbox import OutboxQueries
from .publishers import PublisherQueries
from .samples import SampleQueries
from .schema import migrations
from .states import StateQueries

__all__ = ["BUSY_TIMEOUT_MS", "Database", "LeaseResult", "Sample", "StateConflict", "Store", "migrations"]


class StateConflict(Exception):
    """Regions whose rows someone else wrote since they were read."""

    def __init__(self, regions: list[str]) -> None:
        super().__init__(f"written by someone else meanwhile: {', '.join(regions)}")
        self.regions = regions


class Store(SampleQueries, StateQueries, ControlQueries, AuthQueries, OutboxQueries, PublisherQueries,
            MirrorQueries):
    """The dashboard's SQLite database, every concern of it."""

    def write_cycle(self, result: CycleResult, *, all_or_nothing: bool = False) -> list[str]:
        """Store one evaluated cycle in one transaction: samples, region rows, events.

        Each region's row is a compare-and-set on the revision its evaluation started from; a
        region someone else wrote in between keeps their row, and its events of this cycle are
        not written. Returns the regions that conflicted (normally none: one poller per database).
        With `all_or_nothing`, a conflict writes nothing at all and raises StateConflict."""
        conflicts: set[str] = set()
        with self.transaction():
            self.insert_samples(result.samples)
            for update in result.updates:
                if not self.write_region_update(update):
                    conflicts.add(update.state.region)
            if conflicts and all_or_nothing:
                raise StateConflict(sorted(conflicts))
            for event in result.events:
                if event.region not in conflicts:
                    self.add_event(event)
        return sorted(conflicts)
