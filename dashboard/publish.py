"""Publishers: put the routing table where traffic is routed, after every change and at start.

Three kinds: the routing file (`dashboard.routing_file`, JSON, always on), nginx (two map files,
`nginx -t`, `nginx -s reload`) and HAProxy (the same two maps written as files and set through its
runtime API, without a reload). Each publisher is independent: `publish_all` runs them side by side
and turns whatever goes wrong into an `Outcome` with an error, so one failing router never holds up
another, and never undoes the routing change, which is committed before anything is published.

Every file is replaced atomically (temporary file, fsync, rename) under a lock file beside it, and
each carries the table's version: a table older than the one already written is never applied,
whichever process publishes it. Commands are argument lists (never a shell) with a timeout; their
output, clipped, becomes the error.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .config import ROUTING_FILE_PUBLISHER, HaproxyPublisherConfig, NginxPublisherConfig, Settings
from .model import PublisherRow
from .text import clip, iso

log = logging.getLogger(__name__)

# How much of a command's output (or HAProxy's answer) goes into an error.
OUTPUT_LIMIT = 400
# After the n-th failure in a row a publisher is tried again RETRY_BASE * 2**(n-1) s later, at most
# RETRY_MAX: a router back from a restart is caught within a minute, a dead one costs little.
RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
# A publisher that has not returned this long after its own timeout is reported and left behind.
JOIN_GRACE_SECONDS = 5.0
ROUTING_FILE_TIMEOUT_SECONDS = 10.0
_VERSION_LINE = re.compile(rb"^# .*routing table version (\d+)")


class PublishError(Exception):
    """A publisher could not apply the table; the message says why, for the operator."""


class Publisher(Protocol):
    """Something that applies the routing table: a file, a router."""

    name: str
    type: str
    timeout_seconds: float

    def apply(self, table: dict[str, Any]) -> bool:
        """Apply the table; False when a newer one is in place already (nothing done).
        Raises PublishError when it cannot."""
        ...


@dataclass(frozen=True)
class Outcome:
    """What one publisher did with one table."""

    name: str
    type: str
    version: int
    applied: bool  # this table is in place now
    error: str | None = None  # why not; None with `applied` False: a newer table was in place already
    seconds: float = 0.0


# -- files: locked, atomic, never older --------------------------------------------------------------

_thread_locks: dict[Path, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the lock of `path` (a lock file beside it): one writer at a time across threads and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _thread_locks_guard:
        thread_lock = _thread_locks.setdefault(path, threading.Lock())
    with thread_lock, open(path.with_name(path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace the file atomically: temporary file in the same folder, fsync, rename, fsync the folder.

    With `mode` whatever the umask (mkstemp makes files 0600, which a router running as another
    user could not read)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def write_routing_file(path: Path, table: dict[str, Any], *, mode: int = 0o644) -> bool:
    """Replace the file atomically (temporary file in the same folder, fsync, rename).

    A file lock orders writers across processes, and an older version never replaces a newer one,
    so a router watching the file never reads half a table or goes back in time.
    """
    data = (json.dumps(table, indent=2) + "\n").encode()
    with _locked(path):
        try:
            current = json.loads(path.read_bytes()).get("version", -1)
        except (OSError, ValueError, AttributeError):
            current = -1
        if isinstance(current, int) and current > table["version"]:
            return False
        _atomic_write(path, data, mode)
    return True


def map_texts(table: dict[str, Any], terminator: str = "") -> tuple[str, str]:
    """The two maps of a table: '<region> <serving region>' and '<region> <0|1>', one line per region,
    sorted, each ending with `terminator` (';' for nginx), under a comment naming the version.

    Keys are lower case: host names are, and both routers match what they look up in lower case."""
    header = (f"# Written by the region dashboard: routing table version {table['version']}, "
              f"{table['generated_at']}. Do not edit: the next change replaces this file.\n")
    entries = sorted((region.lower(), entry) for region, entry in table["regions"].items())
    serving = "".join(f"{region} {entry['serving_region']}{terminator}\n" for region, entry in entries)
    read_only = "".join(f"{region} {int(bool(entry['read_only']))}{terminator}\n" for region, entry in entries)
    return header + serving, header + read_only


def written_version(path: Path) -> int | None:
    """The table version a map file says it holds (its first line), or None."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(512)
    except OSError:
        return None
    match = _VERSION_LINE.match(first)
    return int(match.group(1)) if match else None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _restore(previous: dict[Path, bytes | None]) -> None:
    for path, data in previous.items():
        if data is None:
            path.unlink(missing_ok=True)
        else:
            _atomic_write(path, data)


# -- commands ---------------------------------------------------------------------------------------


def run_command(command: Sequence[str], timeout: float) -> None:
    """Run a command (an argument list, never a shell) to its end within `timeout` seconds, or raise
    PublishError with its exit status and its output (stdout and stderr, clipped)."""
    shown = clip(shlex.join(command), 120)
    try:
        done = subprocess.run(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=max(timeout, 0.001), check=False)
    except subprocess.TimeoutExpired as exc:
        output = exc.output.decode("utf-8", "replace") if isinstance(exc.output, bytes) else ""
        raise PublishError(f"`{shown}` did not finish within {timeout:.1f} s (killed)"
                           + (f": {clip(output, OUTPUT_LIMIT)}" if output.strip() else "")) from None
    except OSError as exc:
        raise PublishError(f"`{shown}` could not start: {exc.strerror or exc}") from None
    if done.returncode != 0:
        output = done.stdout.decode("utf-8", "replace")
        raise PublishError(f"`{shown}` exited with status {done.returncode}"
                           + (f": {clip(output, OUTPUT_LIMIT)}" if output.strip() else " and said nothing"))


# -- the publishers ---------------------------------------------------------------------------------


class RoutingFilePublisher:
    """The routing table as JSON in `dashboard.routing_file`, for anything that reads a file."""

    type = "json"
    timeout_seconds = ROUTING_FILE_TIMEOUT_SECONDS

    def __init__(self, path: Path, name: str = ROUTING_FILE_PUBLISHER, mode: int = 0o644) -> None:
        self.name = name
        self.path = path
        self.mode = mode

    def apply(self, table: dict[str, Any]) -> bool:
        try:
            return write_routing_file(self.path, table, mode=self.mode)
        except OSError as exc:
            raise PublishError(f"{self.path} not written: {exc.strerror or exc}") from None


class NginxPublisher:
    """nginx: both map files written, `test_command`, then `reload_command`.

    A failed test puts the previous map files back and does not reload, so nginx keeps serving the
    last good table (and a later start of nginx reads it too). A failed reload keeps the new files:
    they passed the test, and nginx reads them at its next start or reload."""

    type = "nginx"

    def __init__(self, config: NginxPublisherConfig, settings: Settings) -> None:
        self.name = config.name
        self.map_file = settings.resolve_path(config.map_file)
        self.read_only_map_file = settings.resolve_path(config.read_only_map_file)
        self.mode = settings.dashboard.routing_file_mode  # the maps are readable like the routing file
        self.test_command = list(config.test_command)
        self.reload_command = list(config.reload_command)
        self.timeout_seconds = config.timeout_seconds

    def apply(self, table: dict[str, Any]) -> bool:
        deadline = time.monotonic() + self.timeout_seconds
        serving, read_only = map_texts(table, ";")
        with _locked(self.map_file):
            newer = written_version(self.map_file)
            if newer is not None and newer > table["version"]:
                return False
            previous = {path: _read(path) for path in (self.map_file, self.read_only_map_file)}
            try:
                _atomic_write(self.map_file, serving.encode(), self.mode)
                _atomic_write(self.read_only_map_file, read_only.encode(), self.mode)
                run_command(self.test_command, deadline - time.monotonic())
            except (OSError, PublishError) as exc:
                _restore(previous)
                why = exc if isinstance(exc, PublishError) else f"map files not written: {exc}"
                raise PublishError(f"{why}; the previous map files are back and nginx was not reloaded") from None
            try:
                run_command(self.reload_command, deadline - time.monotonic())
            except PublishError as exc:
                raise PublishError(f"reload failed: {exc}; the new map files stay (they passed the test): nginx "
                                   "reads them at its next start or reload") from None
        return True


class HaproxyPublisher:
    """HAProxy: every changed entry set through the runtime API (`set map`, `add map` for a new key,
    `del map` for a key no longer configured), in one batch and without a reload; then both map
    files written, so a restart of HAProxy keeps the table.

    The batch turns regions read-only before it moves their traffic, and writable only after their
    traffic is back, so no write reaches a region it must not reach while the batch runs."""

    type = "haproxy"

    def __init__(self, config: HaproxyPublisherConfig, settings: Settings) -> None:
        self.name = config.name
        self.map_file = settings.resolve_path(config.map_file)
        self.read_only_map_file = settings.resolve_path(config.read_only_map_file)
        self.mode = settings.dashboard.routing_file_mode  # the maps are readable like the routing file
        self.socket = str(settings.resolve_path(config.socket))
        self.timeout_seconds = config.timeout_seconds

    def apply(self, table: dict[str, Any]) -> bool:
        deadline = time.monotonic() + self.timeout_seconds
        serving, read_only = map_texts(table)
        with _locked(self.map_file):
            newer = written_version(self.map_file)
            if newer is not None and newer > table["version"]:
                return False
            # Traffic first (the runtime API takes effect at once), then the files a restart reads:
            # written even when HAProxy is down, so it starts with this table.
            try:
                self._set_maps(serving, read_only, deadline)
            except PublishError as exc:
                runtime_error: PublishError | None = exc
            else:
                runtime_error = None
            try:
                _atomic_write(self.map_file, serving.encode(), self.mode)
                _atomic_write(self.read_only_map_file, read_only.encode(), self.mode)
            except OSError as exc:
                done = f"{runtime_error}; nor were" if runtime_error else "HAProxy applied the table, but not"
                raise PublishError(f"{done} the map files written, so a restart of HAProxy would load an older "
                                   f"table: {exc.strerror or exc}") from None
            if runtime_error is not None:
                raise PublishError(f"{runtime_error}; the map files are written: HAProxy loads this table when it "
                                   "starts") from None
        return True

    def _set_maps(self, serving: str, read_only: str, deadline: float) -> None:
        """Make HAProxy's two maps hold these entries, changing only what differs, in one batch."""
        routing_map, read_only_map = str(self.map_file), str(self.read_only_map_file)
        current_serving = self._show(routing_map, deadline)
        current_read_only = self._show(read_only_map, deadline)
        wanted_serving = _entries(serving)
        wanted_read_only = _entries(read_only)
        commands = (
            _changes(read_only_map, current_read_only, {k: v for k, v in wanted_read_only.items() if v == "1"})
            + _changes(routing_map, current_serving, wanted_serving)
            + _changes(read_only_map, current_read_only, {k: v for k, v in wanted_read_only.items() if v != "1"})
            + [f"del map {routing_map} {key}" for key in sorted(set(current_serving) - set(wanted_serving))]
            + [f"del map {read_only_map} {key}" for key in sorted(set(current_read_only) - set(wanted_read_only))]
        )
        if commands:
            answer = self._ask(";".join(commands), deadline)
            if answer.strip():
                raise PublishError(f"HAProxy refused a map change: {clip(answer, OUTPUT_LIMIT)}")

    def _show(self, map_name: str, deadline: float) -> dict[str, str]:
        """The entries HAProxy holds in a map now (key -> value)."""
        answer = self._ask(f"show map {map_name}", deadline)
        entries: dict[str, str] = {}
        for line in answer.splitlines():
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or not parts[0].startswith("0x"):
                raise PublishError(f"HAProxy does not serve the map {map_name}: {clip(answer, OUTPUT_LIMIT)} "
                                   "(map_file must be the very path the HAProxy config loads)")
            entries[parts[1]] = parts[2]
        return entries

    def _ask(self, command: str, deadline: float) -> str:
        """One command (or a ';'-separated batch) on a fresh connection to the runtime API."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PublishError(f"HAProxy's runtime API did not answer within {self.timeout_seconds:g} s")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(remaining)
                conn.connect(self.socket)
                conn.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
        except TimeoutError:
            raise PublishError(f"HAProxy's runtime API at {self.socket} did not answer within "
                               f"{self.timeout_seconds:g} s") from None
        except OSError as exc:
            raise PublishError(f"HAProxy's runtime API at {self.socket} is not reachable: "
                               f"{exc.strerror or exc}") from None
        return b"".join(chunks).decode("utf-8", "replace")


def _entries(text: str) -> dict[str, str]:
    return {key: value for key, value in (line.split() for line in text.splitlines() if line and line[0] != "#")}


def _changes(map_name: str, current: dict[str, str], wanted: dict[str, str]) -> list[str]:
    return [f"{'set' if key in current else 'add'} map {map_name} {key} {value}"
            for key, value in sorted(wanted.items()) if current.get(key) != value]


def publishers_for(settings: Settings) -> list[Publisher]:
    """The routing file's publisher, then every publisher of `dashboard.publish`, in config order."""
    made: list[Publisher] = [RoutingFilePublisher(settings.routing_file_path,
                                                  mode=settings.dashboard.routing_file_mode)]
    for config in settings.dashboard.publish:
        if isinstance(config, NginxPublisherConfig):
            made.append(NginxPublisher(config, settings))
        else:
            made.append(HaproxyPublisher(config, settings))
    return made


def configured(settings: Settings) -> list[tuple[str, str]]:
    """(name, type) of every publisher, in the order `publishers_for` builds them."""
    return [(ROUTING_FILE_PUBLISHER, RoutingFilePublisher.type),
            *((p.name, p.type) for p in settings.dashboard.publish)]


# -- running them -----------------------------------------------------------------------------------


def publish_one(publisher: Publisher, table: dict[str, Any]) -> Outcome:
    """Apply the table with one publisher; whatever goes wrong becomes the outcome's error."""
    started = time.monotonic()
    error = None
    applied = False
    try:
        applied = publisher.apply(table)
    except PublishError as exc:
        error = str(exc)
    except Exception as exc:  # a bug in one publisher must not stop the others
        log.exception("event=publisher_crashed publisher=%s", publisher.name)
        error = f"{type(exc).__name__}: {clip(str(exc), OUTPUT_LIMIT)}"
    outcome = Outcome(publisher.name, publisher.type, table["version"], applied, error,
                      time.monotonic() - started)
    if applied:
        log.info("event=published publisher=%s version=%d duration_ms=%.1f", outcome.name, outcome.version,
                 outcome.seconds * 1000)
    elif error is None:
        log.info("event=publish_skipped publisher=%s version=%d reason='a newer table is in place'",
                 outcome.name, outcome.version)
    else:
        log.error("event=publish_failed publisher=%s version=%d error=%r", outcome.name, outcome.version, error)
    return outcome


def publish_all(publishers: Sequence[Publisher], table: dict[str, Any]) -> list[Outcome]:
    """Every publisher applies the table at the same time, each in its own thread; returns their
    outcomes in order. One that outlives its timeout (plus a grace) is reported as such and left."""
    if len(publishers) == 1:
        return [publish_one(publishers[0], table)]
    results: dict[int, Outcome] = {}

    def run(i: int, publisher: Publisher) -> None:
        results[i] = publish_one(publisher, table)

    threads = [threading.Thread(target=run, args=(i, p), name=f"publish-{p.name}", daemon=True)
               for i, p in enumerate(publishers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + max(p.timeout_seconds for p in publishers) + JOIN_GRACE_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    outcomes = []
    for i, publisher in enumerate(publishers):
        outcome = results.get(i)
        if outcome is None:
            outcome = Outcome(publisher.name, publisher.type, table["version"], False,
                              f"did not finish within {publisher.timeout_seconds + JOIN_GRACE_SECONDS:g} s")
            log.error("event=publish_failed publisher=%s version=%d error=%r", publisher.name, table["version"],
                      outcome.error)
        outcomes.append(outcome)
    return outcomes


# -- what readers see -------------------------------------------------------------------------------


def needs_retry(row: PublisherRow | None, version: int, now: float) -> bool:
    """Whether the scheduler should apply the table with this publisher now: it is behind the
    table's version or its last attempt failed, and its back-off has passed."""
    if row is None:
        return True
    if row["version"] is not None and row["version"] >= version and row["error"] is None:
        return False
    return row["next_attempt_at"] is None or row["next_attempt_at"] <= now


def publisher_status(settings: Settings, rows: dict[str, PublisherRow], version: int) -> list[dict[str, Any]]:
    """Every configured publisher as the API, the pages and the CLI show it: the version it applied,
    when, its last error, and whether it is `behind` the routing table's `version`."""
    shown = []
    for name, type_ in configured(settings):
        row = rows.get(name)
        applied = row["version"] if row else None
        if applied is None:
            # Never tried while the table is still the initial one (every region serving itself):
            # nothing to warn about yet. Tried and failed, or a change it never applied: behind.
            behind = row is not None or version > 0
        else:
            behind = applied < version
        shown.append({
            "name": name,
            "type": type_,
            "version": applied,
            "applied_at": iso(row["applied_at"]) if row and row["applied_at"] else None,
            "error": row["error"] if row else None,
            "behind": behind,
            "failed_at": iso(row["failed_at"]) if row and row["failed_at"] else None,
            "consecutive_failures": row["consecutive_failures"] if row else 0,
            "next_attempt_at": iso(row["next_attempt_at"]) if row and row["next_attempt_at"] and row["error"]
            else None,
        })
    return shown
