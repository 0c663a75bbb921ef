"""The running product: store, notifier, web app, server, and the poller (in its own process).

With `poller_process=True` (`serve`, `demo`) the poller is a child process (`dashboard poll`)
that `supervisor` starts, watches and restarts; this process then never probes, and reads what
the poller did from the database (its heartbeat row). Without it the poller runs in this process,
as tests that want each cycle's report do. Notices: the poller process delivers the whole outbox;
this process delivers at once only the notices it wrote itself (routing changes from the web), so
a change made here is not held up by the poller, and nothing is sent twice (outbox claims).

`dashboard serve` and `dashboard demo` both build one, so they start and stop things in the same
order: the server is bound before anything polls (a taken port fails fast), and at shutdown the
server stops taking requests before the scheduler, the notifier and the database close. Every
part is built here, once, and handed what it needs: nothing reaches into another part later.
"""
from __future__ import annotations

from collections.abc import Callable

from waitress.server import BaseWSGIServer, MultiSocketServer

from .cluster import EtcdControl, Leadership, cluster_for, cluster_step
from .config import Settings
from .heartbeat import StoredPollerStatus
from .maintenance import Maintenance
from .metrics import Metrics
from .model import CycleReport
from .notify import Notifier
from .poller import Poller, prober_for
from .probes import Prober
from .routing import Router
from .scheduler import PollingService
from .store import Store
from .supervisor import PollerSupervisor
from .web import create_app
from .web.context import PollerStatus
from .web.server import start_server, stop_server, url_of
from .web.shared_views import warm_up


class Runtime:
    """Build with settings; `start(host, port)` binds and starts; `stop()` undoes it all."""

    def __init__(self, settings: Settings, *, on_cycle: Callable[[CycleReport], None] | None = None,
                 poller_process: bool = False) -> None:
        self.settings = settings
        self.store = Store(settings.database_path)
        # Standalone: the control state lives in the same database; cluster mode: in etcd, with
        # every instance's verdicts beside it.
        control, self.vantages = cluster_for(settings, self.store)
        self.control = control
        # notices wait in this database's outbox; see the module docstring for who delivers them
        self.notifier = Notifier(settings, store=self.store, scope="own" if poller_process else "all",
                                 maintenance=control)
        self.router = Router(settings, self.store, control=control, notifier=self.notifier,
                             cluster_states=None if self.vantages is None else self.vantages.for_rules)
        if isinstance(control, EtcdControl):
            self.router.on_applied = control.report_applied
        self._on_cycle = on_cycle
        # The cluster's singleton work runs where the polling runs (the poller process, or here).
        self.leadership = (Leadership(settings, self.vantages.etcd)
                           if self.vantages is not None and not poller_process else None)
        self.prober: Prober | None = None
        self.poller: Poller | None = None
        self.service: PollingService | None = None
        self.supervisor: PollerSupervisor | None = None
        if poller_process:
            self.supervisor = PollerSupervisor(settings, self.store)
            status: PollerStatus = StoredPollerStatus(self.store, settings.stale_after_seconds)
            self.metrics = Metrics(settings, self.store, control, self.notifier, polls_here=False)
        else:
            self.prober = prober_for(settings)
            self.poller = Poller(settings, self.store, self.prober, control=control)
            maintenance = Maintenance(settings, self.store, control=control, listener=self.notifier)
            leadership = self.leadership
            if leadership is not None:
                # Override expiry and the end of windows are the leader's work (compare-and-set kept).
                self.router.lapses_here = maintenance.lapses_here = lambda: leadership.is_leader
            self.service = PollingService(self.poller, on_cycle=self._cycle_done, router=self.router,
                                          maintenance=maintenance)
            status = self.service
            self.metrics = Metrics(settings, self.store, control, self.notifier)
        if self.vantages is not None:
            self.metrics.watch_cluster(self.vantages)
        self.app = create_app(settings, store=self.store, control=control, router=self.router,
                              service=status, notifier=self.notifier, metrics=self.metrics,
                              prober=self.prober, vantages=self.vantages)
        self.server: BaseWSGIServer | MultiSocketServer | None = None

    def _cycle_done(self, report: CycleReport) -> None:
        self.metrics.observe_cycle(report)
        if self.vantages is not None and self.leadership is not None:
            # Cluster mode: verdicts under this instance's lease; notices of the agreed states, and
            # of this instance's SLO alerts, by the leader.
            self.notifier.state_changes(cluster_step(self.vantages, self.leadership, self.control))
            if self.leadership.is_leader:
                self.notifier.slo_alerts_changed(report.slo_changes)
        else:
            self.notifier.state_changes(report.transitions)
            self.notifier.slo_alerts_changed(report.slo_changes)
        if self._on_cycle is not None:
            self._on_cycle(report)

    def start(self, host: str, port: int) -> str:
        """Bind the web server (raises web.server.ServerError), then start polling; returns the URL."""
        warm_up(self.app)
        try:
            web = self.settings.dashboard.web
            self.server = start_server(self.app, host, port, threads=web.threads, queue_limit=web.queue_limit)
        except BaseException:
            self.close()
            raise
        self.notifier.start()
        if self.supervisor is not None:
            # The table is published again at every start, before the URL is announced: a router
            # reading the routing file must not wait for the poller process to come up. (That
            # process publishes at its own start too, and retries what fails.)
            self.router.publish()
            self.supervisor.start()
        if self.service is not None:
            self.service.start()
        if self.leadership is not None:
            self.leadership.start()
        return url_of(self.server, host)

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            stop_server(server)  # no request is served from here on, so the store can close safely
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.leadership is not None:
            self.leadership.stop()
        if self.service is not None:
            self.service.stop()
            if self.vantages is not None:
                self.vantages.withdraw()
        self.notifier.stop(timeout=5)
        self.close()

    def close(self) -> None:
        if self.poller is not None:
            self.poller.close()
        if self.prober is not None:
            self.prober.close()
        self.store.close()
