"""Publishers of the routing table (issue 13), without the real routers: their config, the map files,
commands that fail or hang, independence, the outcomes every process sees, retries with back-off,
and how the API, the pages, /metrics and the CLI show them.

The commands are real processes (small `sh` scripts standing in for `nginx -t` and `nginx -s reload`);
tests/test_edge_routers.py runs the real nginx and HAProxy.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dashboard import cli
from dashboard.config import ConfigError, load_settings, parse_yaml, settings_from_mapping
from dashboard.poller import Poller
from dashboard.publish import (
    RETRY_BASE_SECONDS,
    NginxPublisher,
    map_texts,
    publish_all,
    run_command,
    written_version,
)
from dashboard.routing import Router
from dashboard.scheduler import PUBLISH_RETRY_JOB_ID, PollingService
from dashboard.store import Store

from .routing_helpers import BEARER, Routed, auth_config, read_routing_file, routing_events, serving
from .web_helpers import Dash, vary_values

SH = "/bin/sh"


def fake_nginx(tmp_path: Path, name: str = "edge", *, test: str = "exit 0", timeout: float = 5) -> dict[str, Any]:
    """An nginx publisher whose test and reload are shell scripts: the test runs `test`, the reload
    copies the map files it sees into reloaded/ (what a reloaded nginx would serve)."""
    maps, reloaded = tmp_path / name, tmp_path / name / "reloaded"
    reloaded.mkdir(parents=True, exist_ok=True)
    return {
        "name": name, "type": "nginx",
        "map_file": str(maps / "routing.map"), "read_only_map_file": str(maps / "read_only.map"),
        "test_command": [SH, "-c", test],
        "reload_command": [SH, "-c", f"cp {maps}/routing.map {maps}/read_only.map {reloaded}/"],
        "timeout_seconds": timeout,
    }


def reloaded(tmp_path: Path, name: str = "edge") -> dict[str, str]:
    """region -> serving region, as the fake nginx last reloaded it."""
    path = tmp_path / name / "reloaded" / "routing.map"
    if not path.exists():
        return {}
    lines = [line.rstrip(";").split() for line in path.read_text().splitlines() if not line.startswith("#")]
    return {region: serving_region for region, serving_region in lines}


def by_name(published: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in published}


# -- configuration ---------------------------------------------------------------------------------

DEPLOYMENT = """
deployment:
  region: us-east-1
  primary_region: us-east-1
  regions: [us-east-1, eu-west-1]
  region_base_urls: {us-east-1: 'http://127.0.0.1:9/us', eu-west-1: 'http://127.0.0.1:9/eu'}
"""


def settings_of(dashboard: str, regions: str | None = None):
    text = DEPLOYMENT if regions is None else DEPLOYMENT.replace("[us-east-1, eu-west-1]", regions)
    return settings_from_mapping(parse_yaml(text + dashboard), source="/etc/dashboard/config.yaml", environ={})


def test_publishers_config_fills_the_defaults_and_resolves_paths_against_the_config_file():
    settings = settings_of("""
dashboard:
  publish:
    - {name: edge-nginx, type: nginx, map_file: maps/routing.map, read_only_map_file: /etc/nginx/ro.map}
    - {name: edge-haproxy, type: haproxy, socket: /run/haproxy/admin.sock,
       map_file: /etc/haproxy/routing.map, read_only_map_file: /etc/haproxy/ro.map}
""")
    nginx, haproxy = settings.dashboard.publish
    assert (nginx.test_command, nginx.reload_command, nginx.timeout_seconds) == (
        ["nginx", "-t"], ["nginx", "-s", "reload"], 10.0)
    assert haproxy.timeout_seconds == 5.0 and haproxy.socket == "/run/haproxy/admin.sock"
    assert NginxPublisher(nginx, settings).map_file == Path("/etc/dashboard/maps/routing.map")
    assert settings_of("dashboard: {}").dashboard.publish == []  # old configs keep working


@pytest.mark.parametrize(("dashboard", "regions", "problem"), [
    ("publish: [{name: e, type: nginix, map_file: m, read_only_map_file: r}]", None,
     "dashboard.publish.0: type: required, 'nginx' or 'haproxy'"),
    ("publish: [{name: e, map_file: m, read_only_map_file: r}]", None,
     "dashboard.publish.0: type: required, 'nginx' or 'haproxy'"),
    ("publish: [{name: e, type: nginx, map_file: m, read_only_map_file: r, test_command: 'nginx -t'}]", None,
     "dashboard.publish.0.nginx.test_command: must be a list such as ['nginx', '-t']"),
    ("publish: [{name: e, type: nginx, map_file: m, read_only_map_file: r, reload_command: []}]", None,
     "dashboard.publish.0.nginx.reload_command: must be a non-empty list"),
    ("publish: [{name: e, type: haproxy, map_file: m, read_only_map_file: r}]", None,
     "dashboard.publish.0.haproxy.socket: required key is missing"),
    ("publish: [{name: e, type: haproxy, socket: s, map_file: m, read_only_map_file: r, reload: x}]", None,
     "dashboard.publish.0.haproxy.reload: unknown key"),
    ("publish: [{name: routing-file, type: nginx, map_file: m, read_only_map_file: r}]", None,
     "dashboard.publish.0.nginx.name: 'routing-file' is the name of dashboard.routing_file's own publisher"),
    ("publish: [{name: a, type: nginx, map_file: m, read_only_map_file: r},"
     " {name: a, type: nginx, map_file: n, read_only_map_file: o}]", None,
     "dashboard.publish.1.name: 'a' is used by another publisher"),
    ("publish: [{name: a, type: nginx, map_file: m, read_only_map_file: r},"
     " {name: b, type: haproxy, socket: s, map_file: n, read_only_map_file: m}]", None,
     "dashboard.publish.1.read_only_map_file: '/etc/dashboard/m' is already written by dashboard.publish.0.map_file"),
    ("publish: [{name: a, type: nginx, map_file: data/routing.json, read_only_map_file: r}]", None,
     "dashboard.publish.0.map_file: '/etc/dashboard/data/routing.json' is already written by dashboard.routing_file"),
    ("publish: [{name: a, type: nginx, map_file: m, read_only_map_file: r}]", "[us-east-1, default]",
     "dashboard.publish.0: region 'default' cannot be a key of an nginx map"),
])
def test_a_bad_publisher_is_refused_naming_the_key(dashboard: str, regions: str | None, problem: str):
    with pytest.raises(ConfigError) as refused:
        settings_of("dashboard:\n  " + dashboard, regions)
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems


# -- the maps and the commands ---------------------------------------------------------------------


def test_maps_have_one_sorted_lower_case_line_per_region_under_a_version_header():
    table = {"version": 7, "generated_at": "2026-12-01T20:30:00Z", "regions": {
        "us-east-1": {"serving_region": "us-east-1", "read_only": False},
        "EU-West-1": {"serving_region": "us-east-1", "read_only": True},
        "ap-southeast-1": {"serving_region": "ap-southeast-1", "read_only": False},
    }}
    serving_map, read_only_map = map_texts(table, ";")
    header = "# Written by the region dashboard: routing table version 7, 2026-12-01T20:30:00Z."
    assert serving_map.splitlines() == [header + " Do not edit: the next change replaces this file.",
                                        "ap-southeast-1 ap-southeast-1;", "eu-west-1 us-east-1;",
                                        "us-east-1 us-east-1;"]
    assert read_only_map.splitlines()[1:] == ["ap-southeast-1 0;", "eu-west-1 1;", "us-east-1 0;"]
    assert map_texts(table)[1].splitlines()[2] == "eu-west-1 1"  # HAProxy's maps end without ';'


def test_a_failing_command_reports_its_status_and_clipped_output():
    with pytest.raises(Exception) as failed:
        run_command([SH, "-c", "echo 'nginx: [emerg] unknown directive \"mapp\"' >&2; seq 1 1000; exit 3"], 5)
    message = str(failed.value)
    assert message.startswith("`/bin/sh -c 'echo ")
    assert "exited with status 3: nginx: [emerg] unknown directive \"mapp\" 1 2 3" in message
    assert len(message) < 600 and message.endswith("…")


def test_a_command_that_hangs_is_killed_at_its_timeout_and_a_missing_one_is_named():
    started = time.monotonic()
    with pytest.raises(Exception, match=r"did not finish within 0.3 s \(killed\)"):
        run_command([SH, "-c", "sleep 30"], 0.3)
    assert time.monotonic() - started < 5
    with pytest.raises(Exception, match=r"`/nonexistent/nginx -t` could not start: No such file or directory"):
        run_command(["/nonexistent/nginx", "-t"], 5)


# -- nginx's contract, with stand-in commands ------------------------------------------------------


def test_nginx_publisher_writes_both_maps_tests_and_reloads(make_routed, tmp_path):
    routed = make_routed(publish=[fake_nginx(tmp_path)])
    routed.fail_over("eu-west-1")
    assert reloaded(tmp_path) == {"us-east-1": "us-east-1", "eu-west-1": "us-east-1",
                                  "ap-southeast-1": "ap-southeast-1"}
    read_only = (tmp_path / "edge" / "reloaded" / "read_only.map").read_text().splitlines()
    assert "eu-west-1 1;" in read_only and "us-east-1 0;" in read_only
    assert written_version(tmp_path / "edge" / "routing.map") == 1
    edge = by_name(routed.router.published())["edge"]
    assert (edge["version"], edge["error"], edge["behind"]) == (1, None, False)


def test_a_failing_nginx_test_restores_the_previous_maps_and_does_not_reload(make_routed, tmp_path):
    broken = tmp_path / "broken"
    config = fake_nginx(tmp_path, test=f"if [ -e {broken} ]; then echo 'nginx: [emerg] bad map' >&2; exit 1; fi")
    routed = make_routed(publish=[config])
    routed.fail_over("eu-west-1")
    maps = tmp_path / "edge"
    good = {name: (maps / name).read_bytes() for name in ("routing.map", "read_only.map")}

    broken.touch()
    table = routed.router.clear_override("eu-west-1", reason="back", actor="t")
    assert table["version"] == 2 and routed.store.routing_version() == 2  # the change itself is made
    assert {name: (maps / name).read_bytes() for name in good} == good  # byte for byte
    assert reloaded(tmp_path)["eu-west-1"] == "us-east-1"  # never reloaded with the failed maps
    edge = by_name(routed.router.published())["edge"]
    assert edge["version"] == 1 and edge["behind"] is True
    assert "exited with status 1: nginx: [emerg] bad map" in edge["error"]
    assert "the previous map files are back and nginx was not reloaded" in edge["error"]
    assert serving(read_routing_file(routed.settings))["eu-west-1"] == "eu-west-1"  # others carry on


def test_one_hanging_publisher_holds_up_neither_the_change_nor_the_others(make_routed, tmp_path):
    routed = make_routed(publish=[fake_nginx(tmp_path, "slow", test="sleep 30", timeout=1.5),
                                  fake_nginx(tmp_path, "fast")])
    started = time.monotonic()
    outcomes = publish_all(routed.router.publishers, routed.router.current_table())
    assert time.monotonic() - started < 5  # side by side, each bounded by its own timeout
    file, slow, fast = outcomes
    assert fast.applied and file.applied and fast.seconds < 1.0
    assert not slow.applied and "did not finish within 1.5 s" in slow.error

    table = routed.fail_over("eu-west-1")
    assert table["version"] == 1 and [e["kind"] for e in routing_events(routed.store)] == ["failover"]
    assert reloaded(tmp_path, "fast")["eu-west-1"] == "us-east-1"
    published = by_name(routed.router.published())
    assert published["slow"]["behind"] and published["slow"]["consecutive_failures"] == 1
    assert not published["fast"]["behind"] and not published["routing-file"]["behind"]


def test_a_routing_file_that_cannot_be_written_no_longer_fails_the_change(make_routed):
    routed = make_routed(poll=True)
    routed.settings.routing_file_path.mkdir()  # a folder where the file should go
    table = routed.fail_over("eu-west-1")
    assert table["version"] == 1 and routed.store.overrides()[0]["region"] == "eu-west-1"
    file = by_name(routed.router.published())["routing-file"]
    assert file["behind"] and "not written" in file["error"]


def test_an_older_table_never_replaces_the_maps_of_a_newer_one(make_routed, tmp_path):
    routed = make_routed(publish=[fake_nginx(tmp_path)])
    newer = routed.fail_over("eu-west-1")
    older = {**newer, "version": 0}
    [outcome] = publish_all([routed.router.publishers[1]], older)
    assert (outcome.applied, outcome.error) == (False, None)
    assert written_version(tmp_path / "edge" / "routing.map") == 1
    routed.store.record_published("edge", "nginx", 0, time.time())
    assert routed.store.publisher_rows()["edge"]["version"] == 1  # the record never goes back either


# -- outcomes, back-off and retries ----------------------------------------------------------------


def test_failures_back_off_exponentially_and_a_retry_that_succeeds_clears_them(make_routed, tmp_path):
    broken = tmp_path / "broken"
    broken.touch()
    routed = make_routed(publish=[fake_nginx(tmp_path, test=f"test ! -e {broken}")])
    routed.fail_over("eu-west-1")
    row = routed.store.publisher_rows()["edge"]
    assert (row["consecutive_failures"], row["failures_total"], row["version"]) == (1, 1, None)
    assert row["next_attempt_at"] == pytest.approx(row["failed_at"] + RETRY_BASE_SECONDS)

    assert routed.router.retry_publishers(now=row["failed_at"]) == []  # still backing off
    waits = []
    for _ in range(3):
        row = routed.store.publisher_rows()["edge"]
        [outcome] = routed.router.retry_publishers(now=row["next_attempt_at"])
        assert outcome.name == "edge" and not outcome.applied
        after = routed.store.publisher_rows()["edge"]
        waits.append(round(after["next_attempt_at"] - after["failed_at"], 3))
    assert waits == [2 * RETRY_BASE_SECONDS, 4 * RETRY_BASE_SECONDS, 8 * RETRY_BASE_SECONDS]

    broken.unlink()
    row = routed.store.publisher_rows()["edge"]
    [outcome] = routed.router.retry_publishers(now=row["next_attempt_at"])
    assert outcome.applied
    row = routed.store.publisher_rows()["edge"]
    assert (row["version"], row["error"], row["consecutive_failures"], row["failures_total"]) == (1, None, 0, 4)
    assert reloaded(tmp_path)["eu-west-1"] == "us-east-1"
    assert routed.router.retry_publishers(now=time.time() + 3600) == []  # nothing behind: nothing to do


def test_the_scheduler_retries_a_lagging_publisher_until_it_applies_the_table(make_routed, tmp_path):
    broken = tmp_path / "broken"
    broken.touch()
    routed = make_routed(publish=[fake_nginx(tmp_path, test=f"test ! -e {broken}")])
    routed.fail_over("eu-west-1")
    poller = Poller(routed.settings, routed.store)
    service = PollingService(poller, router=routed.router)
    try:
        service.start()  # publishes at start: fails again
        assert PUBLISH_RETRY_JOB_ID in [job.id for job in service._scheduler.get_jobs()]
        assert routed.store.publisher_rows()["edge"]["consecutive_failures"] >= 2
        broken.unlink()
        deadline = time.monotonic() + 15
        while routed.store.publisher_rows()["edge"]["version"] != 1:
            assert time.monotonic() < deadline, routed.store.publisher_rows()["edge"]
            time.sleep(0.1)
    finally:
        service.stop()
        poller.close()
    assert reloaded(tmp_path)["eu-west-1"] == "us-east-1"
    assert routed.store.publisher_rows()["edge"]["error"] is None


# -- what people and programs see ------------------------------------------------------------------


@pytest.fixture
def failing_dash(make_dash: Callable[..., Dash], tmp_path: Path) -> tuple[Dash, Path]:
    broken = tmp_path / "broken"
    broken.touch()
    config = fake_nginx(tmp_path, test=f"if [ -e {broken} ]; then echo 'nginx: [emerg] bad <map>' >&2; exit 1; fi")
    dash = make_dash(auth=auth_config(), routing_file="routing.json", poll_interval_seconds=60, publish=[config])
    dash.cycle()
    return dash, broken


def _fail_over(dash: Dash) -> Any:
    response = dash.client.post("/api/v1/routing/overrides", headers=BEARER,
                                json={"region": "eu-west-1", "reason": "drill", "confirm_healthy": True})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response


def test_the_api_shows_each_publisher_and_its_etag_follows_their_outcomes(failing_dash):
    dash, broken = failing_dash
    body = _fail_over(dash).get_json()
    published = by_name(body["published"])
    assert list(published) == ["routing-file", "edge"]
    assert published["routing-file"] | {"applied_at": None} == {
        "name": "routing-file", "type": "json", "version": 1, "applied_at": None, "error": None, "behind": False,
        "failed_at": None, "consecutive_failures": 0, "next_attempt_at": None}
    edge = published["edge"]
    assert (edge["type"], edge["version"], edge["behind"], edge["consecutive_failures"]) == ("nginx", None, True, 1)
    assert "nginx: [emerg] bad <map>" in edge["error"] and edge["next_attempt_at"]

    first = dash.get("/api/v1/routing")
    assert by_name(first.get_json()["published"]) == published
    broken.unlink()
    [outcome] = dash.app.extensions["dashboard"].router.retry_publishers(now=time.time() + 60)
    assert outcome.applied
    # Same table version, different outcomes: a client holding the old ETag must not get a 304.
    again = dash.get("/api/v1/routing", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 200 and again.headers["ETag"] != first.headers["ETag"]
    edge = by_name(again.get_json()["published"])["edge"]
    assert (edge["version"], edge["error"], edge["behind"]) == (1, None, False)


def test_the_routing_page_and_the_overview_warn_while_a_publisher_is_behind(failing_dash):
    dash, broken = failing_dash
    assert dash.page("/").select_one("#publish-banner") is None
    _fail_over(dash)

    page = dash.page("/routing")
    warning = page.select_one("#publishers #publish-warning")
    assert warning is not None and warning["role"] == "alert"
    assert "Not every router applies routing table version 1" in warning.get_text()
    assert "nginx: [emerg] bad <map>" in warning.get_text()  # escaped, shown as text
    row = page.select_one('#publishers tr.publisher-row[data-publisher="edge"]')
    assert row["data-behind"] == "true" and row["data-version"] == ""
    assert "1 failed attempt in a row" in row.get_text()
    file_row = page.select_one('#publishers tr.publisher-row[data-publisher="routing-file"]')
    assert file_row["data-behind"] == "false" and "up to date" in file_row.get_text()

    banner = dash.page("/fragments/overview").select_one("#publish-banner")
    assert banner is not None and banner["role"] == "alert"
    assert "edge (nginx) has no table yet: " in " ".join(banner.get_text().split())
    assert banner.select_one('a[href="/routing#publishers"]') is not None

    fragment = dash.get("/fragments/publishers")
    assert fragment.status_code == 200 and "hx-request" in vary_values(fragment)
    broken.unlink()
    dash.app.extensions["dashboard"].router.retry_publishers(now=time.time() + 60)
    assert dash.page("/fragments/publishers").select_one("#publish-warning") is None
    assert dash.page("/").select_one("#publish-banner") is None


def test_metrics_carry_each_publishers_version_and_failures(failing_dash):
    dash, broken = failing_dash

    def scrape() -> dict[tuple[str, str], float]:
        response = dash.get("/metrics")
        assert response.status_code == 200
        return {(s.name, s.labels.get("publisher", "")): s.value
                for f in text_string_to_metric_families(response.get_data(as_text=True)) for s in f.samples
                if s.name.startswith("dashboard_routing_publish")}

    assert scrape()[("dashboard_routing_published_version", "edge")] == -1  # never applied
    _fail_over(dash)
    router = dash.app.extensions["dashboard"].router
    router.retry_publishers(now=time.time() + 60)
    broken.unlink()
    router.retry_publishers(now=time.time() + 120)
    assert scrape() == {
        ("dashboard_routing_published_version", "routing-file"): 1,
        ("dashboard_routing_published_version", "edge"): 1,
        ("dashboard_routing_publish_failures_total", "routing-file"): 0,
        ("dashboard_routing_publish_failures_total", "edge"): 2,
    }


def test_the_cli_makes_the_change_and_names_a_publisher_that_did_not_apply_it(make_routed, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.touch()
    routed = make_routed(publish=[fake_nginx(tmp_path, test=f"test ! -e {broken} || {{ echo no >&2; exit 1; }}")])
    config = str(routed.settings.source)

    assert cli.main(["failover", "eu-west-1", "--reason", "drill", "--confirm-healthy", "--config", config]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("routing table version 1")
    assert "dashboard failover: publisher edge (nginx) did not apply the table: `/bin/sh -c" in err
    assert "exited with status 1: no; the previous map files are back" in err
    assert err.rstrip().endswith("not reloaded; the change is made; `dashboard serve` retries it")
    assert routed.store.routing_version() == 1

    assert cli.main(["routing", "--config", config]) == 1  # a republish that did not take is a failure
    assert "dashboard routing: publisher edge (nginx) did not apply" in capsys.readouterr().err
    broken.unlink()
    assert cli.main(["routing", "--config", config]) == 0
    assert "did not apply" not in capsys.readouterr().err
    assert reloaded(tmp_path)["eu-west-1"] == "us-east-1"


def test_every_process_on_the_database_sees_the_same_outcomes(make_routed, tmp_path):
    routed: Routed = make_routed(publish=[fake_nginx(tmp_path)])
    routed.fail_over("eu-west-1")
    other = Store(routed.settings.database_path)  # as the web process or the CLI would open it
    try:
        seen = by_name(Router(load_settings(str(routed.settings.source), environ={}), other).published())
    finally:
        other.close()
    assert seen["edge"]["version"] == seen["routing-file"]["version"] == 1
