"""One poll cycle: probe every region, evaluate, store; as a step function the scheduler wires up.

Probing never touches the database, and a database that is busy or locked never turns into a
failed probe: the cycle's results wait in memory and are written, in order, by the next cycle.
"""
from __future__ import annotations

import logging
import os
import socket
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from . import health, slo
from .config import Settings
from .control import ControlState
from .model import CycleReport, ProbeResult, RegionReport, RegionUpdate, SloAlertChange, Transition
from .probes import Prober
from .store import Store

log = logging.getLogger(__name__)
# How many unwritten cycles to hold while the database is unavailable (an hour at 15 s).
MAX_PENDING_CYCLES = 240
# Past this event-loop lag in a cycle, its latencies measure the poller, not the regions.
LAG_BOUND_MS = 250.0


class PollerBusy(Exception):
    """Another process holds this database's poller lease."""

    def __init__(self, holder: str, expires_at: float) -> None:
        self.holder = holder
        self.expires_at = expires_at
        super().__init__(
            f"another poller ({holder}) is polling this database (lease until "
            f"{time.strftime('%H:%M:%S', time.localtime(expires_at))}); not polling"
        )


@dataclass(frozen=True)
class _Batch:
    """One cycle's raw probe results, kept until they are written."""

    at: float
    results: tuple[ProbeResult, ...]
    latencies_reliable: bool = True


def prober_for(settings: Settings) -> Prober:
    """The long-lived client that probes this fleet, sized for it."""
    cfg = settings.dashboard
    return Prober(timeout_seconds=cfg.timeout_seconds, max_body_bytes=cfg.max_body_bytes,
                  max_connections=max(100, 4 * len(settings.regions)))


def lease_holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Poller:
    """Runs poll cycles for one database; holds its prober (and its keep-alive connections)."""

    def __init__(self, settings: Settings, store: Store, prober: Prober | None = None, *,
                 control: ControlState | None = None) -> None:
        self.settings = settings
        self.store = store
        # The poller lease is shared control state: one poller per database (or per cluster).
        self.control: ControlState = control if control is not None else store
        cfg = settings.dashboard
        self.prober = prober or prober_for(settings)
        self._owns_prober = prober is None
        self._pending: list[_Batch] = []
        self.holder = lease_holder_name()
        # The lease outlives a missed cycle or two, and lapses soon after this process dies.
        self.lease_ttl = max(3 * cfg.poll_interval_seconds, 10.0)
        self._lease_until = 0.0

    def close(self) -> None:
        if self._owns_prober:
            self.prober.close()

    def acquire_lease(self) -> None:
        """Take or renew this process's right to poll, or raise PollerBusy.

        A database too busy to renew the lease does not stop polling while the lease we already
        hold runs: a locked database must not turn into a gap in monitoring.
        """
        try:
            lease = self.control.acquire_lease(self.holder, self.lease_ttl)
        except sqlite3.OperationalError as exc:
            if time.time() < self._lease_until:
                log.warning("event=lease_renewal_deferred error=%r", str(exc))
                return
            raise
        if not lease.acquired:
            raise PollerBusy(lease.holder, lease.expires_at)
        self._lease_until = lease.expires_at

    def holds_lease(self) -> bool:
        return time.time() < self._lease_until

    def release_lease(self) -> None:
        self._lease_until = 0.0
        try:
            self.control.release_lease(self.holder)
        except sqlite3.Error as exc:  # it lapses by itself anyway
            log.warning("event=lease_release_failed error=%r", str(exc))

    def run_cycle(self) -> CycleReport:
        """Probe every region once and store the outcome (renews the lease first)."""
        self.acquire_lease()
        start = time.perf_counter()
        started_at = time.time()
        targets = [(region, self.settings.base_url(region)) for region in self.settings.regions]
        results = self.prober.probe_all(targets)
        lag_ms, starved_ms = self.prober.last_lag_ms, self.prober.last_cpu_starved_ms
        overloaded = lag_ms is not None and lag_ms > LAG_BOUND_MS
        if overloaded:
            log.warning("event=cycle_latencies_held lag_ms=%.0f cpu_starved_ms=%s bound_ms=%g", lag_ms,
                        "n/a" if starved_ms is None else f"{starved_ms:.0f}", LAG_BOUND_MS)
        self._pending.append(_Batch(started_at, tuple(results), not overloaded))
        if len(self._pending) > MAX_PENDING_CYCLES:
            dropped = self._pending.pop(0)
            log.error("event=pending_cycle_dropped at=%s reason=database_unavailable", dropped.at)
        report_regions: list[RegionReport] = []
        transitions: list[Transition] = []
        stored, note = True, ""
        try:
            while self._pending:
                batch = self._pending[0]
                regions, batch_transitions = self.store_cycle(batch.at, batch.results,
                                                              latencies_reliable=batch.latencies_reliable)
                self._pending.pop(0)
                report_regions, transitions = regions, transitions + batch_transitions
        except sqlite3.OperationalError as exc:
            stored = False
            note = (f"database unavailable ({exc}); {len(self._pending)} cycle(s) kept in memory "
                    "and written by the next cycle")
            log.warning("event=cycle_not_stored pending=%d error=%r", len(self._pending), str(exc))
            report_regions = self._unsaved_report(results)
        slo_changes = self._evaluate_slo_alerts() if stored else []
        duration = time.perf_counter() - start
        for t in transitions:
            log.info("event=state_change region=%s old=%s new=%s reason=%r", t.region, t.old_state, t.new_state,
                     t.reason)
        log.info("event=cycle regions=%d duration_ms=%.0f stored=%s not_up=%d", len(targets), duration * 1000,
                 stored, sum(r.state != health.UP for r in report_regions))
        return CycleReport(started_at, duration, report_regions, transitions, stored, note, results,
                           lag_ms, starved_ms, overloaded, slo_changes)

    def _evaluate_slo_alerts(self) -> list[SloAlertChange]:
        """SLO alerts that started or ended with this cycle's polls (see dashboard.slo for why here).

        A database too busy for it skips one evaluation: the next cycle sees the same windows."""
        try:
            changes = slo.evaluate_alerts(self.store, self.settings)
        except sqlite3.OperationalError as exc:
            log.warning("event=slo_alerts_not_evaluated error=%r", str(exc))
            return []
        for c in changes:
            log.info("event=slo_alert region=%s severity=%s status=%s reason=%r", c.region, c.severity,
                     "firing" if c.started else "resolved", c.reason)
        return changes

    def store_cycle(self, at: float, results: Sequence[ProbeResult], *,
                    latencies_reliable: bool = True) -> tuple[list[RegionReport], list[Transition]]:
        """Evaluate one cycle's results against what is stored, and write it in one transaction.

        Everything the evaluation needs is read first, outside the write lock (states, versions,
        the error-rate window of every region in one query); the write is a compare-and-set per
        region, so a row someone changed in between is kept, never overwritten."""
        settings, cfg = self.settings, self.settings.dashboard
        outcomes = health.outcomes_of(results, settings.deployment, cfg, latencies_reliable=latencies_reliable)
        held = [region for region, outcome in outcomes.items() if outcome.held]
        if held:
            log.warning("event=polls_held regions=%d first=%s reason=timed_out_while_overloaded", len(held), held[0])
        regions = list(outcomes)
        previous = self.store.region_states(regions)
        windows = self.store.window_counts(regions, at - cfg.error_rate_window_seconds)
        versions = self.store.stored_versions()
        result = health.evaluate_cycle(at, outcomes, previous, windows, versions, settings.regions, cfg,
                                       settings.stale_after_seconds, health.cycle_samples(results, outcomes))
        conflicts = self.store.write_cycle(result)
        for region in conflicts:
            # Only one poller runs per database, so this means someone wrote under us: their row stays.
            log.error("event=state_conflict region=%s", region)
        reports = [report_of(update) for update in result.updates if update.state.region not in conflicts]
        transitions = [t for t in result.transitions if t.region not in conflicts]
        return reports, transitions

    def _unsaved_report(self, results: list[ProbeResult]) -> list[RegionReport]:
        """What this cycle saw, for the CLI, when it could not be stored."""
        outcomes = health.outcomes_of(results, self.settings.deployment, self.settings.dashboard)
        return [
            RegionReport(region, health.DOWN if o.failed else (health.DEGRADED if o.degraded_reasons else health.UP),
                         o.reason + " (not stored: database unavailable)", o.latency_ms, None,
                         o.deployment.version, health.region_markers(o, None), o.at, None)
            for region, o in outcomes.items()
        ]


def report_of(update: RegionUpdate) -> RegionReport:
    """A region as a stored cycle left it, for `poll --once` and the cycle hooks."""
    state, window = update.state, update.window
    return RegionReport(state.region, state.state, state.reason, update.latency_ms,
                        window.failed / window.polls if window.polls else None, update.version, update.markers,
                        state.last_poll_at, state.since)
