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
        (GOOD + "dashboard:\n  web:\n    threads: 0\n", "dashboard.web.threads: Input should be greater than"),
        (GOOD + "dashboard:\n  web:\n    queue_limit: lots\n", "dashboard.web.queue_limit: Input should be a valid"),
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
        (GOOD + "dashboard:\n  health:\n    degraded_status_codes: [42]\n",
         "dashboard.health.degraded_status_codes.0: Input should be greater than or equal to 100 (got 42)"),
        (GOOD + "dashboard:\n  health:\n    ok_status_codes: [200, 600]\n",
         "dashboard.health.ok_status_codes.1: Input should be less than or equal to 599 (got 600)"),
        (GOOD + "dashboard:\n  health:\n    ok_status_codes: [200, 302]\n",
         "dashboard.health.ok_status_codes: [302] are redirects, which are never followed or read"),
        (GOOD + "dashboard:\n  health:\n    ok_status_codes: []\n",
         "dashboard.health.ok_status_codes: List should have at least 1 item"),
        (GOOD + "dashboard:\n  health:\n    degraded_codes: [429]\n", "dashboard.health.degraded_codes: unknown key"),
        (GOOD + "dashboard:\n  health:\n    regions:\n      eu-west-1: {ok_codes: [200]}\n",
         "dashboard.health.regions.eu-west-1.ok_codes: unknown key"),
        (GOOD + "dashboard:\n  health:\n    regions:\n      ap-south-1: {degraded_status_codes: [503]}\n",
         "dashboard.health.regions: 'ap-south-1' is not among deployment.regions"),
        (GOOD + "dashboard:\n  health:\n    degraded_status_codes: [207]\n",
         "dashboard.health: [207] cannot be both ok (2xx, ok while ok_status_codes is null)"),
        (GOOD + "dashboard:\n  health:\n    regions:\n      eu-west-1: {ok_status_codes: [200, 429]}\n",
         "dashboard.health.regions.eu-west-1: [429] cannot be both ok (in ok_status_codes)"),
    ],
)
def test_bad_config_is_refused_with_the_key_and_problem(tmp_path, text, expected):
    problems = problems_of(text, tmp_path)
    assert any(expected in p for p in problems), problems


def test_health_status_codes_default_to_any_2xx_ok_and_429_degraded(tmp_path):
    rule = load_text(GOOD, tmp_path).dashboard.health.rule_for("eu-west-1")
    assert rule.ok_status_codes is None and rule.degraded_status_codes == {429}
    assert rule.is_ok(204) and not rule.is_ok(503) and rule.is_degraded(429)


def test_a_regions_health_keys_replace_the_blocks_and_the_rest_are_inherited(tmp_path):
    text = GOOD + """dashboard:
  health:
    degraded_status_codes: [429, 503]
    ok_status_codes: [200]
    regions:
      eu-west-1: {ok_status_codes: null}
      us-east-1: {degraded_status_codes: []}
"""
    health = load_text(text, tmp_path).dashboard.health
    eu, us = health.rule_for("eu-west-1"), health.rule_for("us-east-1")
    assert (eu.ok_status_codes, eu.degraded_status_codes) == (None, {429, 503})  # null: any 2xx again
    assert (us.ok_status_codes, us.degraded_status_codes) == ({200}, frozenset())


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
    assert data["dashboard"]["health"] == {"degraded_status_codes": [429], "ok_status_codes": None, "regions": {}}


def test_check_config_shows_each_regions_effective_health_rule(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(GOOD + "dashboard:\n  health:\n    regions:\n      eu-west-1: {ok_status_codes: [200, 204]}\n",
                    encoding="utf-8")
    result = run_cli("check-config", "--config", str(path), "--json")
    assert result.returncode == 0, result.stderr
    import json

    regions = json.loads(result.stdout)["dashboard"]["health"]["regions"]
    assert regions == {"eu-west-1": {"degraded_status_codes": [429], "ok_status_codes": [200, 204]}}


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


NOTIFY = GOOD + "dashboard:\n  notifications:\n"
TEAMS_URL = "workflows://prod-00.westus.logic.azure.com:443/T34mT0k3n/W3bh00kK3y"


def test_notification_targets_take_apprise_urls_and_are_masked_in_check_config(tmp_path: Path) -> None:
    text = NOTIFY + (
        "    webhooks: [{name: ops, url: 'https://hooks.slack.com/services/T1/B2/s3cr3t', format: slack}]\n"
        f"    targets: [{{name: teams, url: '{TEAMS_URL}', retries: 1}}, {{name: pager, url: 'pagerduty://k3y@t0k3n'}}]\n")
    settings = load_text(text, tmp_path)
    (teams, pager) = settings.dashboard.notifications.targets
    assert (teams.name, teams.retries, teams.timeout_seconds) == ("teams", 1, 5.0)
    assert pager.url == "pagerduty://k3y@t0k3n"
    result = run_cli("check-config", "--config", str(tmp_path / "config.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    import json

    shown = json.loads(result.stdout)["dashboard"]["notifications"]
    assert [t["url"] for t in shown["targets"]] == ["workflows://***", "pagerduty://***"]
    assert shown["webhooks"][0]["url"] == "https://hooks.slack.com/***"
    for secret in ("s3cr3t", "T34mT0k3n", "W3bh00kK3y", "k3y", "t0k3n"):
        assert secret not in result.stdout


@pytest.mark.parametrize("url", ["nosuchservice://T0k3nS3cr3t/x", "T0k3nS3cr3t", "msteams://T0k3nS3cr3t"])
def test_a_target_url_apprise_cannot_send_to_is_refused_without_echoing_it(tmp_path: Path, url: str) -> None:
    problems = problems_of(NOTIFY + f"    targets: [{{name: chat, url: '{url}'}}]\n", tmp_path)
    assert len(problems) == 1 and problems[0].startswith(
        "dashboard.notifications.targets.0.url: is not a URL Apprise can send to")
    assert "T0k3nS3cr3t" not in problems[0]


@pytest.mark.parametrize(("webhook", "expected"), [
    ("{name: ops, url: 'https://example.com/h00k-s3cr3t', format: teams}", "notifications.webhooks.0.format"),
    (f"{{name: ops, url: '{TEAMS_URL}'}}", "notifications.webhooks.0.url"),
])
def test_a_webhook_that_belongs_under_targets_is_refused_with_the_new_form(
        tmp_path: Path, webhook: str, expected: str) -> None:
    (problem,) = problems_of(NOTIFY + f"    webhooks: [{webhook}]\n", tmp_path)
    assert problem.startswith("dashboard." + expected)
    assert "dashboard.notifications.targets as {name: ..., url: 'workflows://...'}" in problem
    assert "s3cr3t" not in problem and "T34mT0k3n" not in problem


def test_a_receiver_name_used_twice_is_refused(tmp_path: Path) -> None:
    text = NOTIFY + ("    webhooks: [{name: ops, url: 'https://example.com/a'}]\n"
                     "    targets: [{name: ops, url: 'json://example.com/b'}]\n")
    assert problems_of(text, tmp_path) == [
        "dashboard.notifications: the receiver name 'ops' is used twice (webhooks and targets share one set of names)"]


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
