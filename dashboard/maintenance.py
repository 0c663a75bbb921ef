"""Maintenance windows: planned work on a region, set, extended and ended by an operator (issue 15).

A window (region, start, end, reason, who) lives in the control state beside the overrides, so in
a cluster every instance sees the same windows. During a window the region's state is still
computed and shown, with the `maintenance` marker; its state notices are held back (the notifier
asks the control state) and, when the window ends or lapses, summarised in one notice built from
the event history ("during maintenance eu-west-1 went down twice, now up"), so a restart in the
middle loses nothing. Failing over *to* a region in maintenance is refused unless forced
(`routing.check_rules`, rule `target_in_maintenance`). Start, extend, end and lapse are audit
events. Error budgets leave polls inside a window out (`model.polls_in_windows`).
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .config import Settings
from .control import ControlState
from .model import UP, MaintenanceWindow, NewEvent, Transition, window_covers, window_end
from .routing import BadRequest, RoutingError, UnknownRegionError, check_reason, lapses_standalone
from .store import Store
from .text import iso

log = logging.getLogger(__name__)

START, EXTEND, END, LAPSE = "maintenance_start", "maintenance_extend", "maintenance_end", "maintenance_lapse"
EVENT_KINDS = (START, EXTEND, END, LAPSE)
# A window may be planned this far ahead; further is a calendar's job, not an on-call tool's.
MAX_START_AHEAD_SECONDS = 30 * 86_400
# A start "now" sent by a client whose clock is a little behind is still now.
CLOCK_SKEW_SECONDS = 60
MAX_COMMIT_ATTEMPTS = 5


class MaintenanceListener(Protocol):
    """Told when a window ends, with the summary of the state changes held back during it."""

    def maintenance_ended(self, region: str, summary: str, changes: list[Transition], *, at: float,
                          details: dict[str, Any] | None = None) -> None: ...


@dataclass(frozen=True)
class Started:
    """What a start did: the window as it is now, and whether an open window was extended."""

    window: MaintenanceWindow
    extended: bool


def public_window(window: MaintenanceWindow, now: float | None = None) -> dict[str, Any]:
    """A window as the API and `maintenance list --json` show it."""
    now = time.time() if now is None else now
    return {"id": window["id"], "region": window["region"], "starts_at": iso(window["starts_at"]),
            "ends_at": iso(window["ends_at"]), "reason": window["reason"], "actor": window["actor"],
            "created_at": iso(window["created_at"]),
            "ended_at": iso(window["ended_at"]) if window["ended_at"] is not None else None,
            "end_kind": window["end_kind"], "active": window_covers(window, now)}


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def summarise(region: str, changes: list[Transition], state_now: str) -> str:
    """'during maintenance eu-west-1 went down twice and degraded once, now up'."""
    counts = Counter(t.new_state for t in changes if t.new_state != UP)
    order = ("down", "degraded", "stale", "unknown")
    parts = [f"{'went ' + state if state == 'down' else state} {_times(counts[state])}"
             for state in order if counts.get(state)]
    what = " and ".join(parts) if parts else "had no change of state" if not changes else "stayed up"
    return f"during maintenance {region} {what}, now {state_now}"


class Maintenance:
    """Starts, extends, ends and lapses windows through the control state; tells the listener.

    `store` holds this instance's states and events (what the summary is built from); `control`
    holds the windows (the same SQLite store unless another backend is given)."""

    def __init__(self, settings: Settings, store: Store, *, control: ControlState | None = None,
                 listener: MaintenanceListener | None = None) -> None:
        self.settings = settings
        self.store = store
        self.control: ControlState = control if control is not None else store
        self.listener = listener
        self.max_seconds = settings.dashboard.maintenance.max_hours * 3600
        # As `Router.lapses_here`: in cluster mode only the leader's poll loop lapses windows.
        self.lapses_here: Callable[[], bool] = lapses_standalone(settings)

    def windows(self, *, open_only: bool = True, region: str | None = None) -> list[MaintenanceWindow]:
        return self.control.maintenance_windows(region=region, open_only=open_only)

    def start(self, region: Any, *, reason: Any, actor: str, duration_minutes: Any = None,
              ends_at: Any = None, starts_at: Any = None, now: float | None = None) -> Started:
        """Start (or plan) a window; an open window of the region that the new one overlaps is
        extended instead. Raises RoutingError (a named rule) for bad input."""
        now = time.time() if now is None else now
        if not isinstance(region, str) or region not in self.settings.regions:
            raise UnknownRegionError("unknown_region", f"unknown region {region!r}; configured regions: "
                                                       f"{', '.join(self.settings.regions)}")
        reason = check_reason(reason)
        start = now if starts_at is None else _number(starts_at, "starts_at")
        if start < now - CLOCK_SKEW_SECONDS:
            raise BadRequest("starts_in_past", f"the window would start at {iso(start)}, in the past; "
                                               "leave the start out to start now")
        start = max(start, now)
        if start > now + MAX_START_AHEAD_SECONDS:
            raise BadRequest("starts_too_late", "a window may be planned at most 30 days ahead")
        if (duration_minutes is None) == (ends_at is None):
            raise BadRequest("duration_required", "give either a duration or an end (not both)")
        if ends_at is not None:
            end = _number(ends_at, "ends_at")
        else:
            minutes = _number(duration_minutes, "duration_minutes")
            if minutes <= 0:
                raise BadRequest("bad_duration", f"the duration must be more than 0 minutes (got {minutes:g})")
            end = start + minutes * 60
        if end <= start:
            raise BadRequest("ends_before_start", f"the window would end ({iso(end)}) before it starts "
                                                  f"({iso(start)})")
        for _ in range(MAX_COMMIT_ATTEMPTS):
            overlapping = [w for w in self.control.maintenance_windows(region=region, start=start, end=end,
                                                                       open_only=True)]
            if overlapping:
                window = overlapping[-1]
                new_end = max(end, window["ends_at"])
                self._check_length(window["starts_at"], new_end)
                details = {"window_id": window["id"], "starts_at": iso(window["starts_at"]),
                           "ends_at": iso(new_end), "was_ending_at": iso(window["ends_at"])}
                event = NewEvent(at=now, region=region, kind=EXTEND, reason=reason, actor=actor, details=details)
                if self.control.change_maintenance(window["id"], expected_ends_at=window["ends_at"], event=event,
                                                   ends_at=new_end):
                    log.warning("event=maintenance_extend region=%s window=%d until=%s actor=%r", region,
                                window["id"], iso(new_end), actor)
                    return Started({**window, "ends_at": new_end}, extended=True)
                continue  # someone changed it between our read and our write: read again
            self._check_length(start, end)
            window = MaintenanceWindow(id=0, region=region, starts_at=start, ends_at=end, reason=reason, actor=actor,
                                       created_at=now, ended_at=None, end_kind=None)
            event = NewEvent(at=now, region=region, kind=START, reason=reason, actor=actor,
                             details={"starts_at": iso(start), "ends_at": iso(end)})
            window_id = self.control.add_maintenance(window, event=event)
            log.warning("event=maintenance_start region=%s window=%d from=%s until=%s actor=%r", region, window_id,
                        iso(start), iso(end), actor)
            return Started({**window, "id": window_id}, extended=False)
        raise RoutingError("conflict", "the window kept changing while this change was made; try again")

    def _check_length(self, start: float, end: float) -> None:
        if end - start > self.max_seconds:
            hours = self.settings.dashboard.maintenance.max_hours
            raise BadRequest("window_too_long", f"the window would last {(end - start) / 3600:.1f} h; at most "
                                                f"{hours:g} h (dashboard.maintenance.max_hours)")

    def end(self, *, actor: str, window_id: int | None = None, region: str | None = None,
            reason: Any = None, now: float | None = None) -> MaintenanceWindow:
        """End a window now (by id, or the open window of a region); a window not started yet is
        called off. Its held state changes are summarised."""
        now = time.time() if now is None else now
        reason = "maintenance ended" if reason is None or (isinstance(reason, str) and not reason.strip()) \
            else check_reason(reason)
        for _ in range(MAX_COMMIT_ATTEMPTS):
            window = self._open_window(window_id, region, now)
            details = {"window_id": window["id"], "starts_at": iso(window["starts_at"]),
                       "ends_at": iso(window["ends_at"]), "ended_at": iso(now)}
            event = NewEvent(at=now, region=window["region"], kind=END, reason=reason, actor=actor, details=details)
            if self.control.change_maintenance(window["id"], expected_ends_at=window["ends_at"], event=event,
                                               ended_at=now, end_kind="ended"):
                ended: MaintenanceWindow = {**window, "ended_at": now, "end_kind": "ended"}
                log.warning("event=maintenance_end region=%s window=%d actor=%r", window["region"], window["id"],
                            actor)
                self._summarise(ended, now)
                return ended
        raise RoutingError("conflict", "the window kept changing while it was ended; try again")

    def _open_window(self, window_id: int | None, region: str | None, now: float) -> MaintenanceWindow:
        if window_id is not None:
            found = [w for w in self.control.maintenance_windows() if w["id"] == window_id]
            if not found:
                raise _NotFound("unknown_window", f"no maintenance window with id {window_id}")
            if found[0]["ended_at"] is not None:
                raise RoutingError("window_over", f"maintenance window {window_id} is over already "
                                                  f"({found[0]['end_kind']} at {iso(found[0]['ended_at'])})")
            return found[0]
        if not isinstance(region, str) or region not in self.settings.regions:
            raise UnknownRegionError("unknown_region", f"unknown region {region!r}; configured regions: "
                                                       f"{', '.join(self.settings.regions)}")
        windows = self.control.maintenance_windows(region=region, open_only=True)
        current = [w for w in windows if window_covers(w, now)] or windows
        if not current:
            raise RoutingError("not_in_maintenance", f"{region} has no maintenance window to end")
        return current[0]

    def lapse_expired(self, now: float | None = None) -> list[MaintenanceWindow]:
        """End every open window whose end has passed, each with a lapse event; safe in any process
        (a window lapsed by another process at once loses the compare-and-set and is skipped), where
        `lapses_here` allows: in cluster mode, the leader."""
        if not self.lapses_here():
            return []
        now = time.time() if now is None else now
        lapsed: list[MaintenanceWindow] = []
        for window in self.control.maintenance_windows(open_only=True, end=now):
            if window["ends_at"] > now:
                continue
            event = NewEvent(at=now, region=window["region"], kind=LAPSE, actor="expiry",
                             reason="maintenance window over",
                             details={"window_id": window["id"], "starts_at": iso(window["starts_at"]),
                                      "ends_at": iso(window["ends_at"])})
            if self.control.change_maintenance(window["id"], expected_ends_at=window["ends_at"], event=event,
                                               ended_at=window["ends_at"], end_kind="lapsed"):
                lapsed.append({**window, "ended_at": window["ends_at"], "end_kind": "lapsed"})
        for window in lapsed:
            log.warning("event=maintenance_lapse region=%s window=%d", window["region"], window["id"])
            self._summarise(window, now)
        return lapsed

    def _summarise(self, window: MaintenanceWindow, now: float) -> None:
        """One notice of what the region did during the window, once it is over."""
        if self.listener is None or window["starts_at"] > now:
            return  # called off before it started: nothing was held back
        region, start, end = window["region"], window["starts_at"], window_end(window)
        changes = [Transition(region, e["old_state"] or "unknown", e["new_state"] or "unknown", e["reason"] or "",
                              e["at"])
                   for e in self.store.events_between(region, start, end, ("state",))]
        state = self.store.region_states([region]).get(region)
        text = summarise(region, changes, state.state if state else "unknown")
        try:
            self.listener.maintenance_ended(region, text, changes, at=now, details={
                "window_id": window["id"], "starts_at": iso(start), "ended_at": iso(end),
                "end_kind": window["end_kind"], "window_reason": window["reason"], "window_actor": window["actor"],
                "state": state.state if state else "unknown"})
        except Exception:  # a notice must never undo or fail the change, which is committed
            log.exception("event=maintenance_notice_failed region=%s", region)


# A translucent band any state colour and either theme shows through.
SHADE_COLOUR = "rgba(130, 80, 223, 0.15)"


def shade_windows(figure: dict[str, Any], windows: list[MaintenanceWindow]) -> dict[str, Any]:
    """Shade each window on a chart figure (Plotly JSON), behind the data, with its reason on hover
    of the band's label; kept apart from charts.py, which builds the figure."""
    layout = figure.setdefault("layout", {})
    shapes = list(layout.get("shapes") or [])
    for window in windows:
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": iso(window["starts_at"]),
                       "x1": iso(window_end(window)), "y0": 0, "y1": 1, "layer": "below", "line": {"width": 0},
                       "fillcolor": SHADE_COLOUR, "name": f"maintenance {window['id']}"})
    layout["shapes"] = shapes
    return figure


class _NotFound(RoutingError):
    status = 404


# Unix times a body may name: from 1970 to the year 3000 (anything else is no time at all).
MAX_TIMESTAMP = 32_503_680_000.0


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest("bad_body", f"{name}: must be a finite number (got {str(value)[:20]})")
    if name != "duration_minutes" and not 0 <= value <= MAX_TIMESTAMP:
        raise BadRequest("bad_time", f"{name}: must be a Unix time in seconds (got {value:g})")
    if name == "duration_minutes" and value > MAX_TIMESTAMP / 60:
        raise BadRequest("window_too_long", f"the window would last {value:g} minutes")
    return float(value)

