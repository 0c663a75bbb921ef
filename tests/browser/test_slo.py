"""Error budgets in a real browser (issue 14): the overview card's figures, 30 daily bars and SLO
alert, live; the region page's burn-rate chart with the alert thresholds and its budget chart."""
from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from dashboard.store import Sample

pytestmark = pytest.mark.browser


def _history_with_a_burn(server) -> None:
    """Half an hour of eu-west-1 polled every second (enough of an hour to page on), the last 40
    of them bad: the next poll pages. us-east-1 half an hour of good polls."""
    now = time.time()
    with server.store.transaction():
        server.store.insert_samples(
            Sample(now - 1800 + k, region, "health", not (region == "eu-west-1" and k >= 1760), 200, 20.0, "")
            for k in range(1800) for region in ("eu-west-1", "us-east-1"))


def _history_crosses_midnight() -> bool:
    now = time.time()
    return (now - 1800) // 86400 != now // 86400


def test_the_overview_card_shows_availability_budget_daily_bars_and_an_slo_page(live_server, open_page):
    _history_with_a_burn(live_server)
    tab = open_page(live_server.url("/"))
    page = tab.page
    card = page.locator("#region-eu-west-1")
    live_server.wait_for_polls("eu-west-1", 1802)  # the poller evaluated the alerts on top of it
    expect(card.locator(".slo-alert-page")).to_contain_text("SLO page: burn rate 1h & 5m over 14.4x")
    expect(card.locator(".slo-card")).to_have_attribute("data-slo-alert", re.compile(r"\bpage\b"))
    days = card.locator(".slo-strip li")
    expect(days).to_have_count(30)
    today = days.nth(29)
    expect(today).to_have_class("slo-bad")
    # Hover: the day's figures, then its incidents (here the SLO page that just started).
    assert re.match(r"\d{4}-\d{2}-\d{2} \d+\.\d{3}%, \d+ of \d+ polls bad\n\d\d:\d\d SLO page alert: burn rate 1h ",
                    today.get_attribute("title") or ""), today.get_attribute("title")
    expect(days.nth(0)).to_have_class("slo-none")  # not watched a month ago
    # Run in the first half hour of a UTC day, the good start of the history falls on yesterday.
    yesterday = _history_crosses_midnight()
    summary = (f"eu-west-1, availability per day: 30 days: {int(yesterday)} met the objective, 1 did not"
               f" (1 by far), {29 - int(yesterday)} not polled")
    expect(card.locator(".slo-strip")).to_have_attribute("aria-label", summary)
    expect(card.locator(".slo-budget")).to_have_class(re.compile(r"\bslo-overspent\b"))
    # The same figures from the API, as a script in the page would read them.
    api = page.request.get(live_server.url("/api/v1/regions/eu-west-1/slo")).json()
    assert [a["severity"] for a in api["alerts"]] == ["page"] and api["error_budget_remaining"] < 0
    expect(card.locator(".slo-availability-24h")).to_have_text(re.compile(r"9\d\.\d{3}%"))
    healthy = page.locator("#region-us-east-1")
    expect(healthy.locator(".slo-alert")).to_have_count(0)
    expect(healthy.locator(".slo-availability-24h")).to_have_text("100.000%")
    expect(healthy.locator(".slo-strip li.slo-ok")).to_have_count(1 + int(yesterday))
    assert tab.problems() == []


def test_the_region_page_draws_the_burn_rate_with_its_thresholds_and_the_budget(live_server, open_page):
    _history_with_a_burn(live_server)
    live_server.wait_for_polls("eu-west-1", 1802)
    tab = open_page(live_server.url("/regions/eu-west-1"))
    page = tab.page
    expect(page.locator(".slo-alert-page")).to_contain_text("SLO page alert")
    for selector in ("#chart-burn-rate", "#chart-error-budget"):
        expect(page.locator(f"{selector} .main-svg g.trace").first).to_be_attached()
    thresholds = page.evaluate(
        "() => document.querySelector('#chart-burn-rate')._fullLayout.shapes.map((s) => s.y0)")
    assert sorted(thresholds) == pytest.approx([1.0, 6.0, 14.4])
    labels = page.locator("#chart-burn-rate .annotation-text")
    expect(labels).to_have_count(3)
    expect(labels.first).to_contain_text("14.4x page")
    traces = page.evaluate("() => document.querySelector('#chart-error-budget')._fullData.map((t) => t.type)")
    assert traces == ["bar", "scatter"]
    page.locator('button.window-button[data-window="6h"]').click()
    page.wait_for_function("() => { const r = document.querySelector('#chart-burn-rate')._fullLayout.xaxis.range;"
                           " return (new Date(r[1]) - new Date(r[0])) / 3600e3 >= 6; }")
    assert tab.problems() == []
