"""The server as an attacker meets it: `dashboard serve` on loopback, bounded request bodies, the
memory a huge body costs measured from /proc."""
from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import httpx
import pytest
from bs4 import BeautifulSoup

from dashboard.web import MAX_REQUEST_BYTES

from .live_server import dashboard_serve, post_raw
from .routing_helpers import SLOW_POLLING, auth_config

HUNDRED_MB = 100 * 1024 * 1024


def _status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer, or None when the server sent nothing back."""
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


def test_a_huge_body_is_refused_without_the_server_growing(fleet, make_settings, tmp_path):
    settings = make_settings(fleet, auth=auth_config(), **SLOW_POLLING)
    with dashboard_serve(settings.source, tmp_path / "serve.log") as served:
        for _ in range(5):  # warm up: templates compiled, connections opened
            assert httpx.get(served.url, timeout=10).status_code == 200
        peak_before = served.memory_kb("VmHWM")

        answers: list[bytes] = [post_raw(served.port, "/login", HUNDRED_MB)]
        # Three at once at a form behind the login, as in the report: each refused, none read.
        threads = [threading.Thread(target=lambda: answers.append(
            post_raw(served.port, "/regions/eu-west-1/failover", HUNDRED_MB))) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        grown_mb = (served.memory_kb("VmHWM") - peak_before) / 1024
        assert grown_mb < 20, f"the server's peak memory grew by {grown_mb:.0f} MB for bodies it refused"
        for answer in answers:
            assert _status_of(answer) in (413, None), answer[:200]
        assert 413 in [_status_of(a) for a in answers], [a[:100] for a in answers]
        assert httpx.get(served.url, timeout=10).status_code == 200  # and it still serves


def test_a_body_over_the_limit_is_413_as_json_on_the_api_and_as_a_page_elsewhere(fleet, make_settings, tmp_path):
    settings = make_settings(fleet, auth=auth_config(), **SLOW_POLLING)
    too_big = MAX_REQUEST_BYTES + 1
    with dashboard_serve(settings.source, tmp_path / "serve.log") as served:
        api = httpx.post(f"{served.url}api/v1/routing/overrides", timeout=10,
                         content=json.dumps({"region": "eu-west-1", "reason": "x" * too_big}),
                         headers={"Content-Type": "application/json"})
        assert api.status_code == 413
        assert api.headers["Content-Type"].startswith("application/json")
        assert set(api.json()) == {"error", "message"} and api.json()["error"] == "request_entity_too_large"

        page = httpx.post(f"{served.url}login", timeout=10, data={"username": "alice", "password": "x" * too_big})
        assert page.status_code == 413
        assert page.headers["Content-Type"].startswith("text/html")
        assert "413" in BeautifulSoup(page.text, "html.parser").select_one("h1").get_text()

        # The largest legitimate request fits: a failover with the longest reason allowed.
        token = BeautifulSoup(httpx.get(f"{served.url}login", timeout=10).text, "html.parser")
        assert token.select_one("input[name=csrf_token]") is not None
        small = httpx.post(f"{served.url}api/v1/routing/overrides", timeout=10,
                           json={"region": "eu-west-1", "reason": "x" * 500})
        assert small.status_code == 401  # read and refused for want of credentials, not for its size


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(("umask", "configured", "routing_mode"), [
    (0o022, {}, 0o644), (0o002, {}, 0o644), (0o077, {"routing_file_mode": "0640"}, 0o640),
])
def test_the_database_is_owner_only_and_the_routing_file_has_its_mode_whatever_the_umask(
        fleet, make_settings, tmp_path, umask, configured, routing_mode):
    settings = make_settings(fleet, routing_file="routing.json", **configured, **SLOW_POLLING)
    with dashboard_serve(settings.source, tmp_path / "serve.log", umask=umask) as served:
        assert httpx.get(served.url, timeout=10).status_code == 200
        database = settings.database_path
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            assert path.exists(), f"{path.name} not there while the server runs"
            assert _mode(path) == 0o600, f"{path.name} is {_mode(path):04o}, readable by others"
        # Written at every start, for a router that may run as another user.
        assert _mode(settings.routing_file_path) == routing_mode


def test_an_existing_database_readable_by_others_is_made_owner_only(tmp_path):
    from dashboard.store import Store

    path = tmp_path / "old.db"
    Store(path).close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").touch()
        os.chmod(f"{path}{suffix}", 0o644)  # as an older version left it
    store = Store(path)
    try:
        assert {_mode(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")} == {0o600}
    finally:
        store.close()
