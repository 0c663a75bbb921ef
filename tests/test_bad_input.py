"""Bad input from anyone is a 4xx with the API's JSON error or the HTML error page, never a 500
with a traceback in the log: out-of-range numbers, odd Host headers, control characters in
`next`, JSON nested thousands deep."""
from __future__ import annotations

import json
import logging
import socket

import pytest
from bs4 import BeautifulSoup

from .live_server import served
from .routing_helpers import BEARER, SLOW_POLLING, auth_config, login
from .web_helpers import Dash


@pytest.fixture
def bdash(make_dash) -> Dash:
    return make_dash(auth=auth_config(), **SLOW_POLLING)


def assert_clean_refusal(response, api: bool, caplog) -> None:
    body = response.get_data(as_text=True)
    assert 400 <= response.status_code < 500, (response.status_code, body[:300])
    if api:
        assert response.mimetype == "application/json" and set(json.loads(body)) == {"error", "message"}
    else:
        assert response.mimetype == "text/html" and BeautifulSoup(body, "html.parser").select_one("h1")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a traceback was logged"


@pytest.mark.parametrize("url", [
    "/api/v1/events?before=99999999999999999999999", "/api/v1/events?before=9223372036854775808",
    "/api/v1/events?limit=99999999999999999999999", "/api/v1/events?before=-1", "/api/v1/events?limit=1e3",
    "/api/v1/regions/eu-west-1/series?metric=latency&window=%00", "/api/v1/regions/%00",
])
def test_out_of_range_or_odd_api_parameters_are_400_or_404_as_json(bdash: Dash, url, caplog):
    assert_clean_refusal(bdash.client.get(url), True, caplog)


@pytest.mark.parametrize("url", ["/events?before=99999999999999999999999", "/events?limit=-5", "/regions/%ff"])
def test_out_of_range_page_parameters_are_the_error_page(bdash: Dash, url, caplog):
    assert_clean_refusal(bdash.client.get(url), False, caplog)


@pytest.mark.parametrize("body", ["[" * 5000 + "]" * 5000, '{"a":' * 5000 + "1" + "}" * 5000])
def test_json_nested_thousands_deep_is_400(bdash: Dash, body, caplog):
    response = bdash.client.post("/api/v1/routing/overrides", data=body, content_type="application/json",
                                 headers=BEARER)
    assert_clean_refusal(response, True, caplog)
    assert response.get_json()["error"] == "bad_body"


@pytest.mark.parametrize("next_url", ["/\r\nSet-Cookie: x=1", "/regions\x00/x", "/\x1b[2J"])
def test_control_characters_in_next_lead_to_the_overview(bdash: Dash, next_url, caplog):
    assert bdash.client.get("/login", query_string={"next": next_url}).status_code == 200
    response = login(bdash.client, next_url=next_url)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _raw_get(port: int, path: bytes, host: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("host", [b"x" * 100, b"..", b"a..b", b"[", b"a:b:c", b"exa mple", b"", b"%",
                                  b"localhost:99999", b"[::1]:x"])
def test_odd_host_headers_never_end_in_a_500(bdash: Dash, host, caplog):
    with served(bdash.app) as url:
        port = int(url.rsplit(":", 1)[1])
        for path in (b"/", b"/api/v1/status", b"/regions/eu-west-1/failover", b"/nowhere"):
            answer = _raw_get(port, path, host)
            status = int(answer.split(b" ", 2)[1])
            assert status < 500, (host, path, answer[:300])
            if status == 400:
                kind = b"application/json" if path.startswith(b"/api/") else b"text/html"
                assert b"Content-Type: " + kind in answer, answer[:300]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
