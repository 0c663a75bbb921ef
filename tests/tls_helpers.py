"""Throwaway TLS material for the tests, made at run time with the `openssl` command (never committed):
a CA, a server certificate for 127.0.0.1 signed by it, a client certificate signed by it, and a
second CA that signed neither (the "wrong CA")."""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .etcd_helpers import REQUIRE_ETCD_ENV

# A day is plenty for a test run; EC keys are made in milliseconds, RSA ones are not.
DAYS = "1"
KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", *KEY, "-keyout", str(key), "-out", str(cert), "-days", DAYS, "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _signed(directory: Path, name: str, ca: tuple[Path, Path], *extensions: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    added = [arg for ext in extensions for arg in ("-addext", ext)]
    _openssl("req", "-x509", *KEY, "-keyout", str(key), "-out", str(cert), "-days", DAYS, "-subj", f"/CN={name}",
             "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-addext", "basicConstraints=critical,CA:FALSE", *added)
    return cert, key


def make_tls(directory: Path) -> TlsFiles:
    """Every file the TLS tests need, in `directory`."""
    if shutil.which("openssl") is None:
        message = "the openssl command is needed to make the test certificates (Debian: apt-get install openssl)"
        if os.environ.get(REQUIRE_ETCD_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ETCD_ENV}=1 requires the cluster tests, TLS included)")
        pytest.skip(message)
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "test-ca")
    other_ca, _ = _ca(directory, "other-ca")
    # etcd's JSON gateway connects to etcd's own gRPC port with the server certificate: it needs
    # clientAuth too when etcd asks every client for a certificate.
    server = _signed(directory, "etcd-server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost",
                     "extendedKeyUsage=serverAuth,clientAuth")
    client = _signed(directory, "dashboard-client", ca, "extendedKeyUsage=clientAuth")
    return TlsFiles(ca=ca[0], server_cert=server[0], server_key=server[1], client_cert=client[0],
                    client_key=client[1], other_ca=other_ca)
