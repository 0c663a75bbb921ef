"""Real edge routers for the tests and bench/routers.py: Debian's nginx and HAProxy, started on
loopback from the very example configs in deploy/, with only their ports and paths changed.

A change to an example that the templating below no longer finds fails loudly (`render`), so the
examples cannot drift from what the tests run. Everything a router writes (pid, logs, sockets,
maps, temporary files) stays in the folder it is given.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx

from dashboard.processes import stop_process

from .conftest import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
NGINX_EXAMPLE = DEPLOY / "nginx" / "nginx.conf"
HAPROXY_EXAMPLE = DEPLOY / "haproxy" / "haproxy.cfg"
DOMAIN = "api.example.com"
# The regions of the examples and the ports of their upstreams (the simulated fleet of
# `python -m dashboard.demo.simulator --port 9101`); each becomes a port of the fleet under test.
EXAMPLE_UPSTREAMS = {"us-east-1": 9101, "eu-west-1": 9102, "ap-southeast-1": 9103}
START_TIMEOUT_SECONDS = 10.0


def binary(name: str) -> str | None:
    """The router's executable: on PATH, else where Debian puts it (/usr/sbin is not on every PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def render(example: Path, replacements: dict[str, str]) -> str:
    """The example with each key replaced by its value; every key must be in the example."""
    text = example.read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert old in text, f"{example.relative_to(REPO_ROOT)} no longer contains {old!r}: update tests/edge_helpers.py"
        text = text.replace(old, new)
    for system_path in ("/etc/nginx", "/etc/haproxy", "/run/", "/var/log/", "/var/lib/"):
        assert system_path not in text, f"{example.name} still points at {system_path} after templating"
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EdgeRouter:
    """One router process from a deploy/ example, listening on a loopback port."""

    kind = ""
    example = Path()

    def __init__(self, directory: Path, upstreams: dict[str, int]) -> None:
        self.directory = directory
        self.port = free_port()
        self.maps = directory / "maps"
        self.maps.mkdir(parents=True, exist_ok=True)
        self.map_file = self.maps / "routing.map"
        self.read_only_map_file = self.maps / "read_only.map"
        self.upstreams = upstreams
        self.process: subprocess.Popen[bytes] | None = None
        self.output = directory / f"{self.kind}.out"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _upstreams(self) -> dict[str, str]:
        return {f"127.0.0.1:{EXAMPLE_UPSTREAMS[region]}": f"127.0.0.1:{port}"
                for region, port in self.upstreams.items()}

    def publisher(self, name: str | None = None) -> dict[str, Any]:
        """This router's entry for `dashboard.publish`."""
        raise NotImplementedError

    def start_command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start in the foreground (so this object owns the process) and wait until it accepts."""
        assert self.process is None, f"{self.kind} is already running"
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(self.start_command(), stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT)
        process = self.process

        def accepting() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{self.kind} exited with {process.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_until(accepting, f"{self.kind} listening on {self.port}", START_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """Stop it and wait until the process is gone and the port refuses connections."""
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-2000:] if self.output.exists() else ""

    def request(self, client: httpx.Client, region: str, method: str = "GET", path: str = "/api/v1/orders",
                *, by: str = "host") -> httpx.Response:
        """A request for `region`, named by its Host (`by="host"`) or by an X-Region header."""
        headers = {"Host": f"{region}.{DOMAIN}"} if by == "host" else {"Host": DOMAIN, "X-Region": region}
        return client.request(method, self.url + path, headers=headers,
                              content=b'{"order": 1}' if method in ("POST", "PUT", "PATCH") else None)

    def served_by(self, client: httpx.Client, region: str, *, by: str = "host") -> str | None:
        """Which region's backend answered a read for `region` (None when no backend did)."""
        response = self.request(client, region, by=by)
        return response.json().get("region") if response.status_code == 200 else None

    def settled(self) -> bool:
        """Whether only the latest table can answer now (a reload may leave old workers a while)."""
        return True

    def wait_served(self, client: httpx.Client, region: str, expected: str, timeout: float = 10.0) -> None:
        """Until requests for `region` (by Host and by X-Region) reach `expected`, and nothing that
        still holds an older table can take a request any more."""

        def answers() -> bool:
            return all(self.served_by(client, region, by=by) == expected for by in ("host", "header"))

        # An answer from the new table first (so the change has reached the router), then settled.
        wait_until(lambda: answers() and self.settled() and answers(),
                 f"{self.kind}: {region} served by {expected}", timeout)


class Nginx(EdgeRouter):
    """deploy/nginx/nginx.conf, run with its own prefix, config, pid and logs (`nginx -p DIR -c FILE`)."""

    kind = "nginx"
    example = NGINX_EXAMPLE

    def __init__(self, directory: Path, upstreams: dict[str, int]) -> None:
        super().__init__(directory, upstreams)
        for sub in ("logs", "temp"):
            (directory / sub).mkdir(exist_ok=True)
        self.config = directory / "nginx.conf"
        self.error_log = directory / "logs" / "error.log"
        self.config.write_text(render(self.example, {
            "listen 8080;": f"listen 127.0.0.1:{self.port};",
            "/etc/nginx/dashboard/": f"{self.maps}/",
            "/run/nginx.pid": str(directory / "nginx.pid"),
            "/var/log/nginx/": f"{directory}/logs/",
            "/var/lib/nginx/": f"{directory}/temp/",
            **self._upstreams(),
        }), encoding="utf-8")

    def command(self, *args: str) -> list[str]:
        nginx = binary("nginx")
        assert nginx is not None, "nginx is not installed"
        # -e: the error log nginx opens before it reads the config (the compiled-in one is not ours).
        return [nginx, "-p", str(self.directory), "-c", str(self.config), "-e", str(self.error_log), *args]

    def start_command(self) -> list[str]:
        return self.command("-g", "daemon off;")

    def publisher(self, name: str | None = None) -> dict[str, Any]:
        return {"name": name or "edge-nginx", "type": "nginx", "map_file": str(self.map_file),
                "read_only_map_file": str(self.read_only_map_file), "test_command": self.command("-t", "-q"),
                "reload_command": self.command("-s", "reload")}

    def settled(self) -> bool:
        """Only new workers are left: after a reload the old ones take new connections until they
        handle the master's QUIT (tens of milliseconds here), then finish and exit. Before that there
        are twice the workers; after, some are "shutting down" until they are gone."""
        if self.process is None:
            return False
        titles = _children_titles(self.process.pid)
        expected = len(os.sched_getaffinity(self.process.pid))  # `worker_processes auto`
        return titles.count("nginx: worker process") == expected and not any("shutting down" in t for t in titles)

    def log(self) -> str:
        text = super().log()
        if self.error_log.exists():
            text += self.error_log.read_text(errors="replace")[-2000:]
        return text


def _children_titles(parent: int) -> list[str]:
    """The process titles of a process's children (Linux /proc): nginx names its workers there."""
    titles = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
            if ppid == parent:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    titles.append(cmdline.read().rstrip(b"\0").decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return titles


class Haproxy(EdgeRouter):
    """deploy/haproxy/haproxy.cfg, run in the foreground with its stats socket in the folder."""

    kind = "haproxy"
    example = HAPROXY_EXAMPLE

    def __init__(self, directory: Path, upstreams: dict[str, int]) -> None:
        super().__init__(directory, upstreams)
        self.socket = directory / "admin.sock"  # a unix socket path has at most 107 bytes
        assert len(str(self.socket)) < 100, f"socket path too long for a unix socket: {self.socket}"
        self.config = directory / "haproxy.cfg"
        self.config.write_text(render(self.example, {
            "bind :8080": f"bind 127.0.0.1:{self.port}",
            "/etc/haproxy/dashboard/": f"{self.maps}/",
            "/run/haproxy/dashboard.sock": str(self.socket),
            "/run/haproxy-edge.pid": str(directory / "haproxy.pid"),
            **self._upstreams(),
        }), encoding="utf-8")

    def start_command(self) -> list[str]:
        haproxy = binary("haproxy")
        assert haproxy is not None, "haproxy is not installed"
        return [haproxy, "-f", str(self.config)]

    def publisher(self, name: str | None = None) -> dict[str, Any]:
        return {"name": name or "edge-haproxy", "type": "haproxy", "socket": str(self.socket),
                "map_file": str(self.map_file), "read_only_map_file": str(self.read_only_map_file)}


ROUTERS: dict[str, type[EdgeRouter]] = {"nginx": Nginx, "haproxy": Haproxy}


REQUIRE_ROUTERS_ENV = "DASHBOARD_REQUIRE_ROUTERS"


def require_router(kind: str) -> str:
    """The router's executable; skip the test without it, or fail when CI requires the router tests."""
    import pytest

    found = binary(kind)
    if found is None:
        message = f"{kind} not found on PATH or in /usr/sbin; install Debian's {kind} package"
        if os.environ.get(REQUIRE_ROUTERS_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ROUTERS_ENV}=1 requires the router tests)")
        pytest.skip(message)
    return found
