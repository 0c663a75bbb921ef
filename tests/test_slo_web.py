"""Error budgets over HTTP (issue 14): GET /api/v1/regions/<r>/slo, the short form in /status and
the /metrics series, on the real app over a database filled by real poll cycles."""
from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dashboard.store import Sample

from .test_web_api import assert_error, regions_of
from .web_helpers import Dash


@pytest.fixture
def burning(make_dash) -> Dash:
    """An hour of good polls, then 8 real cycles in which eu-west-1 fails 2 (a 99.9 % objective:
    2 bad of 67 polls in the hour is a 29.9x burn, a page); us-east-1 has a 99 % objective."""
    dash = make_dash(failure_threshold=5, poll_interval_seconds=60,
                     slo={"target": 0.99, "regions": {"eu-west-1": 0.999}})
    start = time.time() - 3590
    with dash.store.transaction():
        dash.store.insert_samples(Sample(start + 60 * k, region, "health", True, 200, 20.0, "")
                                  for k in range(59) for region in ("eu-west-1", "us-east-1"))
    for mode in ("healthy", "healthy", "healthy", "http_500") * 2:
        dash.fleet.set("eu-west-1", mode=mode)
        dash.cycle()
    return dash


def test_the_slo_endpoint_gives_availability_budget_burn_rates_and_firing_alerts(burning: Dash):
    body = burning.json("/api/v1/regions/eu-west-1/slo")
    assert set(body) == {"region", "target", "window_days", "availability", "error_budget_remaining", "burn_rate",
                         "alerts"}
    assert (body["region"], body["target"], body["window_days"]) == ("eu-west-1", 0.999, 30)
    good = pytest.approx(65 / 67)
    assert body["availability"] == {"1h": good, "24h": good, "7d": good, "30d": good}
    burn = 2 / 67 / 0.001
    assert body["burn_rate"]["1h"] == pytest.approx(burn) and body["burn_rate"]["3d"] == pytest.approx(burn)
    assert body["burn_rate"]["5m"] > 100  # 2 of the 13 polls of the last five minutes
    assert body["error_budget_remaining"] == pytest.approx(1 - burn)
    assert [(a["severity"], a["windows"]) for a in body["alerts"]] == [("page", ["1h", "5m"])]
    assert body["alerts"][0]["since"].endswith("Z")
    healthy = burning.json("/api/v1/regions/us-east-1/slo")
    assert (healthy["target"], healthy["error_budget_remaining"], healthy["alerts"]) == (0.99, 1.0, [])
    events = burning.json("/api/v1/events?region=eu-west-1")["events"]
    assert [e["details"]["severity"] for e in events if e["kind"] == "slo_alert"] == ["page"]


def test_status_carries_each_regions_slo_at_a_glance(burning: Dash):
    regions = regions_of(burning.json("/api/v1/status"))
    assert regions["eu-west-1"]["slo"] == {"target": 0.999, "availability_24h": pytest.approx(65 / 67),
                                           "availability_30d": pytest.approx(65 / 67),
                                           "error_budget_remaining": pytest.approx(1 - 2 / 67 / 0.001),
                                           "alerts": ["page"]}
    assert regions["us-east-1"]["slo"]["alerts"] == [] and regions["us-east-1"]["slo"]["availability_24h"] == 1.0


def test_the_slo_of_an_unknown_region_is_a_404(burning: Dash):
    assert_error(burning, "/api/v1/regions/nowhere-1/slo", 404, "unknown_region", "nowhere-1")


def test_metrics_carry_burn_rates_budget_and_alerts(burning: Dash):
    response = burning.get("/metrics")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.get_data(as_text=True))
               for s in family.samples}
    burn = 2 / 67 / 0.001
    assert samples[("dashboard_slo_burn_rate", (("region", "eu-west-1"), ("window", "1h")))] == pytest.approx(burn)
    assert samples[("dashboard_error_budget_remaining", (("region", "eu-west-1"),))] == pytest.approx(1 - burn)
    assert samples[("dashboard_error_budget_remaining", (("region", "us-east-1"),))] == 1.0
    assert samples[("dashboard_slo_alert", (("region", "eu-west-1"), ("severity", "page")))] == 1.0
    assert samples[("dashboard_slo_alert", (("region", "us-east-1"), ("severity", "ticket")))] == 0.0


def test_the_error_budget_charts_are_figures_and_a_bad_metric_is_a_400(burning: Dash):
    for metric in ("burn_rate", "error_budget"):
        response = burning.get(f"/charts/eu-west-1/slo?metric={metric}&window=6h")
        assert response.status_code == 200 and response.mimetype == "application/json"
        assert response.get_json()["data"], metric
    assert burning.get("/charts/eu-west-1/slo?metric=cpu").status_code == 400
    assert burning.get("/charts/eu-west-1/slo?metric=burn_rate&window=2h").status_code == 400
    assert burning.get("/charts/nowhere-1/slo?metric=burn_rate").status_code == 404


def test_the_overview_card_and_region_page_carry_the_slo_figures(burning: Dash):
    card = burning.page("/").select_one("#region-eu-west-1 .slo-card")
    assert card is not None and card["data-slo-alert"] == "page"
    assert len(card.select("ol.slo-strip li")) == 30
    assert card.select_one(".slo-alert-page").get_text(" ", strip=True).startswith("SLO page: burn rate 1h & 5m")
    region = burning.page("/regions/eu-west-1")
    assert region.select_one("#chart-burn-rate")["data-chart-url"] == "/charts/eu-west-1/slo"
    assert region.select_one(".slo-alert-page") is not None
