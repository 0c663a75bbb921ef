"""The Flask app: pages, htmx fragments and the JSON API over the store.

`create_app` builds everything; nothing is created at import. App-wide objects live in
`app.extensions["dashboard"]`.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, Response, abort, current_app, request, url_for
from flask.json.provider import DefaultJSONProvider
from htmx_flask import Htmx
from markupsafe import Markup
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import Map

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

from ..cluster import Vantages
from ..config import Settings, load_settings
from ..control import ControlState
from ..heartbeat import StoredPollerStatus
from ..metrics import Metrics
from ..probes import Prober
from ..routing import Router
from ..store import Store
from ..text import format_duration, iso, one_line
from .context import DashboardContext, Notifications, PollerStatus, ctx

__all__ = ["DashboardContext", "create_app", "ctx"]

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# The largest legitimate request body: a login or failover form, or an override as JSON, is a few
# hundred bytes (a reason is at most 500 characters). A bigger one is refused with 413 before it
# is read, so a client cannot make the server buffer and parse megabytes.
MAX_REQUEST_BYTES = 64 * 1024
# plotly.js's basic bundle (scatter, bar, pie: every trace the charts draw), a quarter of the full
# bundle's 4.8 MB: parsing the full one was most of a region page's first load. Its version is the
# one the plotly Python package builds figures for (tests/test_vendor.py checks they agree).
PLOTLY_BASIC_JS = "vendor/plotly.js-basic-4.1.1/plotly-basic.min.js"
LONG_CACHE = "public, max-age=31536000, immutable"

# No inline script anywhere; plotly.js sets inline styles on its SVG, hence style-src 'unsafe-inline'.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def _resource_dir(name: str) -> Path:
    """templates/ and static/: inside the package when installed from a wheel, at the top of a checkout."""
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


def create_app(settings: Settings | None = None, *, store: Store | None = None, control: ControlState | None = None,
               router: Router | None = None, service: PollerStatus | None = None,
               notifier: Notifications | None = None, metrics: Metrics | None = None,
               prober: Prober | None = None, vantages: Vantages | None = None) -> Flask:
    """Build the web app for these settings (loaded from the usual place when not given).

    What is not given is built here on the settings' own database: a read-only web process needs
    nothing else; `Runtime` passes what it shares with the poller."""
    settings = settings or load_settings()
    app = Flask(
        __name__,
        static_folder=str(_resource_dir("static")),
        static_url_path="/static",
        template_folder=str(_resource_dir("templates")),
    )
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.wsgi_app = _RefuseBadHost(app.wsgi_app, app.url_map)  # type: ignore[method-assign]
    hops = settings.dashboard.trusted_proxies
    if hops:
        # The client's address, scheme and host as the trusted proxies saw them; never more hops
        # than configured, so a client cannot forge its address by adding headers of its own.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops,  # type: ignore[method-assign]
                                x_port=hops, x_prefix=hops)
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False  # the API keeps the order its fields are written in
    store = store or Store(settings.database_path)
    control = control if control is not None else store
    router = router or Router(settings, store, control=control, notifier=notifier)
    metrics = metrics or Metrics(settings, store, control, notifier)
    # A web process without a poller of its own sees the poller's heartbeat in the database.
    service = service if service is not None else StoredPollerStatus(store, settings.stale_after_seconds)
    app.extensions["dashboard"] = DashboardContext(settings, store, control, router, metrics, service, notifier,
                                                   prober, vantages)
    Htmx(app)

    from . import api, auth, ops, pages
    from .compression import init_compression

    app.before_request(_refuse_large_bodies)
    auth.init_auth(app)
    app.register_blueprint(ops.blueprint)

    app.register_blueprint(pages.blueprint)
    app.register_blueprint(api.blueprint)
    app.after_request(_security_headers)
    init_compression(app)
    app.jinja_env.globals.update(asset_url=asset_url, plotly_url=plotly_url)
    app.jinja_env.filters.update(pct=format_pct, ms=format_ms, ago=format_ago, utc=format_utc, iso=format_iso,
                                 untrusted=untrusted, hhmm=format_hhmm, ago_time=format_ago_time)
    app.jinja_env.globals.update(cluster_unreachable_since=_cluster_unreachable_since,
                                 cluster_unreachable_why=_cluster_unreachable_why)
    return app


def _cluster_unreachable_since() -> float | None:
    """Cluster mode: since when this instance cannot reach etcd (None: reachable, or standalone)."""
    vantages = ctx().vantages
    return None if vantages is None else vantages.etcd.unavailable_since


def _cluster_unreachable_why() -> str | None:
    """Why etcd cannot be reached (each endpoint's error: refused, timed out, TLS...), for the banner."""
    vantages = ctx().vantages
    return None if vantages is None else vantages.etcd.last_error


class _RefuseBadHost:
    """400 for a Host header the URL map cannot bind to (an empty label, one over 63 characters).

    Flask would start the request without a URL adapter, and the error page, which builds URLs,
    would then fail with a 500 and a traceback in the log; so refuse it before Flask starts."""

    def __init__(self, wsgi_app: WSGIApplication, url_map: Map) -> None:
        self.wsgi_app, self.url_map = wsgi_app, url_map

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            self.url_map.bind_to_environ(environ)
        except HTTPException:
            message = "the Host header is not a valid host name"
            if str(environ.get("PATH_INFO", "")).startswith("/api/"):
                body, mimetype = json.dumps({"error": "bad_request", "message": message}), "application/json"
            else:
                body, mimetype = f"<!doctype html><title>400 Bad Request</title><h1>400 · Bad Request</h1>" \
                                 f"<p>{message}.</p>", "text/html"
            response = Response(body, status=400, mimetype=mimetype)
            response.headers.update({"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-store",
                                     "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"})
            return response(environ, start_response)
        return self.wsgi_app(environ, start_response)


def _refuse_large_bodies() -> None:
    """413 before anything else looks at the request, whatever the view would have read.

    A declared length over the limit is refused here; a chunked body without one is cut off by
    werkzeug when a view reads past `MAX_CONTENT_LENGTH`."""
    if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
        abort(413, f"the request body is larger than {MAX_REQUEST_BYTES // 1024} KB")


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.args.get("v") and response.status_code == 200 and request.path.startswith("/static/"):
        # The URL changes whenever the file does, so a browser may keep it for a year.
        response.headers["Cache-Control"] = LONG_CACHE
    elif "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store" if request.path.startswith(("/api/", "/fragments/")) \
            else "no-cache"
    return response


@lru_cache(maxsize=64)
def _file_version(path: str, mtime: float) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def asset_url(filename: str) -> str:
    """URL of a static file, versioned by its content so it can be cached for a long time."""
    path = Path(current_app.static_folder or "static") / filename
    return url_for("static", filename=filename, v=_file_version(str(path), path.stat().st_mtime))


def plotly_url() -> str:
    return asset_url(PLOTLY_BASIC_JS)


def untrusted(text: object, isolate: bool = True) -> Markup | str:
    """Text a region (or another user) supplied, as a page shows it: escaped, with control and
    bidi characters made visible (`text.one_line`), and isolated in <bdi> so it cannot reorder the
    text around it. `isolate=False` inside an attribute, where no element can go."""
    if text is None:
        return ""
    cleaned = one_line(text)
    return Markup("<bdi>{}</bdi>").format(cleaned) if isolate else cleaned


def format_pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def format_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"


def format_ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    return f"{format_duration(time.time() - ts)} ago"


def format_ago_time(ts: float | None, css_class: str = "") -> Markup:
    """'12 s ago' as a <time> the page's script counts on (static/app.js): a view shared by every
    viewer (web/shared_views.py) is built once, and its words would otherwise stop at that moment."""
    if ts is None:
        return Markup('<span class="{}">never</span>').format(css_class)
    return Markup('<time class="{}" datetime="{}" title="{}" data-ago>{}</time>').format(
        css_class, iso(ts), format_utc(ts), format_ago(ts))


def format_iso(ts: float | None) -> str:
    return "" if ts is None else iso(ts)


def format_hhmm(ts: float | None) -> str:
    """A time of day for a banner ("since 18:02 UTC")."""
    return "" if ts is None else datetime.fromtimestamp(ts, tz=UTC).strftime("%H:%M UTC")


def format_utc(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
