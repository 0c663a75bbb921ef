"""A failover click in the browser moves traffic at real edge routers (issue 13): Debian's nginx and
HAProxy, both started from deploy/, in front of the simulated fleet the live dashboard polls."""
from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import expect
from werkzeug.security import generate_password_hash

from dashboard.routing import Router

from ..edge_helpers import ROUTERS, require_router

pytestmark = [pytest.mark.browser, pytest.mark.routers]

PASSWORD = "correct horse battery"
OPERATORS = {"alice": generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")}


def test_a_failover_click_moves_eu_west_1s_traffic_at_nginx_and_haproxy(live_server_factory, open_page, fleet,
                                                                          tmp_path):
    for kind in ROUTERS:
        require_router(kind)
    upstreams = {region: int(urlsplit(url).port or 0) for region, url in fleet.base_urls.items()}
    routers = [router_type(tmp_path / kind, upstreams) for kind, router_type in ROUTERS.items()]
    server = live_server_factory(auth={"operators": OPERATORS}, routing_file="routing.json",
                                 publish=[router.publisher() for router in routers])
    publisher = Router(server.settings, server.store)
    publisher.publish()  # the maps, before the routers read them at start
    http = httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))
    try:
        for router in routers:
            router.start()
        publisher.publish()
        for router in routers:
            router.wait_served(http, "eu-west-1", "eu-west-1")

        tab = open_page(server.url("/login?next=/"))
        page = tab.page
        page.fill("#username", "alice")
        page.fill("#password", PASSWORD)
        page.locator("#login-form button[type=submit]").click()
        expect(page).to_have_url(server.url("/"))
        for region in fleet.regions:
            expect(page.locator(f"#region-{region}")).to_have_attribute("data-state", "up")
        page.locator("#region-eu-west-1 .failover-link").click()
        form = page.locator("#action-panel #failover-form")
        form.locator('input[name="confirm_healthy"]').check()
        form.locator("#failover-reason").fill("eu-west-1 drill through the edge routers")
        form.locator("button[type=submit]").click()
        expect(page.locator("#action-panel #action-result")).to_contain_text(
            "eu-west-1's new traffic now goes to us-east-1")

        for router in routers:
            router.wait_served(http, "eu-west-1", "us-east-1")
            assert router.request(http, "eu-west-1", "POST").status_code == 503, router.kind  # read-only

        page.goto(server.url("/routing"))
        for router in routers:
            row = page.locator(f'#publishers tr.publisher-row[data-publisher="edge-{router.kind}"]')
            expect(row).to_have_attribute("data-version", "1")
            expect(row).to_have_attribute("data-behind", "false")
        expect(page.locator("#publish-warning")).to_have_count(0)
        assert tab.problems() == []
    finally:
        http.close()
        for router in routers:
            router.stop()
