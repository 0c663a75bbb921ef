"""Responses compressed as the client asks: brotli or gzip by Accept-Encoding, over real HTTP
(the app on waitress on loopback), decoded here and compared with what an uncompressing client
gets; tiny and already-compressed responses, and an operator's HTML, left as they are."""
from __future__ import annotations

import gzip
from collections.abc import Iterator

import brotli
import httpx
import pytest
from flask import Response

from dashboard.web import PLOTLY_BASIC_JS

from .live_server import served
from .routing_helpers import SLOW_POLLING, auth_config, login
from .web_helpers import Dash

PLOTLY_PATH = "/static/" + PLOTLY_BASIC_JS
DECODERS = {"br": brotli.decompress, "gzip": gzip.decompress}


@pytest.fixture
def base_url(dash: Dash) -> Iterator[str]:
    dash.cycle()
    with served(dash.app) as url:
        yield url


def fetch(url: str, accept_encoding: str | None, **headers: str) -> tuple[httpx.Response, bytes]:
    """GET and return the response with its body exactly as it came over the wire."""
    sent = {"Accept-Encoding": accept_encoding or "identity", **headers}
    with httpx.Client(timeout=10) as client, client.stream("GET", url, headers=sent) as response:
        raw = b"".join(response.iter_raw())
    return response, raw


def undo(response: httpx.Response, raw: bytes) -> bytes:
    encoding = response.headers.get("Content-Encoding")
    return raw if encoding is None else DECODERS[encoding](raw)


@pytest.mark.parametrize("path", [PLOTLY_PATH, "/static/app.css", "/regions/eu-west-1",
                                  "/api/v1/status", "/charts/eu-west-1?metric=error_rate&window=1h"])
@pytest.mark.parametrize(("accept", "expected"), [
    ("br", "br"), ("gzip", "gzip"), ("gzip, deflate, br, zstd", "br"),  # what Chromium sends: brotli
    ("gzip;q=1.0, br;q=0.5", "gzip"), ("br;q=0, gzip", "gzip"),
    (None, None), ("identity", None), ("deflate, zstd", None),  # nothing both sides speak
])
def test_text_responses_are_compressed_as_the_client_asks(base_url: str, path: str, accept, expected):
    plain, plain_raw = fetch(base_url + path, None)
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
    response, raw = fetch(base_url + path, accept)
    assert response.status_code == 200
    assert response.headers.get("Content-Encoding") == expected
    assert "accept-encoding" in response.headers["Vary"].lower()
    assert int(response.headers["Content-Length"]) == len(raw)
    if path.startswith("/static/"):
        assert undo(response, raw) == plain_raw
    else:  # pages and JSON hold times that move; their size does not
        body = undo(response, raw)
        assert body.startswith(plain_raw[:15]) and abs(len(body) - len(plain_raw)) < 200
    if expected:
        assert len(raw) < len(plain_raw) / 2.5, (path, len(raw), len(plain_raw))


def test_the_vendored_plotly_bundle_goes_over_the_wire_in_under_400_kb_and_keeps_its_etag_checks(base_url):
    first, raw = fetch(base_url + PLOTLY_PATH, "gzip, deflate, br")
    assert first.headers["Content-Encoding"] == "br" and len(raw) < 400_000
    etag = first.headers["ETag"]
    again, raw_again = fetch(base_url + PLOTLY_PATH, "gzip, deflate, br")
    assert raw_again == raw  # the kept compressed form
    not_modified, body = fetch(base_url + PLOTLY_PATH, "gzip, deflate, br", **{"If-None-Match": etag})
    assert not_modified.status_code == 304 and body == b""
    # A gzip client gets its own variant, with its own validator.
    gzipped, raw_gzip = fetch(base_url + PLOTLY_PATH, "gzip")
    assert gzipped.headers["Content-Encoding"] == "gzip" and gzipped.headers["ETag"] != etag
    assert gzip.decompress(raw_gzip) == brotli.decompress(raw)


def test_tiny_responses_are_sent_as_they_are(base_url: str):
    response, raw = fetch(base_url + "/api/v1/regions/nowhere-1", "gzip, deflate, br")
    assert response.status_code == 404 and len(raw) < 500
    assert "Content-Encoding" not in response.headers
    assert undo(response, raw).startswith(b'{"error"')


def test_already_compressed_responses_are_not_compressed_again(make_dash):
    dash = make_dash()
    payload = gzip.compress(b'{"rows": [' + b"1, " * 5000 + b"1]}")

    # A view whose answer is already encoded, the way a precompressed export would be sent.
    def export() -> Response:
        return Response(payload, mimetype="application/json", headers={"Content-Encoding": "gzip"})

    def picture() -> Response:  # a PNG is compressed by its format: never worth brotli's time
        return Response(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40, mimetype="image/png")

    dash.app.add_url_rule("/test-export", "test_export", export)
    dash.app.add_url_rule("/test-picture", "test_picture", picture)
    with served(dash.app) as url:
        exported, raw = fetch(url + "/test-export", "br, gzip")
        image, image_raw = fetch(url + "/test-picture", "br, gzip")
    assert exported.headers["Content-Encoding"] == "gzip" and raw == payload
    assert "Content-Encoding" not in image.headers and image_raw.startswith(b"\x89PNG")


def test_an_operators_html_is_not_compressed_but_their_json_and_static_files_are(make_dash):
    dash = make_dash(auth=auth_config(), routing_file="routing.json", **SLOW_POLLING)
    dash.cycle()
    brotli_please = {"Accept-Encoding": "gzip, deflate, br"}
    assert dash.get("/", headers=brotli_please).headers.get("Content-Encoding") == "br"  # anonymous
    assert login(dash.client).status_code in (302, 303)
    page = dash.get("/", headers=brotli_please)
    assert page.status_code == 200 and "Content-Encoding" not in page.headers
    assert b'name="csrf_token"' in page.data and b"Log out" in page.data  # it is the operator's page
    assert "accept-encoding" in page.headers["Vary"].lower()
    for path in ("/api/v1/status", PLOTLY_PATH):
        assert dash.get(path, headers=brotli_please).headers.get("Content-Encoding") == "br", path
