"""Error budgets, burn rates and the SRE workbook's multiwindow, multi-burn-rate alerts, per region.

A poll is bad when its health probe failed or the region said it is failing: the error-rate
definition used everywhere else. Against an objective `target` (say 99.9 % good polls over
`window_days`):

- availability over a window = good polls / polls;
- burn rate over a window = bad fraction / (1 - target): 1 spends the budget exactly over the SLO
  window, 14.4 spends 2 % of a 30-day budget in an hour;
- error budget remaining = 1 - bad fraction over the SLO window / (1 - target); negative once spent.

Alerts follow the workbook's table (chapter 5, "Alerting on SLOs"): **page** when the 1 h and 5 m
burn rates both exceed 14.4, or the 6 h and 30 m both exceed 6; **ticket** when the 3 d and 6 h
both exceed 1. The long window says the budget is really going; the short one that it still is, so
an alert ends soon after the burning stops.

Every count comes from `budget_counts`, which reads `Store.window_counts` (rollups plus the raw
tail, so a 30-day window costs what a 1-hour one does). `budget_counts` is also the one place to
leave polls out of the budget (issue 15: bad polls inside maintenance windows).

Alert evaluation runs in the poller's cycle, right after the cycle is stored (`evaluate_alerts`):
an alert then starts at the very poll that crossed the threshold, only the lease holder evaluates
(one poller per database: no double alerts), and the notices go out through the same hand-over as
state changes. It costs a handful of indexed reads per cycle.

The figures it computed are kept with the alerts (`app_state`), and the fleet-wide reads (the
overview, `/api/v1/status`) show those (`latest_figures`): as of the last cycle, which is when
they last changed, for one small read instead of eight windows over every region per page view
(about 60 ms at 200 regions; a crowd refreshing the overview must not cost that every time).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .model import SloAlertChange, WindowCounts
from .store import Store
from .text import iso, one_line

AVAILABILITY_WINDOWS = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
BURN_WINDOWS = {"5m": 300, "30m": 1800, "1h": 3600, "6h": 6 * 3600, "3d": 3 * 86_400}
PAGE, TICKET = "page", "ticket"
SEVERITIES = (PAGE, TICKET)
OK = "ok"  # a region's alert level with no SLO alert firing
DAY = 86_400
DAILY_BARS = 30
ALERT_STATE_KEY = "slo_alerts"
FIGURES_STATE_KEY = "slo_figures"
# A rule fires only once its long window holds at least this share of the polls it should: on a
# dashboard started ten minutes ago one lost packet is 1 bad poll of 40, a "burn" of 25x, and
# "one lost packet does not page anyone" (DESIGN.md). So pages start after 30 min of history,
# tickets after a day and a half; with full windows the workbook's table applies unchanged.
MIN_WINDOW_COVERAGE = 0.5
SLO_EVENT = "slo_alert"


@dataclass(frozen=True)
class AlertRule:
    """Fire `severity` when the burn rates over both windows exceed `threshold`."""

    severity: str
    long_window: str
    short_window: str
    threshold: float

    @property
    def windows(self) -> list[str]:
        return [self.long_window, self.short_window]


ALERT_RULES = (
    AlertRule(PAGE, "1h", "5m", 14.4),
    AlertRule(PAGE, "6h", "30m", 6.0),
    AlertRule(TICKET, "3d", "6h", 1.0),
)


# -- pure arithmetic -------------------------------------------------------------------------------

def bad_fraction(counts: WindowCounts) -> float | None:
    return counts.failed / counts.polls if counts.polls else None


def availability(counts: WindowCounts) -> float | None:
    """Good polls / polls; None when nothing was polled in the window."""
    bad = bad_fraction(counts)
    return None if bad is None else 1.0 - bad


def burn_rate(counts: WindowCounts, target: float) -> float | None:
    """How fast the window spends the error budget: 1 spends it exactly over the SLO window."""
    bad = bad_fraction(counts)
    return None if bad is None else bad / (1.0 - target)


def budget_remaining(counts: WindowCounts, target: float) -> float | None:
    """The share of the error budget left over the SLO window; negative once overspent."""
    rate = burn_rate(counts, target)
    return None if rate is None else 1.0 - rate


def firing(burn_rates: dict[str, float | None], covered: dict[str, bool] | None = None) -> dict[str, AlertRule]:
    """The first rule of each severity whose two burn rates both exceed its threshold, among the
    rules whose long window is `covered` (all when not given)."""
    fired: dict[str, AlertRule] = {}
    for rule in ALERT_RULES:
        if rule.severity in fired or (covered is not None and not covered.get(rule.long_window)):
            continue
        rates = [burn_rates.get(w) for w in rule.windows]
        if all(rate is not None and rate > rule.threshold for rate in rates):
            fired[rule.severity] = rule
    return fired


def alert_level(active: dict[str, Any]) -> str:
    """A region's SLO alert level for notices: the gravest severity firing, else "ok"."""
    return next((severity for severity in SEVERITIES if severity in active), OK)


# -- reading the store -----------------------------------------------------------------------------

def budget_counts(store: Store, regions: Sequence[str], since: float, until: float) -> dict[str, WindowCounts]:
    """(failed, polls) per region in [since, until] as the error budget counts them.

    The one function every SLO figure reads its polls through. Issue 15 (maintenance windows)
    leaves bad polls inside a maintenance window out of the budget here: subtract their counts
    (`store.window_counts` over each window's overlap with [since, until]) from both fields."""
    return store.window_counts(regions, since, until)


@dataclass(frozen=True)
class SloFigures:
    """A region's availability, budget and burn rates at one moment."""

    region: str
    target: float
    window_days: int
    availability: dict[str, float | None]
    error_budget_remaining: float | None
    burn_rate: dict[str, float | None]
    budget_polls: int
    budget_failed: int
    covered: dict[str, bool] = field(default_factory=dict)  # burn windows holding enough polls to alert on

    def firing(self) -> dict[str, AlertRule]:
        return firing(self.burn_rate, self.covered)


def figures(store: Store, settings: Settings, regions: Sequence[str] | None = None,
            now: float | None = None) -> dict[str, SloFigures]:
    """Every region's SLO figures, one `budget_counts` per distinct window (all regions at once)."""
    now = time.time() if now is None else now
    regions = list(settings.regions if regions is None else regions)
    slo = settings.dashboard.slo
    budget_seconds = slo.window_days * DAY
    interval = settings.dashboard.poll_interval_seconds
    lengths = {*AVAILABILITY_WINDOWS.values(), *BURN_WINDOWS.values(), budget_seconds}
    # window_counts is exact to the poll within raw retention; a window reaching past it must start
    # on an hour (the minute counts go with the raw samples), one hour longer at most of 3 or 30 days.
    raw_seconds = settings.dashboard.raw_retention_hours * 3600

    def since(length: int) -> float:
        return now - length if length <= raw_seconds else math.floor((now - length) / 3600) * 3600

    counts = {length: budget_counts(store, regions, since(length), now) for length in sorted(lengths)}
    result = {}
    for region in regions:
        target = slo.target_for(region)
        budget = counts[budget_seconds][region]
        result[region] = SloFigures(
            region=region, target=target, window_days=slo.window_days,
            availability={name: availability(counts[length][region]) for name, length in AVAILABILITY_WINDOWS.items()},
            error_budget_remaining=budget_remaining(budget, target),
            burn_rate={name: burn_rate(counts[length][region], target) for name, length in BURN_WINDOWS.items()},
            budget_polls=budget.polls, budget_failed=budget.failed,
            covered={name: counts[length][region].polls >= MIN_WINDOW_COVERAGE * length / interval
                     for name, length in BURN_WINDOWS.items()},
        )
    return result


# -- alerts: evaluated by the poller, kept in app_state, every start and end an event -------------

def stored_alerts(store: Store) -> dict[str, dict[str, dict[str, Any]]]:
    """The alerts firing as last evaluated: {region: {severity: {"since", "windows"}}}."""
    raw = store.get_state(ALERT_STATE_KEY)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def evaluate_alerts(store: Store, settings: Settings, now: float | None = None) -> list[SloAlertChange]:
    """Compare the burn rates with the alert rules; record each start and end (an event, and the
    alerts now firing) in one transaction, and return the changes for notices."""
    now = time.time() if now is None else now
    current = figures(store, settings, now=now)
    previous = stored_alerts(store)
    changes: list[SloAlertChange] = []
    active: dict[str, dict[str, dict[str, Any]]] = {}
    for region, fig in current.items():
        before = previous.get(region, {})
        fired = fig.firing()
        after: dict[str, dict[str, Any]] = {}
        region_changes = []
        for severity in SEVERITIES:
            rule = fired.get(severity)
            was = before.get(severity)
            if rule is not None:
                after[severity] = {"since": was["since"] if was else now, "windows": rule.windows}
                if was is None:
                    region_changes.append((severity, True, rule, now))
            elif was is not None:
                ended_rule = next(r for r in ALERT_RULES if r.severity == severity
                                  and r.windows == list(was.get("windows") or r.windows))
                region_changes.append((severity, False, ended_rule, float(was["since"])))
        old_level, new_level = alert_level(before), alert_level(after)
        for severity, started, rule, since in region_changes:
            changes.append(SloAlertChange(region, severity, started, tuple(rule.windows), dict(fig.burn_rate),
                                       rule.threshold, now, since, old_level, new_level))
        if after:
            active[region] = after
    with store.transaction():
        store.set_state(FIGURES_STATE_KEY, json.dumps(
            {"at": now, "regions": {region: dataclasses.asdict(fig) for region, fig in current.items()}}))
        if changes or active != previous:
            for change in changes:
                store.insert_event(
                    at=change.at, region=change.region, kind=SLO_EVENT, reason=change.reason,
                    details={"severity": change.severity, "status": "firing" if change.started else "resolved",
                             "windows": list(change.windows), "threshold": change.threshold,
                             "burn_rate": change.burn_rates, "since": change.since})
            store.set_state(ALERT_STATE_KEY, json.dumps(active))
    return changes


@functools.lru_cache(maxsize=4)
def _stored_figures(raw: str) -> tuple[float, dict[str, SloFigures]]:
    """The figures the last cycle kept, parsed once per cycle (readers share the same objects)."""
    value = json.loads(raw)
    return float(value["at"]), {region: SloFigures(**fields) for region, fields in value["regions"].items()}


def latest_figures(store: Store, settings: Settings, regions: Sequence[str] | None = None,
                   now: float | None = None) -> dict[str, SloFigures]:
    """Every region's figures as of the poller's last cycle; computed afresh when there are none,
    when they are older than a stale region (the poller is not running), or lack a region."""
    now = time.time() if now is None else now
    regions = list(settings.regions if regions is None else regions)
    raw = store.get_state(FIGURES_STATE_KEY)
    if raw:
        try:
            at, stored = _stored_figures(raw)
        except (ValueError, KeyError, TypeError):  # written by another version: compute instead
            at, stored = 0.0, {}
        if now - at <= settings.stale_after_seconds and all(region in stored for region in regions):
            return {region: stored[region] for region in regions}
    return figures(store, settings, regions, now)


def alerts_of(region: str, active: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """A region's firing alerts as the API shows them."""
    return [{"severity": severity, "windows": list(info.get("windows") or []), "since": iso(float(info["since"]))}
            for severity, info in active.get(region, {}).items() if severity in SEVERITIES]


def as_json(fig: SloFigures, active: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """`GET /api/v1/regions/<r>/slo`."""
    return {"region": fig.region, "target": fig.target, "window_days": fig.window_days,
            "availability": fig.availability, "error_budget_remaining": fig.error_budget_remaining,
            "burn_rate": fig.burn_rate, "alerts": alerts_of(fig.region, active)}


def short_json(fig: SloFigures, active: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The short form in `/api/v1/status`."""
    return {"target": fig.target, "availability_24h": fig.availability["24h"],
            "availability_30d": fig.availability["30d"], "error_budget_remaining": fig.error_budget_remaining,
            "alerts": [a["severity"] for a in alerts_of(fig.region, active)]}


# -- the overview's 30 daily bars ------------------------------------------------------------------

@dataclass(frozen=True)
class DayBar:
    """One UTC day of a region: its polls, bad polls and incidents (changes to down)."""

    day: float  # midnight UTC
    polls: int
    failed: int
    incidents: list[str] = field(default_factory=list)

    @property
    def availability(self) -> float | None:
        return availability(WindowCounts(self.failed, self.polls))


class DailyCounts:
    """Per-day counts of completed days, kept in memory: a day that is over does not change, so
    each overview refresh asks `budget_counts` for today only (the other 29 once per process)."""

    def __init__(self) -> None:
        self._days: dict[tuple[str, float], WindowCounts] = {}
        self._lock = threading.Lock()

    def counts(self, store: Store, regions: Sequence[str], day: float, now: float) -> dict[str, WindowCounts]:
        end = day + DAY
        if end > now - 3600:  # today, or a day whose last hour may not be rolled up yet
            return budget_counts(store, regions, day, min(end, now) - 1e-6)
        with self._lock:
            missing = [r for r in regions if (r, day) not in self._days]
        if missing:
            fresh = budget_counts(store, missing, day, end - 1e-6)
            with self._lock:
                if len(self._days) > 50_000:
                    self._days.clear()
                self._days.update({(r, day): fresh[r] for r in missing})
        with self._lock:
            return {r: self._days[(r, day)] for r in regions}


def daily_bars(store: Store, settings: Settings, cache: DailyCounts, now: float | None = None,
               days: int = DAILY_BARS, regions: Sequence[str] | None = None) -> dict[str, list[DayBar]]:
    """Each region's last `days` UTC days, oldest first, today last."""
    now = time.time() if now is None else now
    today = math.floor(now / DAY) * DAY
    regions = list(settings.regions if regions is None else regions)
    starts = [today - DAY * i for i in range(days - 1, -1, -1)]
    per_day = {day: cache.counts(store, regions, day, now) for day in starts}
    bars: dict[str, list[DayBar]] = {}
    for region in regions:
        incidents: dict[float, list[str]] = {}
        for event in store.events_between(region, starts[0], now + 1, ("state", SLO_EVENT)):
            if event["kind"] == "state" and event["new_state"] != "down":
                continue
            if event["kind"] == SLO_EVENT and "ended" in event["reason"]:
                continue
            day = math.floor(event["at"] / DAY) * DAY
            incidents.setdefault(day, []).append(f"{iso(event['at'])[11:16]} {event['reason']}")
        bars[region] = [DayBar(day, per_day[day][region].polls, per_day[day][region].failed,
                               incidents.get(day, [])) for day in starts]
    return bars


def strip_summary(strip_bars: Sequence[dict[str, str]]) -> str:
    """What the strip says to a screen reader, in one line (the bars themselves carry titles)."""
    bands = Counter(bar["band"] for bar in strip_bars)
    return (f"{len(strip_bars)} days: {bands['ok']} met the objective, {bands['warn'] + bands['bad']} did not"
            f" ({bands['bad']} by far), {bands['none']} not polled")


def strip(bars: Sequence[DayBar], target: float) -> list[dict[str, str]]:
    """The overview's daily bars as the card shows them: a colour band, a hover text and a label.

    Green when the day met the objective, amber when it burned up to ten days' budget, red beyond,
    grey when the region was not polled. Built here rather than in the template: 30 bars of 200
    regions is 6,000 of them per overview refresh. Incident texts are a region's words: made one
    line with control characters visible (the template escapes them)."""
    floor = 1.0 - 10 * (1.0 - target)
    shown = []
    for bar in bars:
        day = iso(bar.day)[:10]
        a = bar.availability
        if a is None:
            band, figures = "none", "not polled"
        else:
            band = "ok" if a >= target else "warn" if a >= floor else "bad"
            figures = f"{a * 100:.3f}%, {bar.failed} of {bar.polls} polls bad"
        shown.append({"band": band, "title": "\n".join([f"{day} {figures}", *(one_line(i) for i in bar.incidents)])})
    return shown


def alert_texts(alerts: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Firing alerts as a card line: severity, the windows, the threshold they burn over, since."""
    thresholds = {(rule.severity, rule.long_window): rule.threshold for rule in ALERT_RULES}
    return [{"severity": a["severity"], "since": a["since"],
             "text": f"SLO {a['severity']}: burn rate {' & '.join(a['windows'])} over "
                     f"{thresholds.get((a['severity'], (a['windows'] or [''])[0]), 0):g}x"}
            for a in alerts]
