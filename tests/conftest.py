"""Shared fixtures: a simulated fleet on loopback, settings written to a real file, a real database."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from dashboard.config import Settings, load_settings
from dashboard.demo.simulator import SimulatedFleet
from dashboard.poller import Poller
from dashboard.routing import Router
from dashboard.store import Store

from .routing_helpers import SLOW_POLLING, Routed
from .web_helpers import Dash

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]
# Short enough that a hanging region costs a test half a second, long enough for a loaded CI box.
TEST_TIMEOUT_SECONDS = 0.5


T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout: float = 10.0, interval: float = 0.02) -> T:
    """Call `check` until it returns something truthy, and return that; fail naming `what` (and the
    last value seen) after `timeout` seconds. Tests wait for conditions, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what} (last: {value!r})")
        time.sleep(interval)


@pytest.fixture
def fleet() -> Iterator[SimulatedFleet]:
    with SimulatedFleet(REGIONS, primary_region="us-east-1") as running:
        yield running


def write_config(path: Path, deployment: dict[str, Any], **dashboard: Any) -> Path:
    path.write_text(yaml.safe_dump({"deployment": deployment, "dashboard": dashboard}), encoding="utf-8")
    return path


HISTORY_REGIONS = ["us-east-1", "eu-west-1"]


def deployment_block(regions: list[str]) -> dict:
    """A fleet nobody polls (port 9 answers nothing): for tests of stored history alone."""
    return {
        "region": regions[0],
        "primary_region": regions[0],
        "regions": regions,
        "region_base_urls": {region: f"http://127.0.0.1:9/{region}" for region in regions},
    }


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[Callable[..., tuple[Store, Settings]]]:
    """A real settings file (through the real loader) and a real SQLite file per call; all closed at the end."""
    stores: list[Store] = []

    def make(name: str = "dashboard", regions: list[str] = HISTORY_REGIONS, **dashboard: Any) -> tuple[Store, Settings]:
        path = write_config(tmp_path / f"{name}.yaml", deployment_block(regions), database=f"{name}.db", **dashboard)
        settings = load_settings(str(path), environ={})
        store = Store(settings.database_path)
        stores.append(store)
        return store, settings

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a fleet, through a real config file and the real loader (no env overrides)."""

    def make(fleet: SimulatedFleet, **dashboard: Any) -> Settings:
        values = {"database": "dashboard.db", "poll_interval_seconds": 1,
                  "timeout_seconds": TEST_TIMEOUT_SECONDS, **dashboard}
        path = write_config(tmp_path / "config.yaml", fleet.deployment_block(), **values)
        return load_settings(str(path), environ={})

    return make


@pytest.fixture
def poller_for(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Poller]]:
    """Build pollers on real databases; every one is closed at the end of the test."""
    made: list[tuple[Poller, Store]] = []

    def build(fleet: SimulatedFleet, settings: Settings | None = None, **dashboard: Any) -> Poller:
        settings = settings or make_settings(fleet, **dashboard)
        store = Store(settings.database_path)
        poller = Poller(settings, store)
        made.append((poller, store))
        return poller

    yield build
    for poller, store in made:
        poller.close()
        store.close()


# -- the web app and routers, built on the fixtures above (helpers in web_helpers / routing_helpers) --


@pytest.fixture
def make_dash(fleet: SimulatedFleet, make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Dash]]:
    """Build the app on a fresh database for the fleet; dashboard settings may be overridden."""
    from dashboard.web import create_app

    made: list[Dash] = []

    def build(**dashboard: Any) -> Dash:
        settings = make_settings(fleet, **dashboard)
        store = Store(settings.database_path)
        app = create_app(settings, store=store)
        app.config["TESTING"] = True
        dash = Dash(fleet, settings, store, app, app.test_client())
        made.append(dash)
        return dash

    yield build
    for dash in made:
        dash.close()


@pytest.fixture
def dash(make_dash: Callable[..., Dash]) -> Dash:
    """The app on a fresh database, with default test settings (1 s interval)."""
    return make_dash()


@pytest.fixture
def make_routed(fleet: SimulatedFleet, make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Routed]]:
    """Build a router (routing file routing.json beside the config) for a fleet; closed at the end.

    Every region is polled once first (a target never polled is refused as unhealthy), and the
    interval is long enough that nothing turns stale during a test unless the test makes it so.
    """
    made: list[Routed] = []

    def build(fleet_: SimulatedFleet | None = None, *, poll: bool = True, **dashboard: Any) -> Routed:
        the_fleet = fleet_ or fleet
        settings = make_settings(the_fleet, **{"routing_file": "routing.json", **SLOW_POLLING, **dashboard})
        store = Store(settings.database_path)
        routed = Routed(the_fleet, settings, store, Router(settings, store))
        made.append(routed)
        if poll:
            routed.cycle()
        return routed

    yield build
    for routed in made:
        routed.close()


@pytest.fixture
def two_region_fleet() -> Iterator[SimulatedFleet]:
    """Two regions: failing both over would leave no region serving its own traffic."""
    with SimulatedFleet(["us-east-1", "eu-west-1"], primary_region="us-east-1") as running:
        yield running
