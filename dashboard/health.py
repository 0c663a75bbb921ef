"""Pure evaluation: probe results and the previous state in, a region's new state and findings out.

No I/O here, so every rule about what counts as up, degraded or down is tested directly.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .config import DashboardConfig, DeploymentConfig
from .probes import ProbeResult
from .text import clip

UNKNOWN, UP, DEGRADED, DOWN, STALE = "unknown", "up", "degraded", "down", "stale"
STATES = (UNKNOWN, UP, DEGRADED, DOWN, STALE)

PASS, WARN, FAIL = "pass", "warn", "fail"
_PASS_WORDS = {"ok", "healthy", "up", "pass", "passing", "green"}
_WARN_WORDS = {"degraded", "warn", "warning", "yellow"}
# The windowed error rate only counts once the window holds enough polls: right after a start,
# one lost packet out of two polls is not a 50% error rate worth a "degraded".
MIN_POLLS_FOR_ERROR_RATE = 10


@dataclass(frozen=True)
class HealthReading:
    """What a health probe says: pass, warn or fail, why, and any error rate the region reports."""

    verdict: str
    reason: str
    reported_error_rate: float | None = None


@dataclass(frozen=True)
class DeploymentReading:
    """What a region says it is, and where that disagrees with our view of the fleet."""

    ok: bool
    reason: str = ""
    region: str | None = None
    version: str | None = None
    misrouted: bool = False
    drift: tuple[str, ...] = ()
    payload: Any = None


@dataclass(frozen=True)
class PollOutcome:
    """One region's verdict for one cycle, before the state machine."""

    region: str
    at: float
    failed: bool
    reason: str
    latency_ms: float | None
    degraded_reasons: tuple[str, ...] = ()
    reported_error_rate: float | None = None
    deployment: DeploymentReading = field(default_factory=lambda: DeploymentReading(ok=False))


@dataclass(frozen=True)
class RegionState:
    """The stored state of a region; `revision` makes every update a compare-and-set."""

    region: str
    state: str = UNKNOWN
    reason: str = "not polled yet"
    since: float | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_poll_at: float | None = None
    revision: int = 0


@dataclass(frozen=True)
class Transition:
    region: str
    old_state: str
    new_state: str
    reason: str
    at: float


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


def read_health(result: ProbeResult) -> HealthReading:
    """Interpret a health probe: plain {"status": ...} or IETF application/health+json."""
    if not result.ok:
        return HealthReading(FAIL, f"health: {result.reason}")
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


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d"
