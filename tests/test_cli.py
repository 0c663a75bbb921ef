"""The command line as an operator runs it: real processes, a simulated fleet, a real database."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from dashboard.poller import Poller
from dashboard.store import Store


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("DASHBOARD_CONFIG", None)
    full_env.pop("REVERSEAI_DEPLOYMENT_REGIONS", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "dashboard.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def table_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["REGION", "STATE", "LATENCY", "ERR", "RATE"]
    return {line.split()[0]: line.split() for line in lines[1:]}


def test_poll_once_prints_a_table_and_exits_0_when_every_region_is_up(fleet, make_settings):
    settings = make_settings(fleet)
    result = run_cli("poll", "--once", "--config", settings.source)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert set(rows) == {"us-east-1", "eu-west-1", "ap-southeast-1"}
    assert all(row[1] == "up" for row in rows.values())


def test_poll_once_exits_1_when_a_region_is_not_up_and_json_carries_the_reason(fleet, make_settings):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", mode="html")
    result = run_cli("poll", "--once", "--json", "--config", settings.source)
    assert result.returncode == 1, result.stderr
    regions = {r["region"]: r for r in json.loads(result.stdout)["regions"]}
    assert regions["eu-west-1"]["state"] == "unknown"
    assert "HTML page" in regions["eu-west-1"]["reason"]
    assert regions["us-east-1"]["state"] == "up"
    assert set(regions["us-east-1"]) >= {"latency_ms", "error_rate", "version", "markers", "last_poll_at"}


def test_status_prints_stored_state_without_polling(fleet, make_settings):
    # A long interval: each CLI process takes a second or more to start on a loaded machine, and
    # three 1 s intervals without a poll would rightly show the regions as stale.
    settings = make_settings(fleet, poll_interval_seconds=60)
    fleet.set("eu-west-1", mode="http_500")
    for _ in range(3):
        run_cli("poll", "--once", "--config", settings.source)
    before = fleet.request_count("us-east-1")
    result = run_cli("status", "--config", settings.source)
    assert fleet.request_count("us-east-1") == before
    assert result.returncode == 1
    assert table_rows(result.stdout)["eu-west-1"][1] == "DOWN"
    as_json = json.loads(run_cli("status", "--json", "--config", settings.source).stdout)
    assert {r["region"]: r["state"] for r in as_json["regions"]}["eu-west-1"] == "down"


def test_environment_override_limits_the_regions_polled(fleet, make_settings):
    settings = make_settings(fleet)
    result = run_cli("poll", "--once", "--json", "--config", settings.source,
                     env={"REVERSEAI_DEPLOYMENT_REGIONS": "us-east-1,eu-west-1"})
    assert result.returncode == 0, result.stderr
    assert [r["region"] for r in json.loads(result.stdout)["regions"]] == ["us-east-1", "eu-west-1"]
    assert fleet.request_count("ap-southeast-1") == 0


def test_dashboard_config_variable_names_the_file(fleet, make_settings):
    settings = make_settings(fleet)
    result = run_cli("status", "--json", env={"DASHBOARD_CONFIG": settings.source})
    assert result.returncode == 1  # never polled: unknown is not up
    assert {r["state"] for r in json.loads(result.stdout)["regions"]} == {"unknown"}


def test_poll_once_exits_3_while_another_poller_holds_the_database(fleet, make_settings):
    settings = make_settings(fleet)
    store = Store(settings.database_path)
    holder = Poller(settings, store)
    try:
        holder.run_cycle()  # this test process now holds the lease
        before = fleet.request_count("us-east-1")
        result = run_cli("poll", "--once", "--config", settings.source)
        assert result.returncode == 3
        assert "another poller" in result.stderr
        assert fleet.request_count("us-east-1") == before
    finally:
        holder.close()
        store.close()


@pytest.mark.parametrize("args", [["poll", "--once", "--bogus"], ["frobnicate"], []])
def test_usage_errors_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_config_error_exits_2_before_anything_runs(tmp_path, fleet):
    path = tmp_path / "config.yaml"
    path.write_text("deployment:\n  region: x\n", encoding="utf-8")
    result = run_cli("poll", "--once", "--config", str(path))
    assert result.returncode == 2
    assert "deployment.primary_region: required key is missing" in result.stderr
    assert not (tmp_path / "data").exists()
    assert fleet.request_count("us-east-1") == 0


def test_remote_text_cannot_forge_table_lines(fleet, make_settings):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", answers_as="evil\nus-east-1  up  1 ms")
    result = run_cli("poll", "--once", "--config", settings.source)
    assert len(result.stdout.strip().splitlines()) == 4


def test_demo_runs_the_incident_against_the_simulated_fleet(tmp_path):
    result = run_cli("demo", "--data-dir", str(tmp_path / "demo"), "--interval", "1", "--step-seconds", "0.3",
                     "--duration", "6", "--port", "0", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "simulator: eu-west-1" in result.stdout
    assert "unknown -> up" in result.stdout
    assert (tmp_path / "demo" / "dashboard.db").exists()


def test_serve_runs_the_web_app_and_the_poller_until_interrupted(fleet, make_settings):
    import signal

    import httpx

    settings = make_settings(fleet)
    env = {**os.environ}
    env.pop("DASHBOARD_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "dashboard.cli", "serve", "--port", "0", "--config",
                             settings.source], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("serving ")[1].split()[0]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the scheduler polls right away; wait for its first cycle
            status = httpx.get(url + "api/v1/status", timeout=5).json()
            if status["summary"]["up"] == 3:
                break
            time.sleep(0.2)
        assert status["summary"]["up"] == 3
        assert fleet.request_count("eu-west-1") >= 2
        assert httpx.get(url, timeout=5).headers["Server"] == "region-dashboard"  # waitress, not werkzeug
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        proc.stdout.close()
        proc.stderr.close()


def test_serve_refuses_a_port_in_use_with_a_clear_error(fleet, make_settings):
    settings = make_settings(fleet)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", "--port", str(taken.getsockname()[1]), "--config", settings.source)
    assert result.returncode == 2
    assert "cannot listen on 127.0.0.1:" in result.stderr


@pytest.mark.parametrize("port", ["http", "70000", "-1"])
def test_serve_refuses_a_bad_port_argument(port):
    result = run_cli("serve", "--port", port)
    assert result.returncode == 2
    assert "--port" in result.stderr
