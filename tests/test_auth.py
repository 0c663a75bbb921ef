"""Who may change routing: operators log in (session cookie, CSRF, throttle), automation presents
a bearer token; everything refused changes nothing. Real app, real database, parsed HTML."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from dashboard.config import ConfigError, load_settings

from .routing_helpers import (
    BEARER,
    OPERATOR,
    PASSWORD,
    SLOW_POLLING,
    TOKEN,
    TOKEN_NAME,
    auth_config,
    csrf_token,
    fast_hash,
    login,
    routing_events,
    soup,
)
from .web_helpers import Dash

OVERRIDE = {"region": "eu-west-1", "reason": "eu-west-1 disk full", "confirm_healthy": True}


@pytest.fixture
def adash(make_dash) -> Dash:
    """The app with operator alice and token automation, every region polled once."""
    dash = make_dash(auth=auth_config(login_max_failures=3), routing_file="routing.json", **SLOW_POLLING)
    dash.cycle()
    return dash


def state(dash: Dash) -> tuple:
    """Everything a refused request must leave as it was."""
    path = dash.settings.routing_file_path
    return (dash.store.overrides(), dash.store.routing_version(), routing_events(dash.store),
            path.read_bytes() if path.exists() else None)


def assert_unauthorized(response) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def logged_in(dash: Dash) -> bool:
    """Whether the client's session is an operator's: the failover form opens instead of redirecting."""
    response = dash.get("/regions/eu-west-1/failover")
    assert response.status_code in (200, 302)
    return response.status_code == 200


# -- the API: bearer tokens ------------------------------------------------------------------------


def test_no_credentials_is_401_and_changes_nothing(adash: Dash):
    before = state(adash)
    assert_unauthorized(adash.client.post("/api/v1/routing/overrides", json=OVERRIDE))
    assert_unauthorized(adash.client.delete("/api/v1/routing/overrides/eu-west-1", json={"reason": "x"}))
    assert state(adash) == before


@pytest.mark.parametrize("header", [
    f"Bearer {TOKEN}x", "Bearer not-the-token", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}", TOKEN,
])
def test_a_wrong_token_is_401_and_changes_nothing(adash: Dash, header):
    before = state(adash)
    assert_unauthorized(adash.client.post("/api/v1/routing/overrides", json=OVERRIDE,
                                          headers={"Authorization": header}))
    assert state(adash) == before


def test_the_right_token_changes_routing_without_a_csrf_token_and_is_the_actor(adash: Dash):
    response = adash.client.post("/api/v1/routing/overrides", json=OVERRIDE, headers=BEARER)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.headers.get("Set-Cookie") is None  # automation gets no session
    assert routing_events(adash.store)[0]["actor"] == f"token:{TOKEN_NAME}"


def test_a_token_whose_hash_was_replaced_in_config_is_refused(make_dash):
    old = make_dash(auth=auth_config(), **SLOW_POLLING)
    old.cycle()
    assert old.client.get("/api/v1/routing", headers=BEARER).status_code == 200
    assert old.client.post("/api/v1/routing/overrides", json=OVERRIDE, headers=BEARER).status_code == 201
    rotated = make_dash(auth=auth_config(api_tokens={TOKEN_NAME: fast_hash("a-brand-new-token-value")}),
                        **SLOW_POLLING)
    before = state(rotated)
    assert_unauthorized(rotated.client.delete("/api/v1/routing/overrides/eu-west-1", json={"reason": "x"},
                                              headers=BEARER))
    assert state(rotated) == before


# -- the browser: login, session, CSRF ------------------------------------------------------------


def test_a_wrong_password_is_401_with_the_form_again_and_no_session(adash: Dash):
    for username, password in [(OPERATOR, "wrong password"), ("mallory", PASSWORD), (OPERATOR, "")]:
        response = login(adash.client, username, password)
        assert response.status_code == 401
        page = soup(response)
        assert page.select_one("#login-error") is not None and page.select_one("#login-form") is not None
        assert PASSWORD not in response.get_data(as_text=True)
        assert not logged_in(adash)


def test_the_right_password_logs_in_and_redirects(adash: Dash):
    response = login(adash.client, next_url="/routing")
    assert response.status_code == 302 and response.headers["Location"] == "/routing"
    assert logged_in(adash)


def test_login_without_a_csrf_token_is_403_and_gives_no_session(adash: Dash):
    csrf_token(adash.client)  # the session exists, the form field is missing
    response = adash.client.post("/login", data={"username": OPERATOR, "password": PASSWORD})
    assert response.status_code == 403
    assert not logged_in(adash)


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_the_failover_form_without_a_valid_csrf_token_is_403_and_changes_nothing(adash: Dash, token):
    login(adash.client)
    before = state(adash)
    form = {"reason": "eu-west-1 disk full", "target_region": "us-east-1", "read_only": "on",
            "confirm_healthy": "on"}
    if token is not None:
        form["csrf_token"] = token
    for headers in ({}, {"HX-Request": "true"}):
        response = adash.client.post("/regions/eu-west-1/failover", data=form, headers=headers)
        assert response.status_code == 403
        assert soup(response).select_one("#failover-form") is None
    assert state(adash) == before


def test_a_logged_in_api_call_needs_the_csrf_header(adash: Dash):
    login(adash.client)
    before = state(adash)
    refused = adash.client.post("/api/v1/routing/overrides", json=OVERRIDE)
    assert refused.status_code == 403 and refused.mimetype == "application/json"
    assert refused.get_json()["error"] == "csrf_failed"
    wrong = adash.client.post("/api/v1/routing/overrides", json=OVERRIDE, headers={"X-CSRFToken": "forged"})
    assert wrong.status_code == 403 and wrong.get_json()["error"] == "csrf_failed"
    assert state(adash) == before

    token = csrf_token(adash.client, "/regions/eu-west-1/failover")
    accepted = adash.client.post("/api/v1/routing/overrides", json=OVERRIDE, headers={"X-CSRFToken": token})
    assert accepted.status_code == 201, accepted.get_data(as_text=True)
    assert routing_events(adash.store)[0]["actor"] == OPERATOR


def test_logout_ends_the_session(adash: Dash):
    login(adash.client)
    assert logged_in(adash)
    token = csrf_token(adash.client, "/regions/eu-west-1/failover")
    response = adash.client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert not logged_in(adash)


# -- the login throttle ----------------------------------------------------------------------------


def test_after_the_maximum_failures_even_the_right_password_is_429(adash: Dash):
    for _ in range(3):  # login_max_failures
        assert login(adash.client, password="guess").status_code == 401
    response = login(adash.client)
    assert response.status_code == 429
    assert "Too many failed logins" in soup(response).select_one("#login-error").get_text()
    assert not logged_in(adash)
    assert login(adash.client, password="guess").status_code == 429  # a locked name is not even checked


def test_the_throttle_counts_per_user_name(adash: Dash):
    for _ in range(3):
        login(adash.client, "mallory", "guess")
    assert login(adash.client, "mallory", "guess").status_code == 429
    assert login(adash.client).status_code == 302  # alice is not locked out by mallory's failures


def test_a_successful_login_before_the_limit_clears_the_count(adash: Dash):
    for _ in range(2):
        assert login(adash.client, password="guess").status_code == 401
    assert login(adash.client).status_code == 302
    for _ in range(2):
        assert login(adash.client, password="guess").status_code == 401
    assert login(adash.client).status_code == 302  # 4 failures in all, but never 3 in a row


def test_failures_older_than_the_lockout_do_not_count(make_dash):
    dash = make_dash(auth=auth_config(login_max_failures=2, login_lockout_seconds=10), **SLOW_POLLING)
    for _ in range(2):
        dash.store.record_login_failure(OPERATOR, "127.0.0.1", time.time() - 11)
    assert login(dash.client).status_code == 302


# -- where a login leads ---------------------------------------------------------------------------


def stays_on_this_site(location: str) -> bool:
    """Whether a browser following this Location stays here (it reads \\ as / and drops tabs/newlines)."""
    seen_by_browser = location.replace("\\", "/").translate({ord(c): None for c in "\t\r\n"})
    parts = urlsplit(seen_by_browser)
    # Any run of two or more leading slashes names a host to a browser.
    return not parts.scheme and seen_by_browser.startswith("/") and not seen_by_browser.startswith("//")


@pytest.mark.parametrize("next_url", ["/regions/eu-west-1", "/events?region=eu-west-1", "/routing"])
def test_login_next_leads_to_the_page_asked_for(adash: Dash, next_url):
    response = login(adash.client, next_url=next_url)
    assert response.status_code == 302 and response.headers["Location"] == next_url


@pytest.mark.parametrize("next_url", [
    "https://evil.example", "https://evil.example/regions", "//evil.example", "javascript:alert(1)",
    "regions/eu-west-1", "",
])
def test_login_next_elsewhere_leads_to_the_overview(adash: Dash, next_url):
    response = login(adash.client, next_url=next_url)
    assert response.status_code == 302 and response.headers["Location"] == "/"


@pytest.mark.parametrize("next_url", ["/\\evil.example", "/\t/evil.example", "/\n/evil.example", "///evil.example",
                                      "/\\/evil.example", "https:evil.example"])
def test_login_next_never_leads_off_this_site(adash: Dash, next_url):
    response = login(adash.client, next_url=next_url)
    assert response.status_code == 302
    assert stays_on_this_site(response.headers["Location"]), response.headers["Location"]


# -- the session cookie ----------------------------------------------------------------------------


def _session_cookie(response) -> list[str]:
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("dashboard_session=")]
    assert cookies, response.headers
    return [part.strip().lower() for part in cookies[-1].split(";")]


def test_the_session_cookie_is_httponly_and_samesite_lax(adash: Dash):
    flags = _session_cookie(login(adash.client))
    assert "httponly" in flags and "samesite=lax" in flags
    assert "secure" not in flags


def test_the_session_cookie_is_secure_when_the_request_came_over_https(adash: Dash):
    https = {"base_url": "https://localhost", "headers": {"Referer": "https://localhost/login"}}
    response = login(adash.client, **https)
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    flags = _session_cookie(response)
    assert "secure" in flags and "httponly" in flags and "samesite=lax" in flags


# -- reading behind a login ------------------------------------------------------------------------


def test_read_requires_login_sends_pages_to_login_and_api_reads_401(make_dash):
    dash = make_dash(auth=auth_config(read_requires_login=True), **SLOW_POLLING)
    dash.cycle()
    for url in ("/", "/regions/eu-west-1", "/routing", "/events", "/fragments/overview"):
        response = dash.get(url)
        assert response.status_code == 302, url
        assert response.headers["Location"].startswith("/login?next="), (url, response.headers["Location"])
    for url in ("/api/v1/status", "/api/v1/routing", "/api/v1/events", "/api/v1/regions/eu-west-1"):
        assert_unauthorized(dash.get(url))
        assert_unauthorized(dash.get(url, headers={"Authorization": "Bearer wrong"}))
        assert dash.get(url, headers=BEARER).status_code == 200, url
    assert dash.page("/login").select_one("#login-form") is not None
    # A load balancer cannot log in: /healthz stays open; Prometheus scrapes with a token.
    assert dash.get("/healthz").status_code in (200, 503)
    assert_unauthorized(dash.get("/metrics"))
    assert dash.get("/metrics", headers=BEARER).status_code == 200

    assert login(dash.client, next_url="/routing").headers["Location"] == "/routing"
    assert dash.page("/").select_one("#overview") is not None
    assert dash.json("/api/v1/status")["summary"]["up"] == 3


def test_reading_is_open_by_default(adash: Dash):
    assert adash.page("/routing").select_one("#routing-table") is not None
    assert adash.json("/api/v1/routing")["version"] == 0


# -- the config: hashes only ------------------------------------------------------------------------


DEPLOYMENT = {"region": "us-east-1", "primary_region": "us-east-1", "regions": ["us-east-1", "eu-west-1"],
              "region_base_urls": {"us-east-1": "https://us.example.com", "eu-west-1": "https://eu.example.com"}}


def _write(tmp_path: Path, auth: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"deployment": DEPLOYMENT, "dashboard": {"auth": auth}}), encoding="utf-8")
    return path


@pytest.mark.parametrize("key", ["operators", "api_tokens"])
def test_config_refuses_a_plain_password_naming_the_key_without_echoing_it(tmp_path, key):
    secret = "Plain-Text-Secret-4711"
    with pytest.raises(ConfigError) as refused:
        load_settings(str(_write(tmp_path, {key: {"alice": secret}})), environ={})
    message = str(refused.value)
    assert f"dashboard.auth.{key}" in message
    assert "hash-password" in message
    assert secret not in message and secret.lower() not in message.lower()


def test_config_accepts_werkzeug_hashes_of_both_kinds(tmp_path):
    from werkzeug.security import generate_password_hash

    auth = {"operators": {"alice": fast_hash(PASSWORD), "bob": generate_password_hash(PASSWORD, method="scrypt")},
            "api_tokens": {"ci": fast_hash(TOKEN)}}
    settings = load_settings(str(_write(tmp_path, auth)), environ={})
    assert set(settings.dashboard.auth.operators) == {"alice", "bob"}
    assert settings.dashboard.auth.login_max_failures == 5
    assert settings.dashboard.auth.read_requires_login is False


def test_check_config_masks_the_hashes(tmp_path):
    hashed_password, hashed_token = fast_hash(PASSWORD), fast_hash(TOKEN)
    path = _write(tmp_path, {"operators": {"alice": hashed_password}, "api_tokens": {"ci": hashed_token}})
    env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD_CONFIG", "REVERSEAI_DEPLOYMENT_REGIONS")}
    result = subprocess.run([sys.executable, "-m", "dashboard.cli", "check-config", "--json", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    auth = json.loads(result.stdout)["dashboard"]["auth"]
    assert auth["operators"] == {"alice": "*** (hash)"} and auth["api_tokens"] == {"ci": "*** (hash)"}
    for secret in (hashed_password, hashed_token, hashed_password.split("$")[-1], hashed_token.split("$")[-1]):
        assert secret not in result.stdout and secret not in result.stderr
