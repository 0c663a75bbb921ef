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
from dataclasses import dataclass, field
from typing import Any

from . import health
from .config import Settings
from .health import PollOutcome, Transition
from .probes import DEPLOYMENT, HEALTH, Prober, ProbeResult
from .store import Sample, Store

log = logging.getLogger(__name__)
# How many unwritten cycles to hold while the database is unavailable (an hour at 15 s).
MAX_PENDING_CYCLES = 240


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
class RegionReport:
    """A region as one cycle left it: what the table and the JSON of `poll --once` show."""

    region: str
    state: str
    reason: str
    latency_ms: float | None
    error_rate: float | None
    version: str | None
    markers: dict[str, Any]
    last_poll_at: float | None
    since: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "state": self.state,
            "reason": self.reason,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "error_rate": self.error_rate,
            "version": self.version,
            "markers": self.markers,
            "last_poll_at": self.last_poll_at,
            "since": self.since,
        }


@dataclass
class CycleReport:
    started_at: float
    duration_seconds: float
    regions: list[RegionReport]
    transitions: list[Transition] = field(default_factory=list)
    stored: bool = True
    note: str = ""
    results: list[ProbeResult] = field(default_factory=list)  # this cycle's probes, for metrics


@dataclass(frozen=True)
class _Batch:
    """One cycle's raw probe results, kept until they are written."""

    at: float
    results: tuple[ProbeResult, ...]


def lease_holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Poller:
    """Runs poll cycles for one database; holds its prober (and its keep-alive connections)."""

    def __init__(self, settings: Settings, store: Store, prober: Prober | None = None) -> None:
        self.settings = settings
        self.store = store
        cfg = settings.dashboard
        self.prober = prober or Prober(
            timeout_seconds=cfg.timeout_seconds,
            max_body_bytes=cfg.max_body_bytes,
            max_connections=max(100, 4 * len(settings.regions)),
        )
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
            lease = self.store.acquire_lease(self.holder, self.lease_ttl)
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
            self.store.release_lease(self.holder)
        except sqlite3.Error as exc:  # it lapses by itself anyway
            log.warning("event=lease_release_failed error=%r", str(exc))

    def run_cycle(self) -> CycleReport:
        """Probe every region once and store the outcome (renews the lease first)."""
        self.acquire_lease()
        start = time.perf_counter()
        started_at = time.time()
        targets = [(region, self.settings.base_url(region)) for region in self.settings.regions]
        results = self.prober.probe_all(targets)
        self._pending.append(_Batch(started_at, tuple(results)))
        if len(self._pending) > MAX_PENDING_CYCLES:
            dropped = self._pending.pop(0)
            log.error("event=pending_cycle_dropped at=%s reason=database_unavailable", dropped.at)
        report_regions: list[RegionReport] = []
        transitions: list[Transition] = []
        stored, note = True, ""
        try:
            while self._pending:
                batch = self._pending[0]
                regions, batch_transitions = self._write_batch(batch)
                self._pending.pop(0)
                report_regions, transitions = regions, transitions + batch_transitions
        except sqlite3.OperationalError as exc:
            stored = False
            note = (f"database unavailable ({exc}); {len(self._pending)} cycle(s) kept in memory "
                    "and written by the next cycle")
            log.warning("event=cycle_not_stored pending=%d error=%r", len(self._pending), str(exc))
            report_regions = self._unsaved_report(results)
        duration = time.perf_counter() - start
        for t in transitions:
            log.info("event=state_change region=%s old=%s new=%s reason=%r", t.region, t.old_state, t.new_state, t.reason)
        log.info("event=cycle regions=%d duration_ms=%.0f stored=%s not_up=%d", len(targets), duration * 1000,
                 stored, sum(r.state != health.UP for r in report_regions))
        return CycleReport(started_at, duration, report_regions, transitions, stored, note, results)

    def _evaluate(self, batch: _Batch) -> dict[str, PollOutcome]:
        by_key = {(r.region, r.endpoint): r for r in batch.results}
        return {
            region: health.evaluate_poll(
                region, by_key[(region, HEALTH)], by_key[(region, DEPLOYMENT)],
                self.settings.deployment, self.settings.dashboard,
            )
            for region in dict.fromkeys(r.region for r in batch.results)
        }

    def _write_batch(self, batch: _Batch) -> tuple[list[RegionReport], list[Transition]]:
        """Evaluate one cycle against the stored states and write it all in one transaction."""
        cfg = self.settings.dashboard
        outcomes = self._evaluate(batch)
        transitions: list[Transition] = []
        reports: list[RegionReport] = []
        window_start = batch.at - cfg.error_rate_window_seconds
        with self.store.transaction():
            previous = self.store.region_states(list(outcomes))
            self.store.insert_samples(_samples(batch, outcomes))
            versions = self.store.stored_versions()
            version_changes = {}
            for region, outcome in outcomes.items():
                dep = outcome.deployment
                if dep.ok and dep.version is not None and versions.get(region) not in (None, dep.version):
                    version_changes[region] = (versions[region], dep.version)
                if dep.ok:
                    versions[region] = dep.version
            skew = health.version_skew({r: versions.get(r) for r in self.settings.regions})
            for region, outcome in outcomes.items():
                prev = previous[region]
                prev, stale = health.mark_stale(prev, batch.at, self.settings.stale_after_seconds)
                failed, polls = self.store.poll_counts(region, window_start)
                outcome = health.with_window_error_rate(outcome, failed, polls, cfg)
                new, transition = health.next_state(prev, outcome, cfg)
                if not self.store.compare_and_set_state(new, previous[region].revision):
                    # Only one poller runs per database, so this means someone wrote under us:
                    # keep their state rather than overwrite it.
                    log.error("event=state_conflict region=%s", region)
                    continue
                for t in (stale, transition):
                    if t is not None:
                        transitions.append(t)
                        self.store.insert_event(at=t.at, region=region, kind="state", old_state=t.old_state,
                                                new_state=t.new_state, reason=t.reason)
                dep = outcome.deployment
                if dep.ok:
                    self.store.update_deployment(region, dep.payload, dep.version, batch.at)
                if region in version_changes:
                    old_v, new_v = version_changes[region]
                    self.store.insert_event(at=batch.at, region=region, kind="version",
                                            reason=f"version {old_v} -> {new_v}",
                                            details={"old_version": old_v, "new_version": new_v})
                markers = _markers(outcome, skew.get(region))
                self.store.update_region_details(region, latency_ms=outcome.latency_ms,
                                                 reported_error_rate=outcome.reported_error_rate,
                                                 markers=markers)
                reports.append(RegionReport(region, new.state, new.reason, outcome.latency_ms,
                                            failed / polls if polls else None, versions.get(region), markers,
                                            new.last_poll_at, new.since))
        return reports, transitions

    def _unsaved_report(self, results: list[ProbeResult]) -> list[RegionReport]:
        """What this cycle saw, for the CLI, when it could not be stored."""
        outcomes = self._evaluate(_Batch(time.time(), tuple(results)))
        return [
            RegionReport(region, health.DOWN if o.failed else (health.DEGRADED if o.degraded_reasons else health.UP),
                         o.reason + " (not stored: database unavailable)", o.latency_ms, None,
                         o.deployment.version, _markers(o, None), o.at, None)
            for region, o in outcomes.items()
        ]


def _samples(batch: _Batch, outcomes: dict[str, PollOutcome]) -> list[Sample]:
    samples = []
    for result in batch.results:
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
    return samples


def _markers(outcome: PollOutcome, skew_note: str | None) -> dict[str, Any]:
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
