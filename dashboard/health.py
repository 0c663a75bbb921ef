"""Pure evaluation: probe results and the previous state in, a region's new state and findings out.

No I/O here (and no import of anything that does), so every rule about what counts as up, degraded
or down is tested directly.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .config import DashboardConfig, DeploymentConfig
from .model import (
    DEGRADED,
    DEPLOYMENT,
    DOWN,
    HEALTH,
    STALE,
    STATES,
    UNKNOWN,
    UP,
    CycleResult,
    DeploymentReading,
    HealthReading,
    NewEvent,
    PollOutcome,
    ProbeResult,
    RegionState,
    RegionUpdate,
    Sample,
    Transition,
    WindowCounts,
)

# Re-exported: callers say health.UP, health.Transition, health.format_duration.
__all__ = [
    "DEGRADED", "DOWN", "STALE", "STATES", "UNKNOWN", "UP", "PASS", "WARN", "FAIL", "MIN_POLLS_FOR_ERROR_RATE",
    "DeploymentReading", "HealthReading", "PollOutcome", "RegionState", "RegionStep", "Transition",
    "cycle_samples", "effective_state", "evaluate_cycle", "evaluate_poll", "evaluate_region", "format_duration",
    "mark_stale", "next_state", "outcomes_of", "read_deployment", "read_health", "region_markers",
    "region_update", "version_skew", "with_window_error_rate",
]
from .text import clip, format_duration

PASS, WARN, FAIL = "pass", "warn", "fail"
_PASS_WORDS = {"ok", "healthy", "up", "pass", "passing", "green"}
_WARN_WORDS = {"degraded", "warn", "warning", "yellow"}
# The windowed error rate only counts once the window holds enough polls: right after a start,
# one lost packet out of two polls is not a 50% error rate worth a "degraded".
MIN_POLLS_FOR_ERROR_RATE = 10
NO_POLLS = WindowCounts()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _verdict(word: Any) -> str | None:
    if not isinstance(word, str):
        return None
    word = word.strip().lower()
    if word in _PASS_WORDS:
        return PASS
    if word in _WARN_WORDS:
        return WARN
    return FAIL


def _is_html(result: ProbeResult) -> bool:
    """A page meant for a browser: a proxy's error page, or a single-page app's fallback route."""
    if result.content_type in ("text/html", "application/xhtml+xml"):
        return True
    return result.text[:64].lstrip().lower().startswith(("<!doctype", "<html"))


def _not_json(result: ProbeResult) -> str:
    """Why a 2xx answer that had to be JSON is not: an HTML page, other text, or JSON that does not parse."""
    kind = "an HTML page" if _is_html(result) else "not JSON"
    return f"HTTP {result.status_code} but the answer is {kind} ({result.content_type or 'no content type'})"


def read_health(result: ProbeResult) -> HealthReading:
    """Interpret a health probe: plain {"status": ...} or IETF application/health+json."""
    if not result.ok:
        return HealthReading(FAIL, f"health: {result.reason}")
    if result.body is None:
        return HealthReading(FAIL, f"health: {_not_json(result)}")
    body = result.body
    if not isinstance(body, dict) or "status" not in body:
        return HealthReading(FAIL, "health: answer is JSON but has no \"status\" field")
    verdict = _verdict(body["status"])
    if verdict is None:
        return HealthReading(FAIL, "health: \"status\" is not a string")
    rate, rate_note = _reported_error_rate(body)
    notes = [rate_note] if rate_note else []
    checks = body.get("checks")
    if isinstance(checks, dict):
        bad = []
        for name, entries in checks.items():
            for entry in entries if isinstance(entries, list) else [entries]:
                if isinstance(entry, dict) and _verdict(entry.get("status")) in (WARN, FAIL):
                    bad.append(f"{clip(name, 40)} {clip(entry.get('status'), 10)}")
                    break
        if bad:
            notes.append("checks: " + ", ".join(bad[:5]))
    said = clip(body["status"], 20)
    if verdict == PASS:
        reason = "healthy"
    else:
        reason = f"health says {said!r}"
    if notes:
        reason += " (" + "; ".join(notes) + ")"
    return HealthReading(verdict, reason, rate)


def _reported_error_rate(body: dict) -> tuple[float | None, str]:
    """The region's own error rate: `error_rate`/`errorRate`, or an IETF check named like errors:rate."""
    raw = body.get("error_rate", body.get("errorRate"))
    if raw is None and isinstance(body.get("checks"), dict):
        for name, entries in body["checks"].items():
            if "error" in str(name).lower():
                first = entries[0] if isinstance(entries, list) and entries else entries
                if isinstance(first, dict):
                    raw = first.get("observedValue")
                    break
    if raw is None:
        return None, ""
    rate = _number(raw)
    if rate is None or not 0 <= rate <= 1:
        return None, f"reported error rate {clip(raw, 20)!r} ignored: not a fraction between 0 and 1"
    return rate, ""


def read_deployment(result: ProbeResult, expected_region: str, ours: DeploymentConfig) -> DeploymentReading:
    """Interpret a deployment probe: identity (misrouting) and fleet view (config drift)."""
    if not result.ok:
        return DeploymentReading(ok=False, reason=f"deployment: {result.reason}")
    if result.body is None:
        return DeploymentReading(ok=False, reason=f"deployment: {_not_json(result)}")
    body = result.body
    if not isinstance(body, dict) or not isinstance(body.get("region"), str):
        return DeploymentReading(ok=False, reason="deployment: answer has no \"region\" string", payload=body)
    region = body["region"]
    version = body.get("version")
    version = clip(version, 64) if isinstance(version, (str, int, float)) and not isinstance(version, bool) else None
    drift = []
    regions = body.get("regions")
    if isinstance(regions, list) and sorted(map(str, regions)) != sorted(ours.regions):
        drift.append(f"regions {clip(', '.join(map(str, regions)), 60)} differ from ours {', '.join(ours.regions)}")
    primary = body.get("primary_region")
    if isinstance(primary, str) and primary != ours.primary_region:
        drift.append(f"primary {clip(primary, 30)!r} differs from ours {ours.primary_region!r}")
    return DeploymentReading(
        ok=True,
        region=region,
        version=version,
        misrouted=region != expected_region,
        drift=tuple(drift),
        payload=body,
    )


def evaluate_poll(
    region: str,
    health: ProbeResult,
    deployment: ProbeResult,
    ours: DeploymentConfig,
    cfg: DashboardConfig,
) -> PollOutcome:
    """Combine one cycle's two probes of a region into a verdict (windowed error rate comes later)."""
    reading = read_health(health)
    dep = read_deployment(deployment, region, ours)
    latency = health.latency_ms
    if reading.verdict == FAIL:
        return PollOutcome(region, health.started_at, True, reading.reason, latency,
                           reported_error_rate=reading.reported_error_rate, deployment=dep)
    degraded = []
    if reading.verdict == WARN:
        degraded.append(reading.reason)
    if reading.reported_error_rate is not None and reading.reported_error_rate > cfg.degraded_error_rate:
        degraded.append(
            f"reports error rate {reading.reported_error_rate:.1%} over {cfg.degraded_error_rate:.1%}"
        )
    if latency is not None and latency > cfg.slow_latency_ms:
        degraded.append(f"slow: {latency:.0f} ms over {cfg.slow_latency_ms:.0f} ms")
    if not dep.ok:
        degraded.append(dep.reason)
    elif dep.misrouted:
        degraded.append(f"misrouted: answers as {clip(dep.region, 40)!r}")
    reason = "; ".join(degraded) if degraded else reading.reason
    return PollOutcome(region, health.started_at, False, reason, latency, tuple(degraded),
                       reading.reported_error_rate, dep)


def with_window_error_rate(
    outcome: PollOutcome, failed_polls: int, polls: int, cfg: DashboardConfig
) -> PollOutcome:
    """Add the windowed polled error rate to an outcome's degraded reasons when it is over threshold."""
    if outcome.failed or polls < MIN_POLLS_FOR_ERROR_RATE:
        return outcome
    rate = failed_polls / polls
    if rate <= cfg.degraded_error_rate:
        return outcome
    note = f"{failed_polls} of the last {polls} polls failed ({rate:.0%})"
    reasons = outcome.degraded_reasons + (note,)
    return replace(outcome, degraded_reasons=reasons, reason="; ".join(reasons))


def next_state(prev: RegionState, outcome: PollOutcome, cfg: DashboardConfig) -> tuple[RegionState, Transition | None]:
    """The state machine: down after N failures in a row, up after M successes, degraded in between.

    From unknown or stale there is no incident to end, so one good poll decides; from down it
    takes `success_threshold` good polls, so one lucky answer does not end an incident.
    """
    if outcome.failed:
        failures, successes = prev.consecutive_failures + 1, 0
        if failures >= cfg.failure_threshold:
            state = DOWN
            reason = f"{outcome.reason} ({failures} failed polls in a row)"
        else:
            # Below the threshold a region keeps its state: one lost packet pages nobody.
            # A stale region is being watched again, so it is no longer stale: unknown until decided.
            state = UNKNOWN if prev.state == STALE else prev.state
            reason = f"{outcome.reason} ({failures} of {cfg.failure_threshold} failed polls before down)"
    else:
        failures, successes = 0, prev.consecutive_successes + 1
        healthy_state = DEGRADED if outcome.degraded_reasons else UP
        if prev.state == DOWN and successes < cfg.success_threshold:
            state = DOWN
            reason = f"recovering: {successes} of {cfg.success_threshold} good polls before up ({outcome.reason})"
        else:
            state = healthy_state
            reason = outcome.reason
    changed = state != prev.state
    new = RegionState(
        region=prev.region,
        state=state,
        reason=reason,
        since=outcome.at if changed or prev.since is None else prev.since,
        consecutive_failures=failures,
        consecutive_successes=successes,
        last_poll_at=outcome.at,
        revision=prev.revision + 1,
    )
    transition = Transition(prev.region, prev.state, state, reason, outcome.at) if changed else None
    return new, transition


def mark_stale(prev: RegionState, now: float, stale_after_seconds: float) -> tuple[RegionState, Transition | None]:
    """Record that a region went unwatched: no result newer than `stale_after_seconds`."""
    if prev.state in (STALE, UNKNOWN) or prev.last_poll_at is None or now - prev.last_poll_at <= stale_after_seconds:
        return prev, None
    gap = now - prev.last_poll_at
    reason = f"no poll result for {format_duration(gap)} (the poller was not running)"
    new = replace(prev, state=STALE, reason=reason, since=prev.last_poll_at + stale_after_seconds,
                  revision=prev.revision + 1)
    return new, Transition(prev.region, prev.state, STALE, reason, now)


def effective_state(state: RegionState, now: float, stale_after_seconds: float) -> tuple[str, str]:
    """State and reason as a reader should see them: stale when nothing recent was stored."""
    if state.last_poll_at is not None and now - state.last_poll_at > stale_after_seconds and state.state != STALE:
        return STALE, f"no poll result for {format_duration(now - state.last_poll_at)} (is the poller running?)"
    return state.state, state.reason


def version_skew(versions: Mapping[str, str | None]) -> dict[str, str]:
    """Regions whose version differs from the fleet's most common one, with a note for each.

    With a tie for the most common version every region is marked: there is no majority to trust.
    """
    known = {region: v for region, v in versions.items() if v}
    counts = Counter(known.values())
    if len(counts) < 2:
        return {}
    ranked = counts.most_common()
    tie = ranked[0][1] == ranked[1][1]
    majority = ranked[0][0]
    summary = ", ".join(f"{v} on {n}" for v, n in ranked)
    return {
        region: f"version {v} differs from the fleet ({summary})"
        for region, v in known.items()
        if tie or v != majority
    }


# -- one cycle, evaluated ------------------------------------------------------------------------


def outcomes_of(results: Sequence[ProbeResult], ours: DeploymentConfig,
                cfg: DashboardConfig) -> dict[str, PollOutcome]:
    """Each region's verdict from one cycle's probe results (a health and a deployment per region)."""
    by_key = {(r.region, r.endpoint): r for r in results}
    return {
        region: evaluate_poll(region, by_key[(region, HEALTH)], by_key[(region, DEPLOYMENT)], ours, cfg)
        for region in dict.fromkeys(r.region for r in results)
    }


def cycle_samples(results: Sequence[ProbeResult], outcomes: Mapping[str, PollOutcome]) -> tuple[Sample, ...]:
    """The rows one cycle adds to `samples`, in probe order."""
    samples = []
    for result in results:
        outcome = outcomes[result.region]
        if result.endpoint == HEALTH:
            # A poll's success is the region's verdict, not just the HTTP exchange: a 200 that says
            # "fail" is a failed poll, and counts in the error rate.
            ok = not outcome.failed
            reason = outcome.reason if (outcome.failed or outcome.degraded_reasons) else ""
            rate = outcome.reported_error_rate
        else:
            dep = outcome.deployment
            ok = dep.ok
            reason = dep.reason or (f"answers as {dep.region!r}" if dep.misrouted else "")
            rate = None
        samples.append(Sample(result.started_at, result.region, result.endpoint, ok, result.status_code,
                              result.latency_ms, reason, rate))
    return tuple(samples)


def region_markers(outcome: PollOutcome, skew_note: str | None) -> dict[str, Any]:
    """The markers a region's card shows: misrouted, config drift, version skew, no deployment answer."""
    dep = outcome.deployment
    markers: dict[str, Any] = {}
    if dep.ok and dep.misrouted:
        markers["misrouted"] = f"answers as {dep.region!r}"
    if dep.drift:
        markers["drift"] = "; ".join(dep.drift)
    if skew_note:
        markers["skew"] = skew_note
    if not dep.ok:
        markers["deployment_unavailable"] = dep.reason
    return markers


@dataclass(frozen=True)
class RegionStep:
    """What one poll does to one region: its new state, the events it causes, the window it saw."""

    state: RegionState
    outcome: PollOutcome  # with the windowed error rate applied
    transitions: tuple[Transition, ...]
    events: tuple[NewEvent, ...]
    window: WindowCounts  # this poll included
    version: str | None  # the region's version as known after this poll


def evaluate_region(prev: RegionState, outcome: PollOutcome, window_before: WindowCounts,
                    stored_version: str | None, cfg: DashboardConfig, stale_after_seconds: float) -> RegionStep:
    """One poll of one region: stale check, windowed error rate, state machine, version change.

    `window_before` counts the region's health polls already stored in the error-rate window;
    this poll is added here, so the window always sees the latest poll."""
    window = WindowCounts(window_before.failed + int(outcome.failed), window_before.polls + 1)
    prev, stale = mark_stale(prev, outcome.at, stale_after_seconds)
    outcome = with_window_error_rate(outcome, window.failed, window.polls, cfg)
    new, transition = next_state(prev, outcome, cfg)
    transitions = tuple(t for t in (stale, transition) if t is not None)
    events = [NewEvent(at=t.at, region=t.region, kind="state", old_state=t.old_state, new_state=t.new_state,
                       reason=t.reason) for t in transitions]
    version = stored_version
    dep = outcome.deployment
    if dep.ok:
        if dep.version is not None and stored_version is not None and stored_version != dep.version:
            events.append(NewEvent(at=outcome.at, region=prev.region, kind="version",
                                   reason=f"version {stored_version} -> {dep.version}",
                                   details={"old_version": stored_version, "new_version": dep.version}))
        version = dep.version
    return RegionStep(new, outcome, transitions, tuple(events), window, version)


def region_update(state: RegionState, outcome: PollOutcome, version: str | None, expected_revision: int,
                  skew_note: str | None, window: WindowCounts = NO_POLLS) -> RegionUpdate:
    """The region row a poll leaves, with the markers of the fleet-wide checks (version skew)."""
    return RegionUpdate(
        state=state, expected_revision=expected_revision, latency_ms=outcome.latency_ms,
        reported_error_rate=outcome.reported_error_rate, markers=region_markers(outcome, skew_note),
        deployment=outcome.deployment.payload, deployment_at=outcome.at if outcome.deployment.ok else None,
        version=version, window=window,
    )


def evaluate_cycle(at: float, outcomes: Mapping[str, PollOutcome], previous: Mapping[str, RegionState],
                   windows: Mapping[str, WindowCounts], versions: Mapping[str, str | None],
                   fleet: Sequence[str], cfg: DashboardConfig, stale_after_seconds: float,
                   samples: Sequence[Sample] = ()) -> CycleResult:
    """The whole cycle, pure: previous states, this cycle's outcomes and the stored window counts in,
    new states, events, markers and deployment changes out, ready for `Store.write_cycle`.

    Version skew compares every configured region (`fleet`), polled this cycle or not."""
    steps = {region: evaluate_region(previous[region], outcome, windows.get(region, WindowCounts()),
                                     versions.get(region), cfg, stale_after_seconds)
             for region, outcome in outcomes.items()}
    known = dict(versions)
    known.update({region: step.version for region, step in steps.items()})
    skew = version_skew({region: known.get(region) for region in fleet})
    return CycleResult(
        at=at,
        samples=tuple(samples),
        updates=tuple(region_update(step.state, step.outcome, step.version, previous[region].revision,
                                    skew.get(region), step.window)
                      for region, step in steps.items()),
        events=tuple(event for step in steps.values() for event in step.events),
        transitions=tuple(t for step in steps.values() for t in step.transitions),
    )
