"""Pure evaluation: health bodies, deployment findings, the state machine, skew."""
from __future__ import annotations

from dataclasses import replace

import pytest

from dashboard import health
from dashboard.config import DashboardConfig, DeploymentConfig
from dashboard.model import WindowCounts
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


@pytest.mark.parametrize("body", [["ok"], {"state": "ok"}, {"status": 3}, "ok", {}, {"status": "banana"}])
def test_a_2xx_whose_json_names_no_failing_status_is_up(body):
    # Until issue 10 these were failed probes; a 2xx that nothing contradicts is up (Gatus, Uptime Kuma).
    assert health.read_health(ok(HEALTH, body)).verdict == health.PASS


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


@pytest.mark.parametrize(("status", "content_type", "text", "verdict"), [
    (200, "text/plain", "ok", health.PASS),
    (200, "text/plain", "HEALTHY\n", health.PASS),
    (200, "", "passing", health.PASS),
    (200, "text/plain", "Degraded", health.WARN),
    (200, "text/plain", "Unhealthy", health.FAIL),
    (200, "text/plain", "error: database unreachable", health.FAIL),
    (200, "text/plain", "all systems go, probably", health.PASS),  # unknown text at 2xx: nothing contradicts it
    (200, "text/plain", "", health.PASS),
    (503, "text/plain", "Healthy", health.FAIL),  # a non-2xx is never up, whatever it says
])
def test_a_plain_text_word_decides_case_insensitively_after_the_status(status, content_type, text, verdict):
    assert health.read_health(answer(HEALTH, status, content_type, text)).verdict == verdict


@pytest.mark.parametrize("word", ["DOWN", "out_of_service", "Out of service", "OUT-OF-SERVICE", "critical"])
def test_fail_words_of_every_vocabulary_fail_a_2xx(word):
    reading = health.read_health(ok(HEALTH, {"status": word}))
    assert reading.verdict == health.FAIL
    assert reading.reason == f"health says {word!r}"


def test_a_2xx_html_page_is_a_failed_probe_whatever_its_content_type_says():
    for content_type in ("text/html", "text/plain", ""):
        reading = health.read_health(answer(HEALTH, 200, content_type, "<!doctype html><html><body>app</body></html>"))
        assert reading.verdict == health.FAIL
        assert "an HTML page, not a health answer" in reading.reason


def test_a_proxy_error_page_is_down_with_its_title():
    page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    reading = health.read_health(answer(HEALTH, 502, "text/html", page))
    assert (reading.verdict, reading.reason) == (health.FAIL, "health: HTTP 502, an HTML page ('502 Bad Gateway')")


def test_a_2xx_that_declares_json_and_does_not_parse_is_a_failed_probe():
    reading = health.read_health(answer(HEALTH, 200, "application/health+json", '{"status": "pass"'))
    assert (reading.verdict, reading.reason) == (
        health.FAIL, "health: HTTP 200 but the answer is not JSON (application/health+json)")


def test_a_2xx_without_overall_status_but_a_failing_component_is_degraded():
    reading = health.read_health(ok(HEALTH, {"database": "online", "cache": "down"}))
    assert (reading.verdict, reading.reason) == (health.WARN, "health: no overall status, but failing: cache down")


def test_a_stray_status_word_among_other_strings_is_not_a_component():
    reading = health.read_health(ok(HEALTH, {"version": "2.1", "log_level": "error"}))
    assert (reading.verdict, reading.reason) == (health.PASS, "healthy")


def test_429_is_degraded_unless_the_body_says_a_fail_word():
    warning = answer(HEALTH, 429, "application/json", body={"AggregatedStatus": "warning"})
    critical = answer(HEALTH, 429, "application/json", body={"AggregatedStatus": "critical"})
    assert health.read_health(warning).verdict == health.WARN
    assert health.read_health(critical).verdict == health.FAIL
    assert health.read_health(answer(HEALTH, 429, "text/html", "<html>slow down</html>")).verdict == health.WARN


def test_kubernetes_failed_lines_are_named():
    text = ("[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[-]informer-sync failed: not synced\n"
            "healthz check failed\n")
    reading = health.read_health(answer(HEALTH, 500, "text/plain", text))
    assert reading.reason == "health: HTTP 500; failing: etcd failed, informer-sync failed (not synced)"


def test_a_reason_names_five_failing_components_and_counts_the_rest_within_300_characters():
    body = {"status": "fail", "checks": {f"component-{i}-with-a-long-name": [{"status": "fail", "output": "x" * 200}]
                                         for i in range(40)}}
    reading = health.read_health(answer(HEALTH, 503, "application/health+json", body=body))
    assert reading.verdict == health.FAIL
    assert reading.reason.startswith("health: HTTP 503, says 'fail'; failing: component-0-with-a-long-name fail (xxx")
    assert len(reading.reason) <= 300


def test_configured_status_codes_decide_per_region():
    cfg = DashboardConfig(failure_threshold=3, success_threshold=2, health={
        "ok_status_codes": [200],
        "regions": {"eu-west-1": {"ok_status_codes": [200, 503], "degraded_status_codes": []}},
    })
    no_content = answer(HEALTH, 204, "")
    unavailable_but_says_ok = answer(HEALTH, 503, "text/plain", "ok")
    limited = answer(HEALTH, 429, "")
    assert health.evaluate_poll("us-east-1", no_content, GOOD_DEPLOYMENT, OURS, cfg).failed  # 204 is not in [200]
    eu = health.evaluate_poll("eu-west-1", unavailable_but_says_ok, GOOD_DEPLOYMENT, OURS, cfg)
    assert (eu.failed, eu.degraded_reasons) == (False, ())  # 503 is this region's "ok", and the body says ok
    assert health.evaluate_poll("eu-west-1", limited, GOOD_DEPLOYMENT, OURS, cfg).failed  # 429 not degraded here
    assert health.read_health(limited, cfg.health.rule_for("us-east-1")).verdict == health.WARN


def test_a_probe_that_got_no_complete_answer_fails_with_its_own_reason():
    too_large = ProbeResult("eu-west-1", HEALTH, 1000.0, False, 503, 5.0, "HTTP 503, answer too large (over the 1024 "
                            "byte cap)")
    assert health.read_health(too_large).reason == "health: HTTP 503, answer too large (over the 1024 byte cap)"


@pytest.mark.parametrize(("unit", "value", "rate"), [
    ("percent", 0.5, 0.005), ("%", 50, 0.5), ("Percent", 100, 1.0), (None, 0.02, 0.02), ("ratio", 0.3, 0.3),
])
def test_an_ietf_error_rate_honours_its_unit(unit, value, rate):
    check = {"status": "pass", "observedValue": value, **({"observedUnit": unit} if unit else {})}
    reading = health.read_health(ok(HEALTH, {"status": "pass", "checks": {"http:errorRate": [check]}}))
    assert reading.reported_error_rate == pytest.approx(rate)
    assert reading.reason == "healthy"


def test_half_a_percent_is_under_the_five_percent_threshold():
    body = {"status": "pass", "checks": {"http:errorRate": [{"observedValue": 0.5, "observedUnit": "percent"}]}}
    outcome = health.evaluate_poll("eu-west-1", ok(HEALTH, body), GOOD_DEPLOYMENT, OURS, CFG)
    assert (outcome.failed, outcome.degraded_reasons, outcome.reported_error_rate) == (False, (), 0.005)


@pytest.mark.parametrize(("unit", "value", "note"), [
    ("percent", 150, "reported error rate '150 percent' ignored: not a percentage between 0 and 100"),
    ("%", -1, "reported error rate '-1 %' ignored: not a percentage between 0 and 100"),
    (None, 50, "reported error rate '50' ignored: not a fraction between 0 and 1"),
    ("rpm", 0.2, "reported error rate '0.2 rpm' ignored: its unit is not a fraction or a percentage"),
    ("percent", "high", "reported error rate 'high percent' ignored: not a percentage between 0 and 100"),
])
def test_a_value_that_cannot_be_a_rate_is_ignored_with_a_note_never_read_as_100_percent(unit, value, note):
    check = {"observedValue": value, **({"observedUnit": unit} if unit else {})}
    reading = health.read_health(ok(HEALTH, {"status": "pass", "checks": {"errors:rate": [check]}}))
    assert reading.reported_error_rate is None
    assert reading.reason == f"healthy ({note})"


def test_a_slow_poll_measured_while_the_poller_was_starved_neither_makes_nor_lifts_a_slow_verdict():
    slow = ok(HEALTH, {"status": "ok"}, latency=CFG.slow_latency_ms + 500)
    believed = health.evaluate_poll("eu-west-1", slow, GOOD_DEPLOYMENT, OURS, CFG)
    held = health.evaluate_poll("eu-west-1", slow, GOOD_DEPLOYMENT, OURS, CFG, latencies_reliable=False)
    assert believed.degraded_reasons and not believed.latency_held
    assert held.degraded_reasons == () and held.latency_held

    up = health.RegionState("eu-west-1", state=health.UP, reason="healthy")
    assert health.next_state(up, held, CFG)[0].state == health.UP  # no new slow verdict
    degraded, _ = health.next_state(up, believed, CFG)
    kept, transition = health.next_state(degraded, held, CFG)
    assert (kept.state, kept.reason, transition) == (health.DEGRADED, degraded.reason, None)  # nor lifted
    refused = health.evaluate_poll("eu-west-1", failed("connection refused"), GOOD_DEPLOYMENT, OURS, CFG,
                                   latencies_reliable=False)
    assert refused.failed  # failures still count


def test_a_health_probe_out_of_time_while_the_poller_was_starved_is_held():
    timed_out = ProbeResult("eu-west-1", HEALTH, 1000.0, False, None, 5000.0, "no complete answer within 5 s",
                            timed_out=True)
    believed = health.evaluate_poll("eu-west-1", timed_out, GOOD_DEPLOYMENT, OURS, CFG)
    held = health.evaluate_poll("eu-west-1", timed_out, GOOD_DEPLOYMENT, OURS, CFG, latencies_reliable=False)
    assert believed.failed and not believed.held
    assert held.held and not held.failed and held.latency_ms is None
    assert held.reason == "held: no complete answer within 5 s while the dashboard was overloaded"

    # The state machine keeps everything but the time of the last poll...
    before = health.RegionState("eu-west-1", state=health.DOWN, reason="HTTP 500 (3 failed polls in a row)",
                                since=900.0, consecutive_failures=3, last_poll_at=990.0, revision=7)
    kept, transition = health.next_state(before, held, CFG)
    assert transition is None
    assert kept == health.RegionState("eu-west-1", state=health.DOWN, reason=before.reason, since=900.0,
                                      consecutive_failures=3, last_poll_at=1000.0, revision=8)
    # ...the error-rate window leaves the poll out, and the cycle stores no health sample for it.
    step = health.evaluate_region(before, held, WindowCounts(failed=2, polls=10), "1.0", CFG, 3600)
    assert step.window == WindowCounts(failed=2, polls=10) and step.events == ()
    samples = health.cycle_samples([timed_out, GOOD_DEPLOYMENT], {"eu-west-1": held})
    assert [s.endpoint for s in samples] == [DEPLOYMENT]


def test_a_deployment_probe_out_of_time_while_the_poller_was_starved_degrades_nobody():
    healthy = ok(HEALTH, {"status": "ok"})
    late = ProbeResult("eu-west-1", DEPLOYMENT, 1000.0, False, None, 5000.0, "no complete answer within 5 s",
                       timed_out=True)
    assert health.evaluate_poll("eu-west-1", healthy, late, OURS, CFG).degraded_reasons
    held = health.evaluate_poll("eu-west-1", healthy, late, OURS, CFG, latencies_reliable=False)
    assert held.degraded_reasons == () and not held.failed
    refused = replace(late, reason="connection refused", timed_out=False)
    assert health.evaluate_poll("eu-west-1", healthy, refused, OURS, CFG, latencies_reliable=False).degraded_reasons
