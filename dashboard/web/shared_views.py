"""Answers that are the same for every viewer, built once per change of what they show.

The overview fragment and `GET /api/v1/status` show the fleet as the last poll cycle left it. At
200 regions and 50 viewers they were built 50 times a second from data that changes once a cycle,
and the queue of those builds is what made every viewer wait (issue 16). So each is built once and
handed to every viewer while all of these hold:

- the database has not changed: `Database.data_version` moves with every commit by anyone (the
  poller's cycle, a routing change or its lapse, a maintenance window, a publisher's outcome);
- what this process alone knows has not changed (the poller's state, the URL prefix);
- its deadline has not passed: the first moment time alone changes what it shows (a region turning
  stale, an override or a maintenance window starting or ending, a poller gap notice expiring);
- it is younger than `max_age`, which bounds what else drifts with time (an error-rate window
  sliding while nothing is polled, "until 12 min from now" in an override's note). In cluster mode
  the other instances' verdicts live in etcd, not in the database, so `max_age` is a second there.

Relative times ("polled 12 s ago") are not frozen in: each is a <time data-ago> with its moment,
and the page's script counts it on every second (static/app.js).

While one thread builds a new answer, the others wait for it when the data changed since the kept
one (the build takes milliseconds; a failover must show at the next refresh), and hand out the
kept one when only time has moved on since it was built (it held a moment ago).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from flask import Flask, Response, g, request

log = logging.getLogger(__name__)
# The views whose answers every viewer shares, and their paths.
SHARED_VIEWS = {"pages.overview_fragment": "/fragments/overview", "api.status": "/api/v1/status"}


@dataclass(frozen=True)
class SharedView:
    """One built answer: its body, the key it was built for, until when it holds, and its ETag."""

    body: bytes
    key: Hashable
    expires_at: float
    etag: str


# What a build returns: the body, and the first moment time alone would change it (None: none known).
Built = tuple[bytes, float | None]


class SharedViews:
    """The latest answer of each shared view, and who is building the next one."""

    def __init__(self, max_age_seconds: float) -> None:
        self.max_age_seconds = max_age_seconds
        self._views: dict[str, SharedView] = {}
        self._building: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.builds = 0  # how many answers were built (the tests read it)

    def get(self, name: str, key: Hashable, build: Callable[[], Built], now: float | None = None) -> SharedView:
        """The answer `name` for `key`: the kept one while it holds, else a new one from `build`."""
        now = time.time() if now is None else now
        while True:
            with self._lock:
                view = self._views.get(name)
                if view is not None and view.key == key and now < view.expires_at:
                    return view
                building = self._building.get(name)
                if building is None:
                    building = self._building[name] = threading.Event()
                    break  # this viewer builds it
            if view is not None and view.key == key:
                # Only time moved on since it was built, and the next one is on its way: hand this
                # one out rather than queue (it held a moment ago).
                return view
            # The data changed (a failover, a poll cycle): never hand out what came before it, or an
            # operator's refresh right after their click could miss it. Wait for the answer being
            # built, then look again (it may have been built from data older than `key`, or failed).
            building.wait()
        try:
            body, deadline = build()
            built_at = time.time()
            expires_at = built_at + self.max_age_seconds
            if deadline is not None:
                expires_at = min(expires_at, deadline)
            view = SharedView(body=body, key=key, expires_at=expires_at,
                              etag=f"{name}-{hashlib.sha256(body).hexdigest()[:16]}")
            with self._lock:
                self._views[name] = view
                self.builds += 1
            return view
        finally:
            with self._lock:
                del self._building[name]
            building.set()


def shared_response(view: SharedView, mimetype: str) -> Response:
    """The answer with its ETag: a client that has it gets 304 and no body. Its compressed forms
    are kept beside it (web/compression.py), so a thousand viewers cost one compression."""
    if request.if_none_match.contains(view.etag):
        response = Response(status=304)
    else:
        response = Response(view.body, mimetype=mimetype)
        g.compress_variant_key = view.etag
    response.set_etag(view.etag)
    # Cached, but asked again every time: the ETag makes the asking cheap.
    response.headers["Cache-Control"] = "no-cache"
    return response


def warm_up(app: Flask) -> None:
    """Build the shared answers before the first viewer arrives.

    The first build has no previous answer to hand out meanwhile, so every viewer of the first
    moments waits on it, and at 200 regions it reads cold caches. Built by the views themselves in
    a request context of their own, outside the request hooks (so no request is counted). A
    failure is logged, never fatal: the first viewer builds it then."""
    for endpoint, path in SHARED_VIEWS.items():
        try:
            with app.test_request_context(path):
                app.view_functions[endpoint]()
        except Exception:
            log.exception("event=shared_view_warm_up_failed path=%s", path)
