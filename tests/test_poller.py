"""The poll cycle end to end: simulated regions on loopback, real probes, a real SQLite file."""
from __future__ import annotations

import dataclasses
import socket
import sqlite3
import time

import pytest

from dashboard import health
from dashboard.demo.simulator import SimulatedFleet
from dashboard.poller import Poller, PollerBusy
from dashboard.status import current_status
from dashboard.store import Store

from .conftest import REGIONS, TEST_TIMEOUT_SECONDS


def by_region(report):
    return {r.region: r for r in report.regions}


def health_sample(poller: Poller, region: str) -> dict:
    rows = [s for s in poller.store.recent_samples(region) if s["endpoint"] == "health"]
    return rows[0]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("http_500", "health: HTTP 500"),
        ("hang", f"health: no complete answer within {TEST_TIMEOUT_SECONDS:g} s"),
        ("drop", "health: connection dropped by the region before it answered"),
        ("bad_json", "health: HTTP 200 but the answer is not JSON (application/json)"),
        ("html", "health: HTTP 200 but the answer is an HTML page, not a health answer (text/html)"),
        ("huge", "health: answer too large"),
        ("redirect", "health: HTTP 302 redirect to '/elsewhere'"),
        ("failing", "health says"),
    ],
)
def test_each_failure_mode_is_a_failed_probe_with_its_reason(fleet, poller_for, mode, reason):
    fleet.set("eu-west-1", mode=mode)
    poller = poller_for(fleet)
    report = poller.run_cycle()
    eu = by_region(report)["eu-west-1"]
    assert reason in eu.reason
    assert eu.state == health.UNKNOWN  # one failure is not "down"
    sample = health_sample(poller, "eu-west-1")
    assert sample["ok"] == 0 and reason in sample["reason"]
    # The other regions are untouched by eu-west-1's misbehaviour.
    assert by_region(report)["us-east-1"].state == health.UP


def test_a_2xx_health_answer_of_no_known_shape_is_up_and_a_bad_deployment_answer_degrades(fleet, poller_for):
    fleet.set("eu-west-1", mode="wrong_shape")  # health 200 ["ok"], deployment 200 {"name": "x"}
    eu = by_region(poller_for(fleet).run_cycle())["eu-west-1"]
    assert eu.state == health.DEGRADED
    assert eu.reason == 'deployment: answer has no "region" string'
    assert eu.markers["deployment_unavailable"] == eu.reason


def test_a_failing_answer_names_the_failing_component_in_the_reason_and_the_sample(fleet, poller_for):
    body = '{"status": "DOWN", "components": {"db": {"status": "DOWN"}, "ping": {"status": "UP"}}}'
    fleet.set("eu-west-1", health_answer={"status": 503, "content_type": "application/json", "body": body})
    poller = poller_for(fleet, failure_threshold=1)
    eu = by_region(poller.run_cycle())["eu-west-1"]
    assert eu.state == health.DOWN
    assert eu.reason.startswith("health: HTTP 503, says 'DOWN'; failing: db DOWN")
    sample = health_sample(poller, "eu-west-1")
    assert (sample["ok"], sample["http_status"]) == (0, 503) and "failing: db DOWN" in sample["reason"]


def test_a_503_whose_body_is_over_the_cap_is_a_clean_down_naming_the_cap(fleet, poller_for):
    body = '{"status": "fail", "checks": {"db": [{"status": "fail"}]}, "pad": "' + "x" * 8192 + '"}'
    fleet.set("eu-west-1", health_answer={"status": 503, "content_type": "application/health+json", "body": body})
    eu = by_region(poller_for(fleet, failure_threshold=1, max_body_bytes=4096).run_cycle())["eu-west-1"]
    assert eu.state == health.DOWN
    assert eu.reason.startswith("health: HTTP 503, answer too large")
    assert "4096" in eu.reason


def test_refused_connection_and_tls_error_are_failed_probes(fleet, make_settings, poller_for, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    block = fleet.deployment_block()
    block["region_base_urls"] = {
        **block["region_base_urls"],
        "eu-west-1": f"http://127.0.0.1:{closed_port}",
        # TLS spoken to a plain-HTTP server.
        "ap-southeast-1": block["region_base_urls"]["ap-southeast-1"].replace("http://", "https://"),
    }
    from dashboard.config import load_settings

    from .conftest import write_config

    path = write_config(tmp_path / "other.yaml", block, database="x.db", poll_interval_seconds=1,
                        timeout_seconds=TEST_TIMEOUT_SECONDS)
    report = poller_for(fleet, load_settings(str(path), environ={})).run_cycle()
    regions = by_region(report)
    assert "connection refused" in regions["eu-west-1"].reason
    assert "TLS error" in regions["ap-southeast-1"].reason


def test_a_huge_body_is_not_read_to_the_end(fleet, poller_for):
    fleet.set("eu-west-1", mode="huge", body_bytes=50 * 1024 * 1024)
    report = poller_for(fleet, max_body_bytes=64 * 1024).run_cycle()
    assert "too large" in by_region(report)["eu-west-1"].reason


def test_region_goes_down_after_three_failed_polls_and_up_after_two_good_ones(fleet, poller_for):
    poller = poller_for(fleet)
    assert by_region(poller.run_cycle())["eu-west-1"].state == health.UP
    fleet.set("eu-west-1", mode="http_500")
    states = [by_region(poller.run_cycle())["eu-west-1"].state for _ in range(3)]
    assert states == ["up", "up", "down"]
    fleet.reset("eu-west-1")
    states = [by_region(poller.run_cycle())["eu-west-1"].state for _ in range(2)]
    assert states == ["down", "up"]
    events = poller.store.events(region="eu-west-1", kind="state")
    assert [(e["old_state"], e["new_state"]) for e in reversed(events)] == [
        ("unknown", "up"), ("up", "down"), ("down", "up")]
    assert "HTTP 500" in events[1]["reason"]


def test_thresholds_come_from_config(fleet, poller_for):
    poller = poller_for(fleet, failure_threshold=1, success_threshold=3)
    fleet.set("eu-west-1", mode="http_500")
    assert by_region(poller.run_cycle())["eu-west-1"].state == health.DOWN
    fleet.reset("eu-west-1")
    assert [by_region(poller.run_cycle())["eu-west-1"].state for _ in range(3)] == ["down", "down", "up"]


def test_degraded_health_and_reported_error_rate(fleet, poller_for):
    fleet.set("eu-west-1", mode="degraded")
    fleet.set("ap-southeast-1", error_rate=0.3)
    regions = by_region(poller_for(fleet).run_cycle())
    assert regions["eu-west-1"].state == health.DEGRADED
    assert "health says 'degraded'" in regions["eu-west-1"].reason
    assert regions["ap-southeast-1"].state == health.DEGRADED
    assert "reports error rate 30.0%" in regions["ap-southeast-1"].reason


def test_ietf_health_format_is_understood(fleet, poller_for):
    fleet.set("eu-west-1", health_format="ietf", error_rate=0.01)
    fleet.set("ap-southeast-1", health_format="ietf", mode="failing")
    regions = by_region(poller_for(fleet).run_cycle())
    assert regions["eu-west-1"].state == health.UP
    assert "fail" in regions["ap-southeast-1"].reason


def test_misrouting_drift_and_skew_are_found(fleet, poller_for):
    fleet.set("eu-west-1", answers_as="us-east-1")
    fleet.set("ap-southeast-1", primary_region="ap-southeast-1", fleet_regions=["ap-southeast-1"])
    fleet.set("us-east-1", version="2.0.0")
    regions = by_region(poller_for(fleet).run_cycle())
    assert regions["eu-west-1"].state == health.DEGRADED
    assert regions["eu-west-1"].markers["misrouted"] == "answers as 'us-east-1'"
    assert "primary 'ap-southeast-1' differs" in regions["ap-southeast-1"].markers["drift"]
    assert "regions ap-southeast-1 differ" in regions["ap-southeast-1"].markers["drift"]
    assert regions["ap-southeast-1"].state == health.UP  # drift is shown, it is not an outage
    assert "version 2.0.0 differs from the fleet" in regions["us-east-1"].markers["skew"]
    assert "skew" not in regions["eu-west-1"].markers


def test_new_version_is_an_event_and_payload_is_kept(fleet, poller_for):
    poller = poller_for(fleet)
    poller.run_cycle()
    fleet.set("eu-west-1", version="1.1.0")
    poller.run_cycle()
    events = poller.store.events(region="eu-west-1", kind="version")
    assert [e["reason"] for e in events] == ["version 1.0.0 -> 1.1.0"]
    row = poller.store.region_rows(["eu-west-1"])[0]
    assert poller.store.region_deployment("eu-west-1")["version"] == "1.1.0" and row["version"] == "1.1.0"
    assert row["reported_region"] == "eu-west-1" and row["reported_regions"] == REGIONS


def test_path_prefixed_base_urls_get_endpoints_appended(poller_for):
    with SimulatedFleet(REGIONS, layout="prefix") as prefixed:
        assert all(url.endswith("/" + region) for region, url in prefixed.base_urls.items())
        prefixed.set("eu-west-1", mode="http_500")
        regions = by_region(poller_for(prefixed).run_cycle())
        assert regions["us-east-1"].state == health.UP
        assert "HTTP 500" in regions["eu-west-1"].reason
        assert prefixed.request_count("us-east-1") == 2


def test_error_rate_is_failed_polls_over_polls_in_window(fleet, poller_for):
    poller = poller_for(fleet)
    for mode in ["healthy", "http_500", "healthy", "healthy"]:
        fleet.set("eu-west-1", mode=mode)
        report = poller.run_cycle()
    assert by_region(report)["eu-west-1"].error_rate == pytest.approx(0.25)
    assert poller.store.error_rate("eu-west-1", time.time() - 60) == pytest.approx(0.25)


def test_region_unpolled_for_three_intervals_is_stale_then_recorded(fleet, poller_for):
    poller = poller_for(fleet)
    poller.run_cycle()
    status = {r.region: r for r in current_status(poller.settings, poller.store, [], now=time.time() + 3.5)}
    assert status["eu-west-1"].state == health.STALE
    assert "is the poller running?" in status["eu-west-1"].reason
    time.sleep(3.2)  # three 1 s intervals pass with no poller: a real gap, not a faked clock
    poller.run_cycle()
    events = poller.store.events(region="eu-west-1", kind="state")
    assert [(e["old_state"], e["new_state"]) for e in reversed(events)] == [
        ("unknown", "up"), ("up", "stale"), ("stale", "up")]


def test_restart_keeps_states_counters_and_events(fleet, make_settings):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", mode="http_500")
    store = Store(settings.database_path)
    first = Poller(settings, store)
    for _ in range(3):
        first.run_cycle()
    first.release_lease()
    first.close()
    store.close()

    store = Store(settings.database_path)
    second = Poller(settings, store)
    try:
        assert {r.region: r.state for r in current_status(settings, store, [])}["eu-west-1"] == health.DOWN
        fleet.reset("eu-west-1")
        assert by_region(second.run_cycle())["eu-west-1"].state == health.DOWN  # 1 of 2 good polls
        assert by_region(second.run_cycle())["eu-west-1"].state == health.UP
        transitions = [(e["old_state"], e["new_state"]) for e in store.events(region="eu-west-1")]
        assert transitions == [("down", "up"), ("unknown", "down")]
    finally:
        second.close()
        store.close()


def test_second_poller_on_the_same_database_does_not_poll(fleet, make_settings):
    settings = make_settings(fleet)
    store_a, store_b = Store(settings.database_path), Store(settings.database_path)
    first, second = Poller(settings, store_a), Poller(settings, store_b)
    second.holder = "other-host:4242"  # two processes differ in host:pid; these share one
    try:
        first.run_cycle()
        before = fleet.request_count("us-east-1")
        with pytest.raises(PollerBusy, match="another poller"):
            second.run_cycle()
        assert fleet.request_count("us-east-1") == before
        first.release_lease()
        second.run_cycle()  # the lease is free again: the standby takes over
        assert fleet.request_count("us-east-1") == before + 2
    finally:
        for poller, store in ((first, store_a), (second, store_b)):
            poller.close()
            store.close()


def test_locked_database_never_becomes_a_failed_probe_or_false_down(fleet, make_settings):
    settings = make_settings(fleet)
    store = Store(settings.database_path, busy_timeout_ms=200)
    poller = Poller(settings, store)
    try:
        poller.run_cycle()
        blocker = sqlite3.connect(str(settings.database_path), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        try:
            reports = [poller.run_cycle() for _ in range(3)]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert not any(r.stored for r in reports)
        assert "kept in memory" in reports[-1].note
        assert all(r.state == health.UP for report in reports for r in report.regions)
        after = poller.run_cycle()
        assert after.stored
        assert all(r.state == health.UP for r in after.regions)
        # Nothing was lost: all five cycles are stored, in order.
        samples = store.recent_samples("eu-west-1", limit=100)
        assert len(samples) == 5 * 2
        assert store.events(kind="state", region="eu-west-1")[0]["new_state"] == "up"
    finally:
        poller.close()
        store.close()


def test_a_region_written_meanwhile_keeps_its_row_and_the_cycle_drops_its_events(fleet, poller_for):
    """write_cycle is a compare-and-set per region: a row changed between the read and the write
    is kept (and that region's events of the cycle are not written); the other regions are stored."""
    poller = poller_for(fleet)
    poller.run_cycle()
    fleet.set("eu-west-1", mode="http_500")
    fleet.set("us-east-1", version="9.9.9")
    settings, store = poller.settings, poller.store
    results = poller.prober.probe_all([(r, settings.base_url(r)) for r in settings.regions])
    at = time.time()
    outcomes = health.outcomes_of(results, settings.deployment, settings.dashboard)
    previous = store.region_states(settings.regions)
    result = health.evaluate_cycle(at, outcomes, previous, store.window_counts(settings.regions, at - 300),
                                   store.stored_versions(), settings.regions, settings.dashboard,
                                   settings.stale_after_seconds, health.cycle_samples(results, outcomes))
    assert {e.region for e in result.events} == {"us-east-1"}  # the version change
    # Someone else writes us-east-1 between the read and the write.
    theirs = dataclasses.replace(previous["us-east-1"], reason="written by someone else",
                                 revision=previous["us-east-1"].revision + 1)
    assert store.compare_and_set_state(theirs, previous["us-east-1"].revision)
    events_before = len(store.events(limit=1000))

    assert store.write_cycle(result) == ["us-east-1"]
    after = store.region_states(settings.regions)
    assert after["us-east-1"] == theirs
    assert after["eu-west-1"].consecutive_failures == 1  # the others were written
    assert len(store.events(limit=1000)) == events_before  # no version event for the kept row
