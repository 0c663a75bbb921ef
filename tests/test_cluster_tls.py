"""TLS to etcd for real: one etcd member on https loopback that asks every client for a certificate
(`--client-cert-auth`), with a CA and certificates made by the test at run time (tests/tls_helpers.py).
A dashboard trusting that CA, with a client certificate, works end to end; one trusting another CA,
or without a client certificate, shows "cluster unreachable" naming TLS, never a crash."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from dashboard.cluster import EtcdControl
from dashboard.config import load_settings
from dashboard.control import ControlUnavailable
from dashboard.demo.etcd_local import ClientTls
from dashboard.demo.simulator import SimulatedFleet
from dashboard.etcd import EtcdClient
from dashboard.store import Store

from .cluster_helpers import Instance
from .conftest import REGIONS, deployment_block, wait_until, write_config
from .etcd_helpers import EtcdCluster, require_etcd
from .tls_helpers import TlsFiles, make_tls


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure_etcd(tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    binary = require_etcd()
    member_tls = ClientTls(ca_file=tls.ca, cert_file=tls.server_cert, key_file=tls.server_key,
                           client_cert_file=tls.client_cert, client_key_file=tls.client_key)
    with EtcdCluster(tmp_path_factory.mktemp("etcd-tls"), size=1, binary=binary, tls=member_tls) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tls_fleet() -> Iterator[SimulatedFleet]:
    with SimulatedFleet(REGIONS, primary_region="us-east-1") as running:
        yield running


def _client(secure_etcd: EtcdCluster, tls: TlsFiles) -> EtcdClient:
    """A client of our own with the right CA and certificate: to look at what the dashboard wrote."""
    return EtcdClient(secure_etcd.endpoints, ca_file=str(tls.ca), cert_file=str(tls.client_cert),
                      key_file=str(tls.client_key))


def test_an_instance_trusting_the_ca_with_a_client_certificate_writes_verdicts_and_commits_a_failover(
        secure_etcd: EtcdCluster, tls: TlsFiles, tls_fleet: SimulatedFleet, tmp_path: Path) -> None:
    assert secure_etcd.endpoints[0].startswith("https://127.0.0.1:")
    cluster = {"etcd_endpoints": secure_etcd.endpoints, "key_prefix": "/tls-e2e/", "ca_file": str(tls.ca),
               "cert_file": str(tls.client_cert), "key_file": str(tls.client_key)}
    instance = Instance(tmp_path / "eu-west-1", tls_fleet, "eu-west-1", secure_etcd.endpoints, cluster=cluster).start()
    try:
        wait_until(lambda: set(instance.states().values()) == {"up"}, "every region polled and up", timeout=30)
        report = wait_until(lambda: (r := instance.json("/api/v1/cluster"))["leader"] == "eu-west-1"
                            and any(m["name"] == "eu-west-1" and m["live"] for m in r["members"]) and r,
                            "its verdicts in etcd and its leadership")
        assert report["etcd"]["reachable"] is True and report["etcd"]["error"] is None
        made = instance.send("POST", "/api/v1/routing/overrides",
                             {"region": "ap-southeast-1", "reason": "tls drill", "confirm_healthy": True})
        assert made.status_code == 201, made.text
        version = made.json()["version"]
        # Committed in etcd itself, over TLS: read back with a client of our own.
        stored = _client(secure_etcd, tls).get("/tls-e2e/routing/overrides/ap-southeast-1")
        assert stored is not None and json.loads(stored.value)["reason"] == "tls drill"
        verdicts = _client(secure_etcd, tls).get("/tls-e2e/verdicts/eu-west-1")
        assert verdicts is not None and set(json.loads(verdicts.value)["regions"]) == set(REGIONS)
        wait_until(lambda: instance.routing_file_version() == version, f"the routing file at version {version}")
        cleared = instance.send("DELETE", "/api/v1/routing/overrides/ap-southeast-1", {"reason": "drill over"})
        assert cleared.status_code == 200, cleared.text
    finally:
        instance.stop()


def test_an_instance_trusting_another_ca_shows_cluster_unreachable_naming_tls_and_refuses_changes(
        secure_etcd: EtcdCluster, tls: TlsFiles, tls_fleet: SimulatedFleet, tmp_path: Path) -> None:
    cluster = {"etcd_endpoints": secure_etcd.endpoints, "key_prefix": "/tls-wrong-ca/", "ca_file": str(tls.other_ca),
               "cert_file": str(tls.client_cert), "key_file": str(tls.client_key)}
    instance = Instance(tmp_path / "eu-west-1", tls_fleet, "eu-west-1", secure_etcd.endpoints, cluster=cluster).start()
    try:
        # It polls and serves its own view, as with any unreachable etcd.
        wait_until(lambda: set(instance.states().values()) == {"up"}, "its own view of the fleet", timeout=30)
        page = instance.get("/")
        assert page.status_code == 200
        banner = BeautifulSoup(page.text, "html.parser").select_one("#cluster-banner")
        assert banner is not None, page.text
        why = banner.select_one(".cluster-banner-why").get_text()
        assert "TLS: etcd's certificate is not trusted" in why and "dashboard.cluster.ca_file" in why
        assert "Traceback" not in page.text
        report = instance.json("/api/v1/cluster")
        assert report["etcd"]["reachable"] is False
        assert ("TLS: etcd's certificate is not trusted (unable to get local issuer certificate)"
                in report["etcd"]["error"])
        refused = instance.send("POST", "/api/v1/routing/overrides",
                                {"region": "ap-southeast-1", "reason": "x", "confirm_healthy": True})
        assert (refused.status_code, refused.json()["error"]) == (503, "cluster_unavailable")
    finally:
        instance.stop()
    assert "Traceback" not in instance.log.read_text()


def test_without_a_client_certificate_etcd_refuses_and_the_error_says_to_check_cert_file(
        secure_etcd: EtcdCluster, tls: TlsFiles, tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.yaml", {**deployment_block(REGIONS), "region": "eu-west-1"},
                        database="no-cert.db", cluster={"etcd_endpoints": secure_etcd.endpoints,
                                                        "key_prefix": "/tls-no-cert/", "ca_file": str(tls.ca)})
    settings = load_settings(str(path), environ={})
    store = Store(settings.database_path)
    try:
        control = EtcdControl(settings, EtcdClient.for_settings(settings, environ={}), store)
        expected = (r"TLS handshake with etcd failed \(.+\); etcd may require a client certificate "
                    r"\(dashboard.cluster.cert_file and key_file\)")
        with pytest.raises(ControlUnavailable, match=expected):
            control.cluster_routing()
        # Reads serve the local copy (none yet), as with any unreachable etcd.
        assert control.routing().version == 0
        assert control.etcd.unavailable_since is not None and control.etcd.unavailable_since <= time.time()
    finally:
        store.close()
