"""Config: defaults, the environment override, and every refusal naming its key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.config import ConfigError, load_settings, parse_yaml, settings_from_mapping

GOOD = """
deployment:
  region: 'us-east-1'
  primary_region: 'us-east-1'
  regions: ['us-east-1', 'eu-west-1']
  region_base_urls:
    us-east-1: 'https://us-east-1.api.example.com'
    eu-west-1: 'https://edge.example.com/eu/'
"""


def load_text(text: str, tmp_path: Path, environ: dict[str, str] | None = None):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_settings(str(path), environ=environ or {})


def problems_of(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, tmp_path, environ)
    return caught.value.problems


def test_defaults_are_filled_for_every_dashboard_key(tmp_path):
    settings = load_text(GOOD, tmp_path)
    dash = settings.dashboard
    assert (dash.poll_interval_seconds, dash.timeout_seconds) == (15, 5)
    assert (dash.failure_threshold, dash.success_threshold) == (3, 2)
    assert dash.degraded_error_rate == 0.05
    assert dash.slow_latency_ms == 2000
    assert settings.database_path == tmp_path / "data" / "dashboard.db"


def test_base_url_path_prefix_is_kept_without_trailing_slash(tmp_path):
    settings = load_text(GOOD, tmp_path)
    assert settings.base_url("eu-west-1") == "https://edge.example.com/eu"


def test_environment_overrides_regions(tmp_path):
    settings = load_text(GOOD, tmp_path, {"REVERSEAI_DEPLOYMENT_REGIONS": " us-east-1 ,"})
    assert settings.regions == ["us-east-1"]


def test_environment_override_naming_no_region_is_refused(tmp_path):
    problems = problems_of(GOOD, tmp_path, {"REVERSEAI_DEPLOYMENT_REGIONS": " , "})
    assert any(p.startswith("REVERSEAI_DEPLOYMENT_REGIONS:") for p in problems)


def test_environment_override_with_region_lacking_base_url_is_refused(tmp_path):
    problems = problems_of(GOOD, tmp_path, {"REVERSEAI_DEPLOYMENT_REGIONS": "us-east-1,ap-south-1"})
    assert problems == ["deployment.region_base_urls: region 'ap-south-1' has no base URL"]


def test_dashboard_config_env_names_the_file(tmp_path):
    path = tmp_path / "elsewhere.yaml"
    path.write_text(GOOD, encoding="utf-8")
    settings = load_settings(None, environ={"DASHBOARD_CONFIG": str(path)})
    assert settings.source == str(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deployment: [unclosed", "YAML does not parse: line 1"),
        ("", "the file is empty"),
        ("- a\n- b\n", "the top level must be a mapping"),
        (GOOD.replace("primary_region: 'us-east-1'", "primary_region: 'ap-south-1'"),
         "deployment.primary_region: 'ap-south-1' is not among deployment.regions"),
        (GOOD.replace("    eu-west-1: 'https://edge.example.com/eu/'\n", ""),
         "deployment.region_base_urls: region 'eu-west-1' has no base URL"),
        (GOOD.replace("https://us-east-1.api.example.com", "ftp://us-east-1.example.com"),
         "deployment.region_base_urls: base URL of us-east-1 must start with http:// or https://"),
        (GOOD.replace("https://us-east-1.api.example.com", "us-east-1.example.com"),
         "base URL of us-east-1 must start with http:// or https://"),
        (GOOD.replace("['us-east-1', 'eu-west-1']", "['us-east-1', 'eu-west-1', 'us-east-1']"),
         "deployment.regions: region 'us-east-1' is listed twice"),
        (GOOD + "dashboard:\n  poll_interval_seconds: 0\n",
         "dashboard.poll_interval_seconds: Input should be greater than or equal to 1 (got 0)"),
        (GOOD + "dashboard:\n  timeout_seconds: -1\n", "dashboard.timeout_seconds: Input should be greater than 0"),
        (GOOD + "dashboard:\n  poll_interval_seconds: 5\n  timeout_seconds: 5\n",
         "dashboard.timeout_seconds: must be shorter than dashboard.poll_interval_seconds"),
        (GOOD + "dashboard:\n  failure_threshold: 0\n", "dashboard.failure_threshold: Input should be greater than"),
        (GOOD + "dashboard:\n  success_threshold: 1000\n", "dashboard.success_threshold: Input should be less than"),
        (GOOD + "dashboard:\n  degraded_error_rate: 2\n", "dashboard.degraded_error_rate: Input should be less than"),
        (GOOD + "dashboard:\n  failure_threshold: three\n",
         "dashboard.failure_threshold: Input should be a valid integer"),
        (GOOD + "dashboard:\n  poll_intervall_seconds: 10\n", "dashboard.poll_intervall_seconds: unknown key"),
        (GOOD + "extra_block: {}\n", "extra_block: unknown key"),
        (GOOD.replace("  region: 'us-east-1'\n", "  region: 'us-east-1'\n  regoin: 'x'\n", 1),
         "deployment.regoin: unknown key"),
        (GOOD + "dashboard:\n  database: a\ndashboard:\n  database: b\n", "key 'dashboard' is given twice"),
        ("dashboard: {}\n", "deployment: required key is missing"),
    ],
)
def test_bad_config_is_refused_with_the_key_and_problem(tmp_path, text, expected):
    problems = problems_of(text, tmp_path)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_at_once(tmp_path):
    text = GOOD + "dashboard:\n  failure_threshold: 0\n  success_threshold: 0\n  typo: 1\n"
    problems = problems_of(text, tmp_path)
    assert len(problems) == 3


def test_missing_file_names_the_path_and_how_to_choose_one(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings(str(tmp_path / "nope.yaml"), environ={})
    assert "nope.yaml" in str(caught.value) and "--config" in str(caught.value)


def test_settings_from_mapping_refuses_a_source_key():
    data = parse_yaml(GOOD)
    with pytest.raises(ConfigError, match="source: unknown key"):
        settings_from_mapping({**data, "source": "x"}, environ={})


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dashboard.cli", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(GOOD.replace("https://us-east-1.api", "https://probe:s3cret@us-east-1.api"), encoding="utf-8")
    result = run_cli("check-config", "--config", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    import json

    data = json.loads(result.stdout)
    assert data["deployment"]["region_base_urls"]["us-east-1"] == "https://probe:***@us-east-1.api.example.com"
    assert data["dashboard"]["failure_threshold"] == 3


def test_config_flag_works_before_the_command_too(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(GOOD, encoding="utf-8")
    result = run_cli("--config", str(path), "check-config")
    assert result.returncode == 0, result.stderr
    assert "poll_interval_seconds: 15" in result.stdout


def test_check_config_reports_errors_and_exits_2(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(GOOD + "dashboard:\n  typo: 1\n", encoding="utf-8")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "dashboard.typo: unknown key" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("written", "mode"), [("", 0o644), ("'0640'", 0o640), ("0640", 0o640), ("'644'", 0o644),
                                               ("'0o600'", 0o600), ("420", 0o644)])
def test_routing_file_mode_is_an_octal_string_or_an_int(tmp_path, written, mode):
    text = GOOD + (f"dashboard:\n  routing_file_mode: {written}\n" if written else "")
    settings = load_text(text, tmp_path)
    assert settings.dashboard.routing_file_mode == mode
    from dashboard.config import effective_config

    assert effective_config(settings)["dashboard"]["routing_file_mode"] == f"0{mode:o}"


@pytest.mark.parametrize("written", ["'rw-r--r--'", "644", "'0888'", "'0444'", "'0666'", "true", "'01644'"])
def test_a_bad_routing_file_mode_is_refused_naming_the_key(tmp_path, written):
    problems = problems_of(GOOD + f"dashboard:\n  routing_file_mode: {written}\n", tmp_path)
    assert len(problems) == 1 and problems[0].startswith("dashboard.routing_file_mode: "), problems
