"""The fleet's stored status as a reader sees it: stale when the poller has gone quiet."""
from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

from . import health
from .config import Settings
from .model import MaintenanceWindow, Override, RegionReport, RegionStatus, window_covers
from .store import Store

SHORT_WINDOW_SECONDS = 5 * 60
LONG_WINDOW_SECONDS = 60 * 60


def effective_states(settings: Settings, store: Store, now: float | None = None) -> dict[str, str]:
    """Each configured region's state as a reader sees it (stale applied), and nothing else."""
    now = time.time() if now is None else now
    return {region: health.effective_state(state, now, settings.stale_after_seconds)[0]
            for region, state in store.region_states(settings.regions).items()}


def fleet_status(settings: Settings, store: Store, overrides: list[Override],
                 now: float | None = None, windows: list[MaintenanceWindow] | None = None) -> list[RegionStatus]:
    """Every configured region, in config order: state (stale applied), reason, error rates, markers,
    and the override and maintenance window in force (from the control state, passed in)."""
    now = time.time() if now is None else now
    in_maintenance = current_windows(windows or [], now)
    regions = []
    by_region = {o["region"]: o for o in overrides}
    rates_5m = store.error_rates(settings.regions, now - SHORT_WINDOW_SECONDS)
    rates_1h = store.error_rates(settings.regions, now - LONG_WINDOW_SECONDS)
    for row in store.region_rows(settings.regions):
        name = row["region"]
        stored = health.RegionState(region=name, state=row["state"], reason=row.get("reason") or "",
                                    last_poll_at=row.get("last_poll_at"))
        state, reason = health.effective_state(stored, now, settings.stale_after_seconds)
        markers = dict(row["markers"])
        if state == health.STALE:
            markers["stale"] = reason
        override = by_region.get(name)
        if override:
            markers["override"] = describe_override(override)
        window = in_maintenance.get(name)
        if window:
            markers["maintenance"] = describe_window(window)
        regions.append(RegionStatus({
            "region": name,
            "state": state,
            "reason": reason,
            "since": row.get("since"),
            "last_poll_at": row.get("last_poll_at"),
            "latency_ms": row.get("latency_ms"),
            "error_rate_5m": rates_5m[name],
            "error_rate_1h": rates_1h[name],
            "reported_error_rate": row.get("reported_error_rate"),
            "version": row.get("version"),
            "markers": markers,
            "reported_region": row.get("reported_region"),
            "reported_primary_region": row.get("reported_primary_region"),
            "reported_regions": row.get("reported_regions"),
            "deployment_at": row.get("deployment_at"),
            "override": override,
            "maintenance": window,
            "vantage": {settings.cluster_name: {"state": state, "reason": reason, "at": row.get("last_poll_at")}},
            "disputed": False,
        }))
    return regions


def next_change_at(settings: Settings, regions: list[RegionStatus], windows: list[MaintenanceWindow],
                   now: float) -> float | None:
    """The first moment after `now` at which time alone changes what `fleet_status` shows: a region
    turning stale, an override lapsing, a maintenance window starting or ending. None: no such moment."""
    moments = [r["last_poll_at"] + settings.stale_after_seconds for r in regions
               if r["state"] != health.STALE and r["last_poll_at"] is not None]
    moments += [r["override"]["until"] for r in regions if r["override"] and r["override"]["until"]]
    moments += [t for w in windows for t in (w["starts_at"], w["ends_at"])]
    # effective_state turns stale strictly after the limit: a hair later, not at the very instant.
    return min((m + 0.001 for m in moments if m > now), default=None)


def describe_override(override: Override) -> str:
    sessions = "existing sessions read-only" if override["read_only"] else "existing sessions writable"
    until = f", until {health.format_duration(override['until'] - time.time())} from now" if override["until"] else ""
    forced = " (forced)" if override["forced"] else ""
    return (f"new traffic goes to {override['target_region']}, {sessions}; set by {override['actor']}"
            f"{forced}{until}: {override['reason']}")


def current_windows(windows: list[MaintenanceWindow], now: float) -> dict[str, MaintenanceWindow]:
    """The window covering each region now (the latest-ending one, when several overlap)."""
    by_region: dict[str, MaintenanceWindow] = {}
    for window in windows:
        held = by_region.get(window["region"])
        if window_covers(window, now) and (held is None or window["ends_at"] > held["ends_at"]):
            by_region[window["region"]] = window
    return by_region


def describe_window(window: MaintenanceWindow) -> str:
    """'in maintenance until 14:00 UTC (reason, by alice)': the marker's note on card and page."""
    until = datetime.fromtimestamp(window["ends_at"], tz=UTC).strftime("%H:%M UTC")
    return f"in maintenance until {until} ({window['reason']}, by {window['actor']})"


def summary(regions: list[RegionStatus]) -> dict[str, int]:
    counts = Counter(r["state"] for r in regions)
    return {state: counts.get(state, 0) for state in (health.UP, health.DEGRADED, health.DOWN, health.STALE,
                                                       health.UNKNOWN)}


def current_status(settings: Settings, store: Store, overrides: list[Override],
                   now: float | None = None, windows: list[MaintenanceWindow] | None = None) -> list[RegionReport]:
    """The CLI's view: each region with the error rate over `dashboard.error_rate_window_seconds`."""
    now = time.time() if now is None else now
    rates = store.error_rates(settings.regions, now - settings.dashboard.error_rate_window_seconds)
    return [
        RegionReport(
            region=r["region"], state=r["state"], reason=r["reason"], latency_ms=r["latency_ms"],
            error_rate=rates[r["region"]], version=r["version"],
            markers=r["markers"], last_poll_at=r["last_poll_at"], since=r["since"],
        )
        for r in fleet_status(settings, store, overrides, now, windows)
    ]
