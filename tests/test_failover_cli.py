"""Failover from the command line as an operator runs it: real processes, a real config file and
database, a simulated fleet polled for real."""
from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from werkzeug.security import check_password_hash

from dashboard import cli
from dashboard.config import Settings, load_settings
from dashboard.poller import Poller
from dashboard.routing import Change, Router
from dashboard.store import Store

from .routing_helpers import PASSWORD, SLOW_POLLING, read_routing_file, routing_events, serving


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DASHBOARD_CONFIG", "REVERSEAI_DEPLOYMENT_REGIONS")}


def run_cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dashboard.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=_env())


def run_cli_at_once(*commands: list[str], timeout: float = 60) -> list[subprocess.CompletedProcess]:
    """Several independent commands run side by side: each costs most of a second just importing."""
    children = [(command, subprocess.Popen([sys.executable, "-m", "dashboard.cli", *command], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, env=_env()))
                for command in commands]
    results = []
    for command, child in children:
        stdout, stderr = child.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(command, child.returncode, stdout, stderr))
    return results


@dataclass
class Fleetside:
    """A config file for the simulated fleet, its database (every region polled once) and a poller."""

    settings: Settings
    store: Store
    poller: Poller

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, "--config", str(self.settings.source))

    def rows(self, stdout: str) -> dict[str, list[str]]:
        """The routing table as printed: region -> [region, served by, sessions, override...]."""
        lines = stdout.strip().splitlines()
        assert lines[0].startswith("routing table version "), stdout
        assert lines[1].split()[:3] == ["REGION", "SERVED", "BY"], stdout
        return {line.split()[0]: line.split() for line in lines[2:]}

    def unchanged(self) -> tuple:
        path = self.settings.routing_file_path
        return (self.store.overrides(), self.store.routing_version(), routing_events(self.store),
                path.read_bytes() if path.exists() else None)


@pytest.fixture
def side(fleet, make_settings) -> Iterator[Fleetside]:
    settings = make_settings(fleet, routing_file="routing.json", residency_pinned=["ap-southeast-1"], **SLOW_POLLING)
    store = Store(settings.database_path)
    poller = Poller(settings, store)
    poller.run_cycle()
    yield Fleetside(settings, store, poller)
    poller.close()
    store.close()


def test_failover_changes_routing_prints_the_table_and_records_the_os_user(side: Fleetside):
    result = side.cli("failover", "eu-west-1", "--reason", "disk full in eu-west-1", "--confirm-healthy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("routing table version 1")
    rows = side.rows(result.stdout)
    assert rows["eu-west-1"][1:3] == ["us-east-1", "read-only"]
    assert rows["us-east-1"][1:4] == ["us-east-1", "writable", "-"]
    assert f"by cli:{getpass.getuser()}" in " ".join(rows["eu-west-1"])
    [event] = routing_events(side.store)
    assert (event["kind"], event["region"], event["actor"], event["reason"]) == (
        "failover", "eu-west-1", f"cli:{getpass.getuser()}", "disk full in eu-west-1")
    assert serving(read_routing_file(side.settings))["eu-west-1"] == "us-east-1"


def test_failover_json_with_a_target_writable_sessions_and_an_actor(side: Fleetside):
    result = side.cli("failover", "eu-west-1", "--to", "ap-southeast-1", "--no-read-only", "--reason", "planned",
                      "--confirm-healthy", "--actor", "alice@oncall", "--json")
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    entry = table["regions"]["eu-west-1"]
    assert entry["serving_region"] == "ap-southeast-1" and entry["read_only"] is False
    assert entry["override"]["actor"] == "alice@oncall"
    assert table == read_routing_file(side.settings)
    assert routing_events(side.store)[0]["actor"] == "alice@oncall"


REFUSALS = [  # (arguments, exit status, what stderr says)
    (["failover", "eu-west-1", "--reason", "x"], 1, "refused (region_healthy)"),
    (["failover", "us-east-1", "--reason", "x", "--confirm-healthy"], 1, "refused (same_region)"),
    (["failover", "ap-southeast-1", "--no-read-only", "--force", "--reason", "x", "--confirm-healthy"], 1,
     "refused (residency_pinned)"),
    (["failback", "eu-west-1", "--reason", "x"], 1, "refused (no_override)"),
    (["failover", "mars-1", "--reason", "x"], 2, "refused (unknown_region)"),
    (["failover", "eu-west-1", "--reason", "   ", "--confirm-healthy"], 2, "refused (reason_required)"),
    (["failover", "eu-west-1", "--reason", "x", "--confirm-healthy", "--expires", "soon"], 2, "not a duration"),
]


def test_a_refused_change_exits_1_for_a_rule_and_2_for_a_bad_request_naming_it_and_changes_nothing(
        side: Fleetside):
    before = side.unchanged()
    results = run_cli_at_once(*[[*args, "--config", str(side.settings.source)] for args, _, _ in REFUSALS])
    for (args, status, says), result in zip(REFUSALS, results, strict=True):
        assert result.returncode == status, (args, result.returncode, result.stderr)
        assert says in result.stderr, (args, result.stderr)
        assert result.stdout == "", args
    assert side.unchanged() == before


def test_a_target_that_is_down_needs_force_and_force_is_shown(side: Fleetside, fleet):
    fleet.set("us-east-1", mode="http_500")
    for _ in range(side.settings.dashboard.failure_threshold):
        side.poller.run_cycle()
    refused = side.cli("failover", "eu-west-1", "--reason", "x", "--confirm-healthy")
    assert refused.returncode == 1 and "refused (target_unhealthy)" in refused.stderr
    assert "force" in refused.stderr
    forced = side.cli("failover", "eu-west-1", "--reason", "break glass", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "FORCED" in " ".join(side.rows(forced.stdout)["eu-west-1"])
    details = routing_events(side.store)[0]["details"]
    assert details["forced"] is True and details["skipped_rules"] == ["target_unhealthy", "region_healthy"]


def test_failover_with_expires_30m_lapses_after_half_an_hour(side: Fleetside):
    result = side.cli("failover", "eu-west-1", "--reason", "x", "--confirm-healthy", "--expires", "30m", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["regions"]["eu-west-1"]["override"]["until"]
    [override] = side.store.overrides()
    assert override["until"] - override["since"] == pytest.approx(30 * 60)


@pytest.mark.parametrize(("text", "minutes"), [("30m", 30), ("30", 30), ("2h", 120), ("1d", 1440), (" 1.5H ", 90),
                                               ("7d", 7 * 1440)])
def test_expires_reads_minutes_hours_and_days(text, minutes):
    args = cli.build_parser().parse_args(["failover", "eu-west-1", "--reason", "x", "--expires", text])
    assert args.expires == minutes


@pytest.mark.parametrize("text", ["soon", "0m", "30s", "8d", "-5m", "", "m", "nanh"])
def test_a_bad_expiry_is_a_usage_error(text, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["failover", "eu-west-1", "--reason", "x", "--expires", text])
    assert exited.value.code == 2
    assert "--expires" in capsys.readouterr().err


def test_failover_without_a_reason_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["failover", "eu-west-1"])
    assert exited.value.code == 2
    assert "--reason" in capsys.readouterr().err


def test_failback_clears_the_override_and_records_who_and_why(side: Fleetside):
    Router(side.settings, side.store).set_override(
        Change("eu-west-1", reason="disk full", confirm_healthy=True), actor="bob")
    result = side.cli("failback", "eu-west-1", "--reason", "disk replaced", "--json")
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    assert table["regions"]["eu-west-1"]["override"] is None and table["version"] == 2
    assert side.store.overrides() == []
    event = routing_events(side.store)[0]
    assert (event["kind"], event["actor"], event["reason"]) == ("failback", f"cli:{getpass.getuser()}",
                                                                 "disk replaced")
    assert read_routing_file(side.settings) == table


def test_routing_prints_the_table_publishes_it_and_lapses_expired_overrides(side: Fleetside):
    router = Router(side.settings, side.store)
    router.set_override(Change("eu-west-1", reason="planned", confirm_healthy=True, expires_in_minutes=30),
                        actor="bob")
    router.set_override(Change("ap-southeast-1", reason="network", confirm_healthy=True), actor="carol")
    printed = side.cli("routing")
    assert printed.returncode == 0, printed.stderr
    rows = side.rows(printed.stdout)
    assert {region: row[1] for region, row in rows.items()} == {
        "us-east-1": "us-east-1", "eu-west-1": "us-east-1", "ap-southeast-1": "us-east-1"}
    assert "by bob" in " ".join(rows["eu-west-1"]) and "until" in " ".join(rows["eu-west-1"])

    side.settings.routing_file_path.unlink()
    with side.store.transaction() as conn:  # as if the half hour had passed
        conn.execute("update overrides set until = since - 1 where region = 'eu-west-1'")
    as_json = side.cli("routing", "--json")
    assert as_json.returncode == 0, as_json.stderr
    table = json.loads(as_json.stdout)
    assert table["version"] == 3 and table["regions"]["eu-west-1"]["override"] is None
    assert routing_events(side.store)[0]["kind"] == "lapse"
    assert read_routing_file(side.settings) == table


def test_hash_password_reads_stdin_and_prints_a_hash_the_config_accepts(tmp_path):
    result = run_cli("hash-password", stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    hashed = result.stdout.strip()
    assert check_password_hash(hashed, PASSWORD)
    assert PASSWORD not in result.stdout + result.stderr
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "deployment": {"region": "a", "primary_region": "a", "regions": ["a"],
                       "region_base_urls": {"a": "https://a.example.com"}},
        "dashboard": {"auth": {"operators": {"alice": hashed}}}}), encoding="utf-8")
    assert load_settings(str(config), environ={}).dashboard.auth.operators == {"alice": hashed}


def test_hash_password_refuses_a_short_password():
    result = run_cli("hash-password", stdin="short\n")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "at least 8" in result.stderr


def test_new_token_prints_the_token_once_on_stderr_and_its_hash_on_stdout():
    result = run_cli("hash-password", "--new-token")
    assert result.returncode == 0, result.stderr
    token = result.stderr.strip().rsplit(" ", 1)[-1]
    assert len(token) >= 32
    hashed = result.stdout.strip()
    assert "\n" not in hashed and token not in result.stdout
    assert check_password_hash(hashed, token)
