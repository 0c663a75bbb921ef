"""Wire the poll cycle to APScheduler: one cycle at a time, overruns logged, never stacked.

The database lease makes this safe to start in several processes: only the lease holder polls;
the others stand by and take over within a lease lifetime if the holder dies.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.background import BackgroundScheduler

from .heartbeat import Heartbeat, write_heartbeat
from .history import maintenance_step
from .model import CycleReport
from .poller import Poller, PollerBusy
from .routing import Router

log = logging.getLogger(__name__)
JOB_ID = "poll-cycle"
LAPSE_JOB_ID = "lapse-overrides"
LAPSE_CHECK_SECONDS = 5
# A publisher behind the table is retried on its own back-off (publish.RETRY_*); this only looks.
PUBLISH_RETRY_JOB_ID = "retry-publishers"
PUBLISH_RETRY_SECONDS = 1
MAINTENANCE_JOB_ID = "history-maintenance"
MAINTENANCE_SECONDS = 60


class PollingService:
    """Runs `Poller.run_cycle` every poll interval in a background thread."""

    def __init__(self, poller: Poller, *, on_cycle: Callable[[CycleReport], None] | None = None,
                 router: Router | None = None, heartbeat: bool = False) -> None:
        self.poller = poller
        # Whether to leave a heartbeat row after every cycle: for a web process elsewhere to read.
        self.heartbeat = heartbeat
        self.overloaded_since: float | None = None
        self.router = router  # publishes at start, lapses expired overrides, retries lagging publishers
        self.interval = poller.settings.dashboard.poll_interval_seconds
        self.on_cycle = on_cycle  # called with each CycleReport, e.g. to print state changes
        self.last_report: CycleReport | None = None
        self.last_cycle_finished_at: float | None = None
        self.last_error: str | None = None
        self.standby_reason: str | None = None
        self._lock = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running

    def start(self) -> None:
        """Start polling now and every interval after; a second call does nothing."""
        with self._lock:
            if self._scheduler is not None:
                return
            scheduler = BackgroundScheduler(
                job_defaults={
                    "max_instances": 1,  # never two cycles at once
                    "coalesce": True,  # a late cycle runs once, not once per missed slot
                    "misfire_grace_time": max(1, int(self.interval)),
                },
                daemon=True,
            )
            scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
            scheduler.add_job(self.run_once, "interval", seconds=self.interval, id=JOB_ID,
                              next_run_time=datetime.now(UTC))
            if self.router is not None:
                # The store is the source of truth; every publisher applies it again at every start.
                # One that fails is recorded (never raised: polling matters more) and retried.
                self.router.publish()
                scheduler.add_job(self._lapse_overrides, "interval", seconds=LAPSE_CHECK_SECONDS,
                                  id=LAPSE_JOB_ID)
                scheduler.add_job(self._retry_publishers, "interval", seconds=PUBLISH_RETRY_SECONDS,
                                  id=PUBLISH_RETRY_JOB_ID)
            # Rollups, retention and the size bound: small transactions, in their own thread, so
            # they never hold up a poll cycle; only the process that polls does them.
            scheduler.add_job(self.run_maintenance, "interval", seconds=MAINTENANCE_SECONDS, id=MAINTENANCE_JOB_ID,
                              next_run_time=datetime.now(UTC) + timedelta(seconds=10))
            scheduler.start()
            self._scheduler = scheduler
            log.info("event=scheduler_started interval_s=%g", self.interval)

    def stop(self) -> None:
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=True)
            self.poller.release_lease()
            log.info("event=scheduler_stopped")

    def run_once(self) -> CycleReport | None:
        """One scheduled cycle; never raises, so the scheduler keeps going whatever happens."""
        report = self._run_once()
        if self.heartbeat:
            self._beat(report)
        return report

    def _beat(self, report: CycleReport | None) -> None:
        """Leave this cycle's heartbeat row; a database too busy for it only delays the next one."""
        try:
            write_heartbeat(self.poller.store, Heartbeat(
                pid=os.getpid(), at=time.time(), standby=self.standby_reason, last_error=self.last_error,
                lag_ms=None if report is None else report.lag_ms,
                cpu_starved_ms=None if report is None else report.cpu_starved_ms,
                overloaded=self.overloaded_since is not None, overloaded_since=self.overloaded_since))
        except Exception:
            log.exception("event=heartbeat_failed")

    def _run_once(self) -> CycleReport | None:
        started = time.monotonic()
        try:
            report = self.poller.run_cycle()
        except PollerBusy as busy:
            if self.standby_reason != str(busy):
                log.info("event=standby reason=%r", str(busy))
            self.standby_reason = str(busy)
            return None
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("event=cycle_failed error=%r", self.last_error)
            return None
        self.standby_reason = None
        self.last_error = None if report.stored else report.note
        self.last_report = report
        self.last_cycle_finished_at = time.time()
        if report.overloaded:
            if self.overloaded_since is None:
                self.overloaded_since = report.started_at
                log.warning("event=poller_overloaded lag_ms=%.0f cpu_starved_ms=%.0f", report.lag_ms or 0,
                            report.cpu_starved_ms or 0)
        else:
            self.overloaded_since = None
        elapsed = time.monotonic() - started
        if elapsed > self.interval:
            log.warning("event=cycle_overrun duration_s=%.2f interval_s=%g", elapsed, self.interval)
        if self.on_cycle is not None:
            try:
                self.on_cycle(report)
            except Exception:
                log.exception("event=on_cycle_failed")
        return report

    def run_maintenance(self) -> dict[str, Any] | None:
        """One round of history maintenance, when this process holds the poller lease."""
        if not self.poller.holds_lease():
            return None
        try:
            result = maintenance_step(self.poller.store, self.poller.settings)
        except Exception:
            log.exception("event=maintenance_failed")
            return None
        log.info("event=maintenance rolled_up=%d pruned_samples=%d pruned_minutes=%d pruned_hours=%d "
                 "pruned_counts=%d size_dropped=%d", result["rolled_up"], result["pruned"].samples,
                 result["pruned"].minute_rollups, result["pruned"].hour_rollups, result["pruned"].counts,
                 result["size_dropped"])
        return result

    def _lapse_overrides(self) -> None:
        if self.router is None:
            return
        try:
            self.router.lapse_expired()
        except Exception:
            log.exception("event=lapse_failed")

    def _retry_publishers(self) -> None:
        if self.router is None:
            return
        try:
            self.router.retry_publishers()
        except Exception:
            log.exception("event=publish_retry_failed")

    def _on_skipped(self, event: JobEvent) -> None:
        log.warning("event=cycle_skipped reason=%s", "previous cycle still running"
                    if event.code == EVENT_JOB_MAX_INSTANCES else "missed its start time")

