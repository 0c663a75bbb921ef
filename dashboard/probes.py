"""Outbound HTTP: probe every region's health and deployment endpoints at once.

Nothing a region sends may crash, stall or slow a cycle beyond the deadline, so every failure
becomes a `ProbeResult` with a short human reason; this module never raises for a region's
behaviour. One long-lived client on one background event loop keeps connections alive across
cycles. The client uses httpx's API over the aiohttp transport: httpx's own pool takes 4-8 s for
400 concurrent requests (encode/httpx#3215; figures in DESIGN.md), the aiohttp transport ~0.2 s.
"""
from __future__ import annotations

import asyncio
import codecs
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from .model import DEPLOYMENT, ENDPOINT_PATHS, HEALTH, TEXT_LIMIT, ProbeResult, declares_json

__all__ = ["DEPLOYMENT", "HEALTH", "ProbeResult", "Prober", "endpoint_url"]

USER_AGENT = "region-dashboard/0.1 (health probe)"
# How often the lag monitor wakes during a cycle; its lateness is the loop's lag.
LAG_TICK_SECONDS = 0.02


def endpoint_url(base_url: str, endpoint: str) -> str:
    """Append the endpoint path to the base URL, keeping any path prefix the base carries."""
    return base_url.rstrip("/") + ENDPOINT_PATHS[endpoint]


class _Failure(Exception):
    def __init__(self, reason: str, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


def _describe_transport_error(exc: BaseException) -> str:
    """A short, human reason for a transport failure, from the exception chain."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 6:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for err in chain:
        if isinstance(err, (ssl.SSLError, aiohttp.ClientSSLError, ssl.CertificateError)):
            return f"TLS error: {_short(err)}"
    for err in chain:
        if isinstance(err, aiohttp.ClientConnectorDNSError) or "Name or service not known" in str(err):
            return "DNS lookup failed"
        if isinstance(err, ConnectionRefusedError) or "Connect call failed" in str(err):
            return "connection refused"
        if isinstance(err, aiohttp.ServerDisconnectedError):
            return "connection dropped by the region before it answered"
        if isinstance(err, (ConnectionResetError, aiohttp.ClientPayloadError)):
            return "connection reset while reading the answer"
        if isinstance(err, aiohttp.ClientConnectorError):
            return f"cannot connect: {_short(err)}"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return f"unsupported URL: {_short(exc)}"
    return f"request failed: {type(exc).__name__}: {_short(exc)}"


def _short(err: BaseException, limit: int = 120) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _decode(raw: bytes, content_type: str, charset: str | None) -> tuple[Any, str]:
    """The body as parsed JSON when it is JSON, else as text clipped to TEXT_LIMIT bytes.

    A body that declares JSON is parsed whatever it looks like; one that does not is parsed when it
    starts like a JSON object or array (services often send JSON as text/plain). What does not
    parse is kept as text: whether that is a failure is the evaluation's call, not the transport's."""
    first = raw.lstrip().removeprefix(codecs.BOM_UTF8)[:1]
    if not first:
        return None, ""
    if declares_json(content_type) or (first in (b"{", b"[") and content_type != "text/html"):
        try:
            return json.loads(raw), ""
        except (UnicodeDecodeError, ValueError):
            pass
    head = raw[:TEXT_LIMIT]
    try:
        return None, head.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return None, head.decode("utf-8", errors="replace")


def _run_queue_wait_ns() -> int | None:
    """Nanoseconds this thread spent runnable but waiting for a CPU (Linux schedstat), else None."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


class Prober:
    """Probes regions concurrently from a long-lived client on its own event loop thread.

    `probe_all` is synchronous and thread-safe: the scheduler's worker thread calls it.
    """

    def __init__(self, *, timeout_seconds: float, max_body_bytes: int, max_connections: int = 1000) -> None:
        self.timeout_seconds = timeout_seconds
        self.max_body_bytes = max_body_bytes
        self._max_connections = max_connections
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="probe-loop", daemon=True)
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        self.last_lag_ms: float | None = None  # the worst event-loop lag of the last probe_all
        self.last_cpu_starved_ms: float | None = None  # run-queue wait of the loop thread (Linux)
        # Tests only: a blocking call run on the loop during the next cycles, to stall it for real.
        self.stall_hook: Callable[[], None] | None = None
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()

    async def _open(self) -> None:
        limits = httpx.Limits(max_connections=self._max_connections, max_keepalive_connections=self._max_connections)
        self._client = httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits),
            follow_redirects=False,  # a redirect is a finding, not something to chase
            headers={"User-Agent": USER_AGENT, "Accept": "application/json, application/health+json"},
            # The hard deadline is enforced around the whole exchange below; this is a backstop.
            timeout=httpx.Timeout(self.timeout_seconds),
        )

    def probe_all(self, targets: Iterable[tuple[str, str]]) -> list[ProbeResult]:
        """Probe both endpoints of every (region, base_url) at once; results in target order."""
        if self._closed:
            raise RuntimeError("prober is closed")
        future = asyncio.run_coroutine_threadsafe(self._probe_all(list(targets)), self._loop)
        return future.result()

    async def _probe_all(self, targets: list[tuple[str, str]]) -> list[ProbeResult]:
        tasks = [
            self._probe(region, base_url, endpoint)
            for region, base_url in targets
            for endpoint in (HEALTH, DEPLOYMENT)
        ]
        worst = [0.0, time.perf_counter()]  # the worst lag so far; when the current tick began
        starved_before = _run_queue_wait_ns()
        monitor = asyncio.create_task(self._watch_lag(worst))
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            monitor.cancel()
            # A tick still running when the probes ended is lag too (a stall right at the end).
            pending = time.perf_counter() - worst[1] - LAG_TICK_SECONDS
            self.last_lag_ms = max(worst[0], pending) * 1000
            starved_after = _run_queue_wait_ns()
            self.last_cpu_starved_ms = (None if starved_before is None or starved_after is None
                                        else (starved_after - starved_before) / 1e6)

    async def _watch_lag(self, worst: list[float]) -> None:
        """Wake every tick and keep how late the wake-up came: time the loop could not run, which
        every probe's latency measured too (the GIL, CPU starvation, a blocking call)."""
        stall = self.stall_hook
        while True:
            before = worst[1] = time.perf_counter()
            if stall is not None:  # once the probes are under way: they measure the stall too
                await asyncio.sleep(0)
                stall()
                stall = None
            await asyncio.sleep(LAG_TICK_SECONDS)
            worst[0] = max(worst[0], time.perf_counter() - before - LAG_TICK_SECONDS)

    async def _probe(self, region: str, base_url: str, endpoint: str) -> ProbeResult:
        started_at = time.time()
        start = time.perf_counter()
        status_code: int | None = None
        content_type = ""
        timed_out = False
        try:
            async with asyncio.timeout(self.timeout_seconds):
                status_code, content_type, body, text = await self._fetch(endpoint_url(base_url, endpoint))
        except _Failure as failure:
            reason, status_code = failure.reason, failure.status_code or status_code
        except TimeoutError:
            reason, timed_out = f"no complete answer within {self.timeout_seconds:g} s", True
        except httpx.TimeoutException as exc:
            # httpx-aiohttp maps every aiohttp connection error, a refused connection included, to
            # ConnectTimeout: only call it a timeout when the cause really was one.
            cause = exc.__cause__
            if cause is None or isinstance(cause, (TimeoutError, aiohttp.ServerTimeoutError)):
                reason, timed_out = f"no complete answer within {self.timeout_seconds:g} s", True
            else:
                reason = _describe_transport_error(cause)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything a region causes is data, never a crash
            reason = _describe_transport_error(exc)
        else:
            latency_ms = (time.perf_counter() - start) * 1000
            # Any complete answer is kept with what it said: a 503's body names what failed.
            ok = 200 <= status_code < 300
            return ProbeResult(region, endpoint, started_at, ok, status_code, latency_ms,
                               "" if ok else f"HTTP {status_code}", body, content_type, text, answered=True)
        latency_ms = (time.perf_counter() - start) * 1000
        return ProbeResult(region, endpoint, started_at, False, status_code, latency_ms, reason, None, content_type,
                           timed_out=timed_out)

    async def _fetch(self, url: str) -> tuple[int, str, Any, str]:
        """Status, content type, and the body as JSON or else as clipped text, of any complete answer."""
        assert self._client is not None
        async with self._client.stream("GET", url) as response:
            status = response.status_code
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if 300 <= status < 400:
                location = response.headers.get("location", "")
                raise _Failure(f"HTTP {status} redirect to {_short(location, 80)!r}", status)
            # Past the cap an answer says nothing we trust, whatever its status; say which it was.
            said = "" if 200 <= status < 300 else f"HTTP {status}, "
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
                raise _Failure(f"{said}answer too large ({int(declared)} bytes > {self.max_body_bytes} cap)",
                               status)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_body_bytes:
                    # Stop reading: leaving the context closes the connection mid-body.
                    raise _Failure(f"{said}answer too large (over the {self.max_body_bytes} byte cap)", status)
                chunks.append(chunk)
            charset = response.charset_encoding
        body, text = _decode(b"".join(chunks), content_type, charset)
        return status, content_type, body, text

    def close(self) -> None:
        """Close the client and stop the loop thread; idempotent."""
        if self._closed:
            return
        self._closed = True

        async def _close() -> None:
            if self._client is not None:
                await self._client.aclose()

        try:
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
