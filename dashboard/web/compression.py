"""Compressed responses: brotli or gzip, as the client's `Accept-Encoding` asks (Flask-Compress).

A region page's cold load was mostly bytes of JavaScript and JSON, which compress four to one.
What is not compressed, and why:

- responses under `MIN_SIZE` bytes: the encoding's overhead eats what it would save;
- types that are already compressed (images other than SVG, archives) and responses that carry a
  `Content-Encoding` already: Flask-Compress only touches the text types of `COMPRESS_MIMETYPES`
  and never encodes twice;
- HTML for a logged-in operator: it carries their CSRF token beside text an attacker may choose
  (a region filter, a reason), which is what BREACH reads through compression. JSON and static
  files carry no secret and are always compressed.

Static files are read whole and their compressed forms kept in memory (keyed by path, encoding
and the file's ETag, so a changed file is compressed again): every cold load asks for the same
1.2 MB of plotly.js, which costs 25 ms of brotli once per process instead of on every request.
The answers every viewer shares (web/shared_views.py) are kept the same way, keyed by their ETag.
"""
from __future__ import annotations

import threading

from flask import Flask, Request, Response, g, request
from flask_compress import Compress

from .auth import current_operator

ENCODINGS = ["br", "gzip"]  # the server's preference when a client accepts both equally
MIN_SIZE = 500
# Brotli 5 is within a few per cent of 9 on plotly.js (364 KB against 357 KB of 1.2 MB) at a third
# of the time; 11 saves another 35 KB but takes 1.7 s.
BROTLI_QUALITY = 5
GZIP_LEVEL = 6
MAX_CACHED_VARIANTS = 64


class StaticVariants:
    """Flask-Compress's cache backend, holding compressed static files and shared views only.

    Flask-Compress asks the cache for every response it compresses, keyed by `<encoding>;<key>`;
    `_cache_key` gives an empty key for anything else, and such keys are never kept."""

    def __init__(self) -> None:
        self.variants: dict[str, bytes] = {}  # least recently used first
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self.variants.pop(key, None)
            if value is not None:
                self.variants[key] = value
            return value

    def set(self, key: str, value: bytes) -> None:
        if key.endswith(";"):
            return  # neither a static file nor a shared view: different on every request
        with self._lock:
            if len(self.variants) >= MAX_CACHED_VARIANTS:
                # Shared views make new keys every poll cycle: the least recently used one goes, so
                # plotly.js, asked for at every cold load, stays.
                del self.variants[next(iter(self.variants))]
            self.variants[key] = value


def _cache_key(_request: Request) -> str:
    return g.get("compress_variant_key", "")


def init_compression(app: Flask) -> None:
    """Compress the app's responses; see the module docstring for what is left alone."""
    app.config.update(
        COMPRESS_REGISTER=False,  # `_compress` below decides which responses Flask-Compress sees
        COMPRESS_ALGORITHM=ENCODINGS,
        COMPRESS_ALGORITHM_STREAMING=ENCODINGS,
        COMPRESS_MIN_SIZE=MIN_SIZE,
        COMPRESS_BR_LEVEL=BROTLI_QUALITY,
        COMPRESS_LEVEL=GZIP_LEVEL,
        COMPRESS_CACHE_BACKEND=StaticVariants,
        COMPRESS_CACHE_KEY=_cache_key,
    )
    compress = Compress()
    compress.init_app(app)

    def _compress(response: Response) -> Response:
        if response.mimetype == "text/html" and current_operator():
            response.vary.add("Accept-Encoding")  # another client of the same URL may get it compressed
            return response
        if request.endpoint == "static" and response.status_code == 200 and response.direct_passthrough:
            # send_file streams the file; read it whole so the compressed form can be cached and
            # sent with a Content-Length (a streamed one would be compressed again on every request).
            etag, _weak = response.get_etag()
            g.compress_variant_key = f"{request.path}:{etag}"
            response.direct_passthrough = False
            response.make_sequence()
        return compress.after_request(response)

    app.after_request(_compress)
