"""Helpers for the routing and auth tests: real routers on real databases, operators and tokens.

The fixtures that build a `Routed` (`make_routed`, `two_region_fleet`) live in conftest.py.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from bs4 import BeautifulSoup
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash
from werkzeug.test import TestResponse

from dashboard.config import Settings
from dashboard.demo.simulator import SimulatedFleet
from dashboard.poller import Poller
from dashboard.routing import Change, Router
from dashboard.store import Store

from .web_helpers import PollsOnDemand

OPERATOR = "alice"
PASSWORD = "correct horse battery"
TOKEN_NAME = "automation"
TOKEN = "tok-3b9f0c1e7a5d4e2f8c6b1a0d9e8f7c6b"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ROUTING_KINDS = ("failover", "failback", "lapse")
# A region turns stale after three intervals: with 60 s, never by accident during a test.
SLOW_POLLING = {"poll_interval_seconds": 60}


def fast_hash(secret: str) -> str:
    """A werkzeug hash with few iterations: the format the config accepts, without the wait."""
    return generate_password_hash(secret, method="pbkdf2:sha256:1000")


def auth_config(**extra: Any) -> dict[str, Any]:
    """dashboard.auth with one operator (alice) and one API token (automation)."""
    return {"operators": {OPERATOR: fast_hash(PASSWORD)}, "api_tokens": {TOKEN_NAME: fast_hash(TOKEN)}, **extra}


def routing_events(store: Store) -> list[dict[str, Any]]:
    """Failover, failback and lapse events, newest first."""
    return [e for e in store.events(limit=10_000) if e["kind"] in ROUTING_KINDS]


@dataclass(frozen=True)
class Snapshot:
    """Everything a routing change touches: compared before and after a refused change."""

    overrides: list[dict[str, Any]]
    version: int
    events: list[dict[str, Any]]
    file: bytes | None


def snapshot(settings: Settings, store: Store) -> Snapshot:
    path = settings.routing_file_path
    return Snapshot(store.overrides(), store.routing_version(), store.events(limit=10_000),
                    path.read_bytes() if path.exists() else None)


def read_routing_file(settings: Settings) -> dict[str, Any]:
    return json.loads(settings.routing_file_path.read_text(encoding="utf-8"))


def serving(table: dict[str, Any]) -> dict[str, str]:
    """region -> the region that serves its new traffic."""
    return {region: entry["serving_region"] for region, entry in table["regions"].items()}


def age_region(store: Store, region: str, seconds: float) -> None:
    """Make a region's last stored poll `seconds` old, through the store's own compare-and-set."""
    state = store.region_states([region])[region]
    assert state.last_poll_at is not None, f"{region} was never polled"
    aged = dataclasses.replace(state, last_poll_at=state.last_poll_at - seconds, revision=state.revision + 1)
    assert store.compare_and_set_state(aged, state.revision)


@dataclass
class Routed(PollsOnDemand):
    """A router on a real database for a simulated fleet, with a poller to make states real."""

    fleet: SimulatedFleet
    settings: Settings
    store: Store
    router: Router
    _poller: Poller | None = None

    def cycle(self, times: int = 1) -> None:
        for _ in range(times):
            self.poller.run_cycle()

    def state(self, region: str) -> str:
        from dashboard.status import fleet_status

        regions = fleet_status(self.settings, self.store, self.store.overrides())
        return next(r["state"] for r in regions if r["region"] == region)

    def make_down(self, region: str) -> None:
        """Every region polled, `region` answering HTTP 500 until it is down."""
        self.fleet.set(region, mode="http_500")
        self.cycle(self.settings.dashboard.failure_threshold)
        assert self.state(region) == "down"

    def make_stale(self, region: str) -> None:
        if self.store.region_states([region])[region].last_poll_at is None:
            self.cycle()
        age_region(self.store, region, 10 * self.settings.dashboard.poll_interval_seconds)
        assert self.state(region) == "stale"

    def snapshot(self) -> Snapshot:
        return snapshot(self.settings, self.store)

    def fail_over(self, region: str, target: str | None = None, *, actor: str = "tester",
                  reason: str = "test failover", **change: Any) -> dict[str, Any]:
        """Fail a (polled, healthy) region over; confirm_healthy unless told otherwise."""
        change.setdefault("confirm_healthy", True)
        return self.router.set_override(Change(region, target, reason=reason, **change), actor=actor)


# -- browser helpers -------------------------------------------------------------------------------


def soup(response: TestResponse) -> BeautifulSoup:
    return BeautifulSoup(response.get_data(as_text=True), "html.parser")


def csrf_token(client: FlaskClient, url: str = "/login", **kwargs: Any) -> str:
    """The CSRF token a page's form carries (GET it and parse input[name=csrf_token])."""
    response = client.get(url, **kwargs)
    assert response.status_code == 200, (url, response.status_code)
    field = soup(response).select_one("input[name=csrf_token]")
    assert field is not None and field.get("value"), f"no csrf_token field on {url}"
    return field["value"]


def login(client: FlaskClient, username: str = OPERATOR, password: str = PASSWORD, *,
          next_url: str | None = None, token: str | None = None, **kwargs: Any) -> TestResponse:
    """POST the login form as a browser would (with the CSRF token of the login page)."""
    token = token if token is not None else csrf_token(client, **kwargs)
    form = {"username": username, "password": password, "csrf_token": token}
    if next_url is not None:
        form["next"] = next_url
    return client.post("/login", data=form, **kwargs)
