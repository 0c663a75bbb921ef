"""Rollout validation against a real simulated fleet on loopback: good, misrouted, drifted, down regions."""
from __future__ import annotations

import argparse
import json
import socket
import time

import pytest

from dashboard import cli
from dashboard.config import load_settings
from dashboard.validate import (
    CHECK_TITLES,
    InvalidRegionName,
    all_passed,
    checks_as_json,
    cmd_validate,
    format_checks,
    validate_region,
)
from tests.conftest import TEST_TIMEOUT_SECONDS, write_config
from tests.test_cli import run_cli

CHECK_NAMES = list(CHECK_TITLES)


def by_name(checks):
    assert [c.name for c in checks] == CHECK_NAMES
    return {c.name: c for c in checks}


def statuses(checks) -> dict[str, str]:
    return {c.name: c.status for c in checks}


def run_validate(settings, region: str, capsys, *, as_json: bool = False) -> tuple[int, str, str]:
    code = cmd_validate(settings, argparse.Namespace(region=region, json=as_json))
    out = capsys.readouterr()
    return code, out.out, out.err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_good_region_passes_every_check_and_exits_0(fleet, make_settings, capsys):
    settings = make_settings(fleet)
    code, out, _ = run_validate(settings, "eu-west-1", capsys)
    assert code == 0, out
    lines = out.strip().splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["PASS", name] for name in CHECK_NAMES]
    assert lines[-1] == "eu-west-1: PASSED all 6 checks"
    assert fleet.base_urls["eu-west-1"] in lines[0]
    assert "answers as 'eu-west-1'" in out
    assert "version 1.0.0 matches the fleet's (1.0.0 on 2, probed now)" in out


def test_a_misrouted_region_fails_answers_as_region_and_skips_what_its_answer_cannot_tell(fleet, make_settings,
                                                                                          capsys):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", answers_as="us-east-1")
    code, out, _ = run_validate(settings, "eu-west-1", capsys)
    assert code == 1
    checks = by_name(validate_region(settings, "eu-west-1"))
    assert statuses(checks.values()) == {
        "base_url_configured": "pass", "reachable": "pass", "answers_as_region": "fail",
        "fleet_view_matches": "skip", "health_passes": "pass", "version_matches_fleet": "skip",
    }
    assert "answers as 'us-east-1', not 'eu-west-1'" in checks["answers_as_region"].detail
    assert "FAIL  answers_as_region" in out
    assert out.strip().splitlines()[-1] == "eu-west-1: FAILED 1 of 6 checks (answers_as_region); 2 skipped"


def test_a_drifted_region_fails_fleet_view_naming_its_regions_and_primary(fleet, make_settings):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", fleet_regions=["us-east-1", "eu-west-1"], primary_region="eu-west-1")
    checks = by_name(validate_region(settings, "eu-west-1"))
    view = checks["fleet_view_matches"]
    assert view.status == "fail"
    assert "regions us-east-1, eu-west-1 differ from ours us-east-1, eu-west-1, ap-southeast-1" in view.detail
    assert "primary 'eu-west-1' differs from ours 'us-east-1'" in view.detail
    assert [c.name for c in checks.values() if c.status != "pass"] == ["fleet_view_matches"]


def test_a_region_answering_500_is_reachable_but_fails_identity_and_health(fleet, make_settings, capsys):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", mode="http_500")
    checks = by_name(validate_region(settings, "eu-west-1"))
    assert statuses(checks.values()) == {
        "base_url_configured": "pass", "reachable": "pass", "answers_as_region": "fail",
        "fleet_view_matches": "skip", "health_passes": "fail", "version_matches_fleet": "skip",
    }
    assert "HTTP 500" in checks["reachable"].detail
    assert checks["answers_as_region"].detail == "deployment: HTTP 500"
    assert checks["health_passes"].detail == "health: HTTP 500"
    assert all(not c.ok for c in checks.values() if c.skipped)
    assert run_validate(settings, "eu-west-1", capsys)[0] == 1


def test_a_hanging_region_fails_reachable_within_the_timeout_and_skips_the_rest(fleet, make_settings, capsys):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", mode="hang")
    start = time.perf_counter()
    code, out, _ = run_validate(settings, "eu-west-1", capsys)
    assert time.perf_counter() - start < TEST_TIMEOUT_SECONDS + 2
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[0].startswith("PASS  base_url_configured")
    assert lines[1].startswith("FAIL  reachable")
    assert f"no complete answer within {TEST_TIMEOUT_SECONDS:g} s" in lines[1]
    assert all(line.startswith("SKIP") for line in lines[2:6])
    assert lines[-1] == "eu-west-1: FAILED 1 of 6 checks (reachable); 4 skipped"


def test_a_refused_connection_is_named_as_the_reason(fleet, make_settings, tmp_path):
    block = fleet.deployment_block()
    block["region_base_urls"]["eu-west-1"] = f"http://127.0.0.1:{free_port()}"
    settings = load_settings(str(write_config(tmp_path / "refused.yaml", block, timeout_seconds=TEST_TIMEOUT_SECONDS,
                                              poll_interval_seconds=1)), environ={})
    reachable = by_name(validate_region(settings, "eu-west-1"))["reachable"]
    assert reachable.status == "fail"
    assert "health did not answer: connection refused" in reachable.detail


def test_a_degraded_region_fails_health_because_a_warning_is_not_a_pass(fleet, make_settings):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", mode="degraded")
    check = by_name(validate_region(settings, "eu-west-1"))["health_passes"]
    assert check.status == "fail"
    assert "health says 'degraded'" in check.detail and "warning is not a pass" in check.detail


def test_a_region_reporting_an_error_rate_over_threshold_fails_health(fleet, make_settings):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", error_rate=0.2)
    check = by_name(validate_region(settings, "eu-west-1"))["health_passes"]
    assert check.status == "fail"
    assert "error rate 20.0% over 5.0%" in check.detail


def test_a_region_on_another_version_than_the_fleet_fails_version_check(fleet, make_settings, capsys):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", version="1.1.0")
    code, out, _ = run_validate(settings, "eu-west-1", capsys)
    assert code == 1
    assert "FAIL  version_matches_fleet  version 1.1.0 differs from 1.0.0, the fleet's (1.0.0 on 2, probed now)" in out


def test_a_region_on_one_of_two_equally_common_versions_passes_mid_rollout(fleet, make_settings):
    settings = make_settings(fleet)
    fleet.set("us-east-1", version="1.1.0")
    fleet.set("eu-west-1", version="1.1.0")
    check = by_name(validate_region(settings, "eu-west-1"))["version_matches_fleet"]
    assert check.status == "pass"
    assert "mid-rollout" in check.detail


def test_with_a_store_the_fleet_version_is_what_the_poller_stored_not_probed(fleet, poller_for):
    poller = poller_for(fleet)
    poller.run_cycle()  # stores 1.0.0 for every region
    fleet.set("us-east-1", version="2.0.0")
    fleet.set("ap-southeast-1", version="2.0.0")
    before = fleet.request_count("us-east-1")
    with_store = by_name(validate_region(poller.settings, "eu-west-1", store=poller.store))
    assert fleet.request_count("us-east-1") == before  # the other regions are not probed
    assert with_store["version_matches_fleet"].status == "pass"
    assert "as the poller last stored them" in with_store["version_matches_fleet"].detail
    probed = by_name(validate_region(poller.settings, "eu-west-1"))
    assert probed["version_matches_fleet"].status == "fail"
    assert "differs from 2.0.0" in probed["version_matches_fleet"].detail


def test_with_an_empty_store_no_fleet_version_is_known_and_the_version_check_passes(fleet, poller_for):
    poller = poller_for(fleet)
    check = by_name(validate_region(poller.settings, "eu-west-1", store=poller.store))["version_matches_fleet"]
    assert check.status == "pass"
    assert check.detail == "reports version 1.0.0; no fleet version known to compare"


def test_a_region_with_no_base_url_fails_the_first_check_skips_the_rest_and_exits_1(fleet, make_settings, capsys):
    settings = make_settings(fleet)
    code, out, _ = run_validate(settings, "sa-east-1", capsys)
    assert code == 1
    checks = by_name(validate_region(settings, "sa-east-1"))
    assert checks["base_url_configured"].status == "fail"
    assert "no base URL for 'sa-east-1' in deployment.region_base_urls" in checks["base_url_configured"].detail
    assert [c.status for c in list(checks.values())[1:]] == ["skip"] * 5
    assert out.strip().splitlines()[-1] == "sa-east-1: FAILED 1 of 6 checks (base_url_configured); 5 skipped"


def test_a_name_that_cannot_be_a_region_exits_2_with_a_clear_message(fleet, make_settings, capsys):
    settings = make_settings(fleet)
    code, out, err = run_validate(settings, "eu west/1", capsys)
    assert code == 2
    assert out == ""
    assert "dashboard validate: 'eu west/1' is not a region name" in err
    with pytest.raises(InvalidRegionName):
        validate_region(settings, "../etc")


def test_json_output_has_region_verdict_and_every_check_with_why(fleet, make_settings, capsys):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", mode="http_500")
    code, out, _ = run_validate(settings, "eu-west-1", capsys, as_json=True)
    assert code == 1
    data = json.loads(out)
    assert set(data) == {"region", "ok", "checks"}
    assert data["region"] == "eu-west-1" and data["ok"] is False
    assert [c["name"] for c in data["checks"]] == CHECK_NAMES
    for entry in data["checks"]:
        assert set(entry) == {"name", "ok", "skipped", "detail"}
        assert isinstance(entry["detail"], str) and entry["detail"]
    assert data["checks"][4] == {"name": "health_passes", "ok": False, "skipped": False,
                                 "detail": "health: HTTP 500"}
    fleet.reset()
    code, out, _ = run_validate(settings, "eu-west-1", capsys, as_json=True)
    assert code == 0 and json.loads(out)["ok"] is True


def test_a_new_region_listed_only_in_region_base_urls_validates_against_our_fleet_plus_itself(fleet, tmp_path,
                                                                                              capsys):
    # The fleet serves three regions and each reports all three; our config lists only two so far.
    block = fleet.deployment_block()
    block["regions"] = ["us-east-1", "eu-west-1"]
    path = write_config(tmp_path / "new-region.yaml", block, timeout_seconds=TEST_TIMEOUT_SECONDS,
                        poll_interval_seconds=1)
    settings = load_settings(str(path), environ={})
    assert "ap-southeast-1" not in settings.regions
    code, out, _ = run_validate(settings, "ap-southeast-1", capsys)
    assert code == 0, out
    checks = by_name(validate_region(settings, "ap-southeast-1"))
    assert "ours plus 'ap-southeast-1', which is not in deployment.regions yet" in checks["fleet_view_matches"].detail
    assert "1.0.0 on 2" in checks["version_matches_fleet"].detail  # the two listed regions, probed

    # A new region that only knows the old fleet has not been told about itself: drift.
    fleet.set("ap-southeast-1", fleet_regions=["us-east-1", "eu-west-1"])
    view = by_name(validate_region(settings, "ap-southeast-1"))["fleet_view_matches"]
    assert view.status == "fail"
    assert "differ from ours us-east-1, eu-west-1, ap-southeast-1" in view.detail
    assert "not in deployment.regions yet" in view.detail


def test_remote_text_cannot_forge_lines_in_the_text_output(fleet, make_settings):
    settings = make_settings(fleet)
    fleet.set("eu-west-1", answers_as="x\nPASS  forged\x1b[2J")
    checks = validate_region(settings, "eu-west-1")
    text = format_checks("eu-west-1", checks)
    assert len(text.splitlines()) == 7
    assert "\x1b" not in text
    assert not all_passed(checks)
    assert checks_as_json("eu-west-1", checks)["ok"] is False


@pytest.mark.skipif("validate" not in cli.COMMANDS, reason="`dashboard validate` is not wired into cli.py yet")
def test_the_cli_subcommand_validates_a_region_and_exits_by_the_verdict(fleet, make_settings):
    settings = make_settings(fleet)
    good = run_cli("validate", "eu-west-1", "--config", settings.source)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.strip().splitlines()[-1] == "eu-west-1: PASSED all 6 checks"
    fleet.set("eu-west-1", answers_as="us-east-1")
    bad = run_cli("validate", "eu-west-1", "--json", "--config", settings.source)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["checks"][2]["name"] == "answers_as_region"
    assert run_cli("validate", "not a region", "--config", settings.source).returncode == 2


def test_region_page_button_runs_the_checks_for_a_logged_in_operator(fleet, make_settings):
    """The region page offers the same checklist as a button (POST, CSRF, operators only)."""
    from dashboard.poller import Poller
    from dashboard.store import Store
    from dashboard.web import create_app

    from .routing_helpers import auth_config, csrf_token, login, soup

    fleet.set("eu-west-1", answers_as="us-east-1")
    settings = make_settings(fleet, auth=auth_config())
    store = Store(settings.database_path)
    poller = Poller(settings, store)
    try:
        poller.run_cycle()
        client = create_app(settings, store=store).test_client()
        anonymous = client.post("/regions/eu-west-1/validate", data={"csrf_token": csrf_token(client)})
        assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]

        assert login(client).status_code == 302
        page = soup(client.get("/regions/eu-west-1"))
        form = page.select_one("#region-summary form.validate-form")
        assert form is not None and form["hx-post"] == "/regions/eu-west-1/validate"
        response = client.post("/regions/eu-west-1/validate", headers={"HX-Request": "true"},
                               data={"csrf_token": form.select_one("input[name=csrf_token]")["value"]})
        assert response.status_code == 200
        result = soup(response)
        rows = {row["data-check"]: row["class"] for row in result.select("#validation-checks tr.check")}
        assert "check-fail" in rows["answers_as_region"]
        assert "check-pass" in rows["reachable"]
        assert "Some checks failed" in result.select_one("#validation-verdict").get_text()
        without_csrf = client.post("/regions/eu-west-1/validate", headers={"HX-Request": "true"})
        assert without_csrf.status_code == 403
    finally:
        poller.close()
        store.close()
