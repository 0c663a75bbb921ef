"""A region's own page in a real browser: charts drawn by Plotly, windows switched in place."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

CHARTS = ("#chart-error-rate", "#chart-latency")
# Hours shown on a chart's time axis, as Plotly drew it.
_AXIS_HOURS = """(selector) => {
  const range = document.querySelector(selector)._fullLayout.xaxis.range;
  return (new Date(range[1]) - new Date(range[0])) / 3600e3;
}"""


def _expect_chart_drawn(page, selector: str) -> None:
    chart = page.locator(selector)
    expect(chart).to_have_class(re.compile(r"\bjs-plotly-plot\b"))
    expect(chart.locator(".main-svg").first).to_be_visible()
    traces = chart.locator(".main-svg g.trace")  # one per drawn trace, whatever its type
    expect(traces.first).to_be_attached()
    assert traces.count() >= 1, f"{selector} has no trace drawn"
    points = page.evaluate(
        "(s) => (document.querySelector(s).data || []).reduce((n, t) => n + (t.x ? t.x.length : 0), 0)",
        selector,
    )
    assert points >= 1, f"{selector} was drawn without a single data point"


def test_region_page_draws_error_rate_and_latency_charts(live_server, open_page):
    live_server.wait_for_polls("eu-west-1", 3)
    tab = open_page(live_server.url("/regions/eu-west-1"))
    page = tab.page
    for selector in CHARTS:
        _expect_chart_drawn(page, selector)
    buttons = page.locator("button.window-button")
    expect(buttons).to_have_count(6)
    for window in ("1h", "6h", "24h", "7d", "30d", "1y"):
        expect(page.locator(f'button.window-button[data-window="{window}"]')).to_have_count(1)
    expect(page.locator('button.window-button[aria-pressed="true"]')).to_have_count(1)
    expect(page.locator('button.window-button[data-window="1h"]')).to_have_attribute("aria-pressed", "true")

    for selector in CHARTS:
        assert 1 <= page.evaluate(_AXIS_HOURS, selector) < 2, f"{selector} does not show the last hour"
    six_hours = page.locator('button.window-button[data-window="6h"]')
    six_hours.click()
    expect(six_hours).to_have_attribute("aria-pressed", "true")
    expect(page.locator('button.window-button[aria-pressed="true"]')).to_have_count(1)
    for selector in CHARTS:
        page.wait_for_function(f"(s) => {{ const h = ({_AXIS_HOURS})(s); return h >= 6 && h < 7; }}", arg=selector)
        _expect_chart_drawn(page, selector)
    assert tab.problems() == []


def test_region_page_shows_recent_probes_events_and_deployment(live_server, open_page):
    live_server.wait_for_polls("eu-west-1", 2)
    tab = open_page(live_server.url("/regions/eu-west-1"))
    page = tab.page
    expect(page.locator("h1")).to_contain_text("eu-west-1")
    expect(page.locator("#region-summary .state-label")).to_have_text("UP", use_inner_text=True)
    expect(page.locator("table#recent-probes tbody tr").first).to_be_attached()
    expect(page.locator("#region-events")).to_be_attached()
    expect(page.locator("pre#deployment-payload")).to_contain_text('"region"')
    assert tab.problems() == []


def test_region_page_for_an_unknown_region_is_a_404_page(live_server, open_page):
    tab = open_page(live_server.url("/regions/no-such-region"))
    assert tab.response is not None and tab.response.status == 404
    expect(tab.page.locator("body")).to_contain_text("no-such-region")
    expect(tab.page.locator("#chart-error-rate")).to_have_count(0)
    # Chromium reports the 404 of the page itself as a console error; nothing else may fail.
    problems = [p for p in tab.problems() if "404" not in p]
    assert problems == []
