"""Failing a region over and back in a real browser: log in, confirm, and see the override everywhere
without a reload (issue 4)."""
from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect
from werkzeug.security import generate_password_hash

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery"
# A cheap hash: the login must be quick, not the hash strong.
OPERATORS = {"alice": generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")}
# The overview polls its fragment every 5 s; the routing-changed event must beat that by far.
EVENT_REFRESH_MS = 3_000
REASON = "eu-west-1 drill: shifting new traffic to the primary"
FAILBACK_REASON = "drill over: eu-west-1 takes its own traffic again"


def _operator_server(live_server_factory):
    return live_server_factory(auth={"operators": OPERATORS}, routing_file="routing.json")


def _log_in(page) -> None:
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    page.locator("#login-form button[type=submit]").click()


def _expect_fleet_up(page, regions) -> None:
    for region in regions:
        expect(page.locator(f"#region-{region}")).to_have_attribute("data-state", "up")


def _routing_file(server) -> dict:
    return json.loads(server.settings.routing_file_path.read_text(encoding="utf-8"))


def test_operator_fails_eu_west_1_over_and_back_in_the_browser(live_server_factory, open_page):
    server = _operator_server(live_server_factory)
    tab = open_page(server.url("/"))
    page = tab.page

    # 1. Log in from the header and land back on the overview.
    page.locator(".account a", has_text="Log in").click()
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    _log_in(page)
    expect(page).to_have_url(server.url("/"))
    expect(page.locator(".account")).to_contain_text("alice")
    _expect_fleet_up(page, server.fleet.regions)

    # 2. Open the confirmation from eu-west-1's card, in place.
    page.evaluate("window.__noReload = 1")
    card = page.locator("#region-eu-west-1")
    card.locator(".failover-link").click()
    form = page.locator("#action-panel #failover-form")
    expect(form).to_be_visible()
    target = form.locator(".target-choice", has=page.locator('input[value="us-east-1"]'))
    expect(target.locator('input[name="target_region"]')).to_be_checked()
    expect(target.locator(".state-label")).to_have_text("UP", use_inner_text=True)
    expect(form.locator(".confirm-target")).to_have_text("us-east-1")
    changing = form.locator("#routing-preview tr.changing")
    expect(changing.locator("td").nth(0)).to_have_text("eu-west-1")
    expect(changing.locator("td").nth(1)).to_have_text("us-east-1")
    form.locator('input[name="confirm_healthy"]').check()
    form.locator("#failover-reason").fill(REASON)
    form.locator("button[type=submit]").click()

    # 3. Confirmed: the result, and the overview refreshed by routing-changed, not by its poll.
    expect(page.locator("#action-panel #action-result")).to_contain_text(
        "eu-west-1's new traffic now goes to us-east-1")
    banner = page.locator("#override-banner")
    expect(banner).to_contain_text("eu-west-1", timeout=EVENT_REFRESH_MS)
    expect(banner).to_contain_text("alice")
    expect(card.locator(".marker-override")).to_be_visible(timeout=EVENT_REFRESH_MS)
    expect(card.locator(".failback-link")).to_be_visible(timeout=EVENT_REFRESH_MS)
    expect(card.locator(".failover-link")).to_have_count(0)
    expect(page.locator("#region-us-east-1 .marker-override")).to_have_count(0)
    assert page.evaluate("window.__noReload") == 1, "the page reloaded instead of swapping"

    # 4. Everywhere else: region page, routing page, routing file, events.
    page.goto(server.url("/regions/eu-west-1"))
    summary = page.locator("#region-summary")
    expect(summary.locator(".marker-override")).to_be_visible()
    expect(summary.locator(".marker-notes")).to_contain_text("new traffic goes to us-east-1")
    expect(summary.locator(".marker-notes")).to_contain_text(REASON)
    expect(summary.locator(".failback-link")).to_be_visible()

    page.goto(server.url("/routing"))
    row = page.locator('tr.routing-row[data-region="eu-west-1"]')
    expect(row).to_have_attribute("data-serving", "us-east-1")
    expect(row).to_contain_text("alice")
    expect(row).to_contain_text(REASON)
    expect(page.locator('tr.routing-row[data-region="us-east-1"]')).to_have_attribute("data-serving", "us-east-1")

    on_disk = _routing_file(server)
    assert on_disk["version"] == 1
    assert on_disk["regions"]["eu-west-1"]["serving_region"] == "us-east-1"
    assert on_disk["regions"]["eu-west-1"]["override"]["actor"] == "alice"
    assert on_disk["regions"]["eu-west-1"]["override"]["reason"] == REASON

    page.goto(server.url("/events"))
    failover = page.locator("tr.event-failover")
    expect(failover).to_have_count(1)
    expect(failover).to_contain_text("eu-west-1")
    expect(failover).to_contain_text("alice")
    expect(failover.locator(".event-reason")).to_have_text(REASON)

    # 5. Fail back from the routing page; its table follows routing-changed without a reload.
    page.goto(server.url("/routing"))
    page.evaluate("window.__noReload = 1")
    row = page.locator('tr.routing-row[data-region="eu-west-1"]')
    row.locator(".failback-link").click()
    failback = page.locator("#action-panel #failback-form")
    expect(failback).to_be_visible()
    failback.locator("#failback-reason").fill(FAILBACK_REASON)
    failback.locator("button[type=submit]").click()
    expect(page.locator("#action-panel #action-result")).to_contain_text("eu-west-1 serves its own traffic again")
    expect(row).to_have_attribute("data-serving", "eu-west-1", timeout=EVENT_REFRESH_MS)
    expect(row.locator(".failover-link")).to_be_visible()
    expect(row).not_to_contain_text("alice")
    assert page.evaluate("window.__noReload") == 1, "the routing page reloaded instead of swapping"

    on_disk = _routing_file(server)
    assert on_disk["version"] == 2
    assert on_disk["regions"]["eu-west-1"]["serving_region"] == "eu-west-1"
    assert on_disk["regions"]["eu-west-1"]["override"] is None

    page.goto(server.url("/"))
    expect(page.locator("#region-eu-west-1 .failover-link")).to_be_visible()
    expect(page.locator("#override-banner")).to_have_count(0)
    expect(page.locator("#region-eu-west-1 .marker-override")).to_have_count(0)

    # 6. Nothing complained on the way.
    assert tab.problems() == []


def test_refused_failover_shows_the_rule_in_the_form(live_server_factory, open_page):
    server = _operator_server(live_server_factory)
    tab = open_page(server.url("/login?next=/"))
    page = tab.page
    _log_in(page)
    expect(page).to_have_url(server.url("/"))
    _expect_fleet_up(page, ["eu-west-1", "us-east-1"])

    page.locator("#region-eu-west-1 .failover-link").click()
    form = page.locator("#action-panel #failover-form")
    expect(form.locator('input[name="confirm_healthy"]')).not_to_be_checked()
    form.locator("#failover-reason").fill(REASON)
    form.locator("button[type=submit]").click()

    error = page.locator('#action-panel #failover-error[data-rule="region_healthy"]')
    expect(error).to_be_visible()
    expect(error).to_contain_text("eu-west-1 is up and healthy")
    expect(page.locator("#action-panel #failover-reason")).to_have_value(REASON)
    expect(page.locator("#action-panel #failover-form")).to_be_visible()
    expect(page.locator("#override-banner")).to_have_count(0)
    routing = page.request.get(server.url("/api/v1/routing"))
    assert routing.ok
    assert routing.json()["version"] == 0
    assert routing.json()["regions"]["eu-west-1"]["serving_region"] == "eu-west-1"

    # The refusal is a 409, which Chromium logs as a failed resource: that one, and nothing else.
    refused = re.compile(r"^Failed to load resource: the server responded with a status of 409 .*"
                         + re.escape(server.url("/regions/eu-west-1/failover")) + r":\d+\)$")
    problems = tab.problems()
    assert [p for p in problems if refused.match(p)], f"no 409 logged for the refusal: {problems}"
    assert [p for p in problems if not refused.match(p)] == []
