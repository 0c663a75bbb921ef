"""Shared fixtures: a simulated fleet on loopback, settings written to a real file, a real database."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboard.config import Settings, load_settings
from dashboard.poller import Poller
from dashboard.simulator import SimulatedFleet
from dashboard.store import Store

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]
# Short enough that a hanging region costs a test half a second, long enough for a loaded CI box.
TEST_TIMEOUT_SECONDS = 0.5


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
