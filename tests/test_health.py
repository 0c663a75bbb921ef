"""Pure evaluation: health bodies, deployment findings, the state machine, skew."""
from __future__ import annotations

import pytest

from dashboard import health
from dashboard.config import DashboardConfig, DeploymentConfig
from dashboard.probes import DEPLOYMENT, HEALTH, ProbeResult

OURS = DeploymentConfig(
    region="us-east-1", primary_region="us-east-1", regions=["us-east-1", "eu-west-1"],
    region_base_urls={"us-east-1": "http://a", "eu-west-1": "http://b"},
)
CFG = DashboardConfig(failure_threshold=3, success_threshold=2)


def ok(endpoint: str, body, latency: float = 10.0) -> ProbeResult:
    return ProbeResult("eu-west-1", endpoint, 1000.0, True, 200, latency, "", body)


def failed(reason: str = "HTTP 500") -> ProbeResult:
    return ProbeResult("eu-west-1", HEALTH, 1000.0, False, 500, 5.0, reason)


GOOD_DEPLOYMENT = ok(DEPLOYMENT, {"region": "eu-west-1", "primary_region": "us-east-1",
                                  "regions": ["eu-west-1", "us-east-1"], "version": "1.0"})


@pytest.mark.parametrize(("status", "verdict"), [
    ("ok", health.PASS), ("healthy", health.PASS), ("UP", health.PASS), ("pass", health.PASS),
    ("degraded", health.WARN), ("warn", health.WARN), ("error", health.FAIL), ("fail", health.FAIL),
])
def test_plain_health_status_words(status, verdict):
    assert health.read_health(ok(HEALTH, {"status": status})).verdict == verdict


def test_ietf_health_names_failing_checks_and_reads_error_rate():
    body = {"status": "warn", "checks": {
        "database:responseTime": [{"status": "warn", "observedValue": 900}],
        "errors:rate": [{"status": "pass", "observedValue": 0.02}],
    }}
    reading = health.read_health(ok(HEALTH, body))
    assert reading.verdict == health.WARN
    assert "database:responseTime warn" in reading.reason
    assert reading.reported_error_rate == 0.02


@pytest.mark.parametrize("body", [["ok"], {"state": "ok"}, {"status": 3}, "ok"])
def test_health_json_of_wrong_shape_fails_with_reason(body):
    reading = health.read_health(ok(HEALTH, body))
    assert reading.verdict == health.FAIL
    assert "status" in reading.reason


def test_reported_error_rate_out_of_range_is_ignored_with_a_note():
    reading = health.read_health(ok(HEALTH, {"status": "ok", "error_rate": 42}))
    assert reading.reported_error_rate is None
    assert "ignored" in reading.reason


def test_ok_region_reporting_error_rate_over_threshold_is_degraded():
    outcome = health.evaluate_poll("eu-west-1", ok(HEALTH, {"status": "ok", "error_rate": 0.2}),
                                   GOOD_DEPLOYMENT, OURS, CFG)
    assert not outcome.failed
    assert outcome.degraded_reasons == ("reports error rate 20.0% over 5.0%",)


def test_slow_answer_is_degraded():
    outcome = health.evaluate_poll("eu-west-1", ok(HEALTH, {"status": "ok"}, latency=2500),
                                   GOOD_DEPLOYMENT, OURS, CFG)
    assert outcome.degraded_reasons == ("slow: 2500 ms over 2000 ms",)


def test_misrouted_region_is_degraded_and_drift_is_found():
    dep = ok(DEPLOYMENT, {"region": "us-east-1", "primary_region": "eu-west-1", "regions": ["us-east-1"]})
    outcome = health.evaluate_poll("eu-west-1", ok(HEALTH, {"status": "ok"}), dep, OURS, CFG)
    assert outcome.deployment.misrouted
    assert "misrouted: answers as 'us-east-1'" in outcome.reason
    assert len(outcome.deployment.drift) == 2


def test_windowed_error_rate_needs_enough_polls():
    outcome = health.evaluate_poll("eu-west-1", ok(HEALTH, {"status": "ok"}), GOOD_DEPLOYMENT, OURS, CFG)
    assert health.with_window_error_rate(outcome, 1, 2, CFG) == outcome
    worse = health.with_window_error_rate(outcome, 3, 20, CFG)
    assert worse.degraded_reasons == ("3 of the last 20 polls failed (15%)",)


def run(states, outcomes):
    state = health.RegionState("eu-west-1")
    seen = []
    for outcome in outcomes:
        state, _ = health.next_state(state, outcome, CFG)
        seen.append(state.state)
    return seen


GOOD = health.PollOutcome("eu-west-1", 1.0, False, "healthy", 10.0)
BAD = health.PollOutcome("eu-west-1", 1.0, True, "health: HTTP 500", 10.0)


def test_down_only_after_failure_threshold_failures_in_a_row():
    assert run(None, [GOOD, BAD, BAD, GOOD, BAD, BAD, BAD]) == ["up", "up", "up", "up", "up", "up", "down"]


def test_up_only_after_success_threshold_good_polls():
    assert run(None, [BAD, BAD, BAD, GOOD, BAD, GOOD, GOOD]) == [
        "unknown", "unknown", "down", "down", "down", "down", "up"]


def test_transition_carries_old_new_and_reason():
    state = health.RegionState("eu-west-1", state=health.UP, consecutive_failures=2, revision=5)
    new, transition = health.next_state(state, BAD, CFG)
    assert transition == health.Transition("eu-west-1", "up", "down",
                                           "health: HTTP 500 (3 failed polls in a row)", 1.0)
    assert new.revision == 6


def test_region_unpolled_for_three_intervals_is_stale_and_resumes_unknown():
    state = health.RegionState("eu-west-1", state=health.UP, last_poll_at=100.0, revision=1)
    assert health.effective_state(state, 130.0, 45.0)[0] == health.UP
    assert health.effective_state(state, 146.0, 45.0)[0] == health.STALE
    stale, transition = health.mark_stale(state, 200.0, 45.0)
    assert (transition.old_state, transition.new_state) == ("up", "stale")
    resumed, _ = health.next_state(stale, BAD, CFG)
    assert resumed.state == health.UNKNOWN


def test_version_skew_marks_the_minority_and_every_region_on_a_tie():
    assert health.version_skew({"a": "1", "b": "1", "c": "2"}) == {
        "c": "version 2 differs from the fleet (1 on 2, 2 on 1)"}
    assert set(health.version_skew({"a": "1", "b": "2"})) == {"a", "b"}
    assert health.version_skew({"a": "1", "b": "1", "c": None}) == {}


def answer(endpoint: str, status: int, content_type: str, text: str = "", body=None) -> ProbeResult:
    """A complete answer as the prober keeps it: any status, the body as JSON or as text."""
    ok = 200 <= status < 300
    return ProbeResult("eu-west-1", endpoint, 1000.0, ok, status, 10.0, "" if ok else f"HTTP {status}", body,
                       content_type, text, answered=True)


@pytest.mark.parametrize(("result", "reason"), [
    (answer(DEPLOYMENT, 502, "text/html", "<html><title>502 Bad Gateway</title></html>"), "deployment: HTTP 502"),
    (answer(DEPLOYMENT, 503, "application/json", body={"region": "eu-west-1"}), "deployment: HTTP 503"),
    (answer(DEPLOYMENT, 200, "text/plain", "ok"), "deployment: HTTP 200 but the answer is not JSON (text/plain)"),
    (answer(DEPLOYMENT, 200, "text/html", "<!DOCTYPE html><html></html>"),
     "deployment: HTTP 200 but the answer is an HTML page (text/html)"),
    (answer(DEPLOYMENT, 200, "application/json", '{"region": "eu-'),
     "deployment: HTTP 200 but the answer is not JSON (application/json)"),
    (answer(DEPLOYMENT, 200, ""), "deployment: HTTP 200 but the answer is not JSON (no content type)"),
])
def test_deployment_answer_that_is_not_2xx_json_fails_with_the_same_reasons_as_before(result, reason):
    reading = health.read_deployment(result, "eu-west-1", OURS)
    assert (reading.ok, reading.reason) == (False, reason)
