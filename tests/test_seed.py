"""Synthetic history: the right rows, realistic enough, consistent with the state machine, repeatable."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from itertools import pairwise

import pytest

from dashboard import health
from dashboard.config import Settings, load_settings
from dashboard.demo import seed
from dashboard.demo.seed import SeedSummary, seed_history
from dashboard.model import DEPLOYMENT, HEALTH, ProbeResult
from dashboard.poller import Poller
from dashboard.store import Store

from .conftest import deployment_block, write_config

NOW = 1_800_000_000.0
REGIONS = ["us-east-1", "eu-west-1"]
# 0.1 day at 15 s: 8640 s / 15 = 576 intervals, so 577 polls per region, the last one at NOW.
POLLS = 577




@pytest.fixture
def seeded(make_store) -> tuple[Store, Settings, SeedSummary]:
    store, settings = make_store()
    summary = seed_history(store, settings, days=0.1, now=NOW, rng_seed=0)
    return store, settings, summary


@pytest.fixture(scope="module")
def month(tmp_path_factory) -> Iterator[tuple[Store, Settings]]:
    """Three regions over 25 days at a 5 min interval: long enough for rollouts and incidents."""
    regions = ["us-east-1", "eu-west-1", "ap-southeast-1"]
    folder = tmp_path_factory.mktemp("month")
    path = write_config(folder / "config.yaml", deployment_block(regions), database="month.db")
    settings = load_settings(str(path), environ={})
    store = Store(settings.database_path)
    seed_history(store, settings, days=25, interval_seconds=300, now=NOW, rng_seed=1)
    yield store, settings
    store.close()


def rows(store: Store, sql: str, params: tuple = ()) -> list[tuple]:
    return store.db.conn.execute(sql, params).fetchall()


def state_events(store: Store, region: str) -> list[dict]:
    return list(reversed(store.events(region=region, kind="state", limit=100_000)))


def test_writes_a_health_and_a_deployment_sample_per_region_per_poll(seeded):
    store, _, summary = seeded
    counts = dict(((region, endpoint), n) for region, endpoint, n in rows(
        store, "select region, endpoint, count(*) from samples group by region, endpoint"))
    assert counts == {(region, endpoint): POLLS for region in REGIONS for endpoint in ("health", "deployment")}
    assert summary.samples == POLLS * 2 * len(REGIONS)
    assert summary.regions == len(REGIONS)
    assert summary.events == rows(store, "select count(*) from events")[0][0]


def test_polls_run_one_interval_apart_from_days_ago_until_now(seeded):
    store, _, _ = seeded
    times = [ts for (ts,) in rows(store, "select distinct ts from samples where region = ? order by ts", (REGIONS[0],))]
    assert len(times) == POLLS
    assert times[-1] == NOW
    assert times[0] >= NOW - 0.1 * 86400
    assert {round(b - a, 6) for a, b in pairwise(times)} == {15.0}


def test_interval_defaults_to_the_configured_poll_interval(make_store):
    store, settings = make_store(poll_interval_seconds=60)
    summary = seed_history(store, settings, days=0.1, now=NOW)
    assert summary.samples == (8640 // 60 + 1) * 2 * len(REGIONS)


def test_no_days_writes_one_poll_per_region(make_store):
    store, settings = make_store()
    summary = seed_history(store, settings, days=0, now=NOW)
    assert summary.samples == 2 * len(REGIONS)
    assert {row["state"] for row in store.region_rows(REGIONS)} == {health.UP}


def test_error_rate_over_the_whole_history_is_low_but_not_zero(seeded):
    store, _, _ = seeded
    rates = [store.error_rate(region, NOW - 0.1 * 86400, NOW) for region in REGIONS]
    assert max(rates) > 0
    assert all(rate < 0.5 for rate in rates)


def test_state_events_chain_from_unknown_in_time_order(seeded):
    store, _, _ = seeded
    events = rows(store, "select id, at from events order by id")
    assert events, "a history with an incident has state events"
    assert [at for _, at in events] == sorted(at for _, at in events)
    for region in REGIONS:
        chain = state_events(store, region)
        assert chain[0]["old_state"] == health.UNKNOWN
        for before, after in pairwise(chain):
            assert after["old_state"] == before["new_state"]
            assert after["reason"]


def test_region_rows_end_where_the_poller_would_leave_them(seeded):
    store, _, _ = seeded
    for row in store.region_rows(REGIONS):
        chain = state_events(store, row["region"])
        assert row["state"] == chain[-1]["new_state"]
        assert row["since"] == chain[-1]["at"]
        assert row["last_poll_at"] == NOW
        assert row["revision"] == POLLS  # one compare-and-set per poll
        payload = store.region_deployment(row["region"])
        assert row["version"] and payload["version"] == row["version"]
        assert payload["region"] == row["region"] == row["reported_region"]
        assert row["latency_ms"] > 0


def test_down_needs_consecutive_failed_polls_and_comes_with_its_reason(month):
    store, settings = month
    downs = [e for region in settings.regions for e in state_events(store, region) if e["new_state"] == health.DOWN]
    assert downs, "25 days of three regions include incidents"
    threshold = settings.dashboard.failure_threshold
    for event in downs:
        assert f"({threshold} failed polls in a row)" in event["reason"]
        last = rows(store, "select ok from samples where region = ? and endpoint = 'health' and ts <= ?"
                           " order by ts desc limit ?", (event["region"], event["at"], threshold))
        assert [ok for (ok,) in last] == [0] * threshold


def test_every_incident_ends_up_again(month):
    store, settings = month
    for region in settings.regions:
        states = [e["new_state"] for e in state_events(store, region)]
        for i, state in enumerate(states):
            if state == health.DOWN and i + 1 < len(states):
                assert health.UP in states[i + 1:]


def test_rollouts_upgrade_every_region_minutes_apart_with_version_events(month):
    store, settings = month
    events = list(reversed(store.events(kind="version", limit=1000)))
    assert events, "25 days include at least two rollouts"
    by_version: dict[str, list[dict]] = {}
    for event in events:
        old, new = event["details"]["old_version"], event["details"]["new_version"]
        assert event["reason"] == f"version {old} -> {new}"
        by_version.setdefault(new, []).append(event)
    for upgrades in by_version.values():
        assert sorted(e["region"] for e in upgrades) == sorted(settings.regions)
        spread = max(e["at"] for e in upgrades) - min(e["at"] for e in upgrades)
        # A few minutes between regions, plus a poll interval and any time a region's deployment
        # endpoint was down, for each of the three regions.
        assert spread < 3 * 3600
    starts = sorted(min(e["at"] for e in upgrades) for upgrades in by_version.values())
    assert all(7 * 86400 < b - a < 13 * 86400 for a, b in pairwise(starts))
    newest = max(by_version, key=lambda v: int(v.split(".")[1]))
    assert {row["version"] for row in store.region_rows(settings.regions)} == {newest}


def test_same_seed_gives_the_same_history_and_another_seed_another(make_store, seeded):
    store, _, _ = seeded
    again, settings = make_store("again")
    other, _ = make_store("other")
    seed_history(again, settings, days=0.1, now=NOW, rng_seed=0)
    seed_history(other, settings, days=0.1, now=NOW, rng_seed=1)
    everything = "select * from samples order by id"
    assert rows(again, everything) == rows(store, everything)
    assert rows(again, "select * from events order by id") == rows(store, "select * from events order by id")
    assert rows(again, "select * from regions order by region") == rows(store, "select * from regions order by region")
    assert rows(other, everything) != rows(store, everything)


def test_batch_size_does_not_change_the_history(make_store, seeded):
    store, _, _ = seeded
    small, settings = make_store("small")
    seed_history(small, settings, days=0.1, now=NOW, rng_seed=0, batch_cycles=50)
    for table in ("samples", "events", "regions"):
        assert rows(small, f"select * from {table} order by 1") == rows(store, f"select * from {table} order by 1")


def test_quiet_polls_end_as_the_state_machine_says(make_store, month, monkeypatch):
    """The shortcut for quiet polls must leave exactly what running `next_state` on each would."""
    store, settings = month
    slow, _ = make_store("slow", regions=settings.regions)
    monkeypatch.setattr(seed._RegionSim, "_calm", lambda self: (False, 0.0))
    seed_history(slow, settings, days=25, interval_seconds=300, now=NOW, rng_seed=1)
    for table in ("samples", "events", "regions"):
        assert rows(slow, f"select * from {table} order by 1") == rows(store, f"select * from {table} order by 1")


def test_write_lock_is_free_between_batches(make_store):
    store, settings = make_store()
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        other = sqlite3.connect(str(settings.database_path), timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # raises "database is locked" if seeding held the lock
            other.execute("ROLLBACK")
        finally:
            other.close()

    seed_history(store, settings, days=0.1, now=NOW, batch_cycles=100, progress=progress)
    assert calls == [(min(done, POLLS), POLLS) for done in range(100, POLLS + 100, 100)]


# -- one evaluation: the seed's path and the poller's leave the same rows ------------------------

THREE = ["us-east-1", "eu-west-1", "ap-southeast-1"]


def scripted_cycle(k: int, at: float) -> list[ProbeResult]:
    """Cycle k of a scripted fleet: us-east-1 is upgraded at cycle 20; eu-west-1 fails five times
    (down), recovers, then reports a high error rate and loses its deployment endpoint now and
    then; ap-southeast-1 is slow, answers as another region for a while, and fails every 7th poll
    (a windowed error rate over 5% once the window holds enough polls). Cycles 40 to 43 are
    overloaded (see `reliable`): eu-west-1's health probe runs out of time in them (held), and
    again in cycle 45, a calm one (a failure)."""
    results = []
    for region in THREE:
        version = "1.1.0" if region == "us-east-1" and k >= 20 else "1.0.0"
        latency, health_ok, status, body, reason = 40.0, True, 200, {"status": "ok"}, ""
        answers_as, deployment_ok = region, True
        if region == "eu-west-1":
            if 10 <= k < 15:
                health_ok, status, reason, body = False, 503, "HTTP 503", None
            elif k >= 25:
                body = {"status": "ok", "error_rate": 0.2}
            if 40 <= k < 44 or k == 45:
                health_ok, status, reason, body = False, None, "no complete answer within 5 s", None
            deployment_ok = not (k >= 30 and k % 3 == 0)
        if region == "ap-southeast-1":
            latency = 2500.0 if k % 4 == 0 else 80.0
            answers_as = "us-east-1" if 5 <= k < 9 else region
            if k % 7 == 3:
                health_ok, status, reason, body = False, None, "connection refused", None
        results.append(ProbeResult(region, HEALTH, at, health_ok, status, latency, reason, body,
                                   timed_out=reason.startswith("no complete answer")))
        deployment = {"region": answers_as, "version": version, "regions": THREE, "primary_region": THREE[0]}
        results.append(ProbeResult(region, DEPLOYMENT, at, deployment_ok, 200 if deployment_ok else 502, 30.0,
                                   "" if deployment_ok else "HTTP 502", deployment if deployment_ok else None))
    return results


def reliable(k: int) -> bool:
    """Whether cycle k's latencies are believed (the poller was not starved)."""
    return not 40 <= k < 44


def test_seed_and_poller_leave_identical_rows_for_the_same_outcomes(make_store):
    """The same probe results, written once by the poller (`Poller.store_cycle`) and once by the
    seed's own path (`seed.replay`), leave the same regions, events and samples, row for row."""
    polled, settings = make_store("polled", regions=THREE)
    seeded, _ = make_store("seeded", regions=THREE)
    interval = settings.dashboard.poll_interval_seconds
    cycles = [(NOW + k * interval, scripted_cycle(k, NOW + k * interval), reliable(k)) for k in range(60)]
    poller = Poller(settings, polled)
    try:
        for at, results, believed in cycles:
            poller.store_cycle(at, results, latencies_reliable=believed)
    finally:
        poller.close()
    replayed = []
    for at, results, believed in cycles:
        outcomes = health.outcomes_of(results, settings.deployment, settings.dashboard, latencies_reliable=believed)
        replayed.append((at, outcomes, health.cycle_samples(results, outcomes)))
    seed.replay(seeded, settings, replayed)

    for table in ("regions", "events", "samples", "health_counts"):
        assert rows(seeded, f"select * from {table} order by 1") == rows(polled, f"select * from {table} order by 1")
    # The script did what it says, so the comparison covered every kind of change.
    kinds = {(e["kind"], e["new_state"]) for e in polled.events(limit=1000)}
    assert {("state", "down"), ("state", "up"), ("state", "degraded"), ("version", None)} <= kinds
    markers = {r["region"]: r["markers"] for r in polled.region_rows(THREE)}
    assert "skew" in markers["us-east-1"]  # upgraded alone: the others are the majority
    assert "deployment_unavailable" not in markers["eu-west-1"]  # its last deployment probe answered
    # The held polls left no health sample; the calm cycle's timeout did.
    timeouts = [ts for (ts,) in rows(polled, "select ts from samples where region = 'eu-west-1'"
                                             " and endpoint = 'health' and reason like '%no complete answer%'")]
    assert timeouts == [NOW + 45 * interval]
