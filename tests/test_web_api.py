"""The JSON API as automation reads it: real poll cycles, a real database, decoded JSON."""
from __future__ import annotations

import json

import pytest

from .conftest import REGIONS
from .web_helpers import (
    WINDOWS,
    Dash,
    assert_security_headers,
)

REGION_FIELDS = {"region", "state", "reason", "since", "last_poll_at", "latency_ms", "error_rate_5m",
                 "error_rate_1h", "reported_error_rate", "version", "markers"}
EVENT_FIELDS = {"id", "at", "region", "kind", "old_state", "new_state", "reason", "actor", "details"}


def assert_error(dash: Dash, url: str, status: int, code: str, names: str, method: str = "GET") -> dict:
    """An API error: the status, JSON {"error", "message"} with the code, and a message naming `names`."""
    response = dash.client.open(url, method=method)
    body_text = response.get_data(as_text=True)
    response.close()
    assert response.status_code == status, (url, response.status_code, body_text[:300])
    assert response.mimetype == "application/json", (url, response.content_type, body_text[:300])
    body = json.loads(body_text)
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and names in body["message"], body
    return body


def regions_of(status: dict) -> dict[str, dict]:
    return {r["region"]: r for r in status["regions"]}


# -- status --------------------------------------------------------------------------------------


def test_status_lists_every_region_in_config_order_with_every_field(dash: Dash):
    dash.cycle()
    status = dash.json("/api/v1/status")
    assert {"generated_at", "dashboard_region", "poll_interval_seconds", "summary", "regions"} <= set(status)
    assert status["generated_at"]
    assert status["dashboard_region"] == "us-east-1"
    assert status["poll_interval_seconds"] == 1
    assert [r["region"] for r in status["regions"]] == REGIONS
    for region in status["regions"]:
        assert set(region) >= REGION_FIELDS, REGION_FIELDS - set(region)
        assert region["state"] == "up"
        assert region["last_poll_at"] is not None and region["since"] is not None
        assert isinstance(region["latency_ms"], (int, float))
        assert region["version"] == "1.0.0"
        assert region["markers"] in ({}, [])


def test_status_summary_counts_regions_by_state(dash: Dash):
    dash.cycle()
    dash.fleet.set("eu-west-1", mode="http_500")
    dash.fleet.set("ap-southeast-1", mode="degraded")
    dash.cycle(3)
    status = dash.json("/api/v1/status")
    assert status["summary"] == {"up": 1, "degraded": 1, "down": 1, "stale": 0, "unknown": 0}
    eu = regions_of(status)["eu-west-1"]
    assert eu["state"] == "down" and "HTTP 500" in eu["reason"]


def test_status_before_any_poll_shows_every_region_unknown(dash: Dash):
    status = dash.json("/api/v1/status")
    assert status["summary"] == {"up": 0, "degraded": 0, "down": 0, "stale": 0, "unknown": 3}
    assert all(r["state"] == "unknown" and r["last_poll_at"] is None for r in status["regions"])


def test_status_shows_stale_regions_when_the_poller_has_stopped(dash: Dash):
    dash.cycle()
    dash.age_last_polls(10)  # ten 1 s intervals without a poll
    status = dash.json("/api/v1/status")
    assert status["summary"] == {"up": 0, "degraded": 0, "down": 0, "stale": 3, "unknown": 0}
    assert all(r["state"] == "stale" and "poller" in r["reason"] for r in status["regions"])


def test_status_carries_measured_error_rates_reported_error_rate_and_markers(dash: Dash):
    for mode in ["healthy", "http_500", "healthy", "healthy"]:
        dash.fleet.set("eu-west-1", mode=mode, error_rate=0.01)
        dash.cycle()
    dash.fleet.set("us-east-1", version="2.0.0")
    dash.cycle()
    regions = regions_of(dash.json("/api/v1/status"))
    eu = regions["eu-west-1"]
    assert eu["error_rate_5m"] == pytest.approx(0.2)  # one failed poll out of five
    assert eu["error_rate_1h"] == pytest.approx(0.2)
    assert eu["reported_error_rate"] == pytest.approx(0.01)
    assert "version 2.0.0 differs from the fleet" in regions["us-east-1"]["markers"]["skew"]
    assert regions["us-east-1"]["version"] == "2.0.0"


# -- one region ----------------------------------------------------------------------------------


def test_region_detail_adds_the_deployment_payload_recent_probes_and_events(dash: Dash):
    dash.cycle()
    dash.fleet.set("eu-west-1", mode="http_500")
    dash.cycle(3)
    dash.fleet.reset("eu-west-1")
    dash.fleet.set("eu-west-1", version="1.1.0")
    dash.cycle()
    detail = dash.json("/api/v1/regions/eu-west-1")
    assert (REGION_FIELDS | {"deployment", "deployment_at", "recent_probes", "events"}) <= set(detail)
    assert detail["region"] == "eu-west-1" and detail["state"] == "down"  # 1 of 2 good polls
    assert detail["deployment"] == {
        "region": "eu-west-1", "primary_region": "us-east-1", "regions": REGIONS,
        "region_base_urls": dash.fleet.base_urls, "version": "1.1.0"}
    assert detail["deployment_at"] is not None
    assert len(detail["recent_probes"]) == 10  # five cycles, two endpoints
    assert {p["endpoint"] for p in detail["recent_probes"]} == {"health", "deployment"}
    events = detail["events"]
    assert all(e["region"] == "eu-west-1" for e in events)
    assert [(e["kind"], e["new_state"]) for e in events][-2:] == [("state", "down"), ("state", "up")]
    assert events[0]["kind"] == "version" and events[0]["details"]["new_version"] == "1.1.0"


def test_region_detail_of_a_region_shows_the_same_region_object_as_status(dash: Dash):
    dash.fleet.set("eu-west-1", mode="degraded", error_rate=0.2)
    dash.cycle()
    in_status = regions_of(dash.json("/api/v1/status"))["eu-west-1"]
    detail = dash.json("/api/v1/regions/eu-west-1")
    assert {k: detail[k] for k in REGION_FIELDS} == {k: in_status[k] for k in REGION_FIELDS}


@pytest.mark.parametrize("url", ["/api/v1/regions/nowhere-1", "/api/v1/regions/nowhere-1/series?metric=latency"])
def test_unknown_region_is_a_404_json_error_naming_it(dash: Dash, url: str):
    assert_error(dash, url, 404, "unknown_region", "nowhere-1")


# -- series --------------------------------------------------------------------------------------


def test_error_rate_series_counts_polls_and_failures_with_state_and_version_marks(dash: Dash):
    dash.cycle()
    dash.fleet.set("eu-west-1", mode="http_500")
    dash.cycle(3)
    dash.fleet.reset("eu-west-1")
    dash.fleet.set("eu-west-1", version="1.1.0", error_rate=0.02)
    dash.cycle(2)
    series = dash.json("/api/v1/regions/eu-west-1/series?metric=error_rate&window=1h")
    assert (series["region"], series["metric"], series["window"]) == ("eu-west-1", "error_rate", "1h")
    assert isinstance(series["bucket_seconds"], int) and series["bucket_seconds"] > 0
    points = series["points"]
    assert points and all({"t", "polls", "failed", "error_rate", "reported_error_rate"} <= set(p) for p in points)
    assert sum(p["polls"] for p in points) == 6
    assert sum(p["failed"] for p in points) == 3
    assert any(p["reported_error_rate"] == pytest.approx(0.02) for p in points)
    for p in points:
        if p["polls"]:
            assert p["error_rate"] == pytest.approx(p["failed"] / p["polls"])
    marks = series["marks"]
    assert all({"t", "kind", "label"} <= set(m) for m in marks)
    state_labels = [m["label"] for m in marks if m["kind"] == "state"]
    assert any("down" in label.lower() for label in state_labels), state_labels
    assert any("up" in label.lower() for label in state_labels), state_labels
    version_labels = [m["label"] for m in marks if m["kind"] == "version"]
    assert len(version_labels) == 1 and "1.1.0" in version_labels[0]


def test_latency_series_has_p50_no_higher_than_p95(dash: Dash):
    dash.fleet.set("eu-west-1", delay_seconds=0.05)
    dash.cycle(3)
    series = dash.json("/api/v1/regions/eu-west-1/series?metric=latency&window=6h")
    assert (series["metric"], series["window"]) == ("latency", "6h")
    measured = [p for p in series["points"] if p["p50_ms"] is not None]
    assert measured and all({"t", "p50_ms", "p95_ms"} <= set(p) for p in series["points"])
    assert all(45 <= p["p50_ms"] <= p["p95_ms"] for p in measured), measured


def test_series_window_defaults_to_24h(dash: Dash):
    dash.cycle()
    assert dash.json("/api/v1/regions/eu-west-1/series?metric=latency")["window"] == "24h"


def test_series_accepts_every_window_with_buckets_growing_with_the_window(dash: Dash):
    dash.cycle()
    buckets = []
    for window in WINDOWS:
        series = dash.json(f"/api/v1/regions/eu-west-1/series?metric=error_rate&window={window}")
        assert series["window"] == window
        assert sum(p["polls"] for p in series["points"]) == 1
        buckets.append(series["bucket_seconds"])
    assert buckets == sorted(buckets) and buckets[0] < buckets[-1]


@pytest.mark.parametrize(
    ("params", "name"),
    [("", "metric"), ("metric=cpu", "metric"), ("metric=", "metric"), ("metric=latency&window=2h", "window"),
     ("metric=error_rate&window=", "window")],
)
def test_series_refuses_a_missing_or_bad_parameter_naming_it(dash: Dash, params: str, name: str):
    assert_error(dash, f"/api/v1/regions/eu-west-1/series?{params}", 400, "bad_parameter", name)


# -- events --------------------------------------------------------------------------------------


def test_events_are_newest_first_with_every_field(dash: Dash):
    dash.cycle()
    dash.fleet.set("eu-west-1", mode="http_500")
    dash.cycle(3)
    body = dash.json("/api/v1/events")
    events = body["events"]
    assert len(events) == 4 and body["next_before"] is None
    assert all(set(e) >= EVENT_FIELDS for e in events)
    assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)
    newest = events[0]
    assert (newest["region"], newest["kind"], newest["old_state"], newest["new_state"]) == (
        "eu-west-1", "state", "up", "down")
    assert "HTTP 500" in newest["reason"]


def test_events_filter_by_region(dash: Dash):
    dash.insert_events(3, region="eu-west-1")
    dash.insert_events(2, region="us-east-1")
    events = dash.json("/api/v1/events?region=us-east-1")["events"]
    assert [e["region"] for e in events] == ["us-east-1", "us-east-1"]


def test_events_page_back_with_next_before_fifty_at_a_time_by_default(dash: Dash):
    inserted = dash.insert_events(120)
    seen, sizes = [], []
    url = "/api/v1/events"
    while True:
        body = dash.json(url)
        ids = [e["id"] for e in body["events"]]
        seen += ids
        sizes.append(len(ids))
        if body["next_before"] is None:
            break
        assert body["next_before"] == ids[-1]
        url = f"/api/v1/events?before={body['next_before']}"
        assert len(sizes) < 5, "paging does not end"
    assert sizes == [50, 50, 20]
    assert seen == sorted(inserted, reverse=True)


def test_events_next_before_is_null_when_the_last_page_is_exactly_full(dash: Dash):
    inserted = dash.insert_events(10)
    body = dash.json(f"/api/v1/events?limit=5&before={inserted[5]}")
    assert len(body["events"]) == 5 and body["next_before"] is None


def test_events_limit_goes_up_to_500(dash: Dash):
    dash.insert_events(501)
    assert len(dash.json("/api/v1/events?limit=500")["events"]) == 500
    assert len(dash.json("/api/v1/events?limit=1")["events"]) == 1


@pytest.mark.parametrize(
    ("params", "name"),
    [("limit=0", "limit"), ("limit=501", "limit"), ("limit=abc", "limit"), ("limit=-3", "limit"),
     ("before=0", "before"), ("before=-1", "before"), ("before=abc", "before")],
)
def test_events_refuse_a_bad_parameter_naming_it(dash: Dash, params: str, name: str):
    assert_error(dash, f"/api/v1/events?{params}", 400, "bad_parameter", name)


def test_events_of_an_unknown_region_are_a_404(dash: Dash):
    assert_error(dash, "/api/v1/events?region=nowhere-1", 404, "unknown_region", "nowhere-1")


# -- errors, headers, escaping -------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/v1/nope", "/api/v1/regions/eu-west-1/nope", "/api/v1/"])
def test_unknown_api_path_is_a_404_json_error(dash: Dash, url: str):
    assert_error(dash, url, 404, "not_found", "")


def test_a_method_the_api_does_not_allow_is_a_json_error(dash: Dash):
    assert_error(dash, "/api/v1/status", 405, "method_not_allowed", "", method="DELETE")


def test_every_api_response_and_error_carries_the_security_headers(dash: Dash):
    dash.cycle()
    for url in ["/api/v1/status", "/api/v1/regions/eu-west-1", "/api/v1/regions/eu-west-1/series?metric=latency",
                "/api/v1/events", "/api/v1/regions/nowhere-1", "/api/v1/events?limit=0", "/api/v1/nope"]:
        assert_security_headers(dash.get(url))


def test_markup_sent_by_a_region_is_returned_verbatim(dash: Dash):
    markup = '<b>x</b>"><script>alert(1)</script>'
    dash.cycle()
    dash.fleet.set("eu-west-1", version=markup, answers_as="<i>elsewhere</i>")
    dash.cycle()
    eu = regions_of(dash.json("/api/v1/status"))["eu-west-1"]
    assert eu["version"] == markup
    assert eu["markers"]["misrouted"] == "answers as '<i>elsewhere</i>'"
    detail = dash.json("/api/v1/regions/eu-west-1")
    assert detail["deployment"]["version"] == markup and detail["deployment"]["region"] == "<i>elsewhere</i>"
    version_event = next(e for e in dash.json("/api/v1/events?region=eu-west-1")["events"] if e["kind"] == "version")
    assert version_event["details"]["new_version"] == markup
    assert markup in version_event["reason"]
