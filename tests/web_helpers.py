"""Helpers for the web tests: the real app on a real database, filled by real poll cycles.

The fixtures that build a `Dash` (`make_dash`, `dash`) live in conftest.py.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bs4 import BeautifulSoup
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from dashboard.config import Settings
from dashboard.demo.simulator import SimulatedFleet
from dashboard.poller import Poller
from dashboard.store import Store

WINDOWS = ["1h", "6h", "24h", "7d", "30d", "1y"]
ONE_DAY_SECONDS = 86_400


class PollsOnDemand:
    """A poller on the helper's own settings and store, built on first use (its HTTP client costs a
    tenth of a second, and many tests never poll); `close()` closes it and the store."""

    settings: Settings
    store: Store
    _poller: Poller | None

    @property
    def poller(self) -> Poller:
        if self._poller is None:
            self._poller = Poller(self.settings, self.store)
        return self._poller

    def close(self) -> None:
        if self._poller is not None:
            self._poller.close()
        self.store.close()


@dataclass
class Dash(PollsOnDemand):
    """One dashboard under test: the fleet it watches, its database, a poller and the web app."""

    fleet: SimulatedFleet
    settings: Settings
    store: Store
    app: Flask
    client: FlaskClient
    _poller: Poller | None = None

    def cycle(self, times: int = 1) -> None:
        """Run real poll cycles against the simulated fleet."""
        for _ in range(times):
            self.poller.run_cycle()

    def get(self, url: str, **kwargs: Any) -> TestResponse:
        """GET a URL; the body is read and the response closed, so no file handle outlives it."""
        response = self.client.get(url, **kwargs)
        response.get_data()
        response.close()
        return response

    def page(self, url: str, status: int = 200, **kwargs: Any) -> BeautifulSoup:
        """GET an HTML page or fragment, check its status and type, and parse it."""
        response = self.get(url, **kwargs)
        assert response.status_code == status, (url, response.status_code, response.get_data(as_text=True)[:500])
        assert response.mimetype == "text/html", (url, response.content_type)
        return BeautifulSoup(response.get_data(as_text=True), "html.parser")

    def json(self, url: str, status: int = 200) -> Any:
        """GET a JSON API URL, check its status and type, and decode it."""
        response = self.get(url)
        assert response.status_code == status, (url, response.status_code, response.get_data(as_text=True)[:500])
        assert response.mimetype == "application/json", (url, response.content_type)
        return json.loads(response.get_data(as_text=True))

    def age_last_polls(self, seconds: float) -> None:
        """Make every region's last stored poll `seconds` old, as if the poller stopped back then.

        Written through the store's own compare-and-set, the way a real poller writes a state.
        """
        for state in self.store.region_states(self.settings.regions).values():
            assert state.last_poll_at is not None, f"{state.region} was never polled"
            aged = dataclasses.replace(state, last_poll_at=state.last_poll_at - seconds, revision=state.revision + 1)
            assert self.store.compare_and_set_state(aged, state.revision)

    def insert_events(self, count: int, region: str = "eu-west-1", start_at: float | None = None) -> list[int]:
        """Insert `count` state events for `region`, oldest first; returns their ids."""
        start_at = time.time() - count if start_at is None else start_at
        with self.store.transaction():
            return [
                self.store.insert_event(at=start_at + i, region=region, kind="state", old_state="up",
                                        new_state="degraded", reason=f"test event {i}")
                for i in range(count)
            ]


def csp_directives(header: str) -> dict[str, list[str]]:
    """Content-Security-Policy as {directive: [sources]}."""
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


def assert_security_headers(response: TestResponse) -> None:
    """The headers every response of the dashboard carries, pages, fragments, API and errors alike."""
    where = response.request.path
    csp = response.headers.get("Content-Security-Policy")
    assert csp, f"no Content-Security-Policy on {where}"
    directives = csp_directives(csp)
    assert "'self'" in directives.get("script-src", []), (where, csp)
    assert "'unsafe-inline'" not in directives["script-src"], (where, csp)
    assert directives.get("frame-ancestors") == ["'none'"], (where, csp)
    assert response.headers.get("X-Content-Type-Options") == "nosniff", where
    assert response.headers.get("X-Frame-Options") == "DENY", where


def vary_values(response: TestResponse) -> set[str]:
    return {v.strip().lower() for v in response.headers.get("Vary", "").split(",") if v.strip()}


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)
