"""The vendored plotly.js basic bundle draws every chart the app serves, in Chromium, without a
console error: each metric in each window from the app's own chart endpoints (the error budget's
too), and figures of small
error rates whose tick labels must tell 0.5 % from 1 %."""
from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from dashboard import charts

pytestmark = pytest.mark.browser

# Draw a figure into a fresh element; return what Plotly made of it.
_DRAW = """async ([id, figure]) => {
  const el = document.createElement("div");
  el.id = id;
  el.style.width = "800px";
  document.body.appendChild(el);
  await window.Plotly.newPlot(el, figure.data, figure.layout);
  return {
    types: el._fullData.map((t) => t.type),
    hidden: el._fullData.filter((t) => t.visible === false).length,
    drawn: el.querySelectorAll(".main-svg g.trace").length,
    yticks: Array.from(el.querySelectorAll(".ytick text")).map((t) => t.textContent),
  };
}"""


def _small_rates_figure() -> dict:
    rates = [0.0, 0.005, 0.0125, 0.0075, 0.015, 0.0025]
    points = [{"t": f"2026-12-01T00:{i:02d}:00Z", "polls": 400, "failed": round(r * 400), "error_rate": r,
               "reported_error_rate": None} for i, r in enumerate(rates)]
    return charts.figure({"metric": "error_rate", "points": points, "marks": [],
                          "start": "2026-12-01T00:00:00Z", "end": "2026-12-01T00:06:00Z"})


def test_every_chart_the_app_serves_draws_with_the_vendored_bundle(live_server, open_page):
    live_server.fleet.set("eu-west-1", error_rate=0.02, delay_seconds=0.01)
    live_server.wait_for_polls("eu-west-1", 3)
    tab = open_page(live_server.url("/regions/eu-west-1"))
    page = tab.page
    expect(page.locator("#chart-error-rate.js-plotly-plot")).to_be_attached()
    assert "plotly.js-basic-" in page.evaluate(
        "() => Array.from(document.scripts).map((s) => s.src).join(' ')")
    registered = set(page.evaluate("() => Object.keys(window.Plotly.PlotSchema.get().traces)"))
    assert {"scatter", "bar", "pie"} <= registered

    figures = {}
    for metric in charts.METRICS:
        for window in charts.WINDOWS:
            response = page.request.get(live_server.url(f"/charts/eu-west-1?metric={metric}&window={window}"))
            assert response.ok, (metric, window, response.status)
            figures[f"{metric}-{window}"] = response.json()
    for metric in charts.SLO_METRICS:  # the error budget charts: scatter and bar
        response = page.request.get(live_server.url(f"/charts/eu-west-1/slo?metric={metric}&window=1h"))
        assert response.ok, (metric, response.status)
        figures[f"slo-{metric}"] = response.json()
    figures["small-rates"] = _small_rates_figure()
    for name, figure in figures.items():
        drawn = page.evaluate(_DRAW, [f"test-{name}", json.loads(json.dumps(figure))])
        wanted = [trace.get("type", "scatter") for trace in figure["data"]]
        assert drawn["types"] == wanted and set(wanted) <= registered, name
        assert drawn["hidden"] == 0 and drawn["drawn"] >= 1, (name, drawn)
        if name == "small-rates":
            ticks = drawn["yticks"]
            assert len(ticks) >= 3 and len(set(ticks)) == len(ticks), ticks
            assert any("." in tick for tick in ticks), ticks  # 0.5%, not a row of 0% and 1%
    assert tab.problems() == []
