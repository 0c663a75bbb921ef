"""Operators and automation tokens: who may change routing, and who is recorded as having done it.

Browser: a login form, a signed session cookie (HttpOnly, SameSite=Lax, Secure over https) and
CSRF tokens (Flask-WTF) on every mutating form and htmx request; failed logins are throttled per
user name and per address. The cookie names a session row in the database, checked on every
request: logout deletes it, and a changed or removed operator ends theirs. Automation:
`Authorization: Bearer <token>`, no cookie, no CSRF.
"""
from __future__ import annotations

import functools
import hashlib
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, g, make_response, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.security import check_password_hash, generate_password_hash

from ..text import format_duration
from .context import ctx
from .errors import api_error

blueprint = Blueprint("auth", __name__)
View = TypeVar("View", bound=Callable[..., ResponseReturnValue])
csrf = CSRFProtect()
SESSION_LIFETIME = timedelta(hours=12)
# Checked against when the user name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))
# Tokens are long random strings: once one has been verified, later requests skip the hash.
# Keyed by the token's digest; the value keeps the hash it matched, so a rotated hash revokes it.
_verified_tokens: dict[str, tuple[str, str]] = {}
# Wrong bearer tokens one address may send a minute before it gets 429 without any hash being run:
# a flood of wrong tokens costs the server next to nothing, and other users' pages do not slow.
BEARER_FAILURES_PER_MINUTE = 10


class TokenThrottled(Exception):
    """Too many wrong bearer tokens from this address; `wait` seconds until it may try again."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"too many wrong bearer tokens from this address; try again in {math.ceil(wait)} s")
        self.wait = wait


class FailureWindow:
    """Failures per address over a sliding window, in memory, bounded; checked and counted under
    one lock, so a concurrent burst gets no more tries than the limit."""

    def __init__(self, limit: int, window_seconds: float, max_addresses: int = 10_000) -> None:
        self.limit, self.window, self.max_addresses = limit, window_seconds, max_addresses
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def reserve(self, address: str, now: float) -> float:
        """Seconds `address` must wait, or 0 after counting this try as a failure in advance."""
        with self._lock:
            times = self._seen.get(address)
            if times is None:
                if len(self._seen) >= self.max_addresses:
                    self._seen.clear()  # bounded: forgetting everyone at once only loosens the limit
                times = self._seen[address] = deque()
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self.limit:
                return times[0] + self.window - now
            times.append(now)
            return 0.0

    def release(self, address: str) -> None:
        """The try counted by `reserve` succeeded: it is not a failure."""
        with self._lock:
            times = self._seen.get(address)
            if times:
                times.pop()


class _SessionInterface(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the request itself came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def init_auth(app: Flask) -> None:
    c = app.extensions["dashboard"]
    # Generated once and kept in the database: sessions survive restarts and every process agrees.
    app.secret_key = c.store.app_secret("session_key", lambda: secrets.token_hex(32))
    app.session_interface = _SessionInterface()
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",  # Strict would log the engineer out when following a pager link
        SESSION_COOKIE_NAME="dashboard_session",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        # A page left open through a long incident must still be able to act: the token lives as
        # long as the session instead of Flask-WTF's default hour.
        WTF_CSRF_TIME_LIMIT=None,
    )
    csrf.init_app(app)
    app.extensions["dashboard_bearer_failures"] = FailureWindow(BEARER_FAILURES_PER_MINUTE, 60.0)
    # A hash changed or an operator removed in the config ends their sessions from this start on.
    c.store.end_sessions_not_matching({name: _hash_digest(hashed)
                                       for name, hashed in c.settings.dashboard.auth.operators.items()})
    app.register_blueprint(blueprint)
    app.before_request(_require_login_for_reading)
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(TokenThrottled, _token_throttled)
    app.jinja_env.globals.update(current_operator=current_operator)


def _hash_digest(hashed: str) -> str:
    """What a session remembers of the hash its operator logged in with: a new hash ends it."""
    return hashlib.sha256(hashed.encode()).hexdigest()


def current_operator() -> str | None:
    """The logged-in operator's name: the cookie's session must still exist on the server, for an
    operator the config still lists with the hash they logged in with. Looked up once a request."""
    if "session_operator" not in g:
        g.session_operator = _session_operator()
    operator: str | None = g.session_operator
    return operator


def _session_operator() -> str | None:
    name, session_id = session.get("operator"), session.get("sid")
    if not isinstance(name, str) or not isinstance(session_id, str):
        return None
    c = ctx()
    hashed = c.settings.dashboard.auth.operators.get(name)
    found = c.store.session_of(session_id, time.time())
    if hashed is None or found is None or found != (name, _hash_digest(hashed)):
        return None
    return name


def token_actor() -> str | None:
    """The name of the API token presented in `Authorization: Bearer`, if it is valid."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    token = token.strip()
    digest = hashlib.sha256(token.encode()).hexdigest()
    tokens = ctx().settings.dashboard.auth.api_tokens
    cached = _verified_tokens.get(digest)
    if cached is not None and tokens.get(cached[0]) == cached[1]:
        return cached[0]
    failures: FailureWindow = current_app.extensions["dashboard_bearer_failures"]
    address = request.remote_addr or "unknown"
    wait = failures.reserve(address, time.monotonic())
    if wait:
        raise TokenThrottled(wait)
    for candidate, hashed in tokens.items():
        if check_password_hash(hashed, token):
            failures.release(address)
            if len(_verified_tokens) > 1000:
                _verified_tokens.clear()
            _verified_tokens[digest] = (candidate, hashed)
            return candidate
    return None


def has_bearer() -> bool:
    return request.headers.get("Authorization", "").lower().startswith("bearer")


def api_operator_required(view: View) -> View:
    """API views that mutate: a valid bearer token, or a logged-in operator with a CSRF token."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        if has_bearer():
            actor = token_actor()
            if actor is None:
                return api_error(401, "unauthorized", "the bearer token is not valid")
            g.actor = f"token:{actor}"
            return view(*args, **kwargs)
        operator = current_operator()
        if operator is None:
            return api_error(401, "unauthorized",
                              "credentials required: Authorization: Bearer <token>, or log in")
        csrf.protect()  # a session cookie alone could be a cross-site request
        g.actor = operator
        return view(*args, **kwargs)

    return cast(View, csrf.exempt(wrapper))


def login_required(view: View) -> View:
    """Pages that mutate or prepare a mutation: a logged-in operator (CSRF is checked globally)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        operator = current_operator()
        if operator is None:
            if request.headers.get("HX-Request"):
                response = api_error(401, "unauthorized", "log in first")
                response.headers["HX-Redirect"] = url_for("auth.login", next=request.referrer or "/")
                return response
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        g.actor = operator
        return view(*args, **kwargs)

    return cast(View, wrapper)


def _require_login_for_reading() -> ResponseReturnValue | None:
    if not ctx().settings.dashboard.auth.read_requires_login:
        return None
    # /healthz stays open: a load balancer cannot log in, and it says nothing about the fleet.
    if request.endpoint in ("auth.login", "auth.logout", "static", "ops.healthz") or current_operator():
        return None
    if request.path.startswith("/api/") or request.endpoint == "ops.metrics":  # Prometheus sends a bearer token
        if has_bearer() and token_actor():
            return None
        return api_error(401, "unauthorized", "reading this dashboard requires a login or a bearer token")
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _token_throttled(exc: TokenThrottled) -> ResponseReturnValue:
    response = api_error(429, "too_many_requests", str(exc))
    response.headers["Retry-After"] = str(math.ceil(exc.wait))
    return response


def _csrf_error(exc: CSRFError) -> ResponseReturnValue:
    if request.path.startswith("/api/"):
        return api_error(403, "csrf_failed", f"forbidden: {exc.description}")
    return render_template("pages/error.html", status=403, title="Forbidden",
                           message=f"{exc.description} Reload the page and try again."), 403


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never redirect a fresh login to somebody else's page."""
    if not target:
        return url_for("pages.overview")
    if not target.isprintable():  # a control character (CR LF) cannot go into a Location header
        return url_for("pages.overview")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("pages.overview")
    return target


# The first wait owed once a (name, address) pair has used its free failures; it doubles with each
# further failure, up to dashboard.auth.login_lockout_seconds.
FIRST_BACKOFF_SECONDS = 5.0


def login_backoff(failures: int) -> float:
    """Seconds a (name, address) pair waits after `failures` failed logins in a row: none for the
    first `login_max_failures`, then 5 s doubling with each failure, at most login_lockout_seconds."""
    cfg = ctx().settings.dashboard.auth
    over = failures - cfg.login_max_failures
    if over < 0:
        return 0.0
    return float(min(cfg.login_lockout_seconds, FIRST_BACKOFF_SECONDS * 2 ** min(over, 20)))


def _login_form(next_url: str, error: str | None = None, status: int = 200) -> ResponseReturnValue:
    no_operators = not ctx().settings.dashboard.auth.operators
    return render_template("pages/login.html", next_url=next_url, error=error, no_operators=no_operators), status


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    c = ctx()
    next_url = _safe_next(request.values.get("next"))
    if request.method != "POST":  # GET, and HEAD (which never authenticates: CSRF skips it)
        return _login_form(next_url)
    username = (request.form.get("username") or "").strip()[:64]
    password = request.form.get("password") or ""
    # Behind a proxy, the client's address only with dashboard.trusted_proxies (werkzeug's ProxyFix).
    remote = request.remote_addr or "unknown"
    # Checked and counted as a failure in one transaction, before the slow hash: a burst of
    # concurrent guesses gets no more tries than one guess at a time would.
    wait = c.store.reserve_login_attempt(username, remote, time.time(), login_backoff)
    if wait:
        response = make_response(_login_form(
            next_url, f"Too many failed logins for this name from your address. Try again in "
                      f"{format_duration(math.ceil(wait))}.", 429))
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    hashed = c.settings.dashboard.auth.operators.get(username)
    valid = check_password_hash(hashed or _DUMMY_HASH, password) and hashed is not None
    if not valid or hashed is None:
        return _login_form(next_url, "Wrong user name or password.", 401)  # the failure is already counted
    c.store.clear_login_failures(username, remote)
    session.clear()  # a new session: nothing carried over from before the login
    session.permanent = True
    session["operator"] = username
    session["sid"] = c.store.create_session(username, _hash_digest(hashed), time.time(),
                                            SESSION_LIFETIME.total_seconds())
    g.pop("session_operator", None)
    return redirect(next_url)


@blueprint.post("/logout")
def logout() -> ResponseReturnValue:
    session_id = session.get("sid")
    if isinstance(session_id, str):
        ctx().store.end_session(session_id)  # a copy of the cookie kept elsewhere ends too
    session.clear()
    return redirect(url_for("pages.overview"))
