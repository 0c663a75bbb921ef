"""What every request needs, built once by `create_app` and reached through `ctx()`.

The web layer sees the poller and the notifier only through the two small protocols here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from flask import current_app

from ..cluster import Vantages
from ..config import Settings
from ..control import ControlState
from ..maintenance import Maintenance, MaintenanceListener
from ..metrics import Metrics, NotifierStatus
from ..model import RegionStatus
from ..probes import Prober
from ..routing import Router, RoutingListener
from ..status import fleet_status, next_change_at
from ..store import Store
from .shared_views import SharedViews

# How long an answer shared by every viewer may be handed out with nothing seen to change (see
# web/shared_views.py): standalone, every change is a commit to the database and invalidates it at
# once, so this bounds only what drifts with time; in cluster mode the other instances' verdicts
# change in etcd unseen, so it is the delay of the agreed state.
SHARED_VIEW_MAX_AGE_SECONDS = 5.0
CLUSTER_SHARED_VIEW_MAX_AGE_SECONDS = 1.0


class PollerStatus(Protocol):
    """All the web layer knows of the poller: whether it runs, and why not."""

    @property
    def running(self) -> bool: ...

    @property
    def standby_reason(self) -> str | None: ...

    @property
    def last_error(self) -> str | None: ...


class Notifications(RoutingListener, MaintenanceListener, NotifierStatus, Protocol):
    """The notifier as the web layer sees it: told of routing changes and ended maintenance windows,
    asked for its counters."""


@dataclass
class DashboardContext:
    """What every request needs; built once by `create_app`, reached through `ctx()`."""

    settings: Settings
    store: Store  # this instance's states, samples and events
    control: ControlState  # overrides, routing version, audit: shared by every instance
    router: Router
    metrics: Metrics
    service: PollerStatus | None = None  # the polling service, when this process polls
    notifier: Notifications | None = None  # when this process sends notifications
    prober: Prober | None = None  # the poller's client, reused by the rollout check
    vantages: Vantages | None = None  # cluster mode: every instance's verdicts, to agree on

    @cached_property
    def maintenance(self) -> Maintenance:
        """Maintenance windows, through the same control state as the overrides."""
        return Maintenance(self.settings, self.store, control=self.control, listener=self.notifier)

    @cached_property
    def shared_views(self) -> SharedViews:
        """The overview fragment and the status API, built once for every viewer."""
        return SharedViews(SHARED_VIEW_MAX_AGE_SECONDS if self.vantages is None
                           else CLUSTER_SHARED_VIEW_MAX_AGE_SECONDS)

    def fleet(self) -> list[RegionStatus]:
        """Every configured region as pages and the API show it, with the overrides and maintenance
        windows in force (and in cluster mode the state the vantage points agree on, each one's view
        beside it)."""
        return self.fleet_until()[0]

    def fleet_until(self) -> tuple[list[RegionStatus], float | None]:
        """The fleet as `fleet` gives it, and the first moment time alone changes it (None: never)."""
        now = time.time()
        windows = self.control.maintenance_windows(open_only=True)
        regions = fleet_status(self.settings, self.store, self.control.routing().overrides, now, windows)
        if self.vantages is not None:
            regions = self.vantages.apply(regions, now)
        return regions, next_change_at(self.settings, regions, windows, now)


def ctx() -> DashboardContext:
    context: DashboardContext = current_app.extensions["dashboard"]
    return context
