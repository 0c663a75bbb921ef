"""The running product in one process: store, prober, poller, scheduler, notifier, web app, server.

`dashboard serve` and `dashboard demo` both build one, so they start and stop things in the same
order: the server is bound before anything polls (a taken port fails fast), and at shutdown the
server stops taking requests before the scheduler, the notifier and the database close. Every
part is built here, once, and handed what it needs: nothing reaches into another part later.
"""
from __future__ import annotations

from collections.abc import Callable

from waitress.server import BaseWSGIServer, MultiSocketServer

from .config import Settings
from .metrics import Metrics
from .model import CycleReport
from .notify import Notifier
from .poller import Poller, prober_for
from .routing import Router
from .scheduler import PollingService
from .store import Store
from .web import create_app
from .web.server import start_server, stop_server, url_of


class Runtime:
    """Build with settings; `start(host, port)` binds and starts; `stop()` undoes it all."""

    def __init__(self, settings: Settings, *, on_cycle: Callable[[CycleReport], None] | None = None) -> None:
        self.settings = settings
        self.store = Store(settings.database_path)
        control = self.store  # standalone: the control state lives in the same database
        self.notifier = Notifier(settings, store=self.store)  # notices wait in this database's outbox
        self.prober = prober_for(settings)
        self.poller = Poller(settings, self.store, self.prober, control=control)
        self.router = Router(settings, self.store, control=control, notifier=self.notifier)
        self.metrics = Metrics(settings, self.store, control, self.notifier)
        self._on_cycle = on_cycle
        self.service = PollingService(self.poller, on_cycle=self._cycle_done, router=self.router)
        self.app = create_app(settings, store=self.store, control=control, router=self.router,
                              service=self.service, notifier=self.notifier, metrics=self.metrics,
                              prober=self.prober)
        self.server: BaseWSGIServer | MultiSocketServer | None = None

    def _cycle_done(self, report: CycleReport) -> None:
        self.metrics.observe_cycle(report)
        self.notifier.state_changes(report.transitions)
        if self._on_cycle is not None:
            self._on_cycle(report)

    def start(self, host: str, port: int) -> str:
        """Bind the web server (raises web.server.ServerError), then start polling; returns the URL."""
        try:
            self.server = start_server(self.app, host, port)
        except BaseException:
            self.close()
            raise
        self.notifier.start()
        self.service.start()
        return url_of(self.server, host)

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            stop_server(server)  # no request is served from here on, so the store can close safely
        self.service.stop()
        self.notifier.stop(timeout=5)
        self.close()

    def close(self) -> None:
        self.poller.close()
        self.prober.close()
        self.store.close()
