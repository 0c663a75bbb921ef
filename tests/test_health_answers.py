"""The health answers real services give, read end to end, and the evaluation's promises under any input.

The answers are in health_answers.py (with where each comes from); here they are served by a
simulated fleet, one region each, and read by one real `dashboard poll --once --json` process.
"""
from __future__ import annotations

import json
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from dashboard import health
from dashboard.config import REGION_NAME, DashboardConfig, DeploymentConfig, HealthRule
from dashboard.demo.simulator import SimulatedFleet
from dashboard.model import DEPLOYMENT, HEALTH, TEXT_LIMIT, ProbeResult

from .conftest import write_config
from .health_answers import ANSWERS
from .test_cli import run_cli

# Hypothesis keeps caches in .hypothesis/ under the working directory; keep them out of the checkout,
# in a directory removed when the test run ends.
_HYPOTHESIS_HOME = tempfile.TemporaryDirectory(prefix="hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME.name)


def test_every_answer_has_a_region_name_a_source_and_an_expected_state():
    assert len({a.id for a in ANSWERS}) == len(ANSWERS)
    for a in ANSWERS:
        assert REGION_NAME.match(a.id) and a.source, a
        assert a.state in (health.UP, health.DEGRADED, health.DOWN), a
        assert a.named or a.state == health.UP, f"{a.id}: a region that is not up must name why"


def test_each_frameworks_answer_gives_its_state_and_names_what_failed_through_a_real_poll(tmp_path):
    regions = [a.id for a in ANSWERS]
    with SimulatedFleet(regions, layout="prefix") as fleet:
        for a in ANSWERS:
            fleet.set(a.id, health_answer=a.health_answer)
        # One failed poll is down at once, so the expected state is what one poll leaves.
        path = write_config(tmp_path / "config.yaml", fleet.deployment_block(), database="dashboard.db",
                            poll_interval_seconds=60, timeout_seconds=10, failure_threshold=1)
        result = run_cli("poll", "--once", "--json", "--config", str(path))
    assert result.returncode == 1, result.stderr  # some regions are meant to be down
    got = {r["region"]: r for r in json.loads(result.stdout)["regions"]}
    wrong = [
        f"{a.id} ({a.source}): expected {a.state}" + (f" naming {a.named!r}" if a.named else "")
        + f", got {got[a.id]['state']}: {got[a.id]['reason']!r}"
        for a in ANSWERS
        if got[a.id]["state"] != a.state or (a.named and a.named not in got[a.id]["reason"])
    ]
    assert not wrong, "\n".join(wrong)


# -- the pure evaluation under arbitrary answers ---------------------------------------------------


# Keys and words the reader looks for, mixed into arbitrary JSON so the interesting paths are hit.
KEYS = ["status", "Status", "AggregatedStatus", "state", "health", "healthy", "ok", "checks", "Checks", "components",
        "entries", "details", "results", "name", "Name", "output", "description", "error", "title", "detail",
        "message", "observedValue", "observedUnit", "error_rate", "errorRate", "http:errorRate", "Service", "ID"]
WORDS = ["ok", "UP", "pass", "passing", "Healthy", "warn", "warning", "Degraded", "fail", "DOWN", "critical",
         "OUT_OF_SERVICE", "Unavailable: db", "error: x", "percent", "%", "banana", "", "[-]etcd failed: x",
         "<!doctype html>", "<html><title>t</title>"]
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=20) | st.sampled_from(WORDS))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10),
                                                                      children, max_size=6),
    max_leaves=25,
)
texts = st.text(max_size=200) | st.lists(st.sampled_from(WORDS + ["[+]ping ok", "\n"]), max_size=8).map("\n".join)
content_types = st.sampled_from(["", "text/plain", "text/html", "application/json", "application/health+json",
                                 "application/problem+json", "application/octet-stream", "application/xml"])
codes = st.integers(min_value=100, max_value=599)
rules = st.builds(
    lambda ok, degraded: HealthRule(ok, frozenset(c for c in degraded if not (c in ok if ok else 200 <= c < 300))),
    st.none() | st.frozensets(codes, min_size=1, max_size=4),
    st.frozensets(codes | st.just(429), max_size=4),
)


@st.composite
def answers(draw) -> ProbeResult:
    """A probe result as the prober makes them: any status, the body as JSON or as clipped text, or no answer."""
    status = draw(codes)
    kind = draw(st.sampled_from(["json", "text", "none"]))
    body, text = (draw(json_values), "") if kind == "json" else (None, draw(texts)[:TEXT_LIMIT])
    if kind == "json" and body is None:
        text = ""
    ok = 200 <= status < 300
    if kind == "none":  # a redirect, a body over the cap, a timeout: nothing read
        return ProbeResult("eu-west-1", HEALTH, 1000.0, False, draw(st.none() | st.just(status)), 5.0,
                           draw(st.sampled_from(["connection refused", f"HTTP {status}, answer too large"])))
    return ProbeResult("eu-west-1", HEALTH, 1000.0, ok, status, 10.0, "" if ok else f"HTTP {status}", body,
                       draw(content_types), text, answered=True)


OURS = DeploymentConfig(region="us-east-1", primary_region="us-east-1", regions=["us-east-1", "eu-west-1"],
                        region_base_urls={"us-east-1": "http://a", "eu-west-1": "http://b"})
CFG = DashboardConfig(failure_threshold=1, success_threshold=1)
GOOD_DEPLOYMENT = ProbeResult("eu-west-1", DEPLOYMENT, 1000.0, True, 200, 10.0, "",
                              {"region": "eu-west-1", "version": "1"}, "application/json", answered=True)
# No example database: a failure prints its example, and nothing is kept between runs.
PROPERTY = settings(max_examples=400, deadline=None, database=None)


@PROPERTY
@given(answers(), rules)
def test_any_answer_gives_a_verdict_with_a_short_reason_and_a_failing_status_is_never_up(result, rule):
    reading = health.read_health(result, rule)
    assert reading.verdict in (health.PASS, health.WARN, health.FAIL)
    assert reading.reason and (not result.answered or len(reading.reason) <= 300)
    assert reading.reported_error_rate is None or 0 <= reading.reported_error_rate <= 1
    if result.status_code is None or not result.answered or not rule.is_ok(result.status_code):
        assert reading.verdict != health.PASS


@PROPERTY
@given(answers(), rules)
def test_any_answer_leaves_a_region_in_one_of_the_states_and_a_failing_status_is_never_up(result, rule):
    outcome = health.evaluate_poll("eu-west-1", result, GOOD_DEPLOYMENT, OURS, CFG, rule)
    state, _ = health.next_state(health.RegionState("eu-west-1", state=health.UP), outcome, CFG)
    assert state.state in (health.UP, health.DEGRADED, health.DOWN)
    if result.status_code is None or not result.answered or not rule.is_ok(result.status_code):
        assert state.state != health.UP
