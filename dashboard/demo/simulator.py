"""A simulated fleet: many fake regions of the SaaS, served over real HTTP on loopback.

Each region answers ``GET {base}/api/v1/system/health`` and ``GET {base}/api/v1/system/deployment``
the way a real region would, or the way a broken one does (see ``MODES``). Tests and the demo
steer regions from Python (``SimulatedFleet.set``) or over HTTP through the control API:

- ``GET  /_sim/regions``           every region's base URL, request count and behaviour;
- ``GET  /_sim/regions/<region>``  one region's behaviour;
- ``POST /_sim/regions/<region>``  JSON object of ``RegionBehaviour`` fields, merged into the
  current behaviour (``{"reset": true}`` first resets it); answers the resulting behaviour.
  ``{"health_answer": {"status": 503, "content_type": "text/plain", "body": "Unhealthy"}}`` makes
  the region answer its health endpoint with exactly that.

In the "ports" layout every other path, with any method, is the region's application: it answers
200 ``{"region", "method", "path"}``, so an edge router in front of the fleet shows who served what.

In the "prefix" layout the control API sits at the root of the one port; in the "ports" layout it
is served on every region's port (any of them steers the whole fleet).

The server runs in its own thread with its own event loop, so synchronous tests and the
dashboard's own event loop can both talk to it.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import ipaddress
import json
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

# The config's own rule for region names: they end up in URL paths and YAML, and keeping them
# plain also keeps "_sim" free.
from ..config import REGION_NAME

MODES = (
    "healthy",
    "degraded",
    "failing",
    "http_500",
    "hang",
    "drop",
    "bad_json",
    "html",
    "huge",
    "redirect",
    "wrong_shape",
)
HEALTH_FORMATS = ("plain", "ietf")
LAYOUTS = ("ports", "prefix")

HEALTH_PATH = "/api/v1/system/health"
DEPLOYMENT_PATH = "/api/v1/system/deployment"
CONTROL_PATH = "/_sim/regions"

_HUGE_CHUNK = b"x" * 65536
# Many probes may connect at the same instant to one port; the default backlog (128) would drop
# SYNs and cost the client a one-second retransmit.
_LISTEN_BACKLOG = 1024
# Upper bound for stop(): in-flight requests are cut first, so this only matters for surprises.
_SHUTDOWN_TIMEOUT = 1.0
_START_TIMEOUT = 10.0


@dataclass
class RegionBehaviour:
    """How one simulated region answers; every field can be changed while the fleet runs."""

    mode: str = "healthy"
    delay_seconds: float = 0.0
    error_rate: float | None = None
    version: str = "1.0.0"
    answers_as: str | None = None
    fleet_regions: list[str] | None = None
    primary_region: str | None = None
    health_format: str = "plain"
    body_bytes: int = 5 * 1024 * 1024
    # An exact health answer, {"status": 503, "content_type": "text/plain", "body": "Unhealthy"}, served
    # instead of the mode's (delay_seconds, hang, drop and huge still apply): how the tests play the
    # answers real frameworks give. An empty content_type sends none (aiohttp then says
    # application/octet-stream, as many servers do).
    health_answer: dict[str, Any] | None = None
    # Probe source addresses that get no answer at all (the connection is closed): a partition
    # between one vantage point (a cluster instance with its own probe_source_address) and this region.
    partitioned_from: list[str] = dataclasses.field(default_factory=list)


_FIELDS = tuple(f.name for f in dataclasses.fields(RegionBehaviour))


class UnknownRegionError(KeyError):
    """A region name that the fleet does not serve."""

    def __str__(self) -> str:
        # KeyError would repr() the message, quoting it twice.
        return str(self.args[0]) if self.args else "unknown region"


def _check_behaviour(b: RegionBehaviour) -> RegionBehaviour:
    """Return a normalised copy of ``b``, or raise ValueError naming the bad field."""

    def bad(name: str, why: str) -> ValueError:
        return ValueError(f"invalid {name}: {why}")

    def number(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(name, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise bad(name, f"expected a finite number, got {value!r}")
        return float(value)

    def text(name: str, value: Any, optional: bool) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise bad(name, f"expected a non-empty string, got {value!r}")
        return value

    if b.mode not in MODES:
        raise bad("mode", f"{b.mode!r} is not one of {', '.join(MODES)}")
    delay = number("delay_seconds", b.delay_seconds)
    if delay < 0:
        raise bad("delay_seconds", f"must be >= 0, got {delay!r}")
    error_rate = None
    if b.error_rate is not None:
        error_rate = number("error_rate", b.error_rate)
        if not 0.0 <= error_rate <= 1.0:
            raise bad("error_rate", f"must be a fraction between 0 and 1, got {error_rate!r}")
    fleet_regions = None
    if b.fleet_regions is not None:
        if not isinstance(b.fleet_regions, (list, tuple)) or not all(
            isinstance(r, str) and r for r in b.fleet_regions
        ):
            raise bad("fleet_regions", f"expected a list of region names, got {b.fleet_regions!r}")
        fleet_regions = list(b.fleet_regions)
    if b.health_format not in HEALTH_FORMATS:
        raise bad("health_format", f"{b.health_format!r} is not one of {', '.join(HEALTH_FORMATS)}")
    if isinstance(b.body_bytes, bool) or not isinstance(b.body_bytes, int) or b.body_bytes < 0:
        raise bad("body_bytes", f"expected a whole number >= 0, got {b.body_bytes!r}")
    health_answer = None if b.health_answer is None else _check_health_answer(b.health_answer)
    if not isinstance(b.partitioned_from, (list, tuple)):
        raise bad("partitioned_from", f"expected a list of IP addresses, got {b.partitioned_from!r}")
    for address in b.partitioned_from:
        try:
            ipaddress.ip_address(address)
        except (ValueError, TypeError):
            raise bad("partitioned_from", f"{address!r} is not an IP address") from None
    return RegionBehaviour(
        mode=b.mode,
        delay_seconds=delay,
        error_rate=error_rate,
        version=text("version", b.version, optional=False),  # type: ignore[arg-type]
        answers_as=text("answers_as", b.answers_as, optional=True),
        fleet_regions=fleet_regions,
        primary_region=text("primary_region", b.primary_region, optional=True),
        health_format=b.health_format,
        body_bytes=b.body_bytes,
        health_answer=health_answer,
        partitioned_from=list(b.partitioned_from),
    )


_ANSWER_KEYS = ("status", "content_type", "body")


def _check_health_answer(answer: Any) -> dict[str, Any]:
    """A normalised copy of a canned health answer, or ValueError saying what is wrong with it."""

    def bad(why: str) -> ValueError:
        return ValueError(f"invalid health_answer: {why}")

    if not isinstance(answer, dict):
        raise bad(f"expected an object with {', '.join(_ANSWER_KEYS)}, got {answer!r}")
    unknown = sorted(set(answer) - set(_ANSWER_KEYS))
    if unknown:
        raise bad(f"unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(_ANSWER_KEYS)}")
    status = answer.get("status")
    # 1xx is never a final answer; aiohttp cannot send one as such.
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise bad(f"status must be an HTTP status from 200 to 599, got {status!r}")
    content_type = answer.get("content_type", "")
    if not isinstance(content_type, str) or any(ch in content_type for ch in "\r\n"):
        raise bad(f"content_type must be a one-line string, got {content_type!r}")
    body = answer.get("body")
    if not isinstance(body, str):
        raise bad(f"body must be a string, got {body!r}")
    if body and status in (204, 304):
        raise bad(f"a {status} answer carries no body")
    return {"status": status, "content_type": content_type, "body": body}


def _merged(current: RegionBehaviour, changes: dict[str, Any]) -> RegionBehaviour:
    """Apply ``changes`` to a copy of ``current``; unknown fields or bad values: ValueError."""
    unknown = sorted(set(changes) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown behaviour field(s) {', '.join(map(repr, unknown))}; "
            f"known fields: {', '.join(_FIELDS)}"
        )
    return _check_behaviour(dataclasses.replace(current, **changes))


@dataclass(frozen=True)
class _Canned:
    """A response rendered once per behaviour change, so serving it costs almost nothing."""

    status: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class _Rendered:
    """Everything a request handler needs for one region, swapped atomically on change."""

    behaviour: RegionBehaviour
    health: _Canned
    deployment: _Canned
    huge_health_prefix: bytes
    huge_deployment_prefix: bytes


_JSON = {"Content-Type": "application/json"}
_HEALTH_JSON = {"Content-Type": "application/health+json"}
_TEXT = {"Content-Type": "text/plain; charset=utf-8"}
_HTML = {"Content-Type": "text/html; charset=utf-8"}
_PROXY_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><center><h1>502 Bad Gateway</h1></center>\n"
    b"<hr><center>nginx</center></body></html>\n"
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _health_body(b: RegionBehaviour) -> _Canned:
    """Render the health answer of a region that answers at all."""
    if b.health_format == "ietf":
        status = {"degraded": "warn", "failing": "fail"}.get(b.mode, "pass")
        database = {
            "pass": {"status": "pass", "observedValue": 3, "observedUnit": "ms"},
            "warn": {"status": "warn", "observedValue": 850, "observedUnit": "ms"},
            "fail": {
                "status": "fail",
                "observedValue": 5000,
                "observedUnit": "ms",
                "output": "database connection timed out",
            },
        }[status]
        checks: dict[str, Any] = {"database:responseTime": [database]}
        if b.error_rate is not None:
            checks["errors:rate"] = [{"status": status, "observedValue": b.error_rate}]
        body: Any = {"status": status, "version": b.version, "checks": checks}
        return _Canned(200, _dumps(body), _HEALTH_JSON)
    status = {"degraded": "degraded", "failing": "error"}.get(b.mode, "ok")
    body = {"status": status}
    if b.error_rate is not None:
        body["error_rate"] = b.error_rate
    return _Canned(200, _dumps(body), _JSON)


class SimulatedFleet:
    """Many fake regions on loopback, each steerable into a healthy or a broken state."""

    def __init__(
        self,
        regions: list[str] | int,
        *,
        primary_region: str | None = None,
        layout: str = "ports",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if isinstance(regions, bool):
            raise TypeError("regions must be a list of names or a count")
        if isinstance(regions, int):
            if regions < 1:
                raise ValueError(f"regions: need at least one region, got {regions}")
            names = [f"region-{i:03d}" for i in range(regions)]
        else:
            names = list(regions)
        if not names:
            raise ValueError("regions: need at least one region")
        for name in names:
            if not isinstance(name, str) or not REGION_NAME.match(name):
                raise ValueError(
                    f"regions: {name!r} is not a plain region name (letters, digits, '.', '_', '-')"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"regions: duplicate names in {names}")
        if primary_region is None:
            primary_region = names[0]
        elif primary_region not in names:
            raise ValueError(f"primary_region {primary_region!r} is not one of {names}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be 0 (any free port) or a port number, got {port!r}")

        self._regions = names
        self._primary = primary_region
        self._layout = layout
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._behaviours = {name: RegionBehaviour() for name in names}
        # Read by handlers without the lock: a dict lookup that returns an immutable snapshot.
        self._rendered: dict[str, _Rendered] = {}
        self._counts = dict.fromkeys(names, 0)
        self._base_urls: dict[str, str] = {}
        self._port_region: dict[int, str] = {}
        self._sockets: list[socket.socket] = []
        self._in_flight: set[asyncio.BaseTransport] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = False
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> SimulatedFleet:
        """Bind the listening sockets, start serving in a background thread, and return self."""
        if self._started:
            raise RuntimeError("this fleet has already been started; make a new one")
        self._started = True
        try:
            self._bind()
            with self._lock:
                for name in self._regions:
                    self._render(name)
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._thread = threading.Thread(
                target=self._run_loop, name="simulated-fleet", daemon=True
            )
            self._thread.start()
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(_START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop serving and end the thread; cuts in-flight (even hanging) requests. Idempotent."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(
                    4 * _SHUTDOWN_TIMEOUT
                )
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(_START_TIMEOUT)
        elif loop is not None and not loop.is_closed():
            loop.close()
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> SimulatedFleet:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what the fleet looks like ---------------------------------------------------------------

    @property
    def regions(self) -> list[str]:
        """Region names, in configuration order."""
        return list(self._regions)

    @property
    def base_urls(self) -> dict[str, str]:
        """Region -> base URL without a trailing slash (known once started)."""
        if not self._base_urls:
            raise RuntimeError("base URLs are known once the fleet is started")
        return dict(self._base_urls)

    @property
    def primary_region(self) -> str:
        """The fleet's primary region (the first one unless chosen)."""
        return self._primary

    @property
    def layout(self) -> str:
        """"ports" (one port per region) or "prefix" (one port, region as path prefix)."""
        return self._layout

    @property
    def control_url(self) -> str:
        """Base URL of the control API (in the "ports" layout: the first region's port)."""
        first = self.base_urls[self._regions[0]]
        root = first.rsplit("/", 1)[0] if self._layout == "prefix" else first
        return root + CONTROL_PATH

    def deployment_block(self) -> dict[str, Any]:
        """The ``deployment:`` block of config.yaml that points at this fleet."""
        return {
            "region": self._primary,
            "primary_region": self._primary,
            "regions": list(self._regions),
            "region_base_urls": self.base_urls,
        }

    # -- steering --------------------------------------------------------------------------------

    def set(self, region: str, **changes: Any) -> None:
        """Change some behaviour fields of a region: ``set("eu-west-1", mode="http_500")``."""
        with self._lock:
            current = self._behaviours[self._known(region)]
            self._behaviours[region] = _merged(current, changes)
            self._render(region)

    def reset(self, region: str | None = None) -> None:
        """Put one region (or every region) back to the healthy defaults."""
        with self._lock:
            names = self._regions if region is None else [self._known(region)]
            for name in names:
                self._behaviours[name] = RegionBehaviour()
                self._render(name)

    def behaviour(self, region: str) -> RegionBehaviour:
        """A copy of the region's current behaviour."""
        with self._lock:
            return copy.deepcopy(self._behaviours[self._known(region)])

    def request_count(self, region: str) -> int:
        """How many health and deployment requests the region has received."""
        return self._counts[self._known(region)]

    def _known(self, region: str) -> str:
        if region not in self._behaviours:
            raise UnknownRegionError(
                f"unknown region {region!r}; this fleet serves {', '.join(self._regions)}"
            )
        return region

    # -- rendering -------------------------------------------------------------------------------

    def _render(self, name: str) -> None:
        """Pre-serialise the region's answers; called with the lock held."""
        if not self._base_urls:
            return  # rendered at start, once the base URLs are known
        b = self._behaviours[name]
        reported = b.fleet_regions if b.fleet_regions is not None else self._regions
        deployment = {
            "region": b.answers_as or name,
            "primary_region": b.primary_region or self._primary,
            "regions": list(reported),
            "region_base_urls": {r: self._base_urls[r] for r in reported if r in self._base_urls},
            "version": b.version,
        }
        deployment_body = _dumps(deployment)
        if b.mode in ("healthy", "degraded", "failing"):
            health = _health_body(b)
            deploy = _Canned(200, deployment_body, _JSON)
        elif b.mode == "http_500":
            health = deploy = _Canned(500, b"simulated internal server error\n", _TEXT)
        elif b.mode == "bad_json":
            health = _Canned(200, b'{"status": "ok"', _JSON)
            deploy = _Canned(200, deployment_body[: len(deployment_body) // 2], _JSON)
        elif b.mode == "html":
            health = deploy = _Canned(200, _PROXY_ERROR_PAGE, _HTML)
        elif b.mode == "redirect":
            health = deploy = _Canned(302, b"", {"Location": "/elsewhere"})
        elif b.mode == "wrong_shape":
            health = _Canned(200, b'["ok"]', _JSON)
            deploy = _Canned(200, b'{"name": "x"}', _JSON)
        else:  # hang, drop, huge: answered by the handler itself; keep a harmless default
            health = deploy = _Canned(500, b"", _TEXT)
        if b.health_answer is not None:
            answer = b.health_answer
            headers = {"Content-Type": answer["content_type"]} if answer["content_type"] else {}
            health = _Canned(answer["status"], answer["body"].encode(), headers)
        self._rendered[name] = _Rendered(
            behaviour=b,
            health=health,
            deployment=deploy,
            huge_health_prefix=b'{"status": "ok", "padding": "',
            huge_deployment_prefix=(
                b'{"region": ' + _dumps(b.answers_as or name) + b', "padding": "'
            ),
        )

    # -- serving ---------------------------------------------------------------------------------

    def _bind(self) -> None:
        """Bind every listening socket now, so start() fails loudly and ports are known at once."""
        count = len(self._regions) if self._layout == "ports" else 1
        for i in range(count):
            port = self._port + i if self._port else 0
            sock = socket.create_server((self._host, port), backlog=_LISTEN_BACKLOG)
            self._sockets.append(sock)
        host = f"[{self._host}]" if ":" in self._host else self._host
        ports = [sock.getsockname()[1] for sock in self._sockets]
        if self._layout == "ports":
            self._port_region = dict(zip(ports, self._regions, strict=True))
            urls = {name: f"http://{host}:{p}" for name, p in zip(self._regions, ports, strict=True)}
        else:
            urls = {name: f"http://{host}:{ports[0]}/{name}" for name in self._regions}
        with self._lock:
            self._base_urls = urls

    def _run_loop(self) -> None:
        """Body of the server thread: run the loop until stop(), then tidy it up."""
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        if self._layout == "ports":
            app.router.add_get(HEALTH_PATH, self._handle_port_health)
            app.router.add_get(DEPLOYMENT_PATH, self._handle_port_deployment)
        else:
            app.router.add_get("/{region}" + HEALTH_PATH, self._handle_prefix_health)
            app.router.add_get("/{region}" + DEPLOYMENT_PATH, self._handle_prefix_deployment)
        app.router.add_get(CONTROL_PATH, self._handle_list)
        app.router.add_get(CONTROL_PATH + "/{region}", self._handle_get)
        app.router.add_post(CONTROL_PATH + "/{region}", self._handle_post)
        if self._layout == "ports":
            # Everything else is the region's application: what edge routers send traffic to.
            app.router.add_route("*", "/{path:.*}", self._handle_port_app)
        # handler_cancellation: a client that gives up on a hanging region must not leave a
        # handler behind for the rest of the demo. access_log=None: logging costs more than serving.
        runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
        )
        self._runner = runner
        await runner.setup()
        for sock in self._sockets:
            await web.SockSite(runner, sock, backlog=_LISTEN_BACKLOG).start()

    async def _shutdown(self) -> None:
        # Cut in-flight requests first (hanging or slow ones included): closing the transport makes
        # aiohttp cancel their handlers, so cleanup does not wait out its grace period on them.
        for transport in list(self._in_flight):
            transport.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle_port_health(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self._region_by_port(request), True)

    async def _handle_port_deployment(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self._region_by_port(request), False)

    async def _handle_prefix_health(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, request.match_info["region"], True)

    async def _handle_prefix_deployment(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, request.match_info["region"], False)

    async def _handle_port_app(self, request: web.Request) -> web.StreamResponse:
        """Any other request, any method: 200 saying which region served it (tests and benchmarks of
        edge routers look at this), whatever the region's health behaviour."""
        region = self._region_by_port(request)
        if region is None:
            return web.Response(status=404, body=b"unknown region\n", headers=_TEXT)
        await request.read()
        return web.json_response({"region": region, "method": request.method, "path": request.path})

    def _region_by_port(self, request: web.Request) -> str | None:
        transport = request.transport
        if transport is None:
            return None
        return self._port_region.get(transport.get_extra_info("sockname")[1])

    async def _answer(
        self, request: web.Request, region: str | None, health: bool
    ) -> web.StreamResponse:
        """Answer one health or deployment request the way the region's behaviour says."""
        rendered = self._rendered.get(region) if region is not None else None
        if rendered is None:
            return web.Response(status=404, body=b"unknown region\n", headers=_TEXT)
        self._counts[region] += 1  # type: ignore[index]
        transport = request.transport
        if transport is None:  # the client is already gone
            return web.Response(status=204)
        self._in_flight.add(transport)
        try:
            b = rendered.behaviour
            if b.partitioned_from:
                peer = transport.get_extra_info("peername")
                if peer and peer[0] in b.partitioned_from:
                    return _drop(request)
            if b.delay_seconds:
                await asyncio.sleep(b.delay_seconds)
            mode = b.mode
            if mode == "hang":
                # A fresh future per request: cancelling a shared one would wake every hanger.
                await asyncio.get_running_loop().create_future()
            if mode == "drop":
                return _drop(request)
            if mode == "huge":
                prefix = rendered.huge_health_prefix if health else rendered.huge_deployment_prefix
                return await _stream_huge(request, prefix, b.body_bytes)
            canned = rendered.health if health else rendered.deployment
            return web.Response(status=canned.status, body=canned.body, headers=canned.headers)
        finally:
            self._in_flight.discard(transport)

    # -- control API -----------------------------------------------------------------------------

    async def _handle_list(self, request: web.Request) -> web.Response:
        with self._lock:
            behaviours = {name: dataclasses.asdict(b) for name, b in self._behaviours.items()}
        return web.json_response(
            {
                "layout": self._layout,
                "primary_region": self._primary,
                "regions": {
                    name: {
                        "base_url": self._base_urls[name],
                        "request_count": self._counts[name],
                        "behaviour": behaviours[name],
                    }
                    for name in self._regions
                },
            }
        )

    async def _handle_get(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        try:
            return web.json_response(dataclasses.asdict(self.behaviour(region)))
        except UnknownRegionError as exc:
            return _error(404, "unknown_region", str(exc))

    async def _handle_post(self, request: web.Request) -> web.Response:
        try:
            region = self._known(request.match_info["region"])
        except UnknownRegionError as exc:
            return _error(404, "unknown_region", str(exc))
        try:
            changes = json.loads(await request.read() or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, "invalid_json", f"request body is not JSON: {exc}")
        if not isinstance(changes, dict):
            return _error(400, "invalid_json", "request body must be a JSON object")
        reset = changes.pop("reset", False)
        if not isinstance(reset, bool):
            message = f"invalid reset: expected true or false, got {reset!r}"
            return _error(400, "invalid_value", message)
        try:
            with self._lock:
                base = RegionBehaviour() if reset else self._behaviours[region]
                self._behaviours[region] = _merged(base, changes)
                self._render(region)
                result = dataclasses.asdict(self._behaviours[region])
        except ValueError as exc:
            return _error(400, "invalid_field", str(exc))
        return web.json_response(result)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without a byte of response."""
    transport = request.transport
    if transport is not None:
        transport.close()
    # aiohttp then fails to write this to the closing transport, treats it as a client
    # disconnect, and sends nothing.
    return web.Response(status=204)


async def _stream_huge(request: web.Request, prefix: bytes, size: int) -> web.StreamResponse:
    """Stream ``size`` bytes of one big JSON object in chunks, never holding it all in memory."""
    suffix = b'"}'
    response = web.StreamResponse(status=200, headers=_JSON)
    response.content_length = size
    try:
        await response.prepare(request)
        if size < len(prefix) + len(suffix):
            await response.write((prefix + suffix)[:size])
        else:
            await response.write(prefix)
            remaining = size - len(prefix) - len(suffix)
            while remaining > 0:
                chunk = _HUGE_CHUNK if remaining >= len(_HUGE_CHUNK) else _HUGE_CHUNK[:remaining]
                await response.write(chunk)
                remaining -= len(chunk)
            await response.write(suffix)
    except ConnectionError:
        pass  # the client stopped reading; nothing left to do
    return response


# -- scripted incident ---------------------------------------------------------------------------

StepCallback = Callable[[str], None]


class IncidentScript:
    """eu-west-1 (or a named region): error rate climbs, then it goes down, then it recovers; loops.

    Each step is ``(description, changes)``; ``changes`` uses the control API's vocabulary
    (RegionBehaviour fields, ``"reset": True``) plus an optional ``"region"`` naming another
    region than the incident's, which is how a rollout elsewhere shows up as version skew.
    """

    def __init__(
        self,
        fleet: SimulatedFleet,
        region: str,
        *,
        step_seconds: float = 10.0,
        loop: bool = True,
        on_step: StepCallback | None = None,
        rollout_region: str | None = None,
    ) -> None:
        for name in (region, rollout_region):
            if name is not None and name not in fleet.regions:
                raise UnknownRegionError(
                    f"unknown region {name!r}; this fleet serves {', '.join(fleet.regions)}"
                )
        if isinstance(step_seconds, bool) or not step_seconds > 0:
            raise ValueError(f"step_seconds must be > 0, got {step_seconds!r}")
        if rollout_region is None:
            others = [r for r in fleet.regions if r != region]
            rollout_region = others[0] if others else None
        elif rollout_region == region:
            raise ValueError("rollout_region must differ from the incident region")
        self.fleet = fleet
        self.region = region
        self.rollout_region = rollout_region
        self.step_seconds = float(step_seconds)
        self.loop = loop
        self.on_step = on_step
        self.steps: list[tuple[str, dict[str, Any]]] = self._default_steps()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _default_steps(self) -> list[tuple[str, dict[str, Any]]]:
        """About 15 steps: 2.5 minutes at the default 10 s step, down for 40 s of it."""
        r, o = self.region, self.rollout_region
        steps: list[tuple[str, dict[str, Any]]] = [
            (f"{r}: healthy, error rate 0.5%", {"reset": True, "error_rate": 0.005}),
        ]
        if o is not None:
            steps.append((f"{o}: rollout starts, now on 1.0.1", {"region": o, "version": "1.0.1"}))
        steps += [
            (f"{r}: error rate 2%", {"error_rate": 0.02}),
            (
                f"{r}: error rate 8%, answers slowly (400 ms)",
                {"error_rate": 0.08, "delay_seconds": 0.4},
            ),
            (f"{r}: degraded, error rate 25%", {"mode": "degraded", "error_rate": 0.25}),
            (f"{r}: down, answers HTTP 500", {"mode": "http_500"}),
            (f"{r}: down, connection dropped", {"mode": "drop"}),
            (f"{r}: down, not answering at all", {"mode": "hang"}),
            (f"{r}: down, answers HTTP 500", {"mode": "http_500"}),
            (
                f"{r}: recovering, error rate 1%",
                {"mode": "healthy", "error_rate": 0.01, "delay_seconds": 0.0},
            ),
        ]
        if o is not None:
            steps.append((f"{o}: rollout rolled back to 1.0.0", {"region": o, "reset": True}))
        steps += [
            (f"{r}: healthy", {"reset": True}),
            ("all quiet", {}),
            ("all quiet", {}),
        ]
        return steps

    def start(self) -> IncidentScript:
        """Run the steps in a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("this incident script has already been started")
        self._thread = threading.Thread(target=self._run, name="incident-script", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current step; the fleet keeps whatever state it reached. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a non-looping script to finish; True when it has."""
        if self._thread is None:
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def apply(self, description: str, changes: dict[str, Any]) -> None:
        """Apply one step to the fleet and report it."""
        changes = dict(changes)
        region = changes.pop("region", self.region)
        if changes.pop("reset", False):
            self.fleet.reset(region)
        if changes:
            self.fleet.set(region, **changes)
        if self.on_step is not None:
            self.on_step(description)

    def _run(self) -> None:
        while True:
            for index, (description, changes) in enumerate(self.steps):
                if self._stop.is_set():
                    return
                self.apply(description, changes)
                last = index == len(self.steps) - 1
                if last and not self.loop:
                    return
                if self._stop.wait(self.step_seconds):
                    return


# -- command line --------------------------------------------------------------------------------


def _yaml_block(block: dict[str, Any]) -> str:
    """The deployment block in config.yaml's own style (names and URLs need no escaping)."""
    lines = [
        "deployment:",
        f"  region: '{block['region']}'",
        f"  primary_region: '{block['primary_region']}'",
        "  regions: [" + ", ".join(f"'{r}'" for r in block["regions"]) + "]",
        "  region_base_urls:",
    ]
    lines += [f"    {r}: '{url}'" for r, url in block["region_base_urls"].items()]
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dashboard.simulator",
        description="Serve a simulated fleet of regions on loopback until Ctrl-C.",
    )
    parser.add_argument(
        "--regions",
        default="us-east-1,eu-west-1,ap-southeast-1",
        help="comma-separated region names, or a count N for region-000..region-(N-1)",
    )
    parser.add_argument("--primary", help="primary region (default: the first)")
    parser.add_argument("--layout", choices=LAYOUTS, default="ports")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="port (prefix layout) or first port (ports layout); 0 = any free port",
    )
    parser.add_argument("--incident", metavar="REGION", help="run the scripted incident on REGION")
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print the deployment block as JSON")
    args = parser.parse_args(argv)

    if args.regions.strip().isdigit():
        args.regions = int(args.regions)
        if args.regions < 1:
            parser.error("--regions: need at least one region")
    else:
        args.regions = [r.strip() for r in args.regions.split(",") if r.strip()]
        if not args.regions:
            parser.error("--regions: need at least one region")
        for name in args.regions:
            if not REGION_NAME.match(name):
                parser.error(f"--regions: {name!r} is not a plain region name")
        if len(set(args.regions)) != len(args.regions):
            parser.error("--regions: duplicate region names")
    names = (
        args.regions
        if isinstance(args.regions, list)
        else [f"region-{i:03d}" for i in range(args.regions)]
    )
    if args.primary is not None and args.primary not in names:
        parser.error(f"--primary: {args.primary!r} is not one of the regions")
    if args.incident is not None and args.incident not in names:
        parser.error(f"--incident: {args.incident!r} is not one of the regions")
    if not args.step_seconds > 0 or not math.isfinite(args.step_seconds):
        parser.error("--step-seconds must be a positive number")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the simulated fleet from the command line until interrupted."""
    args = _parse_args(argv)
    fleet = SimulatedFleet(
        args.regions,
        primary_region=args.primary,
        layout=args.layout,
        host=args.host,
        port=args.port,
    )
    try:
        fleet.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 1
    script = None
    done = threading.Event()
    # SIGTERM (e.g. from a test harness) ends as cleanly as Ctrl-C does.
    previous_sigterm = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        block = fleet.deployment_block()
        print(json.dumps({"deployment": block}, indent=2) if args.json else _yaml_block(block))
        print(f"# control API: {fleet.control_url}", flush=True)
        if args.incident:

            def report(description: str) -> None:
                print(f"{time.strftime('%H:%M:%S')} incident: {description}", flush=True)

            script = IncidentScript(
                fleet, args.incident, step_seconds=args.step_seconds, on_step=report
            ).start()
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if script is not None:
            script.stop()
        fleet.stop()
        signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
