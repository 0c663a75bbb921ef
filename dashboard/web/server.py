"""Serve the app on waitress (a production WSGI server), with the poller in the same process."""
from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask
from waitress import wasyncore
from waitress.server import create_server

from . import MAX_REQUEST_BYTES

log = logging.getLogger(__name__)
WSGI_THREADS = 8
# waitress's own bound on what it buffers of a body before the app sees it: a backstop a few times
# the app's limit. Bodies between the two reach the app, which answers 413 as JSON (API) or as an
# HTML page; bigger ones get waitress's plain-text 413 before any of the body is read.
TRANSPORT_MAX_BODY_BYTES = 4 * MAX_REQUEST_BYTES
# What waitress's create_server returns (it types nothing): a server with effective_port and run().
Server = Any


class ServerError(Exception):
    """The server could not start (e.g. the port is taken); the message says why."""


def start_server(app: Flask, host: str, port: int, *, threads: int = WSGI_THREADS) -> Server:
    """Bind and start serving in a background thread; returns the server (`.effective_port`, `.close()`)."""
    # With trusted proxies the app's ProxyFix reads X-Forwarded-*; without, waitress drops them.
    trusted_proxies = app.extensions["dashboard"].settings.dashboard.trusted_proxies
    try:
        server = create_server(app, host=host, port=port, threads=threads, ident="region-dashboard",
                               clear_untrusted_proxy_headers=not trusted_proxies,
                               max_request_body_size=TRANSPORT_MAX_BODY_BYTES)
    except OSError as exc:
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    server.serving_thread = thread
    log.info("event=web_started host=%s port=%s", host, server.effective_port)
    return server


def stop_server(server: Server) -> None:
    """Stop serving for real: close every connection (kept-alive ones too) from the server's own
    loop, wait for that loop to end, then for the worker threads.

    `server.close()` alone, called from another thread, closes only the listening socket: open
    connections would still be answered, from a store that is already closed."""
    # waitress has no public way to close every connection: its socket map is the one handle.
    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))  # noqa: SLF001
    server.serving_thread.join(10)
    server.task_dispatcher.shutdown(timeout=5)
    log.info("event=web_stopped")


def url_of(server: Server, host: str) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{server.effective_port}/"


def wait_until_stopped(duration: float | None) -> None:
    """Block until Ctrl-C, or for `duration` seconds when given."""
    try:
        threading.Event().wait(duration)
    except KeyboardInterrupt:
        pass
