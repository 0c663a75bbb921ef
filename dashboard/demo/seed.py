"""Synthetic history: weeks of polls of a whole fleet, written through the real store functions.

For benchmarks and demos that need a database the size months of polling leave behind. Every
region gets one poll per interval (a health and a deployment sample, as the poller writes them),
a latency with a daily wave, incidents (the error rate climbs, a run of failed polls, recovery),
fleet-wide version rollouts, the state and version events the poller would write, and a `regions`
row that ends where the poller would have left it. States come from the real state machine
(`health.next_state`), so what a page shows for seeded history is what it would show for polled
history.

Deterministic for a given `rng_seed` and `now`, and independent of `batch_cycles`: each region
draws from its own generator, seeded from `random.Random(rng_seed)`.

Speed: about half the time goes into building `Sample`s and half into SQLite's inserts. Nearly
every poll is the quiet case (an up region answers well), which takes a short path that builds
the two samples and nothing else; the state machine runs for every other poll. Building batches in
a second thread was tried and is slower: sqlite3 gives the GIL back for every row it steps, so the
two threads convoy instead of overlapping.
"""
from __future__ import annotations

import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import health
from ..config import Settings
from ..model import (
    DEPLOYMENT,
    HEALTH,
    UP,
    CycleResult,
    DeploymentReading,
    NewEvent,
    PollOutcome,
    RegionState,
    RegionUpdate,
    Sample,
    WindowCounts,
)
from ..store import StateConflict, Store

DAY_SECONDS = 86400.0
# "A few incidents per region per month": each region draws its own rate from this range.
INCIDENTS_PER_MONTH = (1.5, 4.0)
# A fleet-wide rollout every ~10 days; regions upgraded one after another, a few minutes apart.
ROLLOUT_EVERY_DAYS = (8.0, 12.0)
UPGRADE_GAP_MINUTES = (1.0, 5.0)
# A lone failed poll now and then, about one a day per region: never enough to turn a region down
# (at a 15 s interval it is 1 of the 21 polls of a 5 min window, under the 5% that means degraded).
GLITCHES_PER_DAY = 1.0
_TABLE_BITS = 12
_TABLE_SIZE = 1 << _TABLE_BITS


@dataclass(frozen=True)
class SeedSummary:
    """What `seed_history` wrote, and how long it took."""

    regions: int
    samples: int
    events: int
    seconds: float


@dataclass(frozen=True)
class _Cause:
    """Why a probe fails: the probe's reason, its HTTP status, and how its latency looks."""

    reason: str
    status: int | None
    # "http": normal latency; "timeout": the whole deadline; "refused": about 1 ms;
    # "says": the region answers 200 and says it is failing.
    kind: str


_INCIDENT_CAUSES = (
    (_Cause("HTTP 500", 500, "http"), 0.35),
    (_Cause("HTTP 503", 503, "http"), 0.2),
    (_Cause("timeout", None, "timeout"), 0.15),
    (_Cause("connection refused", None, "refused"), 0.1),
    (_Cause("health says 'error'", 200, "says"), 0.2),
)
_SPORADIC_CAUSES = (
    (_Cause("timeout", None, "timeout"), 0.5),
    (_Cause("HTTP 502", 502, "http"), 0.3),
    (_Cause("connection reset while reading the answer", None, "http"), 0.2),
)


@dataclass(frozen=True)
class _Incident:
    start: float
    ramp_end: float  # error rate climbs from start to here
    down_end: float  # every health poll fails from ramp_end to here
    end: float  # recovery: the error rate falls back until here
    peak_rate: float
    cause: _Cause


@dataclass(frozen=True)
class _Batch:
    cycles: int
    at: float  # the batch's last poll
    samples: list[Sample]
    events: list[NewEvent]  # in the order the poller would write them


def _pick(rng: random.Random, weighted: tuple[tuple[_Cause, float], ...]) -> _Cause:
    causes, weights = zip(*weighted, strict=True)
    return rng.choices(causes, weights)[0]


class _RegionSim:
    """One region's synthetic behaviour and the poller's view of it, advanced batch by batch."""

    def __init__(self, fold: _RegionFold, settings: Settings, rng: random.Random, start: float, stop: float,
                 interval: float, upgrades: list[tuple[float, str]], initial_version: str) -> None:
        region = fold.region
        cfg = settings.dashboard
        self.region = region
        self.cfg = cfg
        self.stale_after = settings.stale_after_seconds
        self.timeout_ms = cfg.timeout_seconds * 1000
        self.timeout_reason = f"no complete answer within {cfg.timeout_seconds:g} s"
        self.rng = rng
        # Latency: log-normal around a base, with a daily wave (peak hours differ per region).
        self.base_ms = rng.uniform(20.0, 150.0)
        self.dep_base_ms = self.base_ms * rng.uniform(0.6, 0.9)
        sigma = rng.uniform(0.15, 0.3)
        # Log-normal factors drawn once and picked at random per poll: a table lookup is ten times
        # cheaper than random.gauss, and a few thousand draws look the same on a chart.
        self.latency_factors = [math.exp(sigma * rng.gauss(0.0, 1.0)) for _ in range(_TABLE_SIZE)]
        self.rate_factors = [math.exp(0.5 * rng.gauss(0.0, 1.0)) for _ in range(_TABLE_SIZE)]
        self.wave = rng.uniform(0.15, 0.35)
        self.phase = rng.uniform(0.0, 2 * math.pi)
        # The error rate the region reports about itself on a quiet day (0.05% to 0.5%).
        self.base_error_rate = rng.uniform(0.0005, 0.005)
        self.glitch_chance = GLITCHES_PER_DAY * interval / DAY_SECONDS
        # Every incident's outage lasts long enough to turn the region down, whatever the interval.
        self.min_down = (cfg.failure_threshold + 1) * interval
        self.incidents = self._draw_incidents(start, stop)
        self.upgrades = upgrades
        self.version = initial_version
        self.fold = fold  # the poller's view: state, counters, stored version, the error-rate window
        self._readings: dict[str, DeploymentReading] = {}

    def _draw_incidents(self, start: float, stop: float) -> list[_Incident]:
        rng = self.rng
        rate = rng.uniform(*INCIDENTS_PER_MONTH) / (30 * DAY_SECONDS)
        incidents: list[_Incident] = []
        t = start + rng.expovariate(rate)
        while t < stop:
            incidents.append(self._incident_at(t))
            t = incidents[-1].end + rng.expovariate(rate)
        return incidents

    def _incident_at(self, t: float) -> _Incident:
        rng = self.rng
        ramp = rng.uniform(4, 20) * 60
        # Mostly a quarter of an hour or so, now and then over an hour.
        down = max(min(3 * 60 + rng.expovariate(1 / (12 * 60)), 120 * 60), self.min_down)
        recover = rng.uniform(5, 20) * 60
        return _Incident(t, t + ramp, t + ramp + down, t + ramp + down + recover,
                         rng.uniform(0.1, 0.5), _pick(rng, _INCIDENT_CAUSES))

    def ensure_incident(self, start: float, stop: float) -> None:
        """Give this region one incident inside [start, stop], so a short history still shows one.

        Its phases are scaled to the span (each at most as long as a drawn incident's can be), so
        the incident fits and the region is not down for most of a short history.
        """
        rng, span = self.rng, stop - start
        t = start + rng.uniform(0.1, 0.3) * span
        ramp = min(rng.uniform(0.05, 0.1) * span, 20 * 60)
        down = max(min(rng.uniform(0.05, 0.15) * span, 120 * 60), self.min_down)
        recover = min(rng.uniform(0.05, 0.1) * span, 20 * 60)
        self.incidents = [_Incident(t, t + ramp, t + ramp + down, t + ramp + down + recover,
                                    rng.uniform(0.1, 0.5), _pick(rng, _INCIDENT_CAUSES))]

    def run(self, times: list[float], index: int) -> tuple[list[Sample], list[Sample], list[tuple]]:
        """Poll this region at each of `times`: its health samples, deployment samples and events."""
        region, rng, cfg = self.region, self.rng, self.cfg
        pick, rnd, sin, bits = rng.getrandbits, rng.random, math.sin, _TABLE_BITS
        latency_factors, rate_factors = self.latency_factors, self.rate_factors
        base, dep_base, amp, phase = self.base_ms, self.dep_base_ms, self.wave, self.phase
        omega = 2 * math.pi / DAY_SECONDS
        base_err, sporadic = self.base_error_rate, self.glitch_chance
        fold = self.fold
        threshold, slow = cfg.degraded_error_rate, cfg.slow_latency_ms
        min_polls = health.MIN_POLLS_FOR_ERROR_RATE
        window, failed_window, observe = fold.window, fold.failed_window, fold.observe
        hs: list[Sample] = []
        ds: list[Sample] = []
        events: list[tuple] = []
        quiet, quiet_at, quiet_latency, quiet_rate = 0, 0.0, 0.0, 0.0
        calm, calm_until = self._calm()
        for t in times:
            wave = 1.0 + amp * sin(omega * t + phase)
            latency = base * wave * latency_factors[pick(bits)]
            dep_latency = dep_base * wave * latency_factors[pick(bits)]
            rate = base_err * rate_factors[pick(bits)]
            glitch = rnd() < sporadic
            observe(t)
            if (calm and t < calm_until and not glitch and rate <= threshold and latency <= slow
                    and (not failed_window or len(window) < min_polls
                         or len(failed_window) / len(window) <= threshold)):
                # The quiet case, nearly every poll: an up region stays up and nothing changes.
                hs.append(Sample(t, region, HEALTH, True, 200, latency, "", rate))
                ds.append(Sample(t, region, DEPLOYMENT, True, 200, dep_latency, "", None))
                quiet += 1
                quiet_at, quiet_latency, quiet_rate = t, latency, rate
                continue
            if quiet:
                fold.quiet(quiet, quiet_at, quiet_latency, quiet_rate, self._deployment(True, ""))
                quiet = 0
            self._step(t, index, hs, ds, events, latency, dep_latency, rate, glitch)
            calm, calm_until = self._calm()
        if quiet:
            fold.quiet(quiet, quiet_at, quiet_latency, quiet_rate, self._deployment(True, ""))
        return hs, ds, events

    def _calm(self) -> tuple[bool, float]:
        """Whether a good poll would change nothing, and until when (the next upgrade or incident)."""
        fold = self.fold
        calm = fold.state.state == UP and not fold.first and fold.stored_version == self.version
        until = min(self.upgrades[0][0] if self.upgrades else math.inf,
                    self.incidents[0].start if self.incidents else math.inf)
        return calm, until

    def _step(self, t: float, index: int, hs: list, ds: list, events: list, latency: float,
              dep_latency: float, rate: float, glitch: bool) -> None:
        """A poll that is not the quiet case: an upgrade, an incident, a glitch, or a region not up."""
        while self.upgrades and self.upgrades[0][0] <= t:
            self.version = self.upgrades.pop(0)[1]
        while self.incidents and self.incidents[0].end <= t:
            self.incidents.pop(0)
        if self.incidents and self.incidents[0].start <= t:
            self._incident_poll(t, index, hs, ds, events, latency, dep_latency, self.incidents[0])
        elif glitch:
            self._poll(t, index, hs, ds, events, latency, dep_latency, None, _pick(self.rng, _SPORADIC_CAUSES),
                       False, None)
        else:
            self._poll(t, index, hs, ds, events, latency, dep_latency, rate, None, False, None)

    def _incident_poll(self, t: float, index: int, hs: list, ds: list, events: list, latency: float,
                       dep_latency: float, inc: _Incident) -> None:
        rng = self.rng
        if t < inc.ramp_end:
            progress = (t - inc.start) / (inc.ramp_end - inc.start)
            rate = 0.01 + (inc.peak_rate - 0.01) * progress
            fail_chance = rate * 0.6
            slowdown = 1 + 2 * progress
        elif t < inc.down_end:
            rate, fail_chance, slowdown = inc.peak_rate, 1.0, 3.0
        else:
            progress = (t - inc.down_end) / (inc.end - inc.down_end)
            rate = inc.peak_rate * 0.5 * (1 - progress) + self.base_error_rate
            fail_chance = rate * 0.2
            slowdown = 1 + (1 - progress)
        latency *= slowdown
        dep_latency *= slowdown
        failed = rng.random() < fail_chance
        dep_cause = None
        if failed and inc.cause.kind != "says" and rng.random() < 0.8:
            dep_cause = inc.cause  # a region that cannot answer its health endpoint mostly cannot answer either
        elif not failed and rng.random() < fail_chance / 4:
            dep_cause = inc.cause if inc.cause.kind != "says" else _Cause("HTTP 500", 500, "http")
        says_degraded = not failed and t < inc.ramp_end and rate > 0.6 * inc.peak_rate and rng.random() < 0.5
        self._poll(t, index, hs, ds, events, latency, dep_latency, round(rate, 4),
                   inc.cause if failed else None, says_degraded, dep_cause)

    def _poll(self, t: float, index: int, hs: list, ds: list, events: list, latency: float, dep_latency: float,
              rate: float | None, cause: _Cause | None, says_degraded: bool, dep_cause: _Cause | None) -> None:
        """Any poll but the quiet case: the samples `health.cycle_samples` would make, and the poller's
        evaluation of the outcome `health.evaluate_poll` would give."""
        cfg = self.cfg
        status: int | None = 200
        if cause is not None:
            status, latency, reason = self._failure(cause, latency)
            if cause.kind == "says":
                reason = cause.reason  # the region answered 200 and said it is failing
            else:
                reason, rate = f"health: {reason}", None  # no answer, so no reported error rate
        if dep_cause is not None:
            dep_status, dep_latency, dep_reason = self._failure(dep_cause, dep_latency)
            dep_reason = f"deployment: {dep_reason}"
        else:
            dep_status, dep_reason = 200, ""
        # As health.evaluate_poll combines the two probes.
        failed = cause is not None
        degraded: list[str] = []
        if failed:
            outcome_reason = reason
        else:
            if says_degraded:
                degraded.append("health says 'degraded'")
            if rate is not None and rate > cfg.degraded_error_rate:
                degraded.append(f"reports error rate {rate:.1%} over {cfg.degraded_error_rate:.1%}")
            if latency > cfg.slow_latency_ms:
                degraded.append(f"slow: {latency:.0f} ms over {cfg.slow_latency_ms:.0f} ms")
            if dep_reason:
                degraded.append(dep_reason)
            outcome_reason = "; ".join(degraded) if degraded else "healthy"
        sample_reason = outcome_reason if failed or degraded else ""
        hs.append(Sample(t, self.region, HEALTH, not failed, status, latency, sample_reason, rate))
        ds.append(Sample(t, self.region, DEPLOYMENT, not dep_reason, dep_status, dep_latency, dep_reason, None))
        outcome = PollOutcome(self.region, t, failed, outcome_reason, latency, tuple(degraded), rate,
                              self._deployment(not dep_reason, dep_reason))
        for order, event in enumerate(self.fold.poll(outcome)):
            events.append((t, index, order, event))

    def _deployment(self, ok: bool, reason: str) -> DeploymentReading:
        """What the region's deployment endpoint says: its version and our own view of the fleet."""
        if not ok:
            return DeploymentReading(ok=False, reason=reason)
        reading = self._readings.get(self.version)
        if reading is None:
            payload = {**self.fold.fleet_payload, "version": self.version}
            reading = DeploymentReading(ok=True, region=self.region, version=self.version, payload=payload)
            self._readings[self.version] = reading
        return reading

    def _failure(self, cause: _Cause, latency: float) -> tuple[int | None, float, str]:
        """A failed probe's status, latency and reason, as probes.py reports them."""
        if cause.kind == "timeout":
            return None, self.timeout_ms + self.rng.uniform(0.0, 5.0), self.timeout_reason
        if cause.kind == "refused":
            return None, self.rng.uniform(0.2, 2.0), cause.reason
        return cause.status, latency, cause.reason


class _RegionFold:
    """What the poller would make of one region's polls, through the same evaluation.

    Every poll that may change something goes through `health.evaluate_region`, as in a poll cycle;
    the rows are `health.region_update`s written by `Store.write_cycle`. Only the quiet case (an up
    region answering well, nothing to change) takes a shortcut: it counts the good polls and folds
    them in at once, leaving exactly what `evaluate_region` would (a test holds the two equal).
    """

    def __init__(self, region: str, settings: Settings, prev: RegionState, stored_version: str | None) -> None:
        fleet = settings.deployment
        self.region = region
        self.cfg = settings.dashboard
        self.stale_after = settings.stale_after_seconds
        self.fleet_payload = {"region": region, "primary_region": fleet.primary_region,
                              "regions": list(fleet.regions), "region_base_urls": dict(fleet.region_base_urls)}
        self.state = prev
        self.revision = prev.revision  # as stored: each batch's row is a compare-and-set on it
        self.first = True
        self.fast = 0  # good polls of an up region not yet folded into `state` (see _settle)
        self.fast_at: float | None = None
        self.stored_version = stored_version
        self.deployment_at: float | None = None
        self.payload: Any = None
        self.last: PollOutcome | None = None
        self.window: deque[float] = deque()  # the error-rate window: every poll's time, this one included
        self.failed_window: deque[float] = deque()  # and those that failed, this one not yet

    def observe(self, t: float) -> None:
        """A poll at `t` is about to be counted: slide the error-rate window to it."""
        width = self.cfg.error_rate_window_seconds
        window, failed_window = self.window, self.failed_window
        window.append(t)
        while window[0] < t - width:
            window.popleft()
        while failed_window and failed_window[0] < t - width:
            failed_window.popleft()

    def quiet(self, count: int, at: float, latency: float, rate: float, deployment: DeploymentReading) -> None:
        """`count` good polls of an up region, the last at `at`: nothing to evaluate, only to count."""
        self.fast += count
        self.fast_at = at
        self.last = PollOutcome(self.region, at, False, "healthy", latency, (), rate, deployment)
        self.deployment_at, self.payload = at, deployment.payload

    def poll(self, outcome: PollOutcome) -> tuple[NewEvent, ...]:
        """One poll through the poller's evaluation; returns the events it causes."""
        self._settle()
        # `observe` counted this poll into the window; a held poll was not observed (see replay).
        before = WindowCounts(len(self.failed_window), len(self.window) - (0 if outcome.held else 1))
        if outcome.failed:
            self.failed_window.append(outcome.at)
        # Seeded polls come every interval by construction, so only the first can find the region
        # stale (the seeded history may start long after what was stored before).
        stale_after = self.stale_after if self.first else math.inf
        self.first = False
        step = health.evaluate_region(self.state, outcome, before, self.stored_version, self.cfg, stale_after)
        self.state, self.stored_version, self.last = step.state, step.version, step.outcome
        if outcome.deployment.ok:
            self.deployment_at, self.payload = outcome.at, outcome.deployment.payload
        return step.events

    def _settle(self) -> None:
        """Fold the quiet polls into `state`: what `next_state` would have made of each of them."""
        if self.fast:
            s = self.state
            self.state = replace(s, reason="healthy", consecutive_failures=0,
                                 consecutive_successes=s.consecutive_successes + self.fast,
                                 last_poll_at=self.fast_at, revision=s.revision + self.fast)
            self.fast = 0

    def update(self, skew_note: str | None) -> RegionUpdate | None:
        """The region's row as the poller would leave it now; None before its first poll."""
        self._settle()
        if self.last is None:
            return None
        row = health.region_update(self.state, self.last, self.stored_version, self.revision, skew_note)
        self.revision = self.state.revision
        # The poller stores every deployment answer; the last good one may be older than the last poll.
        return replace(row, deployment=self.payload, deployment_at=self.deployment_at)


def _rollouts(rng: random.Random, regions: list[str], start: float, end: float,
              first_version: int) -> dict[str, list[tuple[float, str]]]:
    """Fleet-wide rollouts every ~10 days: each region's (time, version) upgrades, in time order."""
    upgrades: dict[str, list[tuple[float, str]]] = {region: [] for region in regions}
    minor = first_version
    t = start + rng.uniform(0.2, 1.0) * rng.uniform(*ROLLOUT_EVERY_DAYS) * DAY_SECONDS
    while t < end:
        minor += 1
        at = t
        for region in rng.sample(regions, len(regions)):
            upgrades[region].append((at, f"1.{minor}.0"))
            at += rng.uniform(*UPGRADE_GAP_MINUTES) * 60
        t += rng.uniform(*ROLLOUT_EVERY_DAYS) * DAY_SECONDS
    return upgrades


def _generate(sims: list[_RegionSim], times: Iterator[list[float]]) -> Iterator[_Batch]:
    """Build the batches: every region's polls of a run of cycles, interleaved as the poller writes them."""
    for chunk in times:
        columns: list[list[Sample]] = []
        events: list[tuple] = []
        for index, sim in enumerate(sims):
            hs, ds, region_events = sim.run(chunk, index)
            columns += (hs, ds)
            events += region_events
        # One cycle's samples region by region, health then deployment, as poller._samples orders them.
        samples = list(itertools.chain.from_iterable(zip(*columns, strict=True)))
        events.sort(key=lambda e: e[:3])
        yield _Batch(len(chunk), chunk[-1], samples, [event for *_, event in events])


def seed_history(store: Store, settings: Settings, *, days: float, interval_seconds: float | None = None,
                 now: float | None = None, rng_seed: int = 0, batch_cycles: int = 2000,
                 progress: Callable[[int, int], None] | None = None) -> SeedSummary:
    """Write `days` of synthetic polls of every configured region, ending at `now`, with their events.

    One poll every `interval_seconds` (the configured poll interval by default), the last one at
    `now`; each `batch_cycles` cycles are one transaction. Starts from the regions' stored states
    and versions, so seed into a database without samples in that time range (normally a new one).
    """
    began = time.perf_counter()
    if days < 0:
        raise ValueError("days must not be negative")
    if batch_cycles < 1:
        raise ValueError("batch_cycles must be at least 1")
    interval = float(interval_seconds if interval_seconds is not None else settings.dashboard.poll_interval_seconds)
    if interval <= 0:
        raise ValueError("interval_seconds must be positive")
    now = time.time() if now is None else float(now)
    span = days * DAY_SECONDS
    cycles = int(math.floor(span / interval + 1e-9)) + 1
    start = now - (cycles - 1) * interval
    regions = settings.regions

    rng = random.Random(rng_seed)
    first_version = rng.randint(20, 60)
    upgrades = _rollouts(rng, regions, start, now, first_version)
    previous = store.region_states(regions)
    stored_versions = store.stored_versions()
    folds = [_RegionFold(region, settings, previous[region], stored_versions.get(region)) for region in regions]
    sims = [
        _RegionSim(fold, settings, random.Random(rng.getrandbits(64)), start, now, interval,
                   upgrades[fold.region], f"1.{first_version}.0")
        for fold in folds
    ]
    if span >= 3600 and not any(sim.incidents for sim in sims):
        sims[rng.randrange(len(sims))].ensure_incident(start, now)

    def chunks() -> Iterator[list[float]]:
        for first in range(0, cycles, batch_cycles):
            # Anchored at `now`, so the last poll is exactly at `now` whatever the rounding.
            yield [now - (cycles - 1 - k) * interval for k in range(first, min(first + batch_cycles, cycles))]

    samples = events = done = 0
    for batch in _generate(sims, chunks()):
        _write(store, batch.at, batch.samples, batch.events, folds)
        samples += len(batch.samples)
        events += len(batch.events)
        done += batch.cycles
        if progress is not None:
            progress(done, cycles)
    return SeedSummary(len(regions), samples, events, time.perf_counter() - began)


def _write(store: Store, at: float, samples: list[Sample], events: list[NewEvent], folds: list[_RegionFold]) -> None:
    """Write a batch of cycles as the poller writes one: `Store.write_cycle`, in one transaction."""
    skew = health.version_skew({fold.region: fold.stored_version for fold in folds})
    updates = [update for fold in folds if (update := fold.update(skew.get(fold.region))) is not None]
    result = CycleResult(at, tuple(samples), tuple(updates), tuple(events), ())
    try:
        store.write_cycle(result, all_or_nothing=True)
    except StateConflict as conflict:
        raise RuntimeError(f"{conflict} while seeding (is a poller running?)") from None


def replay(store: Store, settings: Settings, cycles: Iterable[tuple[float, Mapping[str, PollOutcome],
                                                                     Sequence[Sample]]]) -> None:
    """Write cycles of known outcomes through the seed's own path (every poll evaluated, none
    taken as quiet), one transaction per cycle: what `seed_history` does with the outcomes it
    makes up. Tests hold it equal to the poller's path."""
    regions = settings.regions
    previous = store.region_states(regions)
    versions = store.stored_versions()
    folds = {region: _RegionFold(region, settings, previous[region], versions.get(region)) for region in regions}
    for at, outcomes, samples in cycles:
        events: list[NewEvent] = []
        for region, outcome in outcomes.items():
            if not outcome.held:  # a held poll is kept out of the error-rate window
                folds[region].observe(outcome.at)
            events.extend(folds[region].poll(outcome))
        _write(store, at, list(samples), events, list(folds.values()))
