"""Browser fixtures: the real app served by waitress on loopback, polling a simulated fleet,
driven by Debian's headless Chromium through Playwright's sync API.

One browser per session (starting Chromium is the slow part), a fresh browser context per page
(no cookies or cache shared between tests), and a fresh fleet, database and app per test.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    Response,
    expect,
    sync_playwright,
)

from dashboard.config import Settings
from dashboard.demo.simulator import SimulatedFleet
from dashboard.poller import Poller
from dashboard.scheduler import PollingService
from dashboard.store import Store
from dashboard.web.server import start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
MISSING_CHROMIUM = f"Chromium not found at {CHROMIUM}; install Debian's chromium package"
REQUIRE_BROWSER_ENV = "DASHBOARD_REQUIRE_BROWSER"
# Without the background-networking flags Chromium keeps calling home, which on a closed network
# only fills the logs with refused connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Fast enough that a region goes down within seconds, slow enough for a loaded CI box.
LIVE_DASHBOARD_SETTINGS: dict[str, Any] = {
    "poll_interval_seconds": 1,
    "timeout_seconds": 0.5,
    "failure_threshold": 2,
    "success_threshold": 1,
}
# Every wait of these tests (Playwright's expect included): long enough for an htmx refresh every
# few seconds plus a couple of poll cycles.
LIVE_TIMEOUT_MS = 15_000
# Recorded by every page from its first script on, so a CSP violation cannot go unnoticed even
# when Chromium words its console message differently.
_RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`
    + ` at ${e.sourceFile || "?"}:${e.lineNumber}`);
});
"""


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    """Debian's Chromium; skip the browser tests without it, or fail when CI requires them."""
    if not CHROMIUM.exists():
        if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
            pytest.fail(f"{MISSING_CHROMIUM} ({REQUIRE_BROWSER_ENV}=1 requires the browser tests)")
        pytest.skip(MISSING_CHROMIUM)
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium_executable: Path) -> Iterator[Browser]:
    """One headless Chromium for the whole session."""
    expect.set_options(timeout=LIVE_TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium_executable), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class LiveServer:
    """The dashboard as a browser sees it, with the fleet and poller behind it to steer."""

    base_url: str
    fleet: SimulatedFleet
    settings: Settings
    service: PollingService
    store: Store

    def url(self, path: str) -> str:
        return self.base_url + path

    def wait_for_polls(self, region: str, count: int, timeout: float = 15.0) -> None:
        """Wait until at least `count` polls of `region` are stored."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.store.poll_counts(region, 0)[1] >= count:
                return
            time.sleep(0.1)
        raise AssertionError(f"fewer than {count} polls of {region} stored after {timeout} s")


class _ServerThread:
    """The app on an ephemeral loopback port, served and stopped the way `dashboard serve` does."""

    def __init__(self, app: Any) -> None:
        self.server = start_server(app, "127.0.0.1", 0)
        self.port = self.server.effective_port
        self.thread = self.server.serving_thread

    def stop(self) -> None:
        stop_server(self.server)
        assert not self.thread.is_alive(), "waitress did not stop within 10 s"


@pytest.fixture
def live_server_factory(
    fleet: SimulatedFleet, make_settings: Callable[..., Settings]
) -> Iterator[Callable[..., LiveServer]]:
    """Start the real app on a fresh database, polling `fleet` every second; extra keyword
    arguments override dashboard settings. Everything is stopped at the end of the test."""
    with ExitStack() as stops:  # unwinds in reverse: server, poller, then what it writes to

        def start(**dashboard: Any) -> LiveServer:
            from dashboard.web import create_app

            settings = make_settings(fleet, **{**LIVE_DASHBOARD_SETTINGS, **dashboard})
            store = Store(settings.database_path)
            stops.callback(store.close)
            poller = Poller(settings, store)
            stops.callback(poller.close)
            service = PollingService(poller)
            app = create_app(settings, store=store, service=service)
            service.start()
            stops.callback(service.stop)
            server = _ServerThread(app)
            stops.callback(server.stop)
            return LiveServer(f"http://127.0.0.1:{server.port}", fleet, settings, service, store)

        yield start


@pytest.fixture
def live_server(live_server_factory: Callable[..., LiveServer]) -> LiveServer:
    """The real app with the default live settings."""
    return live_server_factory()


@dataclass
class Tab:
    """A page in its own browser context, with everything it complained about."""

    page: Page
    response: Response | None = None
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        return self.page.evaluate("window.__cspViolations || []")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and CSP violations seen so far.

        Chromium asks every site for /favicon.ico on its own; its absence breaks nothing."""
        console = [m for m in self.console_errors if not m.endswith("/favicon.ico:0)")]
        return [*console, *self.page_errors, *self.csp_violations()]


@pytest.fixture
def open_page(
    browser: Browser, live_server_factory: Callable[..., LiveServer]
) -> Iterator[Callable[..., Tab]]:
    """Open a URL in a fresh browser context; every context is closed at the end of the test,
    before the live server stops (hence the dependency on its factory)."""
    contexts: list[BrowserContext] = []

    def open_(url: str, *, width: int = 1280, height: int = 800, **context_options: Any) -> Tab:
        # context_options: e.g. color_scheme="dark" (what prefers-color-scheme answers)
        context = browser.new_context(viewport={"width": width, "height": height}, **context_options)
        contexts.append(context)
        context.set_default_timeout(LIVE_TIMEOUT_MS)
        context.add_init_script(_RECORD_CSP_VIOLATIONS)
        page = context.new_page()
        tab = Tab(page)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                where = message.location
                tab.console_errors.append(f"{message.text} ({where.get('url')}:{where.get('lineNumber')})")

        page.on("console", on_console)
        page.on("pageerror", lambda error: tab.page_errors.append(f"{error.name}: {error.message}"))
        tab.response = page.goto(url)
        return tab

    yield open_
    for context in contexts:
        try:
            context.close()
        except Error:
            pass  # the browser is already gone; nothing left to close
