"""Answers shared by every viewer (web/shared_views.py): built once, and never kept past a change.

The overview fragment and /api/v1/status are built once for all viewers until the database
changes, time alone changes them (a region turning stale, an override or a window starting or
ending), or they reach their maximum age. These tests hold both halves: that a second viewer gets
the same answer without a build, and that every kind of change is seen at the next request.
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from dashboard.model import MaintenanceWindow
from dashboard.runtime import Runtime
from dashboard.status import next_change_at
from dashboard.web.shared_views import SharedViews

from .conftest import wait_until
from .routing_helpers import BEARER, SLOW_POLLING, auth_config
from .web_helpers import Dash


def _build(body: bytes, deadline: float | None = None):
    calls: list[int] = []

    def build() -> tuple[bytes, float | None]:
        calls.append(1)
        return body, deadline

    return build, calls


# -- the cache's rules --------------------------------------------------------------------------------


def test_an_answer_is_built_once_per_key_and_built_again_when_the_key_moves():
    views = SharedViews(max_age_seconds=60)
    build, calls = _build(b"v1")
    first = views.get("status", 1, build)
    assert views.get("status", 1, build) is first
    assert len(calls) == 1
    moved = views.get("status", 2, build)
    assert moved is not first and len(calls) == 2
    assert moved.etag == first.etag, "the same body has the same ETag, whoever built it"
    other, _ = _build(b"v2")
    assert views.get("status", 3, other).etag != first.etag


def test_an_answer_is_built_again_at_its_deadline_and_at_its_maximum_age():
    views = SharedViews(max_age_seconds=5)
    now = time.time()
    build, calls = _build(b"body", deadline=now + 2)
    views.get("status", 1, build, now=now)
    views.get("status", 1, build, now=now + 1.9)
    assert len(calls) == 1
    views.get("status", 1, build, now=now + 2.1)  # a region turned stale at +2 s: time alone changed it
    assert len(calls) == 2

    undated, undated_calls = _build(b"body")
    views.get("overview", 1, undated, now=now)
    views.get("overview", 1, undated, now=now + 4.9)
    assert len(undated_calls) == 1
    views.get("overview", 1, undated, now=time.time() + 5.1)
    assert len(undated_calls) == 2


def _building_in_background(views: SharedViews, key: int, body: bytes, now: float | None = None):
    """Start a build of `body` for `key` in a thread that holds it until released."""
    started, release, result = threading.Event(), threading.Event(), []

    def slow_build() -> tuple[bytes, float | None]:
        started.set()
        assert release.wait(10)
        return body, None

    builder = threading.Thread(target=lambda: result.append(views.get("status", key, slow_build, now=now)))
    builder.start()
    assert started.wait(10)
    return builder, release


def test_while_one_viewer_builds_after_time_moved_on_the_others_get_the_kept_answer_without_waiting():
    views = SharedViews(max_age_seconds=5)
    views.get("status", 1, _build(b"kept")[0])
    later = time.time() + 6  # past its maximum age: nothing changed but time
    builder, release = _building_in_background(views, 1, b"rebuilt", now=later)
    try:
        assert views.get("status", 1, _build(b"never")[0], now=later).body == b"kept"
    finally:
        release.set()
        builder.join(10)
    assert views.get("status", 1, _build(b"never")[0]).body == b"rebuilt"


def test_when_the_data_changed_the_others_wait_for_the_new_answer_never_the_one_before():
    views = SharedViews(max_age_seconds=60)
    views.get("status", 1, _build(b"before the failover")[0])
    builder, release = _building_in_background(views, 2, b"after the failover")
    answers: list[bytes] = []
    waiter = threading.Thread(target=lambda: answers.append(views.get("status", 2, _build(b"never")[0]).body))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and answers == [], "a viewer after the change must wait for the new answer"
    release.set()
    builder.join(10)
    waiter.join(10)
    assert answers == [b"after the failover"]
    assert views.builds == 2


def test_a_build_begun_before_the_data_changed_is_not_taken_for_the_new_data():
    views = SharedViews(max_age_seconds=60)
    builder, release = _building_in_background(views, 1, b"old data")
    answers: list[bytes] = []
    waiter = threading.Thread(target=lambda: answers.append(views.get("status", 2, _build(b"new data")[0]).body))
    waiter.start()
    release.set()
    builder.join(10)
    waiter.join(10)
    assert answers == [b"new data"]


def test_a_failed_build_is_the_builders_error_and_the_next_viewer_builds_again():
    views = SharedViews(max_age_seconds=60)

    def broken() -> tuple[bytes, float | None]:
        raise RuntimeError("store unreadable")

    with pytest.raises(RuntimeError):
        views.get("status", 1, broken)
    assert views.get("status", 1, _build(b"fine")[0]).body == b"fine"


def test_the_next_change_is_the_first_region_to_turn_stale_override_to_lapse_or_window_to_open_or_close(dash: Dash):
    now = time.time()
    stale_after = dash.settings.stale_after_seconds
    regions = [
        {"state": "up", "last_poll_at": now - 1, "override": None},
        {"state": "stale", "last_poll_at": now - 100, "override": None},  # stale already: no news
        {"state": "unknown", "last_poll_at": None, "override": None},
    ]
    assert next_change_at(dash.settings, regions, [], now) == pytest.approx(now - 1 + stale_after, abs=0.01)
    regions.append({"state": "up", "last_poll_at": now, "override": {"until": now + 0.5}})
    assert next_change_at(dash.settings, regions, [], now) == pytest.approx(now + 0.5, abs=0.01)
    window = MaintenanceWindow(id=1, region="eu-west-1", starts_at=now + 0.2, ends_at=now + 60, reason="r",
                               actor="a", created_at=now, ended_at=None)
    assert next_change_at(dash.settings, regions, [window], now) == pytest.approx(now + 0.2, abs=0.01)
    assert next_change_at(dash.settings, regions[1:2], [], now) is None


# -- through the real app --------------------------------------------------------------------------


def test_status_is_built_once_for_every_caller_until_a_poll_cycle_changes_it(dash: Dash):
    dash.cycle()
    views = dash.app.extensions["dashboard"].shared_views
    first = dash.get("/api/v1/status")
    builds = views.builds
    second = dash.get("/api/v1/status")
    assert views.builds == builds, "a second caller with nothing changed must not build it again"
    assert second.get_data() == first.get_data() and second.headers["ETag"] == first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"

    unchanged = dash.get("/api/v1/status", headers={"If-None-Match": first.headers["ETag"]})
    assert unchanged.status_code == 304 and unchanged.get_data() == b""

    dash.fleet.set("eu-west-1", mode="http_500")
    dash.cycle()
    after = dash.json("/api/v1/status")
    assert next(r for r in after["regions"] if r["region"] == "eu-west-1")["error_rate_5m"] > 0
    assert views.builds == builds + 1


def test_overview_fragment_and_status_show_a_failover_at_the_next_request(make_dash):
    dash = make_dash(auth=auth_config(), routing_file="routing.json", **SLOW_POLLING)
    dash.cycle()
    assert dash.page("/fragments/overview").select_one("#override-banner") is None
    assert "override" not in dash.json("/api/v1/status")["regions"][1]["markers"]
    response = dash.client.post("/api/v1/routing/overrides", headers=BEARER, json={
        "region": "eu-west-1", "reason": "shared view test", "confirm_healthy": True})
    assert response.status_code == 201, response.get_data(as_text=True)
    banner = dash.page("/fragments/overview").select_one("#override-banner")
    assert banner is not None and "eu-west-1" in banner.get_text()
    assert "override" in dash.json("/api/v1/status")["regions"][1]["markers"]


def test_regions_turn_stale_in_the_shared_answers_with_no_write_to_the_database(dash: Dash):
    dash.cycle()
    assert dash.json("/api/v1/status")["summary"]["up"] == 3
    assert dash.page("/fragments/overview").select_one("#alert-banner") is None
    version = dash.store.data_version()
    # Nothing is written from here on: only time passes (stale after three 1 s intervals).
    wait_until(lambda: dash.json("/api/v1/status")["summary"]["stale"] == 3, "every region stale in the status")
    banner = wait_until(lambda: dash.page("/fragments/overview").select_one("#alert-banner"), "the alert banner")
    assert "eu-west-1" in banner.get_text()
    assert dash.store.data_version() == version


def test_relative_times_in_the_shared_overview_carry_their_moment_for_the_page_to_count_on(dash: Dash):
    dash.cycle()
    fragment = dash.page("/fragments/overview")
    stamps = fragment.select("time[data-ago]")
    assert stamps, "the overview's relative times must be <time data-ago> elements"
    assert all(stamp.get("datetime") for stamp in stamps)
    assert fragment.select_one("#region-eu-west-1 time.last-polled[data-ago]") is not None


def test_serve_builds_the_shared_answers_before_the_first_viewer_arrives(fleet, make_settings):
    runtime = Runtime(make_settings(fleet))
    try:
        url = runtime.start("127.0.0.1", 0)
        views = runtime.app.extensions["dashboard"].shared_views
        assert views.builds == 2, "the overview fragment and the status, each built once at start"
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/api/v1/status").status_code == 200
            assert client.get("/fragments/overview", headers={"HX-Request": "true"}).status_code == 200
    finally:
        runtime.stop()
