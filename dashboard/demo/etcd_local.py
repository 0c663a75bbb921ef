"""Local etcd members for `dashboard cluster-demo`, the cluster tests and bench/cluster.py: Debian's
etcd-server on loopback ports, each member with its own data folder; nothing under /etc or /var.

A member is waited for through its own /health endpoint, never for a fixed time. A member can be
stopped (SIGTERM, or SIGKILL) and started again on the same ports and data, as an operator would.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..processes import stop_process

START_TIMEOUT_SECONDS = 20.0
# Elections in a few hundred milliseconds on loopback (etcd's defaults, 100 ms and 1 s, are made
# for a network between regions); the tests and the demo lose a member on purpose.
HEARTBEAT_MS = 50
ELECTION_TIMEOUT_MS = 500


@dataclass(frozen=True)
class ClientTls:
    """TLS on a member's client URL (https): its certificate and key, the CA it trusts for client
    certificates (`--client-cert-auth`), and the client certificate its own health check presents."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path


def etcd_binary() -> str | None:
    """Debian's etcd-server puts `etcd` in /usr/bin."""
    return shutil.which("etcd") or shutil.which("etcd", path="/usr/bin:/usr/local/bin")


def _free_ports(count: int) -> list[int]:
    """Ports free now, all distinct (sockets held open together until every one is chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class EtcdMember:
    """One etcd member process of an `EtcdCluster`."""

    def __init__(self, binary: str, name: str, directory: Path, client_port: int, peer_port: int,
                 tls: ClientTls | None = None) -> None:
        self.binary = binary
        self.tls = tls
        self.name = name
        self.directory = directory
        self.client_port = client_port
        self.peer_port = peer_port
        self.process: subprocess.Popen[bytes] | None = None
        self.initial_cluster = ""

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        return [
            self.binary, "--name", self.name, "--data-dir", str(self.directory / "data"),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"dashboard-local-{os.getpid()}",
            "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_TIMEOUT_MS),
            "--log-level", "warn", "--logger", "zap",
        ] + ([] if self.tls is None else [
            "--cert-file", str(self.tls.cert_file), "--key-file", str(self.tls.key_file),
            "--trusted-ca-file", str(self.tls.ca_file), "--client-cert-auth",
        ])

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "etcd.log", "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process, sig)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """Whether this member answers /health as part of a cluster with a leader."""
        tls = self.tls
        verify: bool | ssl.SSLContext = True
        if tls is not None:
            verify = ssl.create_default_context(cafile=str(tls.ca_file))
            verify.load_cert_chain(str(tls.client_cert_file), str(tls.client_key_file))
        try:
            answer = httpx.get(f"{self.client_url}/health", timeout=1.0, verify=verify)
            return answer.status_code == 200 and answer.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "etcd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class EtcdCluster:
    """`size` etcd members on loopback, one cluster; `start()` returns once every member is healthy."""

    def __init__(self, directory: Path, size: int = 3, binary: str | None = None,
                 tls: ClientTls | None = None) -> None:
        found = binary or etcd_binary()
        assert found is not None, "etcd is not installed (Debian: apt-get install etcd-server)"
        ports = _free_ports(2 * size)
        self.members = [EtcdMember(found, f"etcd{i}", directory / f"etcd{i}", ports[2 * i], ports[2 * i + 1],
                                   tls)
                        for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self) -> EtcdCluster:
        for member in self.members:
            member.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, members: list[EtcdMember] | None = None, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Wait until every given member (default: every running one) reports a healthy cluster."""
        members = members if members is not None else [m for m in self.members if m.running]
        deadline = time.monotonic() + timeout
        while not all(m.healthy() for m in members):
            dead = [m for m in members if not m.running]
            if dead or time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in members)
                raise AssertionError(f"etcd members not healthy within {timeout:g} s "
                                     f"(exited: {[m.name for m in dead]}):\n{tails}")
            time.sleep(0.05)

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
