"""Error budgets and burn rates (issue 14): the config, the figures against hand counts of a seeded
history, and the workbook's alerts starting and ending at the right polls of a scripted incident.

Real settings files and real SQLite files; polls are written through the store's own functions and
every expectation is counted by hand from the list of polls the test wrote."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest

from dashboard import slo
from dashboard.health import RegionState
from dashboard.history import retention_step, rollup_step, watermark
from dashboard.probes import HEALTH
from dashboard.store import Sample, Store

from .test_config import GOOD, load_text, problems_of

NOW = 1_800_000_000.0  # hour-aligned
MINUTE, HOUR, DAY = 60, 3600, 86_400


# -- config ----------------------------------------------------------------------------------------


def test_slo_defaults_to_three_nines_over_thirty_days(tmp_path):
    slo_config = load_text(GOOD, tmp_path).dashboard.slo
    assert (slo_config.target, slo_config.window_days, slo_config.regions) == (0.999, 30, {})
    assert slo_config.target_for("eu-west-1") == 0.999


def test_a_region_may_have_its_own_target(tmp_path):
    text = GOOD + "dashboard:\n  slo: {target: 0.9995, window_days: 28, regions: {eu-west-1: 0.995}}\n"
    slo_config = load_text(text, tmp_path).dashboard.slo
    assert (slo_config.target_for("us-east-1"), slo_config.target_for("eu-west-1")) == (0.9995, 0.995)
    assert slo_config.window_days == 28


@pytest.mark.parametrize(("block", "key", "words"), [
    ("{target: 1}", "dashboard.slo.target", "less than 1"),
    ("{target: 0.5}", "dashboard.slo.target", "greater than 0.5"),
    ("{target: '99.9%'}", "dashboard.slo.target", "number"),
    ("{regions: {eu-west-1: 1.5}}", "dashboard.slo.regions.eu-west-1", "less than 1"),
    ("{regions: {mars-1: 0.99}}", "dashboard.slo.regions", "'mars-1' is not among deployment.regions"),
    ("{window_days: 0}", "dashboard.slo.window_days", "greater than or equal to 1"),
    ("{targt: 0.99}", "dashboard.slo.targt", ""),
])
def test_a_bad_slo_is_refused_naming_the_key(tmp_path, block, key, words):
    problems = problems_of(GOOD + f"dashboard:\n  slo: {block}\n", tmp_path)
    assert any(p.startswith(key) and words in p for p in problems), problems


# -- the figures -------------------------------------------------------------------------------------

# Bad polls of us-east-1, as (seconds before NOW, how many in a row a minute apart): one burst in
# every window, and one older than the longest (35 days) that no window may count.
BURSTS = [(60, 2), (15 * MINUTE, 3), (45 * MINUTE, 5), (3 * HOUR, 10), (12 * HOUR, 20), (2 * DAY, 30),
          (5 * DAY, 40), (20 * DAY, 50), (35 * DAY, 60)]
HISTORY_DAYS = 36


def add_regions(store: Store, regions: Sequence[str]) -> None:
    with store.transaction():
        for region in regions:
            assert store.compare_and_set_state(
                RegionState(region=region, state="up", reason="healthy", since=NOW, last_poll_at=NOW, revision=1), 0)


def polls_of_history() -> list[Sample]:
    """One poll a minute for 36 days up to NOW for both regions; us-east-1's bad ones as BURSTS."""
    bad = {NOW - ago - MINUTE * i for ago, count in BURSTS for i in range(count)}
    polls = []
    for k in range(HISTORY_DAYS * DAY // MINUTE + 1):
        ts = NOW - k * MINUTE
        for region in ("us-east-1", "eu-west-1"):
            ok = not (region == "us-east-1" and ts in bad)
            polls.append(Sample(ts, region, HEALTH, ok, 200 if ok else 503, 20.0, "" if ok else "HTTP 503"))
    return polls


def hand_count(polls: list[Sample], region: str, seconds: float) -> tuple[int, int]:
    """(bad, polls) of a region in [NOW - seconds, NOW], counted from the list."""
    inside = [p for p in polls if p.region == region and NOW - seconds <= p.ts <= NOW]
    return sum(not p.ok for p in inside), len(inside)


@pytest.fixture(params=["raw samples", "rollups and the raw tail"])
def seeded(request, make_store):
    store, settings = make_store(poll_interval_seconds=60, raw_retention_hours=1,
                                 slo={"target": 0.999, "regions": {"eu-west-1": 0.995}})
    add_regions(store, settings.regions)
    polls = polls_of_history()
    with store.transaction():
        store.insert_samples(polls)
    if request.param == "rollups and the raw tail":
        while True:  # roll up everything rollable at NOW, then drop raw samples older than an hour
            before = (watermark(store, "rollup_minute"), watermark(store, "rollup_hour"))
            rollup_step(store, NOW, max_transactions=500)
            if (watermark(store, "rollup_minute"), watermark(store, "rollup_hour")) == before:
                break
        while retention_step(store, settings, NOW).samples:
            pass
        oldest = store.db.conn.execute("select min(ts) from samples").fetchone()[0]
        assert oldest >= NOW - HOUR, "raw samples past retention are still there"
    return store, settings, polls


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_availability_budget_and_burn_rates_match_hand_counts_for_every_window(seeded, region):
    store, settings, polls = seeded
    target = 0.999 if region == "us-east-1" else 0.995
    figures = slo.figures(store, settings, now=NOW)[region]
    assert (figures.target, figures.window_days) == (target, 30)
    for name, seconds in slo.AVAILABILITY_WINDOWS.items():
        bad, count = hand_count(polls, region, seconds)
        assert figures.availability[name] == pytest.approx(1 - bad / count), name
    for name, seconds in slo.BURN_WINDOWS.items():
        bad, count = hand_count(polls, region, seconds)
        assert figures.burn_rate[name] == pytest.approx(bad / count / (1 - target)), name
    bad, count = hand_count(polls, region, 30 * DAY)
    assert (figures.budget_failed, figures.budget_polls) == (bad, count)
    assert figures.error_budget_remaining == pytest.approx(1 - bad / count / (1 - target))
    if region == "us-east-1":
        # The same by hand, written out: 2 bad of 6 polls in the last 5 minutes; 160 bad of 43,201
        # polls in 30 days (every burst but the 35-day-old one).
        assert figures.burn_rate["5m"] == pytest.approx(2 / 6 / 0.001)
        assert figures.error_budget_remaining == pytest.approx(1 - 160 / 43_201 / 0.001)
        assert figures.error_budget_remaining < 0  # 3.7 budgets spent
    else:
        assert figures.availability == {"1h": 1.0, "24h": 1.0, "7d": 1.0, "30d": 1.0}
        assert figures.error_budget_remaining == 1.0


def test_a_region_never_polled_has_no_figures_rather_than_perfect_ones(make_store):
    store, settings = make_store()
    figures = slo.figures(store, settings, now=NOW)["us-east-1"]
    assert figures.availability == dict.fromkeys(slo.AVAILABILITY_WINDOWS)
    assert figures.burn_rate == dict.fromkeys(slo.BURN_WINDOWS)
    assert figures.error_budget_remaining is None


# -- alerts ------------------------------------------------------------------------------------------

class Script:
    """One region polled once a minute; each poll is written, then the alerts evaluated at its time."""

    def __init__(self, store: Store, settings, start: float) -> None:
        self.store, self.settings, self.at = store, settings, start
        self.index = 0
        self.changes: list[tuple[int, str, bool]] = []  # (poll index, severity, started)

    def history(self, polls: int) -> None:
        """Good polls before the script, written at once (not evaluated: nothing can fire)."""
        first = self.at - polls * MINUTE
        with self.store.transaction():
            self.store.insert_samples(Sample(first + k * MINUTE, "us-east-1", HEALTH, True, 200, 20.0, "")
                                      for k in range(polls))

    def poll(self, ok: bool, times: int = 1) -> None:
        for _ in range(times):
            with self.store.transaction():
                self.store.insert_samples([Sample(self.at, "us-east-1", HEALTH, ok, 200 if ok else 503, 20.0,
                                                  "" if ok else "HTTP 503")])
            for change in slo.evaluate_alerts(self.store, self.settings, now=self.at):
                assert change.at == self.at
                self.changes.append((self.index, change.severity, change.started))
            self.index += 1
            self.at += MINUTE


def test_fast_burn_pages_slow_burn_tickets_and_a_short_blip_does_neither(make_store):
    # 99 % over 30 days; one poll a minute, so 1 h holds 61 polls, 5 m 6, 6 h 361, 3 d 4,321
    # (both ends of a window count). By hand:
    # - page (1 h and 5 m over 14.4, i.e. over 14.4 % bad): 9 bad in the hour (9/61 = 14.8 %);
    #   it ends once the 5 m window holds no bad poll, the 6th good poll after the last bad one
    #   (6 h and 30 m over 6 needs 22 bad in 6 h, never reached);
    # - ticket (3 d and 6 h over 1, i.e. over 1 % bad): 44 bad in 3 days (44/4,321 = 1.02 %).
    store, settings = make_store(regions=["us-east-1"], poll_interval_seconds=60,
                                 slo={"target": 0.99})
    add_regions(store, ["us-east-1"])
    script = Script(store, settings, NOW)
    script.history(3 * DAY // MINUTE)

    script.poll(True, 10)
    script.poll(False, 3)  # a 3-minute blip: 1 h at 4.9 %, 3 d at 0.07 %: neither
    script.poll(True, 120)
    assert script.changes == []

    fast_start = script.index
    script.poll(False, 15)  # a 15-minute outage
    fast_end = script.index
    script.poll(True, 7 * 60)  # 7 h, so the outage has left the 6 h window before the slow burn
    assert script.changes == [(fast_start + 8, "page", True), (fast_end + 5, "page", False)]

    # A slow burn: one poll in 25 fails (4 %: 2.5 pages' worth of nothing, but 4 budgets a month).
    # 3 + 15 bad polls are in the 3-day window already, so the 26th bad poll of the burn is the 44th.
    slow_start = script.index
    for _ in range(30):
        script.poll(False)
        script.poll(True, 24)
    slow_end = script.index
    ticket_started_at = slow_start + 25 * 25
    assert script.changes[2:] == [(ticket_started_at, "ticket", True)]
    script.poll(True, 7 * 60)
    # It ends when the 6 h window holds 3 bad polls of 361 or fewer (under 1 %), counted from the
    # script's own list of polls.
    bad_polls = [slow_start + 25 * j for j in range(30)]
    ended = next(i for i in range(slow_end, script.index)
                 if sum(1 for b in bad_polls if i - 360 <= b <= i) <= 3)
    assert script.changes[3:] == [(ended, "ticket", False)]
    assert all(severity != "page" for _, severity, _ in script.changes[2:])

    events = store.events(region="us-east-1", kind=slo.SLO_EVENT, limit=10)[::-1]
    assert [(e["details"]["severity"], e["details"]["status"]) for e in events] == [
        ("page", "firing"), ("page", "resolved"), ("ticket", "firing"), ("ticket", "resolved")]
    assert events[0]["at"] == NOW + (fast_start + 8) * MINUTE
    assert events[0]["details"]["windows"] == ["1h", "5m"]
    assert "burn rate 1h 14.8x, 5m 100.0x (both over 14.4)" in events[0]["reason"]
    assert events[2]["details"]["windows"] == ["3d", "6h"]
    assert slo.stored_alerts(store) == {}


def test_firing_alerts_are_kept_across_evaluations_with_their_start(make_store):
    store, settings = make_store(regions=["us-east-1"], poll_interval_seconds=60, slo={"target": 0.99})
    add_regions(store, ["us-east-1"])
    script = Script(store, settings, NOW)
    script.history(6 * HOUR // MINUTE)
    script.poll(False, 12)
    firing = slo.stored_alerts(store)["us-east-1"]
    # 6 hours of history: the 3 d window holds 372 polls, over 1 % bad but too few to ticket on.
    assert set(firing) == {"page"} and firing["page"]["windows"] == ["1h", "5m"]
    started = firing["page"]["since"]
    assert started == NOW + 8 * MINUTE  # the 9th bad poll of 61 in the hour
    figures = slo.figures(store, settings, now=script.at - MINUTE)["us-east-1"]
    body = slo.as_json(figures, slo.stored_alerts(store))
    assert body["alerts"] == [{"severity": "page", "windows": ["1h", "5m"], "since": slo.iso(started)}]
    assert json.loads(json.dumps(body)) == body


def test_a_dashboard_with_little_history_does_not_page_on_one_lost_packet(make_store):
    store, settings = make_store(regions=["us-east-1"], poll_interval_seconds=60)
    add_regions(store, ["us-east-1"])
    script = Script(store, settings, NOW)
    script.history(10)
    script.poll(False)  # 1 bad of 11: a burn of 90x over every window, on 10 minutes of history
    assert script.changes == [] and slo.stored_alerts(store) == {}
    figures = slo.figures(store, settings, now=NOW)["us-east-1"]
    assert figures.burn_rate["1h"] == pytest.approx(1 / 11 / 0.001)
    assert figures.covered == {"5m": True, "30m": False, "1h": False, "6h": False, "3d": False}
    # Half an hour of history makes the 1 h window count: the same lost packet (1 of 31) pages.
    store2, settings2 = make_store("second", regions=["us-east-1"], poll_interval_seconds=60)
    add_regions(store2, ["us-east-1"])
    second = Script(store2, settings2, NOW)
    second.history(30)
    second.poll(False)
    assert second.changes == [(0, "page", True)]


def test_burn_rate_arithmetic():
    counts = slo.WindowCounts(failed=3, polls=1000)
    assert slo.availability(counts) == pytest.approx(0.997)
    assert slo.burn_rate(counts, 0.999) == pytest.approx(3.0)
    assert slo.budget_remaining(counts, 0.999) == pytest.approx(-2.0)
    assert slo.burn_rate(slo.WindowCounts(), 0.999) is None
    assert slo.firing({"1h": 15.0, "5m": 15.0, "6h": 0.5, "30m": 20.0, "3d": 2.0}).keys() == {"page"}
    assert slo.firing({"1h": 15.0, "5m": 14.4, "6h": 6.1, "30m": 6.1, "3d": 1.1})["page"].windows == ["6h", "30m"]
    assert slo.firing({"1h": 2.0, "5m": 9.0, "6h": 1.5, "30m": 0.2, "3d": 1.1})["ticket"].windows == ["3d", "6h"]
    assert slo.firing({"1h": None, "5m": 100.0, "6h": None, "30m": None, "3d": None}) == {}
    assert math.isclose(slo.ALERT_RULES[0].threshold, 14.4)


def test_fleet_reads_show_the_figures_of_the_last_cycle_and_compute_them_when_there_are_none(seeded):
    store, settings, _ = seeded
    assert store.get_state(slo.FIGURES_STATE_KEY) is None
    fresh = slo.latest_figures(store, settings, now=NOW)  # no cycle yet: computed
    assert fresh == slo.figures(store, settings, now=NOW)

    slo.evaluate_alerts(store, settings, now=NOW)  # what the poller does after each cycle
    kept = slo.latest_figures(store, settings, now=NOW + 30)
    assert kept == fresh  # as of the cycle, not recomputed 30 s later
    assert kept["us-east-1"] is slo.latest_figures(store, settings, now=NOW + 31)["us-east-1"]  # parsed once
    assert slo.latest_figures(store, settings, ["eu-west-1"], now=NOW + 30) == {"eu-west-1": fresh["eu-west-1"]}

    # Older than a stale region: the poller is not running, so they are computed at the time asked.
    later = NOW + settings.stale_after_seconds + 1
    assert slo.latest_figures(store, settings, now=later) == slo.figures(store, settings, now=later)
