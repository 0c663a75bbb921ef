"""Pure evaluation: probe results and the previous state in, a region's new state and findings out.

No I/O here (and no import of anything that does), so every rule about what counts as up, degraded
or down is tested directly.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

from .config import DashboardConfig, DeploymentConfig, HealthRule
from .model import (
    DEGRADED,
    DEPLOYMENT,
    DOWN,
    HEALTH,
    STALE,
    STATES,
    TEXT_LIMIT,
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
    declares_json,
)

# Re-exported: callers say health.UP, health.Transition, health.format_duration.
__all__ = [
    "DEGRADED", "DOWN", "STALE", "STATES", "UNKNOWN", "UP", "PASS", "WARN", "FAIL", "MIN_POLLS_FOR_ERROR_RATE",
    "DEFAULT_RULE", "HealthRule",
    "DeploymentReading", "HealthReading", "PollOutcome", "RegionState", "RegionStep", "Transition",
    "cycle_samples", "effective_state", "evaluate_cycle", "evaluate_poll", "evaluate_region", "format_duration",
    "mark_stale", "next_state", "outcomes_of", "read_deployment", "read_health", "region_markers",
    "region_update", "version_skew", "with_window_error_rate",
]
from .text import clip, format_duration

PASS, WARN, FAIL = "pass", "warn", "fail"
# The windowed error rate only counts once the window holds enough polls: right after a start,
# one lost packet out of two polls is not a 50% error rate worth a "degraded".
MIN_POLLS_FOR_ERROR_RATE = 10
NO_POLLS = WindowCounts()
DEFAULT_RULE = HealthRule()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float: no rate, no latency
        return None
    return value if math.isfinite(value) else None


# -- reading a health answer ---------------------------------------------------------------------
#
# Services answer health in many formats (README, "Health answers understood"): a bare word as text,
# {"status": ...} in many vocabularies, IETF health+json checks, Spring components, ASP.NET entries,
# Django-style maps of component to result, Consul's Checks, Kubernetes' [-]name lines, problem+json.
# The HTTP status decides first; the body says more where it can. Everything here is bounded: text
# arrives clipped (model.TEXT_LIMIT) and no JSON level is walked past _MAX_ITEMS entries.

# Status words, compared lower case with spaces and dashes as underscores ("OUT_OF_SERVICE",
# "Out of service" and "out-of-service" are one word).
_WORDS = {
    PASS: ("ok", "up", "pass", "passed", "passing", "healthy", "success", "successful", "green", "good", "working",
           "online", "available", "ready", "alive", "live", "running", "serving", "operational", "fine"),
    WARN: ("warn", "warning", "warned", "degraded", "yellow", "partial", "partially_degraded", "partial_outage",
           "degraded_performance", "maintenance", "under_maintenance", "unstable", "impaired"),
    FAIL: ("fail", "failed", "failure", "failing", "down", "unhealthy", "critical", "error", "errored", "red",
           "out_of_service", "outage", "major_outage", "unavailable", "not_serving", "offline", "dead", "bad", "ko",
           "nok", "not_ok", "stopped", "crashed", "fatal", "unexpected_result", "unknown_error", "unreachable",
           "timeout", "timed_out"),
}
_VERDICTS = {word: verdict for verdict, words in _WORDS.items() for word in words}
_RANK = {None: 0, PASS: 0, WARN: 1, FAIL: 2}
# Where a JSON answer carries its own overall status, in order of preference.
_STATUS_KEYS = ("status", "Status", "STATUS", "AggregatedStatus", "aggregatedStatus", "state", "health")
# Booleans some services send instead of a word: {"healthy": false}.
_FLAG_KEYS = ("healthy", "ok", "up", "alive", "live", "ready")
# Where the components are: IETF `checks`, Spring `components` (Boot 2.0-2.1 `details`), ASP.NET
# `entries`, Consul `Checks`, MicroProfile `checks` (a list); other keys are read as a Django-style
# map of component to result when their value says a status.
_CONTAINER_KEYS = ("checks", "Checks", "components", "entries", "details", "dependencies", "services", "results")
_NAME_KEYS = ("name", "Name", "CheckID", "componentId", "key", "Key", "id", "ServiceName")
_DETAIL_KEYS = ("output", "Output", "description", "error", "exception", "message", "detail")
# What a problem+json (RFC 9457) or an error body says in words, for the reason of a failing answer.
_MESSAGE_KEYS = ("title", "detail", "message", "error", "error_description", "reason")
_MAX_ITEMS = 100  # entries read per JSON level: a huge body costs no more than a big one
_MAX_NAMED = 5  # failing components named in a reason; the rest are counted
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_BROWSER_TYPES = ("text/html", "application/xhtml+xml")


def _word(value: Any) -> str | None:
    """The verdict a short string says: all of it ("Healthy"), or what precedes a colon ("Unavailable: ...")."""
    if not isinstance(value, str):
        return None
    head = value[:80].split("\n", 1)[0].split(":", 1)[0]
    return _VERDICTS.get(head.strip().strip("\"'.!").lower().replace("-", "_").replace(" ", "_"))


@dataclass
class _Component:
    name: str
    verdict: str
    word: str
    detail: str = ""

    def __str__(self) -> str:
        said = f"{clip(self.name, 40)} {clip(self.word, 16)}"
        return f"{said} ({clip(self.detail, 60)})" if self.detail else said


@dataclass
class _Said:
    """What an answer's body says, whatever its status: its own verdict and the components it names."""

    kind: str = "empty"  # "json", "text", "html", "bad_json" (declared JSON that does not parse), "empty"
    verdict: str | None = None  # from the answer's own overall status word, if it names one we know
    word: str = ""  # that word as sent (or an unknown one, for a note)
    components: list[_Component] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # problem+json title/detail, an error's message

    @property
    def failing(self) -> list[_Component]:
        return [c for c in self.components if c.verdict in (WARN, FAIL)]


def _is_html(result: ProbeResult) -> bool:
    """A page meant for a browser: a proxy's error page, or a single-page app's fallback route."""
    if result.content_type in _BROWSER_TYPES:
        return True
    return result.text[:256].lstrip().lower().startswith(("<!doctype", "<html"))


def _not_json(result: ProbeResult) -> str:
    """Why a 2xx answer that had to be JSON is not: an HTML page, other text, or JSON that does not parse."""
    kind = "an HTML page" if _is_html(result) else "not JSON"
    return f"HTTP {result.status_code} but the answer is {kind} ({result.content_type or 'no content type'})"


def _status_of(entry: dict) -> tuple[str | None, str]:
    """The verdict and word of a JSON object's own status (None, "" when it says none we know)."""
    unknown = ""
    for key in _STATUS_KEYS:
        value = entry.get(key)
        if isinstance(value, str):
            verdict = _word(value)
            if verdict is not None:
                return verdict, value
            unknown = unknown or value
    for key in _FLAG_KEYS:
        value = entry.get(key)
        if isinstance(value, bool):
            return (PASS if value else FAIL), f"{key}: {str(value).lower()}"
    return None, unknown


def _detail_of(entry: dict) -> str:
    """The first words an entry gives about itself: IETF `output`, ASP.NET `description`, Spring `details.error`."""
    details = entry.get("details")
    for source in (entry, details if isinstance(details, dict) else {}):
        for key in _DETAIL_KEYS:
            value = source.get(key)
            if isinstance(value, str) and value.strip():
                return value
    return ""


def _component(name: Any, value: Any) -> _Component | None:
    """One named component's verdict: a word ("OK", "Unavailable: ..."), an object with a status, or
    an IETF list of observations (the worst one counts)."""
    if isinstance(value, str):
        verdict = _word(value)
        if verdict is None:
            return None
        word, _, detail = value.partition(":")
        return _Component(str(name), verdict, word.strip(), detail.strip())
    entries = value[:_MAX_ITEMS] if isinstance(value, list) else [value]
    worst: _Component | None = None
    for entry in entries:
        if isinstance(entry, dict):
            verdict, word = _status_of(entry)
            if verdict is not None and (worst is None or _RANK[verdict] > _RANK[worst.verdict]):
                worst = _Component(str(name), verdict, word, _detail_of(entry) if verdict != PASS else "")
    return worst


def _container(key: str, value: Any) -> list[_Component]:
    """The components of a `checks`/`components`/`entries`/`Checks` block, a map or a list of named entries."""
    found: list[_Component] = []
    if isinstance(value, dict):
        for name, entry in islice(value.items(), _MAX_ITEMS):
            component = _component(name, entry)
            if component is not None:
                found.append(component)
    elif isinstance(value, list):
        for index, entry in enumerate(value[:_MAX_ITEMS]):
            if isinstance(entry, dict):
                name = next((entry[k] for k in _NAME_KEYS if isinstance(entry.get(k), (str, int))), f"{key}[{index}]")
                component = _component(name, entry)
                if component is not None:
                    found.append(component)
    return found


def _read_object(body: dict, said: _Said) -> None:
    """Read one JSON object's overall status and its components into `said`."""
    said.verdict, said.word = _status_of(body)
    strings = 0
    words: list[_Component] = []
    for key, value in islice(body.items(), _MAX_ITEMS):
        if (key in _STATUS_KEYS or key in _FLAG_KEYS) and not isinstance(value, (dict, list)):
            continue
        if key in _CONTAINER_KEYS and isinstance(value, (dict, list)):
            said.components += _container(key, value)
        elif key in _MESSAGE_KEYS and isinstance(value, str) and value.strip() and _word(value) is None:
            said.messages.append(value)
        elif isinstance(value, str):
            strings += 1
            component = _component(key, value)
            if component is not None:
                words.append(component)
        else:
            component = _component(key, value)  # an object with its own status: Spring Boot 1.x's "db"
            if component is not None:
                said.components.append(component)
    # A Django-style map ({"Database(alias='default')": "OK"}) is an object whose strings are mostly
    # status words; in one that merely carries a stray word ({"version": "2", "log_level": "error"}),
    # the word is not a component.
    if 2 * len(words) > strings:
        said.components += words


def _read_json(body: Any, said: _Said) -> None:
    if isinstance(body, dict):
        _read_object(body, said)
    elif isinstance(body, list):
        # Consul's /v1/agent/health/service/name/<name>: one object per instance, each with its
        # AggregatedStatus and Checks. Or a bare list of components.
        for index, item in enumerate(body[:_MAX_ITEMS]):
            if not isinstance(item, dict):
                continue
            verdict, word = _status_of(item)
            service = item.get("Service")
            name = service.get("ID") if isinstance(service, dict) else None
            name = name or next((item[k] for k in _NAME_KEYS if isinstance(item.get(k), (str, int))), f"[{index}]")
            if verdict is not None:
                said.components.append(_Component(str(name), verdict, word, _detail_of(item)))
            for key in _CONTAINER_KEYS:
                if isinstance(item.get(key), (dict, list)):
                    said.components += _container(key, item[key])
    elif isinstance(body, str):  # a JSON string: "ok"
        verdict = _word(body)
        said.verdict, said.word = verdict, body if verdict is not None else ""


def _read_text(text: str, said: _Said) -> None:
    """A bare word ("ok", "Healthy", "passing"), or Kubernetes' verbose lines: [+]ping ok, [-]etcd failed: ..."""
    stripped = text[:TEXT_LIMIT].strip()
    said.verdict = _word(stripped)
    if said.verdict is not None:
        said.word = stripped.split("\n", 1)[0].split(":", 1)[0].strip()
        return
    # Other text is not echoed: it may be anything (a stack trace, a whole page); a reason names only
    # what a known format declares.
    for line in stripped.splitlines():
        line = line.strip()
        if line.startswith("[-]"):
            name, _, rest = line[3:].partition(" ")
            detail = rest.partition(":")[2].strip()
            said.components.append(_Component(name, FAIL, "failed", "" if detail == "reason withheld" else detail))


def _read_body(result: ProbeResult) -> _Said:
    """What an answer's body says: its kind, its own verdict, the components and messages it names."""
    said = _Said()
    if result.body is not None:
        said.kind = "json"
        _read_json(result.body, said)
    elif _is_html(result):
        said.kind = "html"
        title = _HTML_TITLE.search(result.text[:TEXT_LIMIT])
        if title and title.group(1).strip():
            said.messages.append(title.group(1))
    elif result.text.strip():
        if declares_json(result.content_type):
            said.kind = "bad_json"
        else:
            said.kind = "text"
            _read_text(result.text, said)
    return said


def _named(components: list[_Component]) -> str:
    shown = ", ".join(str(c) for c in components[:_MAX_NAMED])
    more = len(components) - _MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def read_health(result: ProbeResult, rule: HealthRule = DEFAULT_RULE) -> HealthReading:
    """Interpret a health answer: the HTTP status first (through the region's `rule`), then the body.

    A status the rule counts as ok is up unless the body says otherwise: a warn word is degraded, a
    fail word is down, and with no overall status a failing component is degraded (something
    contradicts "all fine"). An HTML page, or a body that declares JSON and does not parse, is not a
    health answer at all. A degraded status (429) is degraded unless the body says a fail word;
    any other status is down, and the reason names what the body says failed."""
    if not (result.ok or result.answered) or result.status_code is None:
        return HealthReading(FAIL, f"health: {result.reason}")
    status = result.status_code
    said = _read_body(result)
    rate, rate_note = _reported_error_rate(result.body) if isinstance(result.body, dict) else (None, "")
    notes = [rate_note] if rate_note else []
    failing = said.failing
    if rule.is_ok(status):
        if said.kind == "html":
            return HealthReading(FAIL, f"health: HTTP {status} but the answer is an HTML page, not a health answer "
                                       f"({result.content_type or 'no content type'})")
        if said.kind == "bad_json":
            return HealthReading(FAIL, f"health: {_not_json(result)}")
        verdict = said.verdict
        if verdict is None and failing:
            verdict = WARN
            overall = f"status {clip(said.word, 20)!r} is not a word we know" if said.word else "no overall status"
            reason = f"health: {overall}, but failing: {_named(failing)}"
        elif verdict is None or verdict == PASS:
            verdict = PASS
            if said.word and said.verdict is None:
                notes.insert(0, f"status {clip(said.word, 20)!r} is not a word we know; HTTP {status} decides")
            if failing:
                notes.append(f"yet failing: {_named(failing)}")
            reason = "healthy"
        else:
            reason = f"health says {clip(said.word, 20)!r}"
            if failing:
                notes.append(f"failing: {_named(failing)}")
        if notes:
            reason += " (" + "; ".join(notes) + ")"
        return HealthReading(verdict, clip(reason, 300), rate)
    verdict = WARN if rule.is_degraded(status) and said.verdict != FAIL else FAIL
    head = f"health: HTTP {status}"
    if said.word:
        head += f", says {clip(said.word, 20)!r}"
    if said.kind == "html":
        head += ", an HTML page" + (f" ({clip(said.messages[0], 60)!r})" if said.messages else "")
    elif said.kind == "bad_json":
        head += f", not JSON although it says {result.content_type}"
    elif said.messages and not failing:
        head += ": " + ": ".join(clip(m, 80) for m in said.messages[:2])
    parts = [head] + ([f"failing: {_named(failing)}"] if failing else []) + notes
    return HealthReading(verdict, clip("; ".join(parts), 300), rate)


# Units of an IETF check's observedValue that an error rate may come in.
_FRACTION_UNITS = ("", "ratio", "fraction", "1")
_PERCENT_UNITS = ("%", "percent", "percentage", "pct")


def _reported_error_rate(body: dict) -> tuple[float | None, str]:
    """The region's own error rate: `error_rate`/`errorRate`, or an IETF check named like errors:rate.

    An IETF check's `observedUnit` of "%" or "percent" is divided by 100; a value that cannot be a
    rate (negative, over 1 as a fraction, a unit that is not one) is ignored with a note, never read
    as a rate of 100 %."""
    raw = body.get("error_rate", body.get("errorRate"))
    unit: Any = None
    if raw is None and isinstance(body.get("checks"), dict):
        for name, entries in islice(body["checks"].items(), _MAX_ITEMS):
            if "error" in str(name).lower():
                first = entries[0] if isinstance(entries, list) and entries else entries
                if isinstance(first, dict):
                    raw, unit = first.get("observedValue"), first.get("observedUnit")
                    break
    if raw is None:
        return None, ""
    rate = _number(raw)
    unit_said = unit.strip().lower() if isinstance(unit, str) else ""
    shown = clip(raw, 20) + (f" {clip(unit, 10)}" if unit_said else "")
    if unit is not None and unit_said not in _FRACTION_UNITS + _PERCENT_UNITS:
        return None, f"reported error rate {shown!r} ignored: its unit is not a fraction or a percentage"
    if unit_said in _PERCENT_UNITS:
        if rate is None or not 0 <= rate <= 100:
            return None, f"reported error rate {shown!r} ignored: not a percentage between 0 and 100"
        return rate / 100, ""
    if rate is None or not 0 <= rate <= 1:
        return None, f"reported error rate {shown!r} ignored: not a fraction between 0 and 1"
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
    rule: HealthRule | None = None,
    *,
    latencies_reliable: bool = True,
) -> PollOutcome:
    """Combine one cycle's two probes of a region into a verdict (windowed error rate comes later).

    `rule` is the region's reading of health status codes; by default its own from `cfg.health`.
    When the poller itself was starved during the cycle (`latencies_reliable` false), its latencies
    measure the poller, not the region: no verdict made by the clock counts. A slow answer makes
    nobody degraded, a deployment probe out of time adds no reason, and a health probe out of time
    is held (neither success nor failure). Refusals, resets and HTTP errors still count."""
    reading = read_health(health, cfg.health.rule_for(region) if rule is None else rule)
    dep = read_deployment(deployment, region, ours)
    latency = health.latency_ms
    if health.timed_out and not latencies_reliable:
        # No latency either: the deadline it ran into measures the poller, not the region.
        return PollOutcome(region, health.started_at, False,
                           f"held: {health.reason} while the dashboard was overloaded", None,
                           deployment=dep, held=True)
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
    held = False
    if latency is not None and latency > cfg.slow_latency_ms:
        if latencies_reliable:
            degraded.append(f"slow: {latency:.0f} ms over {cfg.slow_latency_ms:.0f} ms")
        else:
            held = True
    if not dep.ok:
        if latencies_reliable or not deployment.timed_out:
            degraded.append(dep.reason)
    elif dep.misrouted:
        degraded.append(f"misrouted: answers as {clip(dep.region, 40)!r}")
    reason = "; ".join(degraded) if degraded else reading.reason
    return PollOutcome(region, health.started_at, False, reason, latency, tuple(degraded),
                       reading.reported_error_rate, dep, latency_held=held)


def with_window_error_rate(
    outcome: PollOutcome, failed_polls: int, polls: int, cfg: DashboardConfig
) -> PollOutcome:
    """Add the windowed polled error rate to an outcome's degraded reasons when it is over threshold."""
    if outcome.failed or outcome.held or polls < MIN_POLLS_FOR_ERROR_RATE:
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
    takes `success_threshold` good polls, so one lucky answer does not end an incident. A held poll
    (out of time while the poller was starved) changes nothing but the time of the last poll.
    """
    if outcome.held:
        return replace(prev, last_poll_at=outcome.at, revision=prev.revision + 1), None
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
        elif outcome.latency_held and not outcome.degraded_reasons and prev.state == DEGRADED:
            # Slow, but while the poller was starved: a slow region is not declared recovered either.
            state, reason = DEGRADED, prev.reason
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
                cfg: DashboardConfig, *, latencies_reliable: bool = True) -> dict[str, PollOutcome]:
    """Each region's verdict from one cycle's probe results (a health and a deployment per region)."""
    by_key = {(r.region, r.endpoint): r for r in results}
    return {
        region: evaluate_poll(region, by_key[(region, HEALTH)], by_key[(region, DEPLOYMENT)], ours, cfg,
                              cfg.health.rule_for(region), latencies_reliable=latencies_reliable)
        for region in dict.fromkeys(r.region for r in results)
    }


def cycle_samples(results: Sequence[ProbeResult], outcomes: Mapping[str, PollOutcome]) -> tuple[Sample, ...]:
    """The rows one cycle adds to `samples`, in probe order (no health row for a held poll)."""
    samples = []
    for result in results:
        outcome = outcomes[result.region]
        if result.endpoint == HEALTH and outcome.held:
            continue  # neither a good nor a failed poll: kept out of the error-rate window
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
    this poll is added here, so the window always sees the latest poll (a held poll is left out)."""
    window = window_before if outcome.held else WindowCounts(window_before.failed + int(outcome.failed),
                                                             window_before.polls + 1)
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
