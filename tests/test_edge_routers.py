"""Real edge routers apply the routing table (issue 13): Debian's nginx and HAProxy, each started
once for this module from the example config in deploy/, in front of three simulated regions.

For each router: before a failover a region's traffic reaches its own backend; a failover by the
API or the CLI moves it to us-east-1 (by Host and by X-Region); a read-only region answers writes
with 503 and passes reads; a failback restores it; a router that is down misses the change, the
dashboard shows why, and applies the table once the router is back; and for nginx, a failing
`nginx -t` leaves nginx on the last good table with the error on the dashboard.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from dashboard.config import Settings, load_settings
from dashboard.demo.simulator import SimulatedFleet
from dashboard.poller import Poller
from dashboard.routing import Router
from dashboard.store import Store
from dashboard.web import create_app

from .conftest import REGIONS
from .edge_helpers import DOMAIN, ROUTERS, EdgeRouter, require_router
from .routing_helpers import BEARER, auth_config, soup

pytestmark = pytest.mark.routers


@dataclass
class Edge:
    """One real router in front of the fleet, and the dashboard that publishes to it."""

    router: EdgeRouter
    fleet: SimulatedFleet
    settings: Settings
    store: Store
    app: Flask
    client: FlaskClient
    http: httpx.Client
    poller: Poller

    @property
    def name(self) -> str:
        return f"edge-{self.router.kind}"

    @property
    def dashboard(self) -> Router:
        return self.app.extensions["dashboard"].router

    def api(self, method: str, path: str, body: dict[str, Any], status: int) -> dict[str, Any]:
        response = self.client.open(path, method=method, json=body, headers=BEARER)
        assert response.status_code == status, response.get_data(as_text=True)
        return response.get_json()

    def fail_over(self, region: str = "eu-west-1", **fields: Any) -> dict[str, Any]:
        body = {"region": region, "reason": f"{region} drill", "confirm_healthy": True, **fields}
        return self.api("POST", "/api/v1/routing/overrides", body, 201)

    def fail_back(self, region: str = "eu-west-1") -> dict[str, Any]:
        return self.api("DELETE", f"/api/v1/routing/overrides/{region}", {"reason": "drill over"}, 200)

    def served_by(self, region: str, by: str = "host") -> str | None:
        return self.router.served_by(self.http, region, by=by)

    def wait_served(self, region: str, expected: str) -> None:
        self.router.wait_served(self.http, region, expected)

    def publisher(self, published: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        rows = self.dashboard.published() if published is None else published
        return next(p for p in rows if p["name"] == self.name)


@pytest.fixture(scope="module")
def edge_fleet() -> Iterator[SimulatedFleet]:
    with SimulatedFleet(REGIONS, primary_region="us-east-1") as running:
        yield running


@pytest.fixture(scope="module", params=list(ROUTERS))
def edge(request: pytest.FixtureRequest, edge_fleet: SimulatedFleet,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """A router from its deploy/ example and a dashboard publishing to it, for the whole module."""
    kind = request.param
    require_router(kind)
    directory = tmp_path_factory.mktemp(kind)
    upstreams = {region: int(urlsplit(url).port or 0) for region, url in edge_fleet.base_urls.items()}
    router = ROUTERS[kind](directory / "router", upstreams)
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump({"deployment": edge_fleet.deployment_block(), "dashboard": {
        "database": "dashboard.db", "routing_file": "routing.json", "poll_interval_seconds": 60,
        "timeout_seconds": 0.5, "auth": auth_config(), "publish": [router.publisher()],
    }}), encoding="utf-8")
    settings = load_settings(str(config), environ={})
    store = Store(settings.database_path)
    app = create_app(settings, store=store)
    app.config["TESTING"] = True
    poller = Poller(settings, store)
    http = httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))
    edge = Edge(router, edge_fleet, settings, store, app, app.test_client(), http, poller)
    # As an operator would: the maps first (the router is not running yet, so that part fails), then
    # the router, which reads them at start.
    edge.dashboard.publish()
    try:
        router.start()
        yield edge
    finally:
        router.stop()
        http.close()
        poller.close()
        store.close()


@pytest.fixture
def side(edge: Edge) -> Edge:
    """The module's router running, every region polled and healthy, no override, the table applied."""
    if not edge.router.running:
        edge.router.start()
    edge.fleet.reset()
    edge.poller.run_cycle()
    for override in edge.store.overrides():
        edge.dashboard.clear_override(override["region"], reason="next test", actor="test")
    edge.dashboard.publish()
    publisher = edge.publisher()
    assert not publisher["behind"] and publisher["error"] is None, publisher
    edge.wait_served("eu-west-1", "eu-west-1")
    return edge


def test_before_a_failover_each_regions_traffic_reaches_its_own_backend(side: Edge):
    for region in REGIONS:
        for by in ("host", "header"):
            assert side.served_by(region, by) == region, (region, by)
    response = side.router.request(side.http, "mars-1")
    assert response.status_code == 404 and response.json()["error"] == "unknown_region"
    response = side.http.get(side.router.url + "/api/v1/orders", headers={"Host": DOMAIN})
    assert response.status_code == 404  # no region named at all


def test_a_failover_by_the_api_moves_the_traffic_and_a_failback_restores_it(side: Edge):
    table = side.fail_over()
    publisher = side.publisher(table["published"])
    assert (publisher["version"], publisher["error"], publisher["behind"]) == (table["version"], None, False)
    side.wait_served("eu-west-1", "us-east-1")
    assert side.served_by("ap-southeast-1") == "ap-southeast-1"
    assert side.served_by("us-east-1", "header") == "us-east-1"

    table = side.fail_back()
    assert side.publisher(table["published"])["version"] == table["version"]
    side.wait_served("eu-west-1", "eu-west-1")


def test_a_failover_by_the_cli_moves_the_traffic(side: Edge):
    env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD_CONFIG", "REVERSEAI_DEPLOYMENT_REGIONS")}
    result = subprocess.run([sys.executable, "-m", "dashboard.cli", "failover", "eu-west-1", "--reason", "cli drill",
                             "--confirm-healthy", "--config", str(side.settings.source)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "did not apply" not in result.stderr, result.stderr
    side.wait_served("eu-west-1", "us-east-1")
    assert side.publisher()["version"] == side.store.routing_version()


def test_a_read_only_region_answers_writes_with_503_and_passes_reads(side: Edge):
    side.fail_over("eu-west-1", read_only=True)
    side.fail_over("ap-southeast-1", read_only=False)
    side.wait_served("eu-west-1", "us-east-1")
    side.wait_served("ap-southeast-1", "us-east-1")
    for by in ("host", "header"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            response = side.router.request(side.http, "eu-west-1", method, by=by)
            assert response.status_code == 503, (method, by, response.text)
            assert response.headers["Retry-After"] == "30"
            assert response.headers["Content-Type"].startswith("application/json")
            body = response.json()
            assert (body["error"], body["region"]) == ("region_read_only", "eu-west-1")
            assert "read-only" in body["message"]
        for method in ("GET", "HEAD"):
            response = side.router.request(side.http, "eu-west-1", method, by=by)
            assert response.status_code == 200, (method, by)
        # Writable regions, failed over or not, pass writes to the region that serves them.
        for region in ("ap-southeast-1", "us-east-1"):
            response = side.router.request(side.http, region, "POST", by=by)
            assert response.status_code == 200, (region, by, response.text)
            assert response.json() == {"region": "us-east-1", "method": "POST", "path": "/api/v1/orders"}


def test_a_stopped_router_misses_the_change_shows_why_and_applies_it_once_back(side: Edge):
    side.router.stop()
    table = side.fail_over()  # the change is made all the same
    assert side.store.overrides()[0]["region"] == "eu-west-1"
    publisher = side.publisher(table["published"])
    assert publisher["behind"] and publisher["consecutive_failures"] == 1, publisher
    expected = "reload failed" if side.router.kind == "nginx" else "runtime API"
    assert expected in publisher["error"], publisher["error"]
    warning = soup(side.client.get("/routing")).select_one("#publish-warning")
    assert warning is not None and side.name in warning.get_text()

    side.router.start()
    # What the scheduler does every second, here without waiting out the back-off.
    [outcome] = side.dashboard.retry_publishers(now=time.time() + 3600)
    assert outcome.applied, outcome
    publisher = side.publisher()
    assert (publisher["version"], publisher["error"], publisher["behind"]) == (table["version"], None, False)
    side.wait_served("eu-west-1", "us-east-1")
    assert soup(side.client.get("/routing")).select_one("#publish-warning") is None


@pytest.mark.parametrize("edge", ["nginx"], indirect=True)
def test_a_failing_nginx_test_keeps_nginx_on_the_last_good_table_and_the_dashboard_shows_why(side: Edge):
    router = side.router
    good_config = router.config.read_text()
    good_maps = {path: path.read_bytes() for path in (router.map_file, router.read_only_map_file)}
    router.config.write_text(good_config + "\nthis_is_not_a_directive on;\n")
    try:
        table = side.fail_over()
        assert table["version"] == side.store.routing_version()  # the change is made
        publisher = side.publisher(table["published"])
        assert publisher["behind"], publisher
        assert 'unknown directive "this_is_not_a_directive"' in publisher["error"]
        assert "the previous map files are back and nginx was not reloaded" in publisher["error"]
        assert {path: path.read_bytes() for path in good_maps} == good_maps
        side.wait_served("eu-west-1", "eu-west-1")  # nginx kept the last good table
        page = soup(side.client.get("/routing")).select_one("#publish-warning").get_text()
        assert 'unknown directive "this_is_not_a_directive"' in page
    finally:
        router.config.write_text(good_config)
    [outcome] = side.dashboard.retry_publishers(now=time.time() + 3600)
    assert outcome.applied, outcome
    side.wait_served("eu-west-1", "us-east-1")
