"""Real servers on loopback for the tests that are about the server: `dashboard serve` in its own
process (so its memory can be measured), or the app on waitress in this process."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask

from dashboard.processes import stop_process
from dashboard.web.server import start_server, stop_server, url_of


@dataclass
class ServedProcess:
    """`dashboard serve` running in a child process."""

    process: subprocess.Popen
    url: str

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 80)

    def memory_kb(self, field: str = "VmRSS") -> int:
        """A memory figure of the server process from /proc (VmRSS now, VmHWM its peak), in kB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{field} not in /proc/{self.process.pid}/status")


@contextmanager
def dashboard_serve(config: str | Path, log_path: Path, *, umask: int | None = None) -> Iterator[ServedProcess]:
    """Run `dashboard serve --port 0` on a config; yields once it listens, stops it with Ctrl-C after."""
    env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD_CONFIG", "REVERSEAI_DEPLOYMENT_REGIONS")}

    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dashboard.cli", "serve", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env, preexec_fn=set_umask,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("dashboard: serving "), (line, log_path.read_text())
            yield ServedProcess(process, line.split()[2])
        finally:
            stop_process(process, signal.SIGINT, timeout=15)
            if process.stdout is not None:
                process.stdout.close()


@contextmanager
def served(app: Flask) -> Iterator[str]:
    """The app on waitress on a free loopback port, in this process; yields its base URL."""
    server = start_server(app, "127.0.0.1", 0)
    try:
        yield url_of(server, "127.0.0.1").rstrip("/")
    finally:
        stop_server(server)


def post_raw(port: int, path: str, declared_bytes: int, *, send_bytes: int | None = None,
             content_type: str = "application/x-www-form-urlencoded", timeout: float = 30) -> bytes:
    """POST a body of `declared_bytes` (zeros, in 1 MB writes) over a plain socket, as an attacker
    would: keep sending until the server stops reading, then read whatever it answered."""
    send_bytes = declared_bytes if send_bytes is None else send_bytes
    chunk = b"0" * (1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {declared_bytes}\r\nConnection: close\r\n\r\n".encode())
        sent = 0
        try:
            while sent < send_bytes:
                piece = chunk[: min(len(chunk), send_bytes - sent)]
                sock.sendall(piece)
                sent += len(piece)
        except OSError:
            pass  # the server answered and closed without reading the rest: what a limit does
        answer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
        return answer
