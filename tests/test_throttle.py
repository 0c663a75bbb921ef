"""The login throttle slows guessing without handing an attacker a lockout: per (name, address),
atomic under concurrent bursts, HEAD never authenticates, and the client's address is right
behind a trusted proxy. Real app on waitress over loopback."""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
from bs4 import BeautifulSoup

from dashboard.store import Store
from dashboard.web import create_app

from .live_server import served
from .routing_helpers import OPERATOR, PASSWORD, SLOW_POLLING, auth_config

MAX_FAILURES = 5


@contextmanager
def dashboard_app(make_settings, fleet, **dashboard) -> Iterator[tuple[str, Store]]:
    settings = make_settings(fleet, auth=auth_config(login_max_failures=MAX_FAILURES), **SLOW_POLLING, **dashboard)
    store = Store(settings.database_path)
    try:
        with served(create_app(settings, store=store)) as url:
            yield url, store
    finally:
        store.close()


def login_page(url: str, forwarded_for: str | None = None) -> tuple[httpx.Client, str]:
    """A browser that has opened the login form: its client (cookie kept) and the form's CSRF token."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    client = httpx.Client(base_url=url, timeout=30, headers=headers)
    page = client.get("/login")
    return client, BeautifulSoup(page.text, "html.parser").select_one("input[name=csrf_token]")["value"]


def attempt(url: str, password: str, forwarded_for: str | None = None, username: str = OPERATOR) -> int:
    client, token = login_page(url, forwarded_for)
    try:
        return client.post("/login", data={"username": username, "password": password, "csrf_token": token}
                           ).status_code
    finally:
        client.close()


def test_a_concurrent_burst_gets_no_more_guesses_than_the_limit(fleet, make_settings):
    with dashboard_app(make_settings, fleet) as (url, store):
        browsers = [login_page(url) for _ in range(20)]

        def guess(browser: tuple[httpx.Client, str]) -> int:
            client, token = browser
            return client.post("/login", data={"username": OPERATOR, "password": "guess",
                                               "csrf_token": token}).status_code

        with ThreadPoolExecutor(len(browsers)) as pool:
            statuses = list(pool.map(guess, browsers))
        for client, _ in browsers:
            client.close()
        assert sorted(set(statuses)) == [401, 429], statuses
        assert statuses.count(401) == MAX_FAILURES, statuses  # each 401 is one password checked
        assert store.login_failures(OPERATOR, "127.0.0.1") == MAX_FAILURES
        assert attempt(url, PASSWORD) == 429  # this pair waits, even with the right password


def test_guessing_from_one_address_never_locks_the_operator_out_from_another(fleet, make_settings):
    with dashboard_app(make_settings, fleet, trusted_proxies=1) as (url, store):
        attacker = "203.0.113.9"
        # Many names from one address (a shared proxy exit) lock none of the real operators out.
        for name in (f"user{i}" for i in range(20)):
            attempt(url, "guess", attacker, username=name)
        statuses = [attempt(url, f"guess {i}", attacker) for i in range(2 * MAX_FAILURES)]
        assert statuses[:MAX_FAILURES] == [401] * MAX_FAILURES and set(statuses[MAX_FAILURES:]) == {429}
        assert attempt(url, PASSWORD, "198.51.100.7") == 302  # alice, from her own address
        assert attempt(url, PASSWORD, attacker) == 429  # but not from the guessing one (5 s back-off)
        assert store.login_failures(OPERATOR, attacker) == MAX_FAILURES
        assert store.login_failures(OPERATOR, "198.51.100.7") == 0


def test_without_trusted_proxies_a_forwarded_for_header_cannot_change_the_address(fleet, make_settings):
    with dashboard_app(make_settings, fleet) as (url, store):
        for i in range(MAX_FAILURES):
            assert attempt(url, "guess", f"192.0.2.{i}") == 401
        assert attempt(url, "guess", "192.0.2.200") == 429  # every one was 127.0.0.1 all along
        assert store.login_failures(OPERATOR, "127.0.0.1") == MAX_FAILURES


def test_head_never_authenticates_and_counts_no_failure(fleet, make_settings):
    with dashboard_app(make_settings, fleet) as (url, store):
        client, token = login_page(url)
        try:
            for password in ("guess", PASSWORD):
                response = client.request("HEAD", "/login", data={"username": OPERATOR, "password": password,
                                                                  "csrf_token": token})
                assert response.status_code == 200
                assert client.get("/regions/eu-west-1/failover").status_code == 302  # not logged in
        finally:
            client.close()
        assert store.login_failures(OPERATOR, "127.0.0.1") == 0
