"""The overview page in a real browser: it follows the fleet by itself, without a reload."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_overview_shows_region_going_down_without_reload(live_server_factory, open_page):
    # A recovering region must come back up, not degraded by its own outage's windowed error rate.
    server = live_server_factory(degraded_error_rate=1.0)
    tab = open_page(server.url("/"), width=800, height=400)
    page = tab.page
    card = page.locator("#region-eu-west-1")
    banner = page.locator("#alert-banner")
    expect(card).to_have_attribute("data-state", "up")
    expect(banner).to_have_count(0)

    page.evaluate("window.__noReload = 1")
    page.evaluate("window.scrollTo(0, 120)")
    scroll_y = page.evaluate("window.scrollY")
    assert scroll_y > 0, "the overview is too short to scroll on an 800x400 viewport"

    server.fleet.set("eu-west-1", mode="http_500")
    expect(card).to_have_attribute("data-state", "down")
    expect(card.locator(".state-label")).to_have_text("DOWN", use_inner_text=True)
    expect(card.locator(".reason")).to_contain_text("HTTP 500")
    expect(banner).to_contain_text("eu-west-1")
    expect(banner).to_have_attribute("role", "alert")
    expect(banner).not_to_contain_text("us-east-1")
    expect(page.locator("#region-us-east-1")).to_have_attribute("data-state", "up")
    assert page.evaluate("window.__noReload") == 1, "the page reloaded instead of swapping"
    assert page.evaluate("window.scrollY") == scroll_y, "the swap moved the page"

    server.fleet.reset("eu-west-1")
    expect(card).to_have_attribute("data-state", "up")
    expect(card.locator(".state-label")).to_have_text("UP", use_inner_text=True)
    expect(banner).to_have_count(0)
    assert page.evaluate("window.__noReload") == 1, "the page reloaded instead of swapping"
    assert tab.problems() == []


def test_overview_turns_stale_and_counts_the_time_since_the_last_poll_when_the_poller_stops(
    live_server, open_page
):
    tab = open_page(live_server.url("/"))
    page = tab.page
    cards = page.locator("article.region-card")
    expect(cards).to_have_count(3)
    for region in live_server.fleet.regions:
        expect(page.locator(f"#region-{region}")).to_have_attribute("data-state", "up")
    page.evaluate("window.__noReload = 1")

    live_server.service.stop()  # nobody polls any more: that must never look green
    last_polled = page.locator("#region-eu-west-1 .last-polled")
    polled_when_stopped = last_polled.inner_text()

    for region in live_server.fleet.regions:
        card = page.locator(f"#region-{region}")
        expect(card).to_have_attribute("data-state", "stale")
        expect(card.locator(".state-label")).to_have_text("STALE", use_inner_text=True)
        expect(page.locator("#alert-banner")).to_contain_text(region)
    # No poll since, yet the relative time moved on: it is refreshed, not frozen at "0 s ago".
    expect(last_polled).not_to_have_text(polled_when_stopped)
    assert page.evaluate("window.__noReload") == 1, "the page reloaded instead of swapping"
    assert tab.problems() == []


def test_overview_links_every_region_and_says_where_it_runs(live_server, open_page):
    tab = open_page(live_server.url("/"))
    page = tab.page
    expect(page.locator("#dashboard-location")).to_contain_text(live_server.settings.deployment.region)
    for region in live_server.fleet.regions:
        card = page.locator(f"article.region-card#region-{region}")
        expect(card).to_have_attribute("data-region", region)
        expect(card.locator("a.region-link")).to_have_attribute("href", f"/regions/{region}")
    page.locator("#region-ap-southeast-1 a.region-link").click()
    expect(page).to_have_url(live_server.url("/regions/ap-southeast-1"))
    expect(page.locator("#region-summary")).to_be_visible()
    assert tab.problems() == []
