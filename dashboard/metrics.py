"""Prometheus metrics: what each region looks like now, and what the poller has been doing.

Region state, error rates, overrides and database size are read from the store at scrape time, so
every process serving the same database reports the same truth. Probe latency and counts and cycle
durations are observed by the process that polls. Labels are bounded by the configured regions.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import slo
from .cluster import Vantages, cluster_report
from .config import Settings
from .control import ControlState
from .heartbeat import read_heartbeat, read_polling_metrics, read_process_state
from .model import STATES, CycleReport
from .publish import configured
from .status import fleet_status
from .store import Store


class NotifierStatus(Protocol):
    def status(self, *, public: bool = False) -> dict[str, Any]: ...

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


class PollingMetrics:
    """What the polling process observes itself: probe latency and outcomes, cycle duration.

    In the web process when it polls too; in the poller process otherwise, which leaves its
    exposition in the database after every cycle for the web process's /metrics to serve."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.probe_latency = Histogram(
            "dashboard_probe_latency_seconds", "Latency of each probe, until the whole answer or the failure.",
            ["region", "endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.probes = Counter(
            "dashboard_probes",
            "Probes sent, by outcome of the exchange: ok (a complete 2xx answer in time, whatever it said) or failed.",
            ["region", "endpoint", "outcome"], registry=self.registry)
        self.cycle_duration = Histogram(
            "dashboard_poll_cycle_duration_seconds", "Wall time of one poll cycle, probes and storage.",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0), registry=self.registry)

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()

    def observe_cycle(self, report: CycleReport) -> None:
        configured = set(self.settings.regions)
        for result in report.results:
            if result.region not in configured:
                continue
            if result.latency_ms is not None:
                self.probe_latency.labels(result.region, result.endpoint).observe(result.latency_ms / 1000)
            self.probes.labels(result.region, result.endpoint, "ok" if result.ok else "failed").inc()
        self.cycle_duration.observe(report.duration_seconds)


class Metrics:
    """One registry per app: a collector reading the store, and what the poller observed.

    `polls_here`: the poller runs in this process and is observed directly; otherwise its
    observations are the exposition the poller process last left in the database."""

    def __init__(self, settings: Settings, store: Store, control: ControlState,
                 notifier: NotifierStatus | None = None, *, polls_here: bool = True) -> None:
        self.settings = settings
        self.store = store
        self.registry = CollectorRegistry(auto_describe=True)
        self.polling = PollingMetrics(settings, self.registry) if polls_here else None
        self.registry.register(_StoreCollector(settings, store, control, notifier))

    def watch_cluster(self, vantages: Vantages) -> None:
        """Cluster mode: etcd reachable, leader known, live vantage points, disputed regions."""
        self.registry.register(_ClusterCollector(self.settings, vantages))

    def observe_cycle(self, report: CycleReport) -> None:
        if self.polling is not None:
            self.polling.observe_cycle(report)

    def exposition(self) -> str:
        """The Prometheus text of this app: its own families, then the poller process's."""
        text = generate_latest(self.registry).decode()
        if self.polling is None:
            try:
                text += read_polling_metrics(self.store) or ""
            except sqlite3.Error:  # a busy database costs this scrape the poller's series, not the scrape
                pass
        return text


class _StoreCollector(Collector):
    def __init__(self, settings: Settings, store: Store, control: ControlState,
                 notifier: NotifierStatus | None) -> None:
        self.settings = settings
        self.store = store
        self.control = control
        self.notifier = notifier

    def _publishers(self) -> Iterator[Metric]:
        """Per publisher: the newest table version it applied (-1 before its first), and every failed
        attempt ever, from the store, so each process reports the same counts and none are lost
        between scrapes (a router that fails and recovers within a scrape interval still counts)."""
        rows = self.store.publisher_rows()
        version = GaugeMetricFamily(
            "dashboard_routing_published_version",
            "Newest routing table version the publisher applied; -1 before its first. Behind while lower "
            "than dashboard_routing_version.", labels=["publisher"])
        failures = CounterMetricFamily(
            "dashboard_routing_publish_failures", "Failed attempts of the publisher to apply the routing table.",
            labels=["publisher"])
        for name, _ in configured(self.settings):
            row = rows.get(name)
            applied = row["version"] if row else None
            version.add_metric([name], -1 if applied is None else applied)
            failures.add_metric([name], row["failures_total"] if row else 0)
        yield from (version, failures)

    def _poller(self) -> Iterator[Metric]:
        """What the poller process last reported (its heartbeat) and what its supervisor saw."""
        beat = read_heartbeat(self.store)
        if beat is not None:
            yield GaugeMetricFamily("dashboard_poller_heartbeat_timestamp_seconds",
                                    "When the poller process last finished a cycle or a standby check.", value=beat.at)
            if beat.lag_ms is not None:
                yield GaugeMetricFamily("dashboard_poller_event_loop_lag_seconds",
                                        "Worst lag of the probe event loop during the last cycle.",
                                        value=beat.lag_ms / 1000)
            if beat.cpu_starved_ms is not None:
                yield GaugeMetricFamily("dashboard_poller_cpu_starved_seconds",
                                        "How long the probe thread waited for a CPU during the last cycle.",
                                        value=beat.cpu_starved_ms / 1000)
            yield GaugeMetricFamily(
                "dashboard_poller_overloaded",
                "1 while the poller's own lag makes its latencies unreliable (no slowness verdicts).",
                value=1.0 if beat.overloaded else 0.0)
        process = read_process_state(self.store)
        if process:
            yield GaugeMetricFamily("dashboard_poller_process_down", "1 while the poller process is down.",
                                    value=1.0 if process.get("down_since") else 0.0)
            yield CounterMetricFamily("dashboard_poller_process_restarts",
                                      "Times the poller process died and was restarted since start.",
                                      value=process.get("restarts") or 0)

    def _slo(self, now: float) -> Iterator[Metric]:
        """Burn rates, budget left and firing SLO alerts (dashboard.slo); none where nothing was polled."""
        burn = GaugeMetricFamily("dashboard_slo_burn_rate", "Bad fraction / (1 - SLO target) over the window.",
                                 labels=["region", "window"])
        budget = GaugeMetricFamily("dashboard_error_budget_remaining",
                                   "Share of the error budget left over the SLO window; negative once spent.",
                                   labels=["region"])
        alert = GaugeMetricFamily("dashboard_slo_alert", "1 while the SLO alert of that severity fires.",
                                  labels=["region", "severity"])
        active = slo.stored_alerts(self.store)
        # As the poller's last cycle left them: computing 30 days of 200 regions took ~90 ms a scrape.
        for region, figures in slo.latest_figures(self.store, self.settings, now=now).items():
            for window, rate in figures.burn_rate.items():
                if rate is not None:
                    burn.add_metric([region, window], rate)
            if figures.error_budget_remaining is not None:
                budget.add_metric([region], figures.error_budget_remaining)
            for severity in slo.SEVERITIES:
                alert.add_metric([region, severity], 1.0 if severity in active.get(region, {}) else 0.0)
        yield from (burn, budget, alert)

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        routing = self.control.routing()
        regions = fleet_status(self.settings, self.store, routing.overrides, now)
        state = GaugeMetricFamily("dashboard_region_state", "1 for the region's current state, 0 for the others.",
                                  labels=["region", "state"])
        up = GaugeMetricFamily("dashboard_region_up", "1 when the region is up.", labels=["region"])
        error_rate = GaugeMetricFamily("dashboard_region_error_rate", "Failed polls / polls over the window.",
                                       labels=["region", "window"])
        reported = GaugeMetricFamily("dashboard_region_reported_error_rate",
                                     "The error rate the region last reported about itself.", labels=["region"])
        last_poll = GaugeMetricFamily("dashboard_region_last_poll_timestamp_seconds",
                                      "When the region was last polled.", labels=["region"])
        override = GaugeMetricFamily("dashboard_routing_override",
                                     "1 while the region's new traffic goes to the target region.",
                                     labels=["region", "target_region"])
        for r in regions:
            for name in STATES:
                state.add_metric([r["region"], name], 1.0 if r["state"] == name else 0.0)
            up.add_metric([r["region"]], 1.0 if r["state"] == "up" else 0.0)
            for window, rate in (("5m", r["error_rate_5m"]), ("1h", r["error_rate_1h"])):
                if rate is not None:
                    error_rate.add_metric([r["region"], window], rate)
            if r["reported_error_rate"] is not None:
                reported.add_metric([r["region"]], r["reported_error_rate"])
            if r["last_poll_at"] is not None:
                last_poll.add_metric([r["region"]], r["last_poll_at"])
            if r["override"]:
                override.add_metric([r["region"], r["override"]["target_region"]], 1.0)
        yield from (state, up, error_rate, reported, last_poll, override)
        yield from self._slo(now)
        active = sum(1 for r in regions if r["override"])
        yield GaugeMetricFamily("dashboard_routing_overrides_active", "Routing overrides in force.", value=active)
        yield GaugeMetricFamily("dashboard_routing_version", "Version of the routing table.",
                                value=routing.version)
        yield from self._publishers()
        last = self.store.last_poll_at()
        if last is not None:
            yield GaugeMetricFamily("dashboard_last_cycle_completed_timestamp_seconds",
                                    "When the last poll cycle (by any process on this database) stored results.",
                                    value=last)
        yield from self._poller()
        yield GaugeMetricFamily("dashboard_database_bytes", "Bytes of live pages in the database.",
                                value=self.store.used_bytes())
        if self.notifier is not None:
            status = self.notifier.status()
            for key in ("sent", "failed", "dropped", "held_back"):
                yield CounterMetricFamily(f"dashboard_notifications_{key}",
                                          f"Notifications {key.replace('_', ' ')} since start.", value=status[key])
            outbox = GaugeMetricFamily(
                "dashboard_notifications_outbox",
                "Rows in the notification outbox (one per notice and receiver) by state, every process on "
                "this database; delivered, failed and dropped rows are kept for a week.", labels=["state"])
            for name, rows in (status.get("outbox") or {}).items():
                outbox.add_metric([name], rows)
            yield outbox


class _ClusterCollector(Collector):
    """The cluster as this instance sees it, read from etcd at each scrape (one report)."""

    def __init__(self, settings: Settings, vantages: Vantages) -> None:
        self.settings = settings
        self.vantages = vantages

    def collect(self) -> Iterator[Metric]:
        report = cluster_report(self.settings, self.vantages)
        etcd = report["etcd"] or {}
        yield GaugeMetricFamily("dashboard_cluster_etcd_reachable", "1 while this instance reaches etcd (with quorum).",
                                value=1.0 if etcd.get("reachable") else 0.0)
        yield GaugeMetricFamily("dashboard_cluster_leader_known", "1 while some instance holds the cluster's lead.",
                                value=1.0 if report["leader"] else 0.0)
        yield GaugeMetricFamily("dashboard_cluster_is_leader", "1 while this instance leads the cluster.",
                                value=1.0 if report["leader"] == report["instance"] else 0.0)
        yield GaugeMetricFamily("dashboard_cluster_live_vantage_points",
                                "Instances whose verdicts have not lapsed.",
                                value=sum(1 for m in report["members"] if m["live"]))
        disputed = GaugeMetricFamily("dashboard_region_disputed",
                                     "1 while some live vantage points see the region down, fewer than the quorum.",
                                     labels=["region"])
        agreed, _ = self.vantages.agreed()
        for region, a in agreed.items():
            disputed.add_metric([region], 1.0 if a.disputed else 0.0)
        yield disputed
