"""The `dashboard.cluster` block and `dashboard.probe_source_address`: defaults, and every refusal
naming its key (the password only ever comes from the variable the file names, and is never shown)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.cli import main
from dashboard.config import effective_config

from .test_config import GOOD, load_text, problems_of

# Shaped like a certificate: the config checks the files exist, can be read and are PEM; the TLS
# tests (test_cluster_tls.py) hand real ones to a real etcd.
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def cluster_text(block: str, **dashboard: str) -> str:
    extra = "".join(f"  {key}: {value}\n" for key, value in dashboard.items())
    return GOOD + "dashboard:\n  cluster:\n" + "".join(f"    {line}\n" for line in block.strip().splitlines()) + extra


def test_without_a_cluster_block_the_dashboard_is_standalone(tmp_path: Path) -> None:
    settings = load_text(GOOD, tmp_path)
    assert settings.cluster is None
    assert settings.dashboard.probe_source_address is None
    assert settings.cluster_name == "us-east-1"


def test_a_block_with_no_endpoints_is_standalone(tmp_path: Path) -> None:
    settings = load_text(cluster_text("etcd_endpoints: []"), tmp_path)
    assert settings.cluster is None


def test_cluster_defaults_name_the_instance_after_its_region_and_ttl_after_the_interval(tmp_path: Path) -> None:
    settings = load_text(cluster_text("etcd_endpoints: ['http://127.0.0.1:2379/']"), tmp_path)
    cluster = settings.cluster
    assert cluster is not None
    assert cluster.etcd_endpoints == ["http://127.0.0.1:2379"]
    assert (cluster.key_prefix, cluster.down_quorum) == ("/region-dashboard/", "majority")
    assert settings.cluster_name == "us-east-1"
    assert settings.verdict_ttl_seconds == 45  # three poll intervals of 15 s


def test_cluster_keys_given_are_kept(tmp_path: Path) -> None:
    (tmp_path / "etcd-ca.pem").write_text(PEM, encoding="utf-8")
    settings = load_text(cluster_text("""
etcd_endpoints: ['https://etcd-1.internal:2379', 'https://etcd-2.internal:2379']
name: 'eu-west-1'
key_prefix: '/dash/prod/'
down_quorum: 2
verdict_ttl_seconds: 20
username: 'dashboard'
password_env: 'ETCD_PASSWORD'
ca_file: 'etcd-ca.pem'
"""), tmp_path, {"ETCD_PASSWORD": "s3cret-value"})
    cluster = settings.cluster
    assert cluster is not None
    assert (settings.cluster_name, cluster.key_prefix, cluster.down_quorum) == ("eu-west-1", "/dash/prod/", 2)
    assert settings.verdict_ttl_seconds == 20
    shown = str(effective_config(settings))
    assert "ETCD_PASSWORD" in shown and "s3cret-value" not in shown


@pytest.mark.parametrize(("block", "key", "words"), [
    ("etcd_endpoints: ['127.0.0.1:2379']", "dashboard.cluster.etcd_endpoints", "etcd client URL"),
    ("etcd_endpoints: ['http://127.0.0.1:2379/v3']", "dashboard.cluster.etcd_endpoints", "scheme, host and port"),
    ("etcd_endpoints: ['http://a:1', 'http://a:1']", "dashboard.cluster.etcd_endpoints", "listed twice"),
    ("etcd_endpoints: ['http://a:1']\nkey_prefix: 'dash'", "dashboard.cluster.key_prefix", "start and end with"),
    ("etcd_endpoints: ['http://a:1']\ndown_quorum: 0", "dashboard.cluster.down_quorum", ""),
    ("etcd_endpoints: ['http://a:1']\ndown_quorum: 'most'", "dashboard.cluster.down_quorum", ""),
    ("etcd_endpoints: ['http://a:1']\nname: 'bad name'", "dashboard.cluster.name", "not a region name"),
    ("etcd_endpoints: ['http://a:1']\nverdict_ttl_seconds: 10", "dashboard.cluster.verdict_ttl_seconds",
     "longer than dashboard.poll_interval_seconds"),
    ("etcd_endpoints: ['http://a:1']\nusername: 'dash'", "dashboard.cluster", "go together"),
    ("etcd_endpoints: ['http://a:1']\npassword_env: 'not a name'", "dashboard.cluster.password_env",
     "name of an environment variable"),
    ("etcd_endpoints: ['http://a:1']\ncert_file: 'c.pem'", "dashboard.cluster", "cert_file and key_file"),
    ("etcd_endpoints: ['http://a:1']\npassword: 'x'", "dashboard.cluster.password", "unknown key"),
    ("etcd_endpoints: []\nca_file: 'ca.pem'", "dashboard.cluster.etcd_endpoints", "standalone mode"),
], ids=lambda value: value if isinstance(value, str) and len(value) < 30 else None)
def test_a_bad_cluster_key_is_refused_naming_it(tmp_path: Path, block: str, key: str, words: str) -> None:
    text = cluster_text(block, poll_interval_seconds="15")
    problems = problems_of(text, tmp_path)
    assert any(p.startswith(f"{key}:") and words in p for p in problems), problems


@pytest.mark.parametrize("name", ["ca_file", "cert_file", "key_file"])
def test_a_tls_file_that_is_missing_unreadable_or_not_pem_is_named(tmp_path: Path, name: str) -> None:
    for kind in ("cert_file", "key_file"):
        (tmp_path / f"good-{kind}.pem").write_text(PEM, encoding="utf-8")
    (tmp_path / "folder.pem").mkdir()
    (tmp_path / "binary.der").write_bytes(b"0\x82\x01\x0a")
    others = "".join(f"\n{kind}: 'good-{kind}.pem'" for kind in ("cert_file", "key_file") if kind != name)
    for value, words in [("missing.pem", "does not exist"), ("folder.pem", "cannot be read"),
                         ("binary.der", "is not PEM")]:
        text = cluster_text(f"etcd_endpoints: ['https://etcd.internal:2379']\n{name}: '{value}'{others}")
        problems = problems_of(text, tmp_path)
        assert problems == [f"dashboard.cluster.{name}: file {str(tmp_path / value)!r} {words}"
                            + (" (Is a directory)" if value == "folder.pem" else "")
                            + (" (no '-----BEGIN' line)" if value == "binary.der" else "")], problems


def test_tls_files_without_an_https_endpoint_are_refused(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(PEM, encoding="utf-8")
    problems = problems_of(cluster_text("etcd_endpoints: ['http://etcd.internal:2379']\nca_file: 'ca.pem'"), tmp_path)
    assert problems == ["dashboard.cluster.etcd_endpoints: ca_file/cert_file/key_file are given but no endpoint is "
                        "https://, so TLS would not be used"]


def test_a_password_variable_that_is_not_set_is_named_and_never_shown(tmp_path: Path) -> None:
    text = cluster_text("etcd_endpoints: ['http://a:1']\nusername: 'dash'\npassword_env: 'ETCD_PW'")
    problems = problems_of(text, tmp_path, {"OTHER": "x"})
    assert any("ETCD_PW is not set" in p for p in problems), problems


@pytest.mark.parametrize("address", ["127.0.0.2", "::1"])
def test_probe_source_address_takes_an_ip_address(tmp_path: Path, address: str) -> None:
    settings = load_text(GOOD + f"dashboard:\n  probe_source_address: '{address}'\n", tmp_path)
    assert settings.dashboard.probe_source_address == address


def test_probe_source_address_that_is_no_address_is_refused(tmp_path: Path) -> None:
    problems = problems_of(GOOD + "dashboard:\n  probe_source_address: 'eth0'\n", tmp_path)
    assert any(p.startswith("dashboard.probe_source_address:") and "IP address" in p for p in problems), problems


def test_check_config_shows_the_cluster_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(cluster_text("etcd_endpoints: ['http://127.0.0.1:2379']"), encoding="utf-8")
    assert main(["check-config", "--config", str(path), "--json"]) == 0
    assert '"etcd_endpoints": [\n        "http://127.0.0.1:2379"' in capsys.readouterr().out
