"""The fleet's stored status as a reader sees it: stale when the poller has gone quiet."""
from __future__ import annotations

import time

from . import health
from .config import Settings
from .poller import RegionReport
from .store import Store


def current_status(settings: Settings, store: Store, now: float | None = None) -> list[RegionReport]:
    """Every configured region's stored state, error rate over the window, version and markers."""
    now = time.time() if now is None else now
    window = settings.dashboard.error_rate_window_seconds
    reports = []
    for row in store.region_rows(settings.regions):
        stored = health.RegionState(
            region=row["region"], state=row["state"], reason=row.get("reason") or "",
            last_poll_at=row.get("last_poll_at"),
        )
        state, reason = health.effective_state(stored, now, settings.stale_after_seconds)
        reports.append(RegionReport(
            region=row["region"],
            state=state,
            reason=reason,
            latency_ms=row.get("latency_ms"),
            error_rate=store.error_rate(row["region"], now - window),
            version=row.get("version"),
            markers=row["markers"],
            last_poll_at=row.get("last_poll_at"),
            since=row.get("since"),
        ))
    return reports
