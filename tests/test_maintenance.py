"""Maintenance windows (issue 15): through the API, the region page and the CLI; notices held back
and summarised against a real receiver; the failover rule; a window lapsing; windows surviving a
restart. Real fleets on loopback, real SQLite files, the real app."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import stamina
from bs4 import BeautifulSoup

from dashboard.config import ConfigError, load_settings
from dashboard.demo.simulator import SimulatedFleet
from dashboard.maintenance import EVENT_KINDS, Maintenance, summarise
from dashboard.model import MaintenanceWindow, Transition, polls_in_windows
from dashboard.notify import MAINTENANCE_SUMMARY, Notifier
from dashboard.poller import Poller
from dashboard.routing import Change, Router, RoutingError
from dashboard.store import Store
from dashboard.web import create_app

from .conftest import write_config
from .routing_helpers import BEARER, auth_config, csrf_token, login
from .test_failover_cli import run_cli
from .test_notify import Receiver, hook

REASON = "rollout 2026-12: migrate the eu-west-1 database"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback recording every notice (test_notify's)."""
    running = Receiver()
    yield running
    running.close()


def _maintenance_events(store: Store) -> list[dict[str, Any]]:
    return [e for e in reversed(store.events(limit=1000)) if e["kind"] in EVENT_KINDS]


@pytest.fixture
def operated(make_dash):
    """The app with an operator and an API token, every region polled once."""
    dash = make_dash(auth=auth_config(), routing_file="routing.json", poll_interval_seconds=60)
    dash.cycle()
    return dash


def _api(dash, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None):
    response = dash.client.open(path, method=method, json=body, headers=headers if headers is not None else BEARER)
    data = response.get_json()
    response.close()
    return response.status_code, data


# -- the API ---------------------------------------------------------------------------------------


def test_a_window_through_the_api_is_listed_marked_and_ended_with_audit_events(operated):
    status, window = _api(operated, "POST", "/api/v1/maintenance",
                          {"region": "eu-west-1", "reason": REASON, "duration_minutes": 120})
    assert status == 201, window
    assert window["region"] == "eu-west-1" and window["actor"] == "token:automation" and window["active"] is True

    listed = operated.json("/api/v1/maintenance")["windows"]
    assert [w["id"] for w in listed] == [window["id"]]
    regions = {r["region"]: r for r in operated.json("/api/v1/status")["regions"]}
    note = regions["eu-west-1"]["markers"]["maintenance"]
    assert note.startswith("in maintenance until ") and f"({REASON}, by token:automation)" in note
    assert "maintenance" not in regions["us-east-1"]["markers"]
    # Still computed and shown: the state is the poller's, not hidden behind the window.
    assert regions["eu-west-1"]["state"] == "up"

    status, ended = _api(operated, "DELETE", f"/api/v1/maintenance/{window['id']}", {"reason": "done early"})
    assert status == 200, ended
    assert ended["end_kind"] == "ended" and ended["active"] is False
    assert operated.json("/api/v1/maintenance")["windows"] == []
    events = _maintenance_events(operated.store)
    assert [(e["kind"], e["actor"], e["reason"]) for e in events] == [
        ("maintenance_start", "token:automation", REASON), ("maintenance_end", "token:automation", "done early")]
    assert events[0]["details"]["window_id"] == window["id"]


def test_starting_over_an_open_window_extends_it_with_its_own_event(operated):
    _, first = _api(operated, "POST", "/api/v1/maintenance",
                    {"region": "eu-west-1", "reason": REASON, "duration_minutes": 60})
    status, second = _api(operated, "POST", "/api/v1/maintenance",
                          {"region": "eu-west-1", "reason": "migration runs long", "duration_minutes": 180})
    assert status == 201
    assert second["id"] == first["id"] and second["ends_at"] > first["ends_at"]
    assert [e["kind"] for e in _maintenance_events(operated.store)] == ["maintenance_start", "maintenance_extend"]


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"region": "eu-west-1", "reason": REASON, "duration_minutes": 25 * 60}, 400, "window_too_long"),
    ({"region": "eu-west-1", "reason": REASON, "starts_at": time.time() + 3600, "ends_at": time.time() + 60},
     400, "ends_before_start"),
    ({"region": "mars-1", "reason": REASON, "duration_minutes": 60}, 404, "unknown_region"),
    ({"region": "eu-west-1", "reason": "  ", "duration_minutes": 60}, 400, "reason_required"),
    ({"region": "eu-west-1", "duration_minutes": 60}, 400, "bad_body"),
    ({"region": "eu-west-1", "reason": REASON}, 400, "duration_required"),
    ({"region": "eu-west-1", "reason": REASON, "duration_minutes": -5}, 400, "bad_duration"),
    ({"region": "eu-west-1", "reason": REASON, "duration_minutes": 60, "starts_at": time.time() - 86_400},
     400, "starts_in_past"),
])
def test_bad_windows_are_refused_with_a_named_error_and_nothing_stored(operated, body, status, error):
    got_status, got = _api(operated, "POST", "/api/v1/maintenance", body)
    assert (got_status, got["error"]) == (status, error), got
    assert got["message"]
    assert operated.store.maintenance_windows() == []
    assert _maintenance_events(operated.store) == []


def test_no_window_without_credentials_and_unknown_windows_are_404(operated):
    status, got = _api(operated, "POST", "/api/v1/maintenance",
                       {"region": "eu-west-1", "reason": REASON, "duration_minutes": 60}, headers={})
    assert (status, got["error"]) == (401, "unauthorized")
    status, got = _api(operated, "DELETE", "/api/v1/maintenance/4242", {})
    assert (status, got["error"]) == (404, "unknown_window")
    assert operated.store.maintenance_windows() == []


def test_max_hours_is_a_setting(make_dash):
    dash = make_dash(auth=auth_config(), maintenance={"max_hours": 1})
    status, got = _api(dash, "POST", "/api/v1/maintenance",
                       {"region": "eu-west-1", "reason": REASON, "duration_minutes": 90})
    assert (status, got["error"]) == (400, "window_too_long")
    assert "dashboard.maintenance.max_hours" in got["message"]


# -- the region page -------------------------------------------------------------------------------


def test_an_operator_starts_and_ends_a_window_from_the_region_page(operated):
    client = operated.client
    assert login(client).status_code == 302
    form = BeautifulSoup(client.get("/regions/eu-west-1/maintenance").get_data(as_text=True), "html.parser")
    assert form.select_one("#maintenance-form") is not None
    token = csrf_token(client, "/regions/eu-west-1/maintenance")

    refused = client.post("/regions/eu-west-1/maintenance", data={"csrf_token": token, "duration_minutes": "60",
                                                                   "reason": ""}, headers={"HX-Request": "true"})
    page = BeautifulSoup(refused.get_data(as_text=True), "html.parser")
    assert refused.status_code == 400
    assert page.select_one("#maintenance-error")["data-rule"] == "reason_required"

    done = client.post("/regions/eu-west-1/maintenance", headers={"HX-Request": "true"},
                       data={"csrf_token": token, "duration_minutes": "120", "reason": REASON})
    assert done.status_code == 200
    assert done.headers["HX-Trigger"] == "routing-changed"
    assert "Maintenance of eu-west-1 started" in done.get_data(as_text=True)

    region = operated.page("/regions/eu-west-1")
    summary = region.select_one("#region-summary")
    assert summary.select_one(".marker-maintenance").get_text(strip=True) == "maintenance"
    note = summary.select_one(".maintenance-note").get_text(" ", strip=True)
    assert "in maintenance until" in note and REASON in note and "by alice" in note
    card = operated.page("/").select_one("#region-eu-west-1")
    assert card.select_one(".marker-maintenance") is not None
    assert "in maintenance until" in card.select_one(".maintenance-note").get_text()
    assert operated.page("/").select_one("#region-us-east-1 .maintenance-note") is None

    ended = client.post("/regions/eu-west-1/maintenance/end", data={"csrf_token": token},
                        headers={"HX-Request": "true"})
    assert ended.status_code == 200 and "ended" in ended.get_data(as_text=True)
    assert operated.page("/regions/eu-west-1").select_one(".maintenance-note") is None
    assert [(e["kind"], e["actor"]) for e in _maintenance_events(operated.store)] == [
        ("maintenance_start", "alice"), ("maintenance_end", "alice")]


def test_the_page_form_needs_a_login_and_its_csrf_token(operated):
    anonymous = operated.client.post("/regions/eu-west-1/maintenance",
                                     data={"duration_minutes": "60", "reason": REASON})
    assert anonymous.status_code in (302, 401, 403)
    login(operated.client)
    forged = operated.client.post("/regions/eu-west-1/maintenance", data={"duration_minutes": "60", "reason": REASON})
    assert forged.status_code in (400, 403)
    assert operated.store.maintenance_windows() == []


# -- the CLI ---------------------------------------------------------------------------------------


def test_a_window_through_the_cli_start_list_and_end(fleet: SimulatedFleet, make_settings):
    settings = make_settings(fleet, poll_interval_seconds=60, maintenance={"max_hours": 4})
    config = str(settings.source)

    started = run_cli("maintenance", "start", "eu-west-1", "--for", "2h", "--reason", REASON, "--actor", "bob",
                      "--config", config)
    assert started.returncode == 0, started.stderr
    assert "maintenance window 1 of eu-west-1 started" in started.stdout

    listed = run_cli("maintenance", "list", "--json", "--config", config)
    windows = json.loads(listed.stdout)["windows"]
    assert [(w["region"], w["actor"], w["reason"], w["active"]) for w in windows] == [
        ("eu-west-1", "bob", REASON, True)]

    too_long = run_cli("maintenance", "start", "us-east-1", "--for", "5h", "--reason", REASON, "--config", config)
    assert too_long.returncode == 2
    assert "refused (window_too_long)" in too_long.stderr
    unknown = run_cli("maintenance", "start", "mars-1", "--for", "1h", "--reason", REASON, "--config", config)
    assert unknown.returncode == 2 and "refused (unknown_region)" in unknown.stderr
    no_reason = run_cli("maintenance", "start", "eu-west-1", "--for", "1h", "--config", config)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr

    ended = run_cli("maintenance", "end", "eu-west-1", "--actor", "bob", "--config", config)
    assert ended.returncode == 0, ended.stderr
    assert "ended" in ended.stdout
    assert json.loads(run_cli("maintenance", "list", "--json", "--config", config).stdout)["windows"] == []
    again = run_cli("maintenance", "end", "eu-west-1", "--config", config)
    assert again.returncode == 1 and "refused (not_in_maintenance)" in again.stderr
    store = Store(settings.database_path)
    try:
        assert [e["kind"] for e in _maintenance_events(store)] == ["maintenance_start", "maintenance_end"]
    finally:
        store.close()


# -- notices ---------------------------------------------------------------------------------------


def test_state_notices_are_held_during_a_window_and_summarised_when_it_ends(
        fleet: SimulatedFleet, make_settings, receiver: Receiver):
    settings = make_settings(fleet, poll_interval_seconds=60, failure_threshold=1, success_threshold=1,
                             notifications={"webhooks": [hook(receiver)], "min_interval_seconds": 0})
    store = Store(settings.database_path)
    poller = Poller(settings, store)
    notifier = Notifier(settings, store=store, backoff_seconds=0.01)
    notifier.start()
    try:
        with stamina.set_testing(True, attempts=3):
            maintenance = Maintenance(settings, store, listener=notifier)
            notifier.state_changes(poller.run_cycle().transitions)  # unknown -> up, announced
            receiver.wait_for(3)
            before = receiver.count()
            maintenance.start("eu-west-1", reason=REASON, actor="alice", duration_minutes=60)
            for mode in ("http_500", "healthy", "http_500", "healthy"):  # down twice, up again
                fleet.set("eu-west-1", mode=mode)
                notifier.state_changes(poller.run_cycle().transitions)
            fleet.set("us-east-1", mode="http_500")  # a region outside the window is still announced
            notifier.state_changes(poller.run_cycle().transitions)
            got = receiver.wait_for(before + 1)
            assert [(r.body["region"], r.body["new_state"]) for r in got[before:]] == [("us-east-1", "down")]

            maintenance.end(region="eu-west-1", actor="alice")
            got = receiver.wait_for(before + 2)
        summary = got[before + 1].body
        assert summary["kind"] == MAINTENANCE_SUMMARY and summary["region"] == "eu-west-1"
        assert summary["reason"] == "during maintenance eu-west-1 went down twice, now up"
        assert [(c["old_state"], c["new_state"]) for c in summary["held_back"]] == [
            ("up", "down"), ("down", "up"), ("up", "down"), ("down", "up")]
        assert REASON in summary["summary"] and "alice" in summary["summary"]
        assert not any(r.body["region"] == "eu-west-1" and r.body["kind"] == "state_change" for r in got[before:])
    finally:
        notifier.stop(timeout=2)
        poller.close()
        store.close()


def test_the_summary_says_what_happened_in_words():
    def tr(old: str, new: str) -> Transition:
        return Transition("eu-west-1", old, new, "why", 1.0)

    assert summarise("eu-west-1", [], "up") == "during maintenance eu-west-1 had no change of state, now up"
    assert summarise("eu-west-1", [tr("up", "down"), tr("down", "degraded"), tr("degraded", "down")], "down") == \
        "during maintenance eu-west-1 went down twice and degraded once, now down"


# -- the failover rule -----------------------------------------------------------------------------


def test_failing_over_to_a_region_in_maintenance_is_refused_unless_forced(make_routed):
    routed = make_routed()
    maintenance = Maintenance(routed.settings, routed.store)
    maintenance.start("us-east-1", reason=REASON, actor="alice", duration_minutes=60)
    with pytest.raises(RoutingError) as refused:
        routed.fail_over("eu-west-1", "us-east-1")
    assert refused.value.rule == "target_in_maintenance"
    assert routed.store.overrides() == []

    table = routed.fail_over("eu-west-1", "us-east-1", force=True)
    assert table["regions"]["eu-west-1"]["override"]["forced"] is True
    failover = next(e for e in routed.store.events(limit=50) if e["kind"] == "failover")
    assert failover["details"]["skipped_rules"] == ["target_in_maintenance", "region_healthy"] or \
        "target_in_maintenance" in failover["details"]["skipped_rules"]


def test_failing_over_a_region_in_maintenance_is_allowed(make_routed):
    routed = make_routed()
    Maintenance(routed.settings, routed.store).start("eu-west-1", reason=REASON, actor="alice", duration_minutes=60)
    table = routed.fail_over("eu-west-1", "us-east-1")
    assert table["regions"]["eu-west-1"]["serving_region"] == "us-east-1"
    assert table["regions"]["eu-west-1"]["override"]["forced"] is False


# -- lapse and restart -----------------------------------------------------------------------------


def test_a_window_that_lapses_ends_by_itself_with_an_event_and_a_summary(make_store):
    store, settings = make_store()
    told: list[tuple[str, str]] = []

    class Listener:
        def maintenance_ended(self, region, summary, changes, *, at, details=None):
            told.append((region, summary))

    maintenance = Maintenance(settings, store, listener=Listener())
    started_at = time.time() - 600
    window = maintenance.start("eu-west-1", reason=REASON, actor="alice", duration_minutes=5, now=started_at).window
    assert maintenance.lapse_expired() == [{**window, "ended_at": window["ends_at"], "end_kind": "lapsed"}]
    assert maintenance.lapse_expired() == []  # once only
    assert maintenance.windows() == []
    lapse = [e for e in _maintenance_events(store) if e["kind"] == "maintenance_lapse"]
    assert [(e["region"], e["actor"]) for e in lapse] == [("eu-west-1", "expiry")]
    assert told == [("eu-west-1", "during maintenance eu-west-1 had no change of state, now unknown")]


def test_windows_survive_a_restart(tmp_path, fleet: SimulatedFleet):
    path = write_config(tmp_path / "config.yaml", fleet.deployment_block(), database="dashboard.db",
                        auth=auth_config())
    settings = load_settings(str(path), environ={})
    first = Store(settings.database_path)
    Maintenance(settings, first).start("ap-southeast-1", reason=REASON, actor="alice", duration_minutes=90)
    planned = Maintenance(settings, first).start("eu-west-1", reason="next", actor="alice", duration_minutes=30,
                                                 starts_at=time.time() + 3600).window
    first.close()

    again = Store(settings.database_path)
    try:
        app = create_app(settings, store=again)
        client = app.test_client()
        windows = client.get("/api/v1/maintenance").get_json()["windows"]
        assert [(w["region"], w["active"]) for w in windows] == [("ap-southeast-1", True), ("eu-west-1", False)]
        assert windows[1]["id"] == planned["id"]
        regions = {r["region"]: r for r in client.get("/api/v1/status").get_json()["regions"]}
        assert "maintenance" in regions["ap-southeast-1"]["markers"]
        assert "maintenance" not in regions["eu-west-1"]["markers"]  # planned, not started
    finally:
        again.close()


# -- error budgets and settings ------------------------------------------------------------------------


def test_polls_inside_a_window_are_marked_for_error_budgets(make_store):
    store, settings = make_store()
    assert settings.dashboard.maintenance.exclude_from_error_budget is True
    base = time.time() - 3600
    maintenance = Maintenance(settings, store)
    maintenance.start("eu-west-1", reason=REASON, actor="a", duration_minutes=10, now=base)
    maintenance.lapse_expired()
    windows: list[MaintenanceWindow] = store.maintenance_windows(region="eu-west-1", start=base - 60,
                                                                 end=base + 3600)
    assert len(windows) == 1
    assert polls_in_windows([base - 1, base, base + 599, base + 600, base + 1200], windows) == [
        False, True, True, False, False]
    assert store.maintenance_windows(region="us-east-1", start=base - 60, end=base + 3600) == []


@pytest.mark.parametrize(("block", "wrong"), [
    ({"max_hours": 0}, "dashboard.maintenance.max_hours"),
    ({"max_hours": "a day"}, "dashboard.maintenance.max_hours"),
    ({"exclude_from_error_budget": "sometimes"}, "dashboard.maintenance.exclude_from_error_budget"),
    ({"mute": True}, "dashboard.maintenance.mute"),
])
def test_bad_maintenance_settings_are_named(tmp_path, block, wrong):
    path = write_config(tmp_path / "c.yaml", {"region": "a-1", "primary_region": "a-1", "regions": ["a-1"],
                                              "region_base_urls": {"a-1": "http://127.0.0.1:9"}},
                        maintenance=block)
    with pytest.raises(ConfigError) as error:
        load_settings(str(path), environ={})
    assert wrong in str(error.value)


def test_a_router_without_windows_is_unchanged(make_routed):
    routed = make_routed()
    assert isinstance(routed.router, Router)
    assert routed.router.regions_in_maintenance() == set()
    routed.router.set_override(Change("eu-west-1", "us-east-1", reason="drill", confirm_healthy=True), actor="t")


def test_the_running_poll_loop_lapses_a_window_and_sends_its_summary(
        fleet: SimulatedFleet, make_settings, receiver: Receiver):
    from dashboard.scheduler import PollingService

    from .conftest import wait_until

    settings = make_settings(fleet, poll_interval_seconds=60,
                             notifications={"webhooks": [hook(receiver)], "min_interval_seconds": 0})
    store = Store(settings.database_path)
    poller = Poller(settings, store)
    notifier = Notifier(settings, store=store, backoff_seconds=0.01)
    maintenance = Maintenance(settings, store, listener=notifier)
    # A window whose end passed a minute ago, not lapsed yet (as after a restart of the poller).
    maintenance.start("eu-west-1", reason=REASON, actor="alice", duration_minutes=1, now=time.time() - 120)
    service = PollingService(poller, router=Router(settings, store, notifier=notifier), maintenance=maintenance,
                             on_cycle=lambda report: notifier.state_changes(report.transitions))
    notifier.start()
    service.start()
    try:
        wait_until(lambda: [e for e in _maintenance_events(store) if e["kind"] == "maintenance_lapse"],
                   "the poll loop lapsing the window", timeout=30)
        assert maintenance.windows() == []
        summaries = wait_until(lambda: [r.body for r in receiver.requests if r.body["kind"] == MAINTENANCE_SUMMARY],
                               "the summary notice reaching the receiver", timeout=30)
        assert summaries[0]["region"] == "eu-west-1"
        assert summaries[0]["details"]["end_kind"] == "lapsed"
    finally:
        service.stop()
        notifier.stop(timeout=2)
        poller.close()
        store.close()
