"""Benchmark failover publishing (issue 4): from the API request to the routing file being replaced.

Prints, side by side in one run: 200 changes through the real app (waitress on loopback, bearer
token, one keep-alive `httpx.Client`), alternating POST /api/v1/routing/overrides (fail eu-west-1
over to us-east-1, read-only) and DELETE /api/v1/routing/overrides/eu-west-1 (fail back); the same
changes through `Router.set_override/clear_override` called in-process (no HTTP, no auth); and the
bare `write_routing_file` (temporary file, fsync, rename, fsync of the folder) of the same tables.

    python bench/failover.py [--changes 200] [--dir DIR] [--watch auto|inotify|poll]

"POST -> file" runs from just before the request is sent to when a watcher thread sees the routing
file replaced by the new version: inotify (through ctypes, stdlib only) on the folder when Linux
offers it, else polling `os.stat` every 0.2 ms. Region states come from real poll cycles of a
`SimulatedFleet` (a poll cycle runs between changes whenever the last one is 5 s old, outside the
timings, as the poller would). The first request with a token pays werkzeug's password-hash check;
it is timed apart from the 200. Logs go to a file in the temporary folder, as they would go
somewhere in production. `--dir` chooses where the temporary folder (database, routing file) lives:
fsync costs what that folder's file system makes it cost.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import logging
import os
import secrets
import select
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml
from werkzeug.security import generate_password_hash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard import routing
from dashboard.config import load_settings
from dashboard.demo.simulator import SimulatedFleet
from dashboard.poller import Poller
from dashboard.store import Store
from dashboard.web import create_app
from dashboard.web.server import start_server

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]
REGION, TARGET = "eu-west-1", "us-east-1"
TARGET_P95_MS = 50.0
POLL_EVERY_SECONDS = 5.0
IN_MOVED_TO = 0x00000080
_EVENT = struct.Struct("iIII")


class Watcher:
    """Notes when each version of the watched files first appears on disk (perf_counter seconds)."""

    def __init__(self, folder: Path, mode: str) -> None:
        self.folder = folder
        self._seen: dict[tuple[str, int], float] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._fd = -1
        self.mode = mode
        if mode in ("auto", "inotify"):
            self._fd = _inotify_watch(folder)
            if self._fd < 0 and mode == "inotify":
                raise SystemExit("inotify is not available here: use --watch poll")
            self.mode = "inotify" if self._fd >= 0 else "poll"
        self.names: list[str] = []
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def describe(self) -> str:
        if self.mode == "inotify":
            return "inotify (IN_MOVED_TO on the folder, via ctypes)"
        return "polling os.stat every 0.2 ms"

    def start(self, names: list[str]) -> Watcher:
        self.names = names
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._fd >= 0:
            os.close(self._fd)

    def wait_for(self, name: str, version: int, timeout: float = 10.0) -> float:
        """When `version` of `name` was first seen; raises if it never shows up."""
        with self._cond:
            if not self._cond.wait_for(lambda: (name, version) in self._seen, timeout):
                raise SystemExit(f"the watcher never saw version {version} of {name}")
            return self._seen[(name, version)]

    def _note(self, name: str, at: float) -> None:
        try:
            version = json.loads((self.folder / name).read_bytes())["version"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        with self._cond:
            self._seen.setdefault((name, version), at)
            self._cond.notify_all()

    def _run(self) -> None:
        if self.mode == "inotify":
            self._run_inotify()
        else:
            self._run_polling()

    def _run_inotify(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if not ready:
                continue
            at = time.perf_counter()
            data = os.read(self._fd, 64 * 1024)
            offset, names = 0, set()
            while offset < len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0").decode()
                offset += _EVENT.size + length
                if name in self.names:
                    names.add(name)
            for name in names:
                self._note(name, at)

    def _run_polling(self) -> None:
        last: dict[str, tuple[int, int]] = {}
        while not self._stop.is_set():
            for name in self.names:
                try:
                    st = os.stat(self.folder / name)
                except FileNotFoundError:
                    continue
                key = (st.st_ino, st.st_mtime_ns)
                if last.get(name) != key:
                    at = time.perf_counter()
                    last[name] = key
                    self._note(name, at)
            time.sleep(0.0002)


def _inotify_watch(folder: Path) -> int:
    """An inotify descriptor watching renames into `folder`, or -1 where there is no inotify."""
    if not sys.platform.startswith("linux"):
        return -1
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return -1
        if libc.inotify_add_watch(fd, os.fsencode(folder), IN_MOVED_TO) < 0:
            os.close(fd)
            return -1
        return fd
    except (OSError, AttributeError):
        return -1


class Timings:
    """Milliseconds per change for one path: to the file replaced, and to the call returning."""

    def __init__(self) -> None:
        self.to_file: list[float] = []
        self.to_return: list[float] = []

    def add(self, t0: float, t_return: float, t_file: float) -> None:
        self.to_file.append((t_file - t0) * 1000)
        self.to_return.append((t_return - t0) * 1000)


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[94]


class Bench:
    def __init__(self, folder: Path, changes: int, watch: str) -> None:
        self.folder = folder
        self.changes = changes
        self.fleet = SimulatedFleet(REGIONS, primary_region=TARGET).start()
        self.token = secrets.token_urlsafe(32)
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump({"deployment": self.fleet.deployment_block(), "dashboard": {
            "database": "bench.db", "routing_file": "routing.json",
            "auth": {"api_tokens": {"bench": generate_password_hash(self.token, method="pbkdf2:sha256:1000")}}}}))
        self.settings = load_settings(str(config), environ={})
        self.path = self.settings.routing_file_path
        self.bare_path = folder / "routing-bare.json"
        self.store = Store(self.settings.database_path)
        self.poller = Poller(self.settings, self.store)
        self.last_poll = 0.0
        self.poll()
        self.router = routing.Router(self.settings, self.store)
        self.server = start_server(create_app(self.settings, store=self.store), "127.0.0.1", 0)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.server.effective_port}",
                                   headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        self.watcher = Watcher(folder, watch).start([self.path.name, self.bare_path.name])

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.watcher.stop()
        self.poller.close()
        self.store.close()
        self.fleet.stop()

    def poll(self) -> None:
        """A poll cycle when the last is `POLL_EVERY_SECONDS` old, so states stay fresh (never timed)."""
        if time.monotonic() - self.last_poll < POLL_EVERY_SECONDS:
            return
        report = self.poller.run_cycle()
        states = {r.region: r.state for r in report.regions}
        if states.get(TARGET) != "up":
            raise SystemExit(f"the simulated fleet is not healthy: {states}")
        self.last_poll = time.monotonic()

    # -- the paths ---------------------------------------------------------------------------------

    def _http(self, failover: bool) -> tuple[float, float, int]:
        if failover:
            body = {"region": REGION, "target_region": TARGET, "read_only": True, "confirm_healthy": True,
                    "reason": "bench"}
            t0 = time.perf_counter()
            response = self.client.post("/api/v1/routing/overrides", json=body)
        else:
            t0 = time.perf_counter()
            response = self.client.request("DELETE", f"/api/v1/routing/overrides/{REGION}", json={"reason": "bench"})
        t_return = time.perf_counter()
        if response.status_code not in (200, 201):
            raise SystemExit(f"{response.request.method} refused: {response.status_code} {response.text}")
        return t0, t_return, response.json()["version"]

    def _direct(self, failover: bool) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        if failover:
            change = routing.Change(REGION, TARGET, read_only=True, reason="bench", confirm_healthy=True)
            table = self.router.set_override(change, actor="bench")
        else:
            table = self.router.clear_override(REGION, reason="bench", actor="bench")
        return t0, time.perf_counter(), table["version"]

    def run_http(self) -> tuple[Timings, tuple[float, float]]:
        """The first (cold token) request apart, then `changes` changes, alternating."""
        t0, t_return, version = self._http(True)
        first = ((self.watcher.wait_for(self.path.name, version) - t0) * 1000, (t_return - t0) * 1000)
        self._http(False)
        return self._run(self._http, self.path.name), first

    def run_direct(self) -> Timings:
        return self._run(self._direct, self.path.name)

    def _run(self, change, name: str) -> Timings:
        timings = Timings()
        for i in range(self.changes):
            self.poll()
            t0, t_return, version = change(i % 2 == 0)
            timings.add(t0, t_return, self.watcher.wait_for(name, version))
        return timings

    def run_bare_write(self) -> Timings:
        """`write_routing_file` alone, of the same two tables (failed over, failed back), versions rising."""
        self._direct(True)
        over = routing.current_table(self.settings, self.store)
        self._direct(False)
        back = routing.current_table(self.settings, self.store)
        timings = Timings()
        for i in range(self.changes):
            table = {**(over if i % 2 == 0 else back), "version": i + 1}
            t0 = time.perf_counter()
            routing.write_routing_file(self.bare_path, table)
            t_return = time.perf_counter()
            timings.add(t0, t_return, self.watcher.wait_for(self.bare_path.name, i + 1))
        return timings


def _filesystem(path: Path) -> str:
    """The type of the file system holding `path`, from /proc/mounts (best effort)."""
    try:
        best, kind = "", "?"
        resolved = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, kind = mount, fstype
        return kind
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200, help="changes per path, alternating fail over/back")
    parser.add_argument("--dir", default=None, help="where to make the temporary folder (default: the system's)")
    parser.add_argument("--watch", choices=("auto", "inotify", "poll"), default="auto")
    args = parser.parse_args()
    if args.changes < 2:
        parser.error("--changes must be at least 2")

    with tempfile.TemporaryDirectory(prefix="failover-bench-", dir=args.dir) as tmp:
        folder = Path(tmp)
        logging.basicConfig(level=logging.INFO, filename=str(folder / "bench.log"),
                            format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)
        bench = Bench(folder, args.changes, args.watch)
        try:
            http, first = bench.run_http()
            direct = bench.run_direct()
            bare = bench.run_bare_write()
            watching = bench.watcher.describe()
        finally:
            bench.close()
            logging.shutdown()
            logging.getLogger().handlers.clear()
        fs = _filesystem(folder)

    rows = [
        ("HTTP POST/DELETE -> file replaced", http.to_file, f"p95 <= {TARGET_P95_MS:.0f} ms"),
        ("HTTP POST/DELETE -> response received", http.to_return, ""),
        ("baseline: Router in-process -> file replaced", direct.to_file, ""),
        ("baseline: write_routing_file -> file replaced", bare.to_file, ""),
        ("baseline: write_routing_file call", bare.to_return, ""),
    ]
    print(f"failover publishing: {args.changes} changes per path, alternating fail {REGION} over to {TARGET} "
          f"(read-only) and back; {len(REGIONS)} regions; folder on {fs}; file watched by {watching}")
    print(f"{'path':<48} {'median':>9} {'p95':>9}  target")
    for name, samples, target in rows:
        print(f"{name:<48} {statistics.median(samples):>6.2f} ms {p95(samples):>6.2f} ms  {target}")
    print(f"{'first request, new token (scrypt check) -> file':<48} {first[0]:>6.2f} ms {'-':>9}")
    print(f"{'first request, new token -> response':<48} {first[1]:>6.2f} ms {'-':>9}")
    med = statistics.median
    print(f"where the median goes: HTTP + auth + Flask {med(http.to_file) - med(direct.to_file):.2f} ms, "
          f"transaction + rules + table {med(direct.to_file) - med(bare.to_file):.2f} ms, "
          f"write + fsync + rename {med(bare.to_file):.2f} ms")
    verdict = "met" if p95(http.to_file) <= TARGET_P95_MS else "MISSED"
    print(f"target: p95 of HTTP POST/DELETE -> file replaced <= {TARGET_P95_MS:.0f} ms: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
