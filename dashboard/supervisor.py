"""Run the poller in its own process, watch it, restart it when it dies, stop it cleanly.

Viewer load must never change what the poller measures (issue 17): page rendering in the web
process competes for its interpreter lock and CPU, and a poller sharing it measured its own
starvation as region latency. So `serve` and `demo` run `dashboard poll` as a child process; the
two share only the database. The poller lease is still what guarantees one poller per database.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from .config import Settings
from .heartbeat import read_heartbeat, read_process_state, write_process_state
from .model import NewEvent
from .store import Store

log = logging.getLogger(__name__)
WATCH_SECONDS = 0.2
SUPERVISOR_ENV = "DASHBOARD_SUPERVISOR_PID"  # the poller process stops when this pid is gone
RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 30.0
STABLE_SECONDS = 60.0  # a child that lived this long restarts without back-off
STOP_TIMEOUT_SECONDS = 10.0


def poller_command(settings: Settings) -> list[str]:
    """`dashboard poll` on the same config and log level, with this interpreter (so the same venv)."""
    command = [sys.executable, "-m", "dashboard.cli", "poll"]
    if settings.source:
        command += ["--config", str(settings.source)]
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    if level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        command += ["--log-level", level]
    return command


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class PollerSupervisor:
    """Starts the poller process, restarts it with back-off when it dies, stops it with SIGTERM.

    Every death is an event row and sets `down_since` in the database (the overview's banner);
    the first heartbeat of the new process clears it and records the gap."""

    def __init__(self, settings: Settings, store: Store, *, command: Sequence[str] | None = None,
                 restart_delay: float = RESTART_DELAY_SECONDS) -> None:
        self.settings = settings
        self.store = store
        self.command = list(command) if command is not None else poller_command(settings)
        self.restart_delay = restart_delay
        self.restarts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_since: float | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        if self._thread is not None:
            return
        write_process_state(self.store, {"pid": None, "down_since": None, "restarts": 0,
                                         "last_gap": read_process_state(self.store).get("last_gap")})
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name="poller-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        # Its own session: Ctrl-C in the terminal reaches only `serve`, which then stops the child
        # (SIGTERM) after the web server; the child exits by itself if `serve` dies (parent pid).
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, SUPERVISOR_ENV: str(os.getpid())})
        self._started_at = time.monotonic()
        log.info("event=poller_process_started pid=%d", self.process.pid)
        self._write_state()

    def _write_state(self, gap: list[float] | None = None) -> None:
        state = read_process_state(self.store)
        write_process_state(self.store, {"pid": self.pid, "down_since": self._down_since,
                                         "restarts": self.restarts, "last_gap": gap or state.get("last_gap")})

    def _watch(self) -> None:
        delay = self.restart_delay
        while not self._stop.is_set():
            try:
                delay = self._watch_step(delay)
            except Exception:  # the watcher must outlive a busy database
                log.exception("event=supervisor_step_failed")
            self._stop.wait(WATCH_SECONDS)

    def _watch_step(self, delay: float) -> float:
        """One look at the child: recovered (first heartbeat after a death), alive, or dead."""
        process = self.process
        assert process is not None
        code = process.poll()
        if code is None:
            if self._down_since is not None:
                beat = read_heartbeat(self.store)
                if beat is not None and beat.pid == process.pid:
                    gap = [self._down_since, beat.at]
                    self.store.add_event(NewEvent(
                        at=beat.at, region=None, kind="poller",
                        reason=f"poller process back (pid {process.pid}): no poll from "
                               f"{time.strftime('%H:%M:%S', time.gmtime(gap[0]))} to "
                               f"{time.strftime('%H:%M:%S UTC', time.gmtime(gap[1]))} ({gap[1] - gap[0]:.0f} s)"))
                    self._down_since = None
                    self._write_state(gap)
                    log.warning("event=poller_process_recovered pid=%d gap_s=%.1f", process.pid, gap[1] - gap[0])
            return delay
        if self._stop.is_set():
            return delay
        now = time.time()
        if self._down_since is None:
            self._down_since = now
        lived = time.monotonic() - self._started_at
        if lived >= STABLE_SECONDS:
            delay = self.restart_delay
        log.error("event=poller_process_died pid=%d how=%r restart_in_s=%g", process.pid, _exit_text(code), delay)
        self.store.add_event(NewEvent(at=now, region=None, kind="poller",
                                      reason=f"poller process {process.pid} died ({_exit_text(code)}); "
                                             f"restarting in {delay:g} s"))
        # It is dead (reaped above), so its lease can go now rather than lapse a lease lifetime later.
        self.store.release_lease(f"{socket.gethostname()}:{process.pid}")
        self.restarts += 1
        self._write_state()
        if self._stop.wait(delay):
            return delay
        self._spawn()
        return min(delay * 2, MAX_RESTART_DELAY_SECONDS)

    def stop(self) -> None:
        """SIGTERM the child (it releases its lease and stops its notifier), SIGKILL if it hangs."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                log.error("event=poller_process_killed pid=%d reason=did_not_stop", process.pid)
                process.kill()
                process.wait()
        log.info("event=poller_process_stopped")
