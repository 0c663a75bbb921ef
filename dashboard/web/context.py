"""What every request needs, built once by `create_app` and reached through `ctx()`.

The web layer sees the poller and the notifier only through the two small protocols here.
"""
from __future__ import annotations

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
from ..status import fleet_status
from ..store import Store


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

    def fleet(self) -> list[RegionStatus]:
        """Every configured region as pages and the API show it, with the overrides and maintenance
        windows in force (and in cluster mode the state the vantage points agree on, each one's view
        beside it)."""
        regions = fleet_status(self.settings, self.store, self.control.routing().overrides,
                               windows=self.control.maintenance_windows(open_only=True))
        return regions if self.vantages is None else self.vantages.apply(regions)


def ctx() -> DashboardContext:
    context: DashboardContext = current_app.extensions["dashboard"]
    return context
