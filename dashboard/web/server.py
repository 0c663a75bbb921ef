"""Serve the app on waitress (a production WSGI server), with a bounded wait for a worker."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask
from waitress import wasyncore
from waitress.server import create_server
from waitress.utilities import Error

from . import MAX_REQUEST_BYTES

log = logging.getLogger(__name__)
# The defaults of `dashboard.web.threads` and `queue_limit` (see config.WebConfig), for callers
# without settings (benchmarks, tests of the server alone).
WSGI_THREADS = 8
# waitress's own bound on what it buffers of a body before the app sees it: a backstop a few times
# the app's limit. Bodies between the two reach the app, which answers 413 as JSON (API) or as an
# HTML page; bigger ones get waitress's plain-text 413 before any of the body is read.
TRANSPORT_MAX_BODY_BYTES = 4 * MAX_REQUEST_BYTES
# Requests waiting for a worker beyond this are answered 503 + Retry-After at once: under a crowd
# a viewer gets a quick "try again" instead of a page seconds late (issue 17).
QUEUE_LIMIT = 16
RETRY_AFTER_SECONDS = 2
LOG_SHED_EVERY_SECONDS = 5.0
# What waitress's create_server returns (it types nothing): a server with effective_port and run().
Server = Any


class ServerError(Exception):
    """The server could not start (e.g. the port is taken); the message says why."""


class _Overloaded(Error):
    code = 503
    reason = "Service Unavailable"

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        status, headers, body = super().to_response(ident)
        return status, [*headers, ("Retry-After", str(RETRY_AFTER_SECONDS))], body


def _shed_past(server: Server, limit: int) -> None:
    """Answer 503 at once to a request that would wait behind `limit` others.

    waitress has no queue bound; its dispatcher's queue is the handle. A shed request becomes
    waitress's own error task (no Flask, a few bytes), served on the server's loop thread, since
    every worker may be busy: a refusal must not wait for a worker."""
    dispatcher = server.task_dispatcher
    shed = {"count": 0, "logged_at": 0.0}

    def add_task(channel: Any) -> None:
        with dispatcher.lock:
            full = len(dispatcher.queue) >= limit
        if not (full and channel.requests and not channel.requests[0].error):
            dispatcher.add_task(channel)
            return
        channel.requests[0].error = _Overloaded("too many requests waiting; retry shortly")
        shed["count"] += 1
        if time.monotonic() - shed["logged_at"] > LOG_SHED_EVERY_SECONDS:  # not once per request
            log.warning("event=requests_shed count=%d queue_limit=%d", shed["count"], limit)
            shed["logged_at"], shed["count"] = time.monotonic(), 0
        # Served as a worker would (writes the 503, closes the connection), but on the loop thread
        # once the caller has let go of the channel's requests lock: it holds it while calling here.
        server.trigger.pull_trigger(channel.service)

    server.add_task = add_task
    server.queue_limit = limit  # the bound in force, for /healthz readers and tests


def start_server(app: Flask, host: str, port: int, *, threads: int = WSGI_THREADS,
                 queue_limit: int = QUEUE_LIMIT) -> Server:
    """Bind and start serving in a background thread; returns the server (`.effective_port`, `.close()`)."""
    # With trusted proxies the app's ProxyFix reads X-Forwarded-*; without, waitress drops them.
    context = app.extensions.get("dashboard")  # absent for a bare Flask app (tests of the server alone)
    trusted_proxies = context.settings.dashboard.trusted_proxies if context is not None else 0
    try:
        server = create_server(app, host=host, port=port, threads=threads, ident="region-dashboard",
                               clear_untrusted_proxy_headers=not trusted_proxies,
                               max_request_body_size=TRANSPORT_MAX_BODY_BYTES)
    except OSError as exc:
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    _shed_past(server, queue_limit)
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
