"""The dashboard's one way to talk to etcd: its v3 JSON gateway through `etcd3gw`, over every endpoint.

`etcd3gw` speaks to one member; a cluster is several, and any live one answers for the cluster.
`EtcdClient` tries the member that answered last, then the others, and turns every way of failing
(refused, timed out, no leader, no quorum, garbage) into one exception, `ControlUnavailable`. After
every endpoint failed it fails fast for a moment instead of making each page wait on dead members
again; `unavailable_since` says since when, for the banner and /healthz.

Keys and values are text here; the gateway's base64 and its int64-as-string stay inside.
"""
from __future__ import annotations

import functools
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.client import Etcd3Client
from etcd3gw.utils import _decode, _encode, _increment_last_byte

from .config import Settings
from .control import ControlUnavailable

log = logging.getLogger(__name__)

# One request to one member. A member without quorum answers a linearizable request only when
# etcd's own timeout ends (seconds); past this the next member is tried.
REQUEST_TIMEOUT_SECONDS = 2.0
# After every member failed, calls fail at once for this long (a page must not wait on dead members).
FAIL_FAST_SECONDS = 1.0
MAX_FAIL_FAST_SECONDS = 4.0
# Debian's etcd is 3.4: the gateway lives at /v3/ (given, so etcd3gw skips its discovery request).
API_PATH = "/v3/"
# A broken watch is opened again at once on the next member. Watches that fail within this long
# of opening, on every member in a row, wait this long before the next try (never spin).
WATCH_RETRY_SECONDS = 0.5

T = TypeVar("T")


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    mod_revision: int
    lease: int = 0


def _kv(raw: Mapping[str, Any]) -> KeyValue:
    return KeyValue(_decode(raw["key"]).decode("utf-8"), _decode(raw.get("value", "")).decode("utf-8"),
                    int(raw.get("mod_revision", 0)), int(raw.get("lease", 0)))


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with `prefix` (etcd's range_end for a prefix)."""
    return _increment_last_byte(prefix)


# -- building transactions (the gateway's JSON shapes) ---------------------------------------------


def put_op(key: str, value: str, lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": _encode(key), "value": _encode(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def delete_op(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": _encode(key)}}


def range_op(key: str) -> dict[str, Any]:
    return {"request_range": {"key": _encode(key)}}


def prefix_range_op(prefix: str) -> dict[str, Any]:
    """Read every key under `prefix` inside a transaction (after the branch's writes before it)."""
    return {"request_range": {"key": _encode(prefix), "range_end": _encode(prefix_end(prefix))}}


def range_kvs(response: Mapping[str, Any]) -> list[KeyValue]:
    """The keys a transaction's range op read, from its entry in the transaction's responses."""
    return [_kv(raw) for raw in response.get("response_range", {}).get("kvs", [])]


def value_is(key: str, value: str) -> dict[str, Any]:
    return {"key": _encode(key), "result": "EQUAL", "target": "VALUE", "value": _encode(value)}


def absent(key: str) -> dict[str, Any]:
    """A compare that holds while `key` does not exist (created at revision 0)."""
    return {"key": _encode(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}


@dataclass
class _WatchCursor:
    """The last revision a watch reported (0: none yet), so the next watch resumes after it."""

    revision: int = 0


class EtcdClient:
    """Every member of one etcd cluster behind one client; thread-safe (one session per member)."""

    def __init__(self, endpoints: list[str], *, username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                 timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.endpoints = list(endpoints)
        self._username, self._password = username, password
        self._clients = [self._client(url, ca_file, cert_file, key_file, timeout) for url in endpoints]
        self._preferred = 0
        self._lock = threading.Lock()
        self._fail_fast_until = 0.0
        self._fail_fast_for = 0.0
        self.unavailable_since: float | None = None  # wall time of the first failure of an outage
        self.last_error: str | None = None
        self.watch_endpoint: str | None = None  # the member a watch streams from now (None: none open)

    @staticmethod
    def _client(url: str, ca_file: str | None, cert_file: str | None, key_file: str | None,
                timeout: float) -> Etcd3Client:
        parts = urlsplit(url)
        session = requests.Session()
        session.trust_env = False  # a proxy from the environment never stands between us and etcd
        if ca_file:
            session.verify = ca_file
        if cert_file and key_file:
            session.cert = (cert_file, key_file)
        return Etcd3Client(host=parts.hostname or "", port=parts.port or (2379 if parts.scheme == "http" else 443),
                           protocol=parts.scheme, timeout=timeout, api_path=API_PATH, session=session)

    @classmethod
    def for_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> EtcdClient:
        """The client of `dashboard.cluster`; the password comes from the variable it names."""
        import os

        cluster = settings.cluster
        if cluster is None:
            raise ValueError("standalone mode: no etcd endpoints configured")
        environ = os.environ if environ is None else environ
        password = environ.get(cluster.password_env) if cluster.password_env else None

        def path(value: str | None) -> str | None:
            return None if value is None else str(settings.resolve_path(value))

        return cls(cluster.etcd_endpoints, username=cluster.username, password=password,
                   ca_file=path(cluster.ca_file), cert_file=path(cluster.cert_file), key_file=path(cluster.key_file))

    # -- one request, any member ---------------------------------------------------------------------

    def call(self, what: str, request: Callable[[Etcd3Client], T]) -> T:
        """Run `request` on the member that answered last, else on each other one; ControlUnavailable
        when none answers (at once, while the last outage's fail-fast moment runs)."""
        if time.monotonic() < self._fail_fast_until:
            raise ControlUnavailable(f"etcd unreachable ({self.last_error}); {what} not done")
        start = self._preferred
        errors = []
        for step in range(len(self._clients)):
            index = (start + step) % len(self._clients)
            client = self._clients[index]
            try:
                self._authenticate(client)
                result = request(client)
            except (etcd_errors.Etcd3Exception, requests.RequestException, ValueError, KeyError) as exc:
                errors.append(f"{self.endpoints[index]}: {_short(exc)}")
                if "auth token" in str(exc):  # expired: ask for a new one next time
                    client.session.headers.pop("Authorization", None)
                continue
            if index != self._preferred or self.unavailable_since is not None:
                self._recovered(index)
            return result
        with self._lock:
            # Longer with every failure in a row (up to MAX_FAIL_FAST_SECONDS): a member without
            # quorum holds each request until the timeout, and pages must not pay that every second.
            self._fail_fast_for = min(MAX_FAIL_FAST_SECONDS, self._fail_fast_for * 2 or FAIL_FAST_SECONDS)
            self._fail_fast_until = time.monotonic() + self._fail_fast_for
            self.last_error = "; ".join(errors)
            if self.unavailable_since is None:
                self.unavailable_since = time.time()
                log.error("event=etcd_unreachable what=%s errors=%r", what, self.last_error)
        raise ControlUnavailable(f"etcd unreachable ({self.last_error}); {what} not done")

    def _recovered(self, index: int) -> None:
        with self._lock:
            self._preferred = index
            if self.unavailable_since is not None:
                log.warning("event=etcd_reachable endpoint=%s down_s=%.1f", self.endpoints[index],
                            time.time() - self.unavailable_since)
            self.unavailable_since = None
            self.last_error = None
            self._fail_fast_for = 0.0

    def _authenticate(self, client: Etcd3Client) -> None:
        """etcd's simple token auth: one token per session, asked for on first use."""
        if self._username is None or "Authorization" in client.session.headers:
            return
        token = client.post(client.get_url("/auth/authenticate"),
                            json={"name": self._username, "password": self._password or ""})["token"]
        client.session.headers["Authorization"] = token

    # -- the operations the dashboard uses -------------------------------------------------------------

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` and the revision they were read at, in one linearizable read."""
        return self.get_range(prefix, prefix_end(prefix))

    def get_range(self, start: str, end: str, *, changed_after: int = 0,
                  keys_only: bool = False) -> tuple[list[KeyValue], int]:
        """Every key from `start` up to (not including) `end`, and the revision of the read; with
        `changed_after`, only the keys written after that revision (what a copy has not seen yet)."""
        payload: dict[str, Any] = {"key": _encode(start), "range_end": _encode(end)}
        if changed_after:
            payload["min_mod_revision"] = str(changed_after + 1)
        if keys_only:
            payload["keys_only"] = True

        def request(client: Etcd3Client) -> tuple[list[KeyValue], int]:
            answer = client.post(client.get_url("/kv/range"), json=payload)
            return [_kv(raw) for raw in answer.get("kvs", [])], int(answer["header"]["revision"])

        return self.call(f"read {start}", request)

    def get(self, key: str) -> KeyValue | None:
        def request(client: Etcd3Client) -> KeyValue | None:
            kvs = client.post(client.get_url("/kv/range"), json={"key": _encode(key)}).get("kvs", [])
            return _kv(kvs[0]) if kvs else None

        return self.call(f"read {key}", request)

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> tuple[bool, list[dict[str, Any]]]:
        """One etcd transaction; (whether the compares held, the responses of the branch taken)."""
        body = {"compare": compare, "success": success, "failure": failure or []}

        def request(client: Etcd3Client) -> tuple[bool, list[dict[str, Any]]]:
            answer = client.transaction(body)
            return bool(answer.get("succeeded", False)), list(answer.get("responses", []))

        return self.call("transaction", request)

    def put(self, key: str, value: str, lease: int = 0) -> None:
        self.txn([], [put_op(key, value, lease)])

    def grant_lease(self, ttl_seconds: float) -> int:
        ttl = max(2, int(round(ttl_seconds)))
        return self.call("lease grant", lambda client: int(
            client.post(client.get_url("/lease/grant"), json={"TTL": ttl, "ID": 0})["ID"]))

    def keep_alive(self, lease: int) -> bool:
        """Renew a lease; False when it has lapsed already (its keys are gone)."""
        answer = self.call("lease keep-alive", lambda client: client.post(
            client.get_url("/lease/keepalive"), json={"ID": str(lease)}))
        return int(answer.get("result", {}).get("TTL", -1)) > 0

    def revoke(self, lease: int) -> None:
        self.call("lease revoke", lambda client: client.post(client.get_url("/kv/lease/revoke"),
                                                             json={"ID": str(lease)}))

    def watch_prefix(self, prefix: str, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Call `on_change` after every change under `prefix` until `stop` is set (blocking: run it in
        a thread of its own); once when the first watch starts too (whatever changed before it).

        A watch that breaks (its member died or restarted) is opened again at once on the next
        member, from the revision after the last one it reported: etcd replays what changed while no
        watch ran, so nothing waits for a slower check. When etcd has compacted that history away, the
        new watch starts from now and `on_change` is called once to catch up on the whole table."""
        cursor = _WatchCursor()
        index = self._preferred
        failures = 0  # watches in a row that failed to open or broke soon after opening
        while not stop.is_set():
            client = self._clients[index % len(self._clients)]
            endpoint = self.endpoints[index % len(self.endpoints)]
            create: dict[str, Any] = {"key": _encode(prefix), "range_end": _encode(prefix_end(prefix))}
            if cursor.revision:
                create["start_revision"] = str(cursor.revision + 1)
            opened_at = time.monotonic()
            try:
                self._authenticate(client)
                with client.session.post(client.get_url("/watch"), json={"create_request": create}, stream=True,
                                         timeout=(REQUEST_TIMEOUT_SECONDS, None)) as answer:
                    if answer.status_code != 200:
                        raise etcd_errors.Etcd3Exception(answer.text[:200])
                    self.watch_endpoint = endpoint
                    delivering = functools.partial(self._delivering, index % len(self._clients))
                    self._read_watch(answer, delivering, on_change, stop, cursor)
                error = "the stream ended"
            except (etcd_errors.Etcd3Exception, requests.RequestException, ValueError, KeyError) as exc:
                error = _short(exc)
            self.watch_endpoint = None
            if stop.is_set():
                return
            log.info("event=etcd_watch_broken endpoint=%s revision=%d error=%r", endpoint, cursor.revision, error)
            index += 1
            # A watch that ran a while broke: try the next member at once. Every member failing
            # quickly in a row: give them a moment rather than spin.
            failures = 0 if time.monotonic() - opened_at >= WATCH_RETRY_SECONDS else failures + 1
            if failures >= len(self._clients):
                stop.wait(WATCH_RETRY_SECONDS)

    def _delivering(self, index: int) -> None:
        """A watch on member `index` delivers changes: the cluster commits again and that member is
        part of it, so reads need not wait out the fail-fast moment of an earlier failure (the change
        being reported is read at once, not left to a slower check)."""
        if self.unavailable_since is None and time.monotonic() >= self._fail_fast_until:
            return
        with self._lock:
            self._fail_fast_until = 0.0
        self._recovered(index)

    @staticmethod
    def _read_watch(answer: requests.Response, delivering: Callable[[], None], on_change: Callable[[], None],
                    stop: threading.Event, cursor: _WatchCursor) -> None:
        pending = b""
        for chunk in answer.iter_content(chunk_size=None):
            if stop.is_set():
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("canceled"):
                    if int(result.get("compact_revision", 0) or 0):
                        # What we missed is compacted away: start again from now, re-reading the table.
                        cursor.revision = 0
                    raise etcd_errors.Etcd3Exception(f"watch canceled: {result.get('cancel_reason', '')}")
                if result.get("created") and not cursor.revision:
                    # A watch from now: the table may have changed before it (first start, compaction).
                    cursor.revision = int(result.get("header", {}).get("revision", 0))
                    on_change()
                events = result.get("events") or []
                if events:
                    cursor.revision = max(cursor.revision, *(int(e.get("kv", {}).get("mod_revision", 0))
                                                            for e in events))
                    delivering()
                    on_change()

    def status(self) -> dict[str, Any]:
        """The answering member's status (its version, the leader it follows, the raft term)."""
        return self.call("status", lambda client: dict(client.status()))


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under the layers requests and urllib3 wrap around it, if TLS is what failed."""
    seen: list[BaseException] = []
    pending: list[object] = [exc]
    while pending:
        found = pending.pop()
        if not isinstance(found, BaseException) or any(found is s for s in seen) or len(seen) > 20:
            continue
        if isinstance(found, ssl.SSLError):
            return found
        seen.append(found)
        pending += [*found.args, getattr(found, "reason", None), found.__cause__, found.__context__]
    return None


def _tls_problem(error: ssl.SSLError) -> str:
    """What an operator should check, for a failed TLS handshake with etcd (the text names TLS)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        why = error.verify_message or error.reason or "certificate verify failed"
        return (f"TLS: etcd's certificate is not trusted ({why}); check dashboard.cluster.ca_file (the CA "
                "that signed etcd's certificate)")
    why = error.reason or (str(error.args[1]) if len(error.args) > 1 else str(error))
    return (f"TLS handshake with etcd failed ({why}); etcd may require a client certificate "
            "(dashboard.cluster.cert_file and key_file) or refuse the one given")


def _short(exc: BaseException) -> str:
    """One line saying why: what to check for a TLS failure; etcd's own message where the gateway sent
    one ("authentication failed, invalid user ID or password"); else the exception's."""
    tls = _ssl_error(exc)
    if tls is not None:
        return _tls_problem(tls)
    text = str(exc)
    detail = getattr(exc, "detail_text", None)
    if isinstance(detail, str) and detail.strip():
        try:
            parsed = json.loads(detail)
            detail = parsed.get("error") or parsed.get("message") or detail if isinstance(parsed, dict) else detail
        except ValueError:
            pass
        text = f"{text}: {detail}" if text else str(detail)
    return " ".join(text.split())[:200] or type(exc).__name__
