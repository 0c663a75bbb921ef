"""Sessions end on the server: a cookie captured before logout, before the operator's hash changed
or before the operator was removed is refused when replayed. Real app on waitress over loopback."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from bs4 import BeautifulSoup

from dashboard.store import Store
from dashboard.web import create_app

from .live_server import served
from .routing_helpers import OPERATOR, PASSWORD, SLOW_POLLING, auth_config, fast_hash

COOKIE = "dashboard_session"
OVERRIDE = {"region": "eu-west-1", "reason": "replayed", "confirm_healthy": True}


@contextmanager
def dashboard_app(make_settings, fleet, **auth) -> Iterator[str]:
    """The app for these auth settings, on the test's one database, served on loopback."""
    settings = make_settings(fleet, auth=auth_config(**auth), **SLOW_POLLING)
    store = Store(settings.database_path)
    try:
        with served(create_app(settings, store=store)) as url:
            yield url
    finally:
        store.close()


def csrf_of(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, (path, page.status_code)
    return BeautifulSoup(page.text, "html.parser").select_one("input[name=csrf_token]")["value"]


def log_in(client: httpx.Client) -> tuple[str, str]:
    """Log in as a browser does; returns (the session cookie, a CSRF token of the failover form)."""
    response = client.post("/login", data={"username": OPERATOR, "password": PASSWORD,
                                           "csrf_token": csrf_of(client, "/login")})
    assert response.status_code == 302, response.text[:300]
    csrf = csrf_of(client, "/regions/eu-west-1/failover")  # puts the CSRF secret in the session
    return client.cookies[COOKIE], csrf


def acts_as_operator(url: str, cookie: str, csrf: str) -> bool:
    """Whether a replayed cookie still opens the failover form or may change routing."""
    with httpx.Client(base_url=url, cookies={COOKIE: cookie}, timeout=10) as replay:
        form = replay.get("/regions/eu-west-1/failover")
        api = replay.post("/api/v1/routing/overrides", json=OVERRIDE, headers={"X-CSRFToken": csrf})
    assert form.status_code in (200, 302) and api.status_code in (201, 401, 409), (form, api.text)
    if form.status_code == 302:
        assert form.headers["Location"].startswith("/login")
    return form.status_code == 200 or api.status_code != 401


def test_a_cookie_replayed_after_logout_is_refused(fleet, make_settings):
    with dashboard_app(make_settings, fleet) as url, httpx.Client(base_url=url, timeout=10) as browser:
        cookie, csrf = log_in(browser)
        with httpx.Client(base_url=url, timeout=10) as other_browser:
            other_cookie, _ = log_in(other_browser)
        assert browser.post("/logout", data={"csrf_token": csrf}).status_code == 302
        assert not acts_as_operator(url, cookie, csrf)
        # Only that session ended: the same operator's other browser is still logged in.
        with httpx.Client(base_url=url, cookies={COOKIE: other_cookie}, timeout=10) as other:
            assert other.get("/regions/eu-west-1/failover").status_code == 200


@pytest.mark.parametrize("change", ["new hash", "removed", "removed and added back"])
def test_a_cookie_replayed_after_the_operator_changed_is_refused(fleet, make_settings, change):
    with dashboard_app(make_settings, fleet) as url, httpx.Client(base_url=url, timeout=10) as browser:
        cookie, csrf = log_in(browser)
        assert acts_as_operator(url, cookie, csrf)
    if change == "new hash":  # the same password, hashed again: a rotation
        with dashboard_app(make_settings, fleet, operators={OPERATOR: fast_hash(PASSWORD)}) as url:
            assert not acts_as_operator(url, cookie, csrf)
        return
    with dashboard_app(make_settings, fleet, operators={"bob": fast_hash("bob's passphrase")}) as url:
        assert not acts_as_operator(url, cookie, csrf)
    if change == "removed and added back":
        with dashboard_app(make_settings, fleet) as url:
            assert not acts_as_operator(url, cookie, csrf)
