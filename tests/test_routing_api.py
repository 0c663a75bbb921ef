"""Routing through the web: the JSON API as automation drives it, and the pages and forms an
operator uses, on the real app, a real database and real poll cycles."""
from __future__ import annotations

import json
from typing import Any

import pytest
from werkzeug.test import TestResponse

from .routing_helpers import (
    BEARER,
    SLOW_POLLING,
    TOKEN_NAME,
    auth_config,
    csrf_token,
    login,
    read_routing_file,
    routing_events,
    serving,
    soup,
)
from .web_helpers import Dash

PINNED = "ap-southeast-1"
TOKEN_ACTOR = f"token:{TOKEN_NAME}"


@pytest.fixture
def rdash(make_dash) -> Dash:
    """The app with an operator and a token, every region polled once (all up)."""
    dash = make_dash(auth=auth_config(), residency_pinned=[PINNED], routing_file="routing.json", **SLOW_POLLING)
    dash.cycle()
    return dash


def call(dash: Dash, method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
         **kwargs: Any) -> TestResponse:
    """An API request with the bearer token (unless other headers are given); the body read and closed."""
    if body is not None:
        kwargs["json"] = body
    response = dash.client.open(url, method=method, headers=BEARER if headers is None else headers, **kwargs)
    response.get_data()
    response.close()
    return response


def error_of(response: TestResponse, status: int) -> str:
    """The error code of a JSON error response with this status (and a message)."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, (response.status_code, text[:300])
    assert response.mimetype == "application/json", text[:300]
    body = json.loads(text)
    assert isinstance(body.get("message"), str) and body["message"], body
    return body["error"]


def fail_over(dash: Dash, region: str = "eu-west-1", **fields: Any) -> TestResponse:
    body = {"region": region, "reason": "eu-west-1 disk full", "confirm_healthy": True, **fields}
    return call(dash, "POST", "/api/v1/routing/overrides", body)


def unchanged(dash: Dash) -> tuple:
    path = dash.settings.routing_file_path
    return (dash.store.overrides(), dash.store.routing_version(), dash.store.events(limit=1000),
            path.read_bytes() if path.exists() else None)


# -- the JSON API ----------------------------------------------------------------------------------


def test_post_override_answers_201_with_the_new_table_and_its_etag(rdash: Dash):
    response = fail_over(rdash, read_only=False, expires_in_minutes=30)
    assert response.status_code == 201, response.get_data(as_text=True)
    table = response.get_json()
    # The ETag covers the table and its publishers' outcomes (`published`, not in the file).
    assert response.headers["ETag"].startswith('"routing-v1-')
    assert [p["name"] for p in table.pop("published")] == ["routing-file"]
    assert table["version"] == 1
    entry = table["regions"]["eu-west-1"]
    assert entry["serving_region"] == "us-east-1" and entry["read_only"] is False
    assert entry["base_url"] == rdash.settings.base_url("us-east-1")
    assert entry["override"]["actor"] == TOKEN_ACTOR and entry["override"]["until"]
    assert read_routing_file(rdash.settings) == table
    [event] = routing_events(rdash.store)
    assert (event["kind"], event["actor"], event["reason"]) == ("failover", TOKEN_ACTOR, "eu-west-1 disk full")


def test_delete_override_answers_200_with_the_table(rdash: Dash):
    fail_over(rdash)
    response = call(rdash, "DELETE", "/api/v1/routing/overrides/eu-west-1", {"reason": "disk replaced"})
    assert response.status_code == 200, response.get_data(as_text=True)
    table = response.get_json()
    assert response.headers["ETag"].startswith('"routing-v2-')
    assert table.pop("published")[0]["version"] == 2
    assert table["regions"]["eu-west-1"]["override"] is None
    assert serving(table)["eu-west-1"] == "eu-west-1"
    assert read_routing_file(rdash.settings) == table
    assert routing_events(rdash.store)[0]["kind"] == "failback"


@pytest.mark.parametrize("request_kwargs", [
    pytest.param({"data": "region=eu-west-1&reason=x", "content_type": "application/x-www-form-urlencoded"},
                 id="form-encoded"),
    pytest.param({"data": "{not json", "content_type": "application/json"}, id="invalid-json"),
    pytest.param({"json": ["eu-west-1", "disk full"]}, id="array"),
    pytest.param({"json": "eu-west-1"}, id="string"),
    pytest.param({"json": {"region": "eu-west-1", "reason": "x", "confirm_healthy": True, "colour": "red"}},
                 id="unknown-field"),
    pytest.param({"json": {"region": "eu-west-1", "reason": "x", "read_only": "yes"}}, id="read-only-string"),
    pytest.param({"json": {"region": "eu-west-1", "reason": "x", "expires_in_minutes": True}},
                 id="expiry-boolean"),
    pytest.param({"json": {"region": "eu-west-1", "reason": "x", "expires_in_minutes": "30"}},
                 id="expiry-string"),
    pytest.param({"json": {"region": "eu-west-1", "reason": "x", "confirm_healthy": 1}}, id="confirm-number"),
    pytest.param({"json": {"region": "eu-west-1", "reason": "x", "expected_version": 1.5}}, id="version-float"),
    pytest.param({"json": {"region": ["eu-west-1"], "reason": "x"}}, id="region-list"),
    pytest.param({"json": {"region": "eu-west-1", "reason": "x", "confirm_healthy": True, "target_region": ""}},
                 id="empty-target"),
    pytest.param({"json": {"reason": "x"}}, id="no-region"),
    pytest.param({"json": {"region": "eu-west-1"}}, id="no-reason-field"),
])
def test_a_malformed_override_body_is_400_and_changes_nothing(rdash: Dash, request_kwargs):
    before = unchanged(rdash)
    response = rdash.client.post("/api/v1/routing/overrides", headers=BEARER, **request_kwargs)
    assert error_of(response, 400) == "bad_body"
    assert unchanged(rdash) == before


@pytest.mark.parametrize(("fields", "code"), [
    ({"reason": "   "}, "reason_required"),
    ({"reason": "x" * 501}, "reason_too_long"),
    ({"expires_in_minutes": 0.5}, "bad_expiry"),
])
def test_a_bad_reason_or_expiry_is_400_naming_it(rdash: Dash, fields, code):
    before = unchanged(rdash)
    assert error_of(fail_over(rdash, **fields), 400) == code
    assert unchanged(rdash) == before


def test_a_malformed_failback_body_is_400(rdash: Dash):
    fail_over(rdash)
    before = unchanged(rdash)
    url = "/api/v1/routing/overrides/eu-west-1"
    assert error_of(call(rdash, "DELETE", url), 400) == "bad_body"
    assert error_of(call(rdash, "DELETE", url, {"reason": "back", "force": True}), 400) == "bad_body"
    assert error_of(call(rdash, "DELETE", url, {"reason": ""}), 400) == "reason_required"
    assert unchanged(rdash) == before


def test_an_unknown_region_or_target_is_404(rdash: Dash):
    before = unchanged(rdash)
    assert error_of(fail_over(rdash, "mars-1"), 404) == "unknown_region"
    assert error_of(fail_over(rdash, target_region="mars-1"), 404) == "unknown_target_region"
    assert error_of(call(rdash, "DELETE", "/api/v1/routing/overrides/mars-1", {"reason": "x"}), 404) == "unknown_region"
    assert unchanged(rdash) == before


@pytest.mark.parametrize(("fields", "rule"), [
    ({"target_region": "eu-west-1"}, "same_region"),
    ({"confirm_healthy": False}, "region_healthy"),
    ({"region": PINNED, "read_only": False, "force": True}, "residency_pinned"),
])
def test_a_rule_refusal_is_409_naming_the_rule_and_changes_nothing(rdash: Dash, fields, rule):
    before = unchanged(rdash)
    assert error_of(fail_over(rdash, **fields), 409) == rule
    assert unchanged(rdash) == before


def test_a_target_that_is_down_is_409_unless_forced_and_then_recorded_as_forced(rdash: Dash):
    rdash.fleet.set("us-east-1", mode="http_500")
    rdash.cycle(rdash.settings.dashboard.failure_threshold)
    assert error_of(fail_over(rdash), 409) == "target_unhealthy"
    response = fail_over(rdash, force=True)
    assert response.status_code == 201
    assert response.get_json()["regions"]["eu-west-1"]["override"]["forced"] is True
    assert routing_events(rdash.store)[0]["details"]["forced"] is True


def test_failback_without_an_override_is_409_no_override(rdash: Dash):
    assert error_of(call(rdash, "DELETE", "/api/v1/routing/overrides/eu-west-1", {"reason": "x"}), 409) == "no_override"


def test_a_change_against_an_older_version_is_409_conflict(rdash: Dash):
    assert fail_over(rdash, PINNED, expected_version=0).status_code == 201
    before = unchanged(rdash)
    assert error_of(fail_over(rdash, expected_version=0), 409) == "conflict"
    assert error_of(call(rdash, "DELETE", f"/api/v1/routing/overrides/{PINNED}",
                         {"reason": "back", "expected_version": 0}), 409) == "conflict"
    assert unchanged(rdash) == before
    assert fail_over(rdash, expected_version=1).status_code == 201


def test_routing_table_has_an_etag_and_answers_304_while_unchanged(rdash: Dash):
    first = rdash.get("/api/v1/routing")
    etag = first.headers["ETag"]
    assert first.status_code == 200 and etag.startswith('"routing-v0-')
    table = first.get_json()
    assert table["version"] == 0 and set(table["regions"]) == set(rdash.settings.regions)
    assert all(entry["override"] is None for entry in table["regions"].values())

    again = rdash.get("/api/v1/routing", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""
    assert again.headers["ETag"] == etag

    fail_over(rdash)
    changed = rdash.get("/api/v1/routing", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"].startswith('"routing-v1-')
    assert serving(changed.get_json())["eu-west-1"] == "us-east-1"


def test_routing_table_lapses_expired_overrides_when_read(rdash: Dash):
    fail_over(rdash, expires_in_minutes=30)
    [override] = rdash.store.overrides()
    with rdash.store.transaction() as conn:  # as if the half hour had passed
        conn.execute("update overrides set until = ? where region = ?", (override["since"] - 1, "eu-west-1"))
    table = rdash.json("/api/v1/routing")
    assert table["regions"]["eu-west-1"]["override"] is None and table["version"] == 2
    assert routing_events(rdash.store)[0]["kind"] == "lapse"
    assert read_routing_file(rdash.settings)["version"] == 2


# -- what an operator sees -------------------------------------------------------------------------


def test_overview_shows_the_override_banner_and_the_cards_marker(rdash: Dash):
    page = rdash.page("/fragments/overview")
    assert page.select_one("#override-banner") is None
    assert page.select_one("#region-eu-west-1 .marker-override") is None
    fail_over(rdash)
    page = rdash.page("/fragments/overview")
    banner = page.select_one("#override-banner")
    assert banner is not None
    assert [a.get_text(strip=True) for a in banner.select("li a")] == ["eu-west-1"]
    assert "us-east-1" in banner.get_text() and TOKEN_ACTOR in banner.get_text()
    assert page.select_one("#region-eu-west-1 .marker-override") is not None
    assert page.select_one("#region-us-east-1 .marker-override") is None
    assert page.select_one("#region-eu-west-1 a.failback-link") is not None


def test_region_page_routing_page_and_events_show_the_failover_and_its_actor(rdash: Dash):
    fail_over(rdash)
    region = rdash.page("/regions/eu-west-1")
    assert region.select_one(".marker-override") is not None
    failover_rows = region.select("#region-events-table tr.event-failover")
    assert len(failover_rows) == 1 and TOKEN_ACTOR in failover_rows[0].get_text()

    routing = rdash.page("/routing")
    rows = {row["data-region"]: row
            for row in routing.select("#routing-table tr.routing-row[data-region][data-serving]")}
    assert set(rows) == set(rdash.settings.regions)
    assert {name: row["data-serving"] for name, row in rows.items()} == {
        "us-east-1": "us-east-1", "eu-west-1": "us-east-1", PINNED: PINNED}
    assert TOKEN_ACTOR in rows["eu-west-1"].get_text() and "eu-west-1 disk full" in rows["eu-west-1"].get_text()
    assert rows["eu-west-1"].select_one("a.failback-link") is not None

    events = rdash.page("/events")
    [row] = events.select("tr.event-failover")
    assert "eu-west-1" in row.get_text() and TOKEN_ACTOR in row.get_text()
    assert "eu-west-1 disk full" in row.select_one(".event-reason").get_text()


def test_failover_form_needs_a_login(rdash: Dash):
    response = rdash.get("/regions/eu-west-1/failover")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")
    htmx = rdash.get("/regions/eu-west-1/failover", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and "HX-Redirect" in htmx.headers


def test_failover_form_shows_the_choices_and_the_routing_it_would_produce(rdash: Dash):
    assert login(rdash.client).status_code == 302
    page = rdash.page("/regions/eu-west-1/failover")
    form = page.select_one("#failover-form")
    assert form is not None and form.select_one("input[name=csrf_token]")["value"]
    assert form.select_one("input[name=expected_version]")["value"] == "0"
    assert [i["value"] for i in form.select("input[name=target_region]")] == ["us-east-1", PINNED]
    assert page.select_one("#residency-note") is None
    preview = {tr.select("td")[0].get_text(strip=True): tr.select("td")[1].get_text(strip=True)
               for tr in page.select("#routing-preview tbody tr")}
    assert preview == {"us-east-1": "us-east-1", "eu-west-1": "us-east-1", PINNED: PINNED}
    warnings = [li["data-rule"] for li in page.select("#failover-warnings li[data-rule]")]
    assert warnings == ["region_healthy"]  # eu-west-1 is up: the form says so before submitting


def test_failover_form_of_a_residency_pinned_region_explains_read_only(rdash: Dash):
    login(rdash.client)
    page = rdash.page(f"/regions/{PINNED}/failover")
    assert page.select_one("#residency-note") is not None
    assert page.select_one("#failover-form input[name=read_only][type=hidden]")["value"] == "on"


def _form(page_token: str, **fields: str) -> dict[str, str]:
    return {"csrf_token": page_token, "reason": "eu-west-1 disk full", "target_region": "us-east-1",
            "read_only": "on", "expected_version": "0", **fields}


def test_failover_form_submitted_by_htmx_changes_routing_and_triggers_a_refresh(rdash: Dash):
    login(rdash.client)
    token = csrf_token(rdash.client, "/regions/eu-west-1/failover")
    response = rdash.client.post("/regions/eu-west-1/failover", data=_form(token, confirm_healthy="on"),
                                 headers={"HX-Request": "true"})
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    result = soup(response).select_one("#action-result")
    assert result is not None and "us-east-1" in result.get_text()
    assert response.headers["HX-Trigger"] == "routing-changed"
    [override] = rdash.store.overrides()
    assert (override["region"], override["target_region"], override["actor"]) == ("eu-west-1", "us-east-1", "alice")
    assert routing_events(rdash.store)[0]["actor"] == "alice"
    assert serving(read_routing_file(rdash.settings))["eu-west-1"] == "us-east-1"


def test_failover_form_without_htmx_redirects_to_the_region_page(rdash: Dash):
    login(rdash.client)
    token = csrf_token(rdash.client, "/regions/eu-west-1/failover")
    response = rdash.client.post("/regions/eu-west-1/failover", data=_form(token, confirm_healthy="on"))
    assert response.status_code == 302 and response.headers["Location"] == "/regions/eu-west-1"
    assert len(rdash.store.overrides()) == 1


def test_a_refused_failover_form_comes_back_with_the_rule_and_nothing_changed(rdash: Dash):
    login(rdash.client)
    token = csrf_token(rdash.client, "/regions/eu-west-1/failover")
    before = unchanged(rdash)
    response = rdash.client.post("/regions/eu-west-1/failover", data=_form(token),  # no confirm_healthy
                                 headers={"HX-Request": "true"})
    assert response.status_code == 409
    page = soup(response)
    assert page.select_one("#failover-error")["data-rule"] == "region_healthy"
    assert page.select_one("#failover-form") is not None
    assert page.select_one("#failover-reason").get_text() == "eu-west-1 disk full"  # what was typed is kept
    assert "HX-Trigger" not in response.headers
    assert unchanged(rdash) == before


def test_a_failover_form_with_a_stale_version_is_refused_as_a_conflict(rdash: Dash):
    login(rdash.client)
    token = csrf_token(rdash.client, "/regions/eu-west-1/failover")
    fail_over(rdash, PINNED)  # somebody else, meanwhile
    response = rdash.client.post("/regions/eu-west-1/failover", data=_form(token, confirm_healthy="on"),
                                 headers={"HX-Request": "true"})
    assert response.status_code == 409
    assert soup(response).select_one("#failover-error")["data-rule"] == "conflict"
    assert [o["region"] for o in rdash.store.overrides()] == [PINNED]


def test_failback_form_sends_traffic_home(rdash: Dash):
    fail_over(rdash)
    login(rdash.client)
    page = rdash.page("/regions/eu-west-1/failback")
    token = page.select_one("input[name=csrf_token]")["value"]
    response = rdash.client.post("/regions/eu-west-1/failback",
                                 data={"csrf_token": token, "reason": "disk replaced", "expected_version": "1"},
                                 headers={"HX-Request": "true"})
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert soup(response).select_one("#action-result") is not None
    assert response.headers["HX-Trigger"] == "routing-changed"
    assert rdash.store.overrides() == []
    event = routing_events(rdash.store)[0]
    assert (event["kind"], event["actor"], event["reason"]) == ("failback", "alice", "disk replaced")
