"""Routing overrides through the Router itself: safety rules, audit events, expiry, concurrency,
persistence, and a routing file that is never torn, on real SQLite files and a simulated fleet."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dashboard.routing import (
    BadRequest,
    Change,
    Conflict,
    Router,
    RoutingError,
    UnknownRegionError,
    current_table,
)
from dashboard.store import Store

from .routing_helpers import (
    ROUTING_KINDS,
    Routed,
    read_routing_file,
    routing_events,
    serving,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PINNED = "ap-southeast-1"
STRUCTURAL_RULES = {"same_region", "target_overridden", "no_serving_region", "residency_pinned"}


def compact(overrides: list[dict[str, Any]]) -> dict[str, Any]:
    return {o["region"]: {"target_region": o["target_region"], "read_only": bool(o["read_only"])} for o in overrides}


# -- every rule, each refused by name with nothing changed ----------------------------------------
#
# A scenario prepares the state (real polls, real earlier overrides) and returns the change that
# must be refused. The fleet is us-east-1 (primary), eu-west-1 and ap-southeast-1 (residency-pinned).


def _unknown_region(r: Routed) -> dict[str, Any]:
    return {"region": "mars-1"}


def _unknown_target(r: Routed) -> dict[str, Any]:
    return {"region": "eu-west-1", "target_region": "mars-1"}


def _same_region(r: Routed) -> dict[str, Any]:
    return {"region": "eu-west-1", "target_region": "eu-west-1"}


def _primary_to_its_default_target(r: Routed) -> dict[str, Any]:
    return {"region": "us-east-1"}  # the default target is the primary itself


def _target_itself_overridden(r: Routed) -> dict[str, Any]:
    r.fail_over(PINNED, "us-east-1")
    return {"region": "eu-west-1", "target_region": PINNED}


def _region_is_a_target_already(r: Routed) -> dict[str, Any]:
    r.fail_over("eu-west-1", "us-east-1")
    return {"region": "us-east-1", "target_region": PINNED}  # eu -> us -> ap would be a chain


def _last_serving_region(r: Routed) -> dict[str, Any]:
    r.fail_over("eu-west-1", "us-east-1")
    r.fail_over(PINNED, "us-east-1")
    return {"region": "us-east-1", "target_region": "eu-west-1"}  # nobody would serve itself


def _residency_pinned_writable(r: Routed) -> dict[str, Any]:
    return {"region": PINNED, "target_region": "us-east-1", "read_only": False}


def _region_healthy(r: Routed) -> dict[str, Any]:
    return {"region": "eu-west-1", "confirm_healthy": False}


def _target_down(r: Routed) -> dict[str, Any]:
    r.make_down("us-east-1")
    return {"region": "eu-west-1"}


def _target_stale(r: Routed) -> dict[str, Any]:
    r.make_stale("us-east-1")
    return {"region": "eu-west-1"}


def _no_reason(r: Routed) -> dict[str, Any]:
    return {"region": "eu-west-1", "reason": " \n\t "}


def _reason_too_long(r: Routed) -> dict[str, Any]:
    return {"region": "eu-west-1", "reason": "x" * 501}


def _expiry_zero(r: Routed) -> dict[str, Any]:
    return {"region": "eu-west-1", "expires_in_minutes": 0}


def _expiry_over_a_week(r: Routed) -> dict[str, Any]:
    return {"region": "eu-west-1", "expires_in_minutes": 7 * 24 * 60 + 1}


RULE_SCENARIOS: list[tuple[str, Callable[[Routed], dict[str, Any]], str, type, int]] = [
    ("unknown-region", _unknown_region, "unknown_region", UnknownRegionError, 404),
    ("unknown-target", _unknown_target, "unknown_target_region", UnknownRegionError, 404),
    ("same-region", _same_region, "same_region", RoutingError, 409),
    ("primary-to-itself", _primary_to_its_default_target, "same_region", RoutingError, 409),
    ("target-overridden", _target_itself_overridden, "target_overridden", RoutingError, 409),
    ("chain-into-region", _region_is_a_target_already, "target_overridden", RoutingError, 409),
    ("no-serving-region", _last_serving_region, "no_serving_region", RoutingError, 409),
    ("residency-pinned", _residency_pinned_writable, "residency_pinned", RoutingError, 409),
    ("region-healthy", _region_healthy, "region_healthy", RoutingError, 409),
    ("target-down", _target_down, "target_unhealthy", RoutingError, 409),
    ("target-stale", _target_stale, "target_unhealthy", RoutingError, 409),
    ("no-reason", _no_reason, "reason_required", BadRequest, 400),
    ("reason-too-long", _reason_too_long, "reason_too_long", BadRequest, 400),
    ("expiry-zero", _expiry_zero, "bad_expiry", BadRequest, 400),
    ("expiry-over-a-week", _expiry_over_a_week, "bad_expiry", BadRequest, 400),
]


def _change(fields: dict[str, Any], **extra: Any) -> Change:
    values = {"reason": "scenario", "confirm_healthy": True, **fields, **extra}
    return Change(**values)


@pytest.mark.parametrize(("scenario", "rule", "error_type", "status"),
                         [pytest.param(*s[1:], id=s[0]) for s in RULE_SCENARIOS])
def test_each_rule_refuses_the_change_by_name_and_changes_nothing(make_routed, scenario, rule, error_type, status):
    routed = make_routed(residency_pinned=[PINNED])
    change = _change(scenario(routed))
    routed.router.publish()
    before = routed.snapshot()
    with pytest.raises(RoutingError) as refused:
        routed.router.set_override(change, actor="tester")
    assert refused.value.rule == rule, refused.value.message
    assert isinstance(refused.value, error_type)
    assert refused.value.status == status
    assert refused.value.message
    assert routed.snapshot() == before  # no override row, no event, same version, same file bytes


@pytest.mark.parametrize("make_unhealthy", ["make_down", "make_stale"])
def test_force_skips_target_unhealthy_and_region_healthy_and_is_recorded_as_forced(make_routed, make_unhealthy):
    routed = make_routed()
    getattr(routed, make_unhealthy)("us-east-1")
    assert routed.state("eu-west-1") == "up"
    table = routed.fail_over("eu-west-1", confirm_healthy=False, force=True, actor="oncall")
    assert serving(table)["eu-west-1"] == "us-east-1"
    assert table["regions"]["eu-west-1"]["override"]["forced"] is True
    assert routed.store.overrides()[0]["forced"] is True
    [event] = routing_events(routed.store)
    assert event["kind"] == "failover" and event["actor"] == "oncall"
    assert event["details"]["forced"] is True
    assert event["details"]["skipped_rules"] == ["target_unhealthy", "region_healthy"]
    assert read_routing_file(routed.settings)["regions"]["eu-west-1"]["override"]["forced"] is True


def test_force_with_no_rule_to_skip_is_not_recorded_as_forced(make_routed):
    routed = make_routed()
    table = routed.fail_over("eu-west-1", force=True)
    assert table["regions"]["eu-west-1"]["override"]["forced"] is False
    [event] = routing_events(routed.store)
    assert event["details"]["forced"] is False and event["details"]["skipped_rules"] == []


@pytest.mark.parametrize(("scenario", "rule"), [
    pytest.param(_same_region, "same_region", id="same-region"),
    pytest.param(_target_itself_overridden, "target_overridden", id="target-overridden"),
    pytest.param(_region_is_a_target_already, "target_overridden", id="chain-into-region"),
    pytest.param(_last_serving_region, "no_serving_region", id="no-serving-region"),
    pytest.param(_residency_pinned_writable, "residency_pinned", id="residency-pinned"),
])
def test_force_never_skips_a_structural_rule(make_routed, scenario, rule):
    routed = make_routed(residency_pinned=[PINNED])
    change = _change(scenario(routed), force=True)
    routed.router.publish()
    before = routed.snapshot()
    with pytest.raises(RoutingError) as refused:
        routed.router.set_override(change, actor="tester")
    assert refused.value.rule == rule, refused.value.message
    assert routed.snapshot() == before


def test_a_structural_rule_is_named_before_a_health_rule_force_could_skip(make_routed):
    routed = make_routed(residency_pinned=[PINNED])
    routed.make_down("us-east-1")
    with pytest.raises(RoutingError) as refused:
        routed.router.set_override(_change({"region": PINNED, "read_only": False}, force=True), actor="t")
    assert refused.value.rule == "residency_pinned"
    assert routed.store.overrides() == []


def test_a_target_never_polled_is_refused_as_unhealthy_unless_forced(make_routed):
    routed = make_routed(poll=False)
    assert routed.state("us-east-1") == "unknown"
    with pytest.raises(RoutingError) as refused:
        routed.fail_over("eu-west-1")
    assert refused.value.rule == "target_unhealthy"
    assert routed.store.overrides() == []
    table = routed.fail_over("eu-west-1", force=True)
    assert table["regions"]["eu-west-1"]["override"]["forced"] is True


def test_target_unhealthy_refusal_points_at_the_break_glass(make_routed):
    routed = make_routed()
    routed.make_down("us-east-1")
    with pytest.raises(RoutingError, match="force") as refused:
        routed.fail_over("eu-west-1")
    assert refused.value.rule == "target_unhealthy"


def test_confirm_healthy_allows_failing_over_a_healthy_region(make_routed):
    routed = make_routed()
    table = routed.fail_over("eu-west-1", confirm_healthy=True)
    assert serving(table) == {"us-east-1": "us-east-1", "eu-west-1": "us-east-1", PINNED: PINNED}
    assert table["regions"]["eu-west-1"]["read_only"] is True  # read-only is the default
    assert table["regions"]["eu-west-1"]["override"]["forced"] is False


def test_a_down_region_fails_over_without_confirmation(make_routed):
    routed = make_routed()
    routed.make_down("eu-west-1")
    table = routed.fail_over("eu-west-1", confirm_healthy=False)
    assert serving(table)["eu-west-1"] == "us-east-1"


def test_a_residency_pinned_region_fails_over_read_only(make_routed):
    routed = make_routed(residency_pinned=[PINNED])
    table = routed.fail_over(PINNED, read_only=True)
    entry = table["regions"][PINNED]
    assert entry["serving_region"] == "us-east-1" and entry["read_only"] is True
    assert entry["base_url"] == routed.settings.base_url("us-east-1")


def test_a_region_that_is_not_pinned_may_fail_over_writable(make_routed):
    routed = make_routed(residency_pinned=[PINNED])
    table = routed.fail_over("eu-west-1", read_only=False)
    assert table["regions"]["eu-west-1"]["read_only"] is False


def test_failing_over_again_replaces_the_override(make_routed):
    routed = make_routed()
    routed.fail_over("eu-west-1", "us-east-1")
    table = routed.fail_over("eu-west-1", PINNED, reason="us-east-1 is busy")
    assert serving(table)["eu-west-1"] == PINNED
    assert len(routed.store.overrides()) == 1
    assert table["version"] == 2


# -- failback --------------------------------------------------------------------------------------


def test_failback_needs_an_existing_override(make_routed):
    routed = make_routed()
    routed.router.publish()
    before = routed.snapshot()
    with pytest.raises(RoutingError) as refused:
        routed.router.clear_override("eu-west-1", reason="back", actor="tester")
    assert refused.value.rule == "no_override" and refused.value.status == 409
    assert routed.snapshot() == before


def test_failback_needs_a_reason(make_routed):
    routed = make_routed()
    routed.fail_over("eu-west-1")
    before = routed.snapshot()
    for reason in ("", "   ", None):
        with pytest.raises(BadRequest) as refused:
            routed.router.clear_override("eu-west-1", reason=reason, actor="tester")
        assert refused.value.rule == "reason_required"
    assert routed.snapshot() == before


def test_failback_of_an_unknown_region_is_refused(make_routed):
    routed = make_routed()
    with pytest.raises(UnknownRegionError) as refused:
        routed.router.clear_override("mars-1", reason="back", actor="tester")
    assert refused.value.rule == "unknown_region" and refused.value.status == 404


def test_failback_sends_traffic_home_and_is_an_audited_event(make_routed):
    routed = make_routed()
    routed.fail_over("eu-west-1", read_only=True)
    table = routed.router.clear_override("eu-west-1", reason="eu-west-1 recovered", actor="bob")
    assert table["regions"]["eu-west-1"] == {
        "serving_region": "eu-west-1", "base_url": routed.settings.base_url("eu-west-1"),
        "read_only": False, "override": None}
    event = routing_events(routed.store)[0]
    assert (event["kind"], event["region"], event["actor"], event["reason"]) == (
        "failback", "eu-west-1", "bob", "eu-west-1 recovered")
    assert event["details"]["version"] == 2 == table["version"]
    assert routed.store.overrides() == []
    assert read_routing_file(routed.settings)["regions"]["eu-west-1"]["override"] is None


# -- audit -----------------------------------------------------------------------------------------


def test_every_change_is_an_event_with_actor_reason_version_and_routing_before_and_after(make_routed):
    routed = make_routed()
    routed.fail_over("eu-west-1", actor="bob", reason="  disk   full\n in eu-west-1 ")
    routed.fail_over(PINNED, actor="carol", reason="network partition", read_only=False)
    routed.router.clear_override("eu-west-1", reason="disk replaced", actor="bob")
    failback, second, first = routing_events(routed.store)

    assert (first["kind"], first["region"], first["actor"]) == ("failover", "eu-west-1", "bob")
    assert first["reason"] == "disk full in eu-west-1"  # whitespace collapsed, for the audit trail
    assert first["details"]["version"] == 1
    assert first["details"]["target_region"] == "us-east-1" and first["details"]["read_only"] is True
    assert first["details"]["before"] == {}
    assert first["details"]["after"] == {"eu-west-1": {"target_region": "us-east-1", "read_only": True}}

    assert (second["kind"], second["region"], second["actor"]) == ("failover", PINNED, "carol")
    assert second["details"]["version"] == 2
    assert second["details"]["before"] == first["details"]["after"]
    assert second["details"]["after"] == {"eu-west-1": {"target_region": "us-east-1", "read_only": True},
                                          PINNED: {"target_region": "us-east-1", "read_only": False}}

    assert (failback["kind"], failback["region"], failback["actor"]) == ("failback", "eu-west-1", "bob")
    assert failback["details"]["version"] == 3 == routed.store.routing_version()
    assert failback["details"]["before"] == second["details"]["after"]
    assert failback["details"]["after"] == {PINNED: {"target_region": "us-east-1", "read_only": False}}


def test_the_routing_file_is_the_table_the_change_returned(make_routed):
    routed = make_routed()
    table = routed.fail_over("eu-west-1", expires_in_minutes=30)
    assert read_routing_file(routed.settings) == table
    assert table["version"] == 1 and table["primary_region"] == "us-east-1"
    override = table["regions"]["eu-west-1"]["override"]
    assert override["actor"] == "tester" and override["reason"] == "test failover"
    assert override["since"] and override["until"]
    assert set(table["regions"]) == set(routed.settings.regions)


# -- expiry ----------------------------------------------------------------------------------------


def test_an_override_with_an_expiry_lapses_with_a_lapse_event_and_a_republished_file(make_routed):
    routed = make_routed()
    routed.fail_over("eu-west-1", expires_in_minutes=60)
    routed.fail_over(PINNED)  # no expiry: stays
    assert routed.router.lapse_expired(now=time.time() + 59 * 60) == []
    assert len(routed.store.overrides()) == 2 and routed.store.routing_version() == 2

    assert routed.router.lapse_expired(now=time.time() + 61 * 60) == ["eu-west-1"]
    assert [o["region"] for o in routed.store.overrides()] == [PINNED]
    lapse = routing_events(routed.store)[0]
    assert (lapse["kind"], lapse["region"], lapse["actor"]) == ("lapse", "eu-west-1", "expiry")
    assert lapse["details"]["version"] == 3 == routed.store.routing_version()
    assert lapse["reason"] and set(lapse["details"]["before"]) == {"eu-west-1", PINNED}
    assert lapse["details"]["after"] == {PINNED: {"target_region": "us-east-1", "read_only": True}}
    published = read_routing_file(routed.settings)
    assert published["version"] == 3
    assert serving(published) == {"us-east-1": "us-east-1", "eu-west-1": "eu-west-1", PINNED: "us-east-1"}

    assert routed.router.lapse_expired(now=time.time() + 120 * 60) == []  # only once
    assert routed.store.routing_version() == 3


def test_an_expiry_is_shown_as_until_in_the_table(make_routed):
    routed = make_routed()
    now = time.time()
    table = routed.router.set_override(_change({"region": "eu-west-1", "expires_in_minutes": 30}),
                                       actor="t", now=now)
    override = table["regions"]["eu-west-1"]["override"]
    assert override["until"] is not None and override["until"] > override["since"]
    assert routed.store.overrides()[0]["until"] == pytest.approx(now + 30 * 60)


# -- conflicts -------------------------------------------------------------------------------------


def test_a_change_made_against_an_older_version_is_a_conflict(make_routed):
    routed = make_routed()
    seen = routed.router.publish()["version"]
    routed.fail_over(PINNED)  # somebody else's change
    before = routed.snapshot()
    with pytest.raises(Conflict) as refused:
        routed.router.set_override(_change({"region": "eu-west-1"}), actor="t", expected_version=seen)
    assert refused.value.rule == "conflict" and refused.value.status == 409
    with pytest.raises(Conflict):
        routed.router.clear_override(PINNED, reason="back", actor="t", expected_version=seen)
    assert routed.snapshot() == before
    table = routed.router.set_override(_change({"region": "eu-west-1"}), actor="t", expected_version=seen + 1)
    assert table["version"] == seen + 2


def test_two_concurrent_overrides_that_cannot_both_hold_leave_exactly_one(two_region_fleet, make_routed):
    routed = make_routed(two_region_fleet)
    other_store = Store(routed.settings.database_path)
    routers = [routed.router, Router(routed.settings, other_store)]
    changes = [_change({"region": "us-east-1", "target_region": "eu-west-1"}),
               _change({"region": "eu-west-1", "target_region": "us-east-1"})]
    try:
        for round_ in range(8):
            events_before = len(routing_events(routed.store))
            barrier = threading.Barrier(2)
            results: list[Any] = [None, None]

            def attempt(i: int, barrier: threading.Barrier = barrier, results: list[Any] = results) -> None:
                barrier.wait()
                try:
                    results[i] = routers[i].set_override(changes[i], actor=f"operator-{i}")
                except RoutingError as refused:
                    results[i] = refused

            threads = [threading.Thread(target=attempt, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            wins = [r for r in results if isinstance(r, dict)]
            refusals = [r for r in results if isinstance(r, RoutingError)]
            assert len(wins) == 1 and len(refusals) == 1, results
            assert refusals[0].rule in STRUCTURAL_RULES, refusals[0].message
            [override] = routed.store.overrides()
            new_events = routing_events(routed.store)[: len(routing_events(routed.store)) - events_before]
            assert len(new_events) == 1 and new_events[0]["region"] == override["region"]
            published = read_routing_file(routed.settings)
            assert published["version"] == routed.store.routing_version()
            assert serving(published) == serving(current_table(routed.settings, routed.store))
            routed.router.clear_override(override["region"], reason=f"round {round_} over", actor="t")
    finally:
        other_store.close()


# -- persistence -----------------------------------------------------------------------------------


def test_overrides_persist_across_a_restart_and_the_file_is_written_again_at_start(make_routed):
    from dashboard.scheduler import PollingService

    routed = make_routed()
    routed.fail_over("eu-west-1", actor="bob", reason="before the restart")
    routed.close()
    settings = routed.settings
    settings.routing_file_path.unlink()

    store = Store(settings.database_path)
    try:
        router = Router(settings, store)
        [override] = store.overrides()
        assert (override["region"], override["target_region"], override["actor"]) == ("eu-west-1", "us-east-1", "bob")
        assert store.routing_version() == 1

        from dashboard.poller import Poller

        poller = Poller(settings, store)
        service = PollingService(poller, router=router)
        try:
            service.start()
            published = read_routing_file(settings)
        finally:
            service.stop()
            poller.close()
        assert published["version"] == 1
        assert published["regions"]["eu-west-1"]["override"]["reason"] == "before the restart"

        from dashboard.web import create_app

        app = create_app(settings, store=store)
        response = app.test_client().get("/api/v1/routing")
        assert response.status_code == 200
        assert serving(response.get_json())["eu-west-1"] == "us-east-1"
        assert response.get_json()["version"] == 1
    finally:
        store.close()


# -- atomicity of the routing file -----------------------------------------------------------------


def test_a_reader_polling_the_routing_file_never_sees_a_torn_or_older_table(make_routed):
    routed = make_routed()
    path = routed.settings.routing_file_path
    routed.router.publish()
    stop = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def read() -> None:
        last = -1
        while not stop.is_set():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                problems.append("the file was missing")
                continue
            try:
                version = json.loads(data)["version"]
            except ValueError:
                problems.append(f"invalid JSON: {data[:80]!r}...{data[-80:]!r}")
                continue
            if version < last:
                problems.append(f"version went back from {last} to {version}")
            last = version
            seen.append(version)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(100):
            routed.fail_over("eu-west-1", reason=f"change {2 * i + 1}")
            routed.router.clear_override("eu-west-1", reason=f"change {2 * i + 2}", actor="tester")
    finally:
        stop.set()
        reader.join(timeout=30)
    assert problems == []
    assert len(set(seen)) >= 10, "the reader hardly read while the changes happened"
    assert read_routing_file(routed.settings)["version"] == 200 == routed.store.routing_version()


# A process that changes routing in a loop until it is killed: failover, then failback or lapse.
CHURN = """
import sys, time
from dashboard.config import load_settings
from dashboard.routing import Change, Router
from dashboard.store import Store

settings = load_settings(sys.argv[1], environ={})
store = Store(settings.database_path)
router = Router(settings, store)
i = 0
while True:
    if not store.overrides():
        router.set_override(Change("eu-west-1", "us-east-1", reason=f"churn {i}", confirm_healthy=True,
                                   expires_in_minutes=1), actor="churn")
    elif i % 4 == 1:
        router.lapse_expired(now=time.time() + 120)
    else:
        router.clear_override("eu-west-1", reason=f"churn {i}", actor="churn")
    i += 1
    if i == 10:
        print("churning", flush=True)
"""


def test_a_process_killed_during_changes_leaves_a_valid_file_and_a_consistent_database(make_routed):
    routed = make_routed()
    settings = routed.settings
    routed.close()
    env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD_CONFIG", "REVERSEAI_DEPLOYMENT_REGIONS")}
    rng = random.Random(4)
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHURN, str(settings.source)], cwd=REPO_ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "churning", child.stderr.read()
            time.sleep(rng.uniform(0.05, 0.4))
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            _, stderr = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, stderr

        published = json.loads(settings.routing_file_path.read_text(encoding="utf-8"))  # parses
        store = Store(settings.database_path)
        try:
            assert store.db.execute("pragma integrity_check").fetchone()[0] == "ok"
            version = store.routing_version()
            events = routing_events(store)
            assert version == len(events) > 0
            assert {e["kind"] for e in events} == set(ROUTING_KINDS)
            assert compact(store.overrides()) == events[0]["details"]["after"]
            assert events[0]["details"]["version"] == version
            # The file may lag the database by the one change whose publishing was cut short.
            assert version - 1 <= published["version"] <= version
            table = Router(settings, store).publish()
            republished = json.loads(settings.routing_file_path.read_text(encoding="utf-8"))
            assert republished == table and republished["version"] == version
            assert {r: e["target_region"] for r, e in events[0]["details"]["after"].items()} == {
                r: s for r, s in serving(republished).items() if r != s}
        finally:
            store.close()


def test_publishing_never_replaces_a_newer_file_with_an_older_table(make_routed):
    from dashboard.routing import write_routing_file

    routed = make_routed()
    newer = routed.fail_over("eu-west-1")
    older = dict(newer, version=0)
    assert write_routing_file(routed.settings.routing_file_path, older) is False
    assert read_routing_file(routed.settings) == newer


def test_a_routing_change_is_committed_synced_to_disk_and_other_writes_are_not(make_routed):
    # The routing file is fsynced; the change must be too, or an OS crash could keep a version in the
    # file that the database lost, and the next change would reuse its number (routers refuse it).
    routed = make_routed()
    conn = routed.store.conn  # this thread's connection: the one the change below commits on
    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    try:
        routed.fail_over("eu-west-1")
        routed.cycle()  # an ordinary write: the poll cycle's samples and states
    finally:
        conn.set_trace_callback(None)
    statements = [s.strip().upper() for s in sent]
    full = statements.index("PRAGMA SYNCHRONOUS=FULL")
    commit = statements.index("COMMIT", full)
    assert "UPDATE ROUTING_STATE" in " ".join(statements[full:commit]), "the change's own commit runs under FULL"
    assert statements[commit + 1] == "PRAGMA SYNCHRONOUS=NORMAL"
    assert any("INTO SAMPLES" in s for s in statements[commit:]), "the cycle wrote on this connection too"
    assert statements.count("PRAGMA SYNCHRONOUS=FULL") == 1, "only the routing change pays for the sync"
    assert conn.execute("pragma synchronous").fetchone()[0] == 1  # NORMAL again for everything else
