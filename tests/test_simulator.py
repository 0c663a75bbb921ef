"""The simulated fleet, exercised over real HTTP on loopback in both layouts."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from dashboard.demo.simulator import (
    MODES,
    IncidentScript,
    RegionBehaviour,
    SimulatedFleet,
    UnknownRegionError,
    main,
)

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]
HEALTH = "/api/v1/system/health"
DEPLOYMENT = "/api/v1/system/deployment"
ROOT = Path(__file__).resolve().parent.parent
# Building httpx's default TLS context loads the CA bundle (~50 ms); every request here is plain
# HTTP on loopback, so one shared context keeps a client per test cheap.
_TLS = ssl.create_default_context()


def http_client(timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(timeout=timeout, verify=_TLS)


@pytest.fixture(params=["ports", "prefix"])
def fleet(request: pytest.FixtureRequest) -> Iterator[SimulatedFleet]:
    with SimulatedFleet(REGIONS, layout=request.param) as started:
        yield started


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with http_client() as c:
        yield c


def get(client: httpx.Client, fleet: SimulatedFleet, region: str, path: str) -> httpx.Response:
    return client.get(fleet.base_urls[region] + path)


# -- naming and layout ---------------------------------------------------------------------------


def test_int_regions_are_named_region_000_upwards() -> None:
    fleet = SimulatedFleet(3)
    assert fleet.regions == ["region-000", "region-001", "region-002"]
    assert fleet.primary_region == "region-000"


def test_ports_layout_gives_each_region_its_own_port() -> None:
    with SimulatedFleet(REGIONS, layout="ports") as fleet:
        urls = fleet.base_urls
        assert len({urlsplit(u).port for u in urls.values()}) == len(REGIONS)
        assert all(urlsplit(u).path == "" and not u.endswith("/") for u in urls.values())


def test_prefix_layout_serves_every_region_under_its_name_on_one_port() -> None:
    with SimulatedFleet(REGIONS, layout="prefix") as fleet:
        urls = fleet.base_urls
        assert len({urlsplit(u).port for u in urls.values()}) == 1
        assert {r: urlsplit(u).path for r, u in urls.items()} == {r: f"/{r}" for r in REGIONS}


def test_deployment_block_matches_the_config_yaml_shape(fleet: SimulatedFleet) -> None:
    assert fleet.deployment_block() == {
        "region": "us-east-1",
        "primary_region": "us-east-1",
        "regions": REGIONS,
        "region_base_urls": fleet.base_urls,
    }


def test_primary_region_can_be_chosen() -> None:
    fleet = SimulatedFleet(REGIONS, primary_region="eu-west-1")
    assert fleet.primary_region == "eu-west-1"


@pytest.mark.parametrize(
    "regions, kwargs",
    [
        ([], {}),
        (0, {}),
        (["us-east-1", "us-east-1"], {}),
        (["has space"], {}),
        (["_sim"], {}),
        (REGIONS, {"primary_region": "mars-1"}),
        (REGIONS, {"layout": "subdomains"}),
    ],
)
def test_constructor_rejects_bad_fleets(regions: list[str] | int, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SimulatedFleet(regions, **kwargs)


def test_base_urls_before_start_raise_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="started"):
        _ = SimulatedFleet(REGIONS).base_urls


def test_every_one_of_two_hundred_regions_answers_as_itself() -> None:
    for layout in ("ports", "prefix"):
        with SimulatedFleet(200, layout=layout) as fleet, http_client() as client:
            for region, base in fleet.base_urls.items():
                assert client.get(base + DEPLOYMENT).json()["region"] == region


# -- modes ---------------------------------------------------------------------------------------


def test_healthy_region_reports_ok_and_its_deployment(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    health = get(client, fleet, "eu-west-1", HEALTH)
    assert health.status_code == 200
    assert health.headers["content-type"] == "application/json"
    assert health.json() == {"status": "ok"}
    deployment = get(client, fleet, "eu-west-1", DEPLOYMENT)
    assert deployment.status_code == 200
    assert deployment.json() == {
        "region": "eu-west-1",
        "primary_region": "us-east-1",
        "regions": REGIONS,
        "region_base_urls": fleet.base_urls,
        "version": "1.0.0",
    }


def test_plain_health_reports_error_rate_when_set(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    fleet.set("eu-west-1", error_rate=0.07)
    assert get(client, fleet, "eu-west-1", HEALTH).json() == {"status": "ok", "error_rate": 0.07}


@pytest.mark.parametrize(
    "mode, status", [("healthy", "ok"), ("degraded", "degraded"), ("failing", "error")]
)
def test_plain_health_status_follows_mode_and_still_answers_200(
    fleet: SimulatedFleet, client: httpx.Client, mode: str, status: str
) -> None:
    fleet.set("eu-west-1", mode=mode)
    response = get(client, fleet, "eu-west-1", HEALTH)
    assert response.status_code == 200
    assert response.json() == {"status": status}
    assert get(client, fleet, "eu-west-1", DEPLOYMENT).json()["region"] == "eu-west-1"


@pytest.mark.parametrize(
    "mode, status", [("healthy", "pass"), ("degraded", "warn"), ("failing", "fail")]
)
def test_ietf_health_uses_health_json_with_checks(
    fleet: SimulatedFleet, client: httpx.Client, mode: str, status: str
) -> None:
    fleet.set("eu-west-1", mode=mode, health_format="ietf", error_rate=0.25, version="2.3.4")
    response = get(client, fleet, "eu-west-1", HEALTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    body = response.json()
    assert body["status"] == status
    assert body["version"] == "2.3.4"
    assert body["checks"]["database:responseTime"][0]["status"] == status
    assert body["checks"]["database:responseTime"][0]["observedUnit"] == "ms"
    assert body["checks"]["errors:rate"] == [{"status": status, "observedValue": 0.25}]


def test_ietf_health_has_no_error_rate_check_without_error_rate(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    fleet.set("eu-west-1", health_format="ietf")
    body = get(client, fleet, "eu-west-1", HEALTH).json()
    assert body["status"] == "pass"
    assert list(body["checks"]) == ["database:responseTime"]


def test_http_500_mode_answers_500_on_both_endpoints(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    fleet.set("eu-west-1", mode="http_500")
    for path in (HEALTH, DEPLOYMENT):
        response = get(client, fleet, "eu-west-1", path)
        assert response.status_code == 500
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text


def test_hang_mode_never_answers_so_the_client_times_out(fleet: SimulatedFleet) -> None:
    fleet.set("eu-west-1", mode="hang")
    with http_client(timeout=0.3) as client:
        started = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            get(client, fleet, "eu-west-1", HEALTH)
        assert time.perf_counter() - started < 2.0
        # Other regions are unaffected by the hanging one.
        assert get(client, fleet, "us-east-1", HEALTH).status_code == 200


def test_drop_mode_closes_connection_without_response(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    fleet.set("eu-west-1", mode="drop")
    for path in (HEALTH, DEPLOYMENT):
        with pytest.raises(httpx.RemoteProtocolError):
            get(client, fleet, "eu-west-1", path)
    url = urlsplit(fleet.base_urls["eu-west-1"] + HEALTH)
    with socket.create_connection((url.hostname, url.port), timeout=2.0) as raw:
        raw.sendall(f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
        assert raw.recv(1024) == b""  # orderly close, not a single byte of response


def test_bad_json_mode_answers_truncated_json(fleet: SimulatedFleet, client: httpx.Client) -> None:
    fleet.set("eu-west-1", mode="bad_json")
    for path in (HEALTH, DEPLOYMENT):
        response = get(client, fleet, "eu-west-1", path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
    assert get(client, fleet, "eu-west-1", HEALTH).content == b'{"status": "ok"'


def test_html_mode_answers_a_proxy_error_page_with_200(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    fleet.set("eu-west-1", mode="html")
    response = get(client, fleet, "eu-west-1", HEALTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "Bad Gateway" in response.text


def test_huge_mode_streams_more_than_a_mebibyte(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    fleet.set("eu-west-1", mode="huge", body_bytes=2 * 1024 * 1024)
    for path, start in ((HEALTH, b'{"status": "ok"'), (DEPLOYMENT, b'{"region": "eu-west-1"')):
        response = get(client, fleet, "eu-west-1", path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert len(response.content) == 2 * 1024 * 1024 > 1024 * 1024
        assert int(response.headers["content-length"]) == len(response.content)
        assert response.content.startswith(start)


def test_huge_mode_honours_tiny_sizes(fleet: SimulatedFleet, client: httpx.Client) -> None:
    fleet.set("eu-west-1", mode="huge", body_bytes=5)
    assert get(client, fleet, "eu-west-1", HEALTH).content == b'{"sta'


def test_redirect_mode_answers_302_to_elsewhere(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    fleet.set("eu-west-1", mode="redirect")
    for path in (HEALTH, DEPLOYMENT):
        response = get(client, fleet, "eu-west-1", path)
        assert response.status_code == 302
        assert response.headers["location"] == "/elsewhere"


def test_wrong_shape_mode_answers_a_list_and_a_regionless_deployment(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    fleet.set("eu-west-1", mode="wrong_shape")
    assert get(client, fleet, "eu-west-1", HEALTH).json() == ["ok"]
    assert get(client, fleet, "eu-west-1", DEPLOYMENT).json() == {"name": "x"}


def test_health_answer_is_served_exactly_and_leaves_the_deployment_alone(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    body = "[+]ping ok\n[-]etcd failed: reason withheld\nhealthz check failed\n"
    fleet.set("eu-west-1", health_answer={"status": 500, "content_type": "text/plain; charset=utf-8", "body": body})
    health = get(client, fleet, "eu-west-1", HEALTH)
    assert (health.status_code, health.headers["content-type"], health.text) == (
        500, "text/plain; charset=utf-8", body)
    assert get(client, fleet, "eu-west-1", DEPLOYMENT).json()["region"] == "eu-west-1"
    fleet.set("eu-west-1", health_answer=None)
    assert get(client, fleet, "eu-west-1", HEALTH).json() == {"status": "ok"}


def test_health_answer_without_content_type_sends_none_of_its_own(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    fleet.set("eu-west-1", health_answer={"status": 200, "body": "OK"})
    health = get(client, fleet, "eu-west-1", HEALTH)
    assert health.headers["content-type"] == "application/octet-stream"  # aiohttp's own default
    assert health.text == "OK"


def test_health_answer_is_set_over_the_control_api(fleet: SimulatedFleet, client: httpx.Client) -> None:
    answer = {"status": 429, "content_type": "application/json", "body": '{"AggregatedStatus": "warning"}'}
    response = client.post(fleet.control_url + "/eu-west-1", json={"health_answer": answer})
    assert response.status_code == 200
    assert response.json()["health_answer"] == answer
    assert get(client, fleet, "eu-west-1", HEALTH).status_code == 429
    bad = client.post(fleet.control_url + "/eu-west-1", json={"health_answer": {"status": "429", "body": ""}})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_field"
    assert "health_answer" in bad.json()["message"]
    assert fleet.behaviour("eu-west-1").health_answer == answer


def test_delay_seconds_delays_the_answer(fleet: SimulatedFleet, client: httpx.Client) -> None:
    fleet.set("eu-west-1", delay_seconds=0.2, mode="http_500")
    started = time.perf_counter()
    assert get(client, fleet, "eu-west-1", HEALTH).status_code == 500
    assert time.perf_counter() - started >= 0.2


def test_misrouted_and_drifted_region_reports_what_it_was_told(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    fleet.set(
        "eu-west-1",
        answers_as="us-east-1",
        fleet_regions=["us-east-1", "eu-west-1"],
        primary_region="eu-west-1",
        version="1.0.1",
    )
    body = get(client, fleet, "eu-west-1", DEPLOYMENT).json()
    assert body["region"] == "us-east-1"
    assert body["regions"] == ["us-east-1", "eu-west-1"]
    assert body["primary_region"] == "eu-west-1"
    assert body["version"] == "1.0.1"
    assert set(body["region_base_urls"]) == {"us-east-1", "eu-west-1"}


def test_unknown_region_path_answers_404() -> None:
    with SimulatedFleet(REGIONS, layout="prefix") as fleet, http_client() as client:
        root = fleet.base_urls["us-east-1"].rsplit("/", 1)[0]
        assert client.get(root + "/mars-1" + HEALTH).status_code == 404


def test_keep_alive_connection_is_reused_across_requests(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    addresses = set()
    for _ in range(3):
        for path in (HEALTH, DEPLOYMENT):
            response = get(client, fleet, "eu-west-1", path)
            addresses.add(response.extensions["network_stream"].get_extra_info("client_addr"))
    assert len(addresses) == 1


# -- steering from Python ------------------------------------------------------------------------


def test_set_unknown_region_raises_key_error_naming_it(fleet: SimulatedFleet) -> None:
    with pytest.raises(KeyError) as caught:
        fleet.set("mars-1", mode="http_500")
    assert isinstance(caught.value, UnknownRegionError)
    assert "mars-1" in str(caught.value) and "eu-west-1" in str(caught.value)


def test_set_unknown_field_raises_value_error_naming_it(fleet: SimulatedFleet) -> None:
    with pytest.raises(ValueError, match="colour"):
        fleet.set("eu-west-1", colour="red")


def test_set_invalid_mode_raises_value_error_listing_modes(fleet: SimulatedFleet) -> None:
    with pytest.raises(ValueError, match="exploded.*healthy"):
        fleet.set("eu-west-1", mode="exploded")
    assert fleet.behaviour("eu-west-1").mode == "healthy"


@pytest.mark.parametrize(
    "changes",
    [
        {"delay_seconds": -1},
        {"delay_seconds": float("nan")},
        {"error_rate": 1.5},
        {"error_rate": "high"},
        {"body_bytes": -1},
        {"body_bytes": True},
        {"health_format": "xml"},
        {"version": ""},
        {"fleet_regions": "us-east-1"},
        {"health_answer": "Healthy"},
        {"health_answer": {"status": 200}},
        {"health_answer": {"status": 99, "body": ""}},
        {"health_answer": {"status": True, "body": ""}},
        {"health_answer": {"status": 200, "body": b"ok"}},
        {"health_answer": {"status": 200, "body": "ok", "headers": {}}},
        {"health_answer": {"status": 200, "body": "ok", "content_type": "text/plain\r\nX-Evil: 1"}},
        {"health_answer": {"status": 204, "body": "ok"}},
    ],
)
def test_set_rejects_invalid_values(fleet: SimulatedFleet, changes: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        fleet.set("eu-west-1", **changes)


def test_reset_restores_one_region_or_all(fleet: SimulatedFleet) -> None:
    fleet.set("eu-west-1", mode="http_500")
    fleet.set("us-east-1", mode="hang")
    fleet.reset("eu-west-1")
    assert fleet.behaviour("eu-west-1") == RegionBehaviour()
    assert fleet.behaviour("us-east-1").mode == "hang"
    fleet.reset()
    assert all(fleet.behaviour(r) == RegionBehaviour() for r in REGIONS)


def test_behaviour_is_a_copy(fleet: SimulatedFleet) -> None:
    fleet.behaviour("eu-west-1").mode = "hang"
    assert fleet.behaviour("eu-west-1").mode == "healthy"
    fleet.set("eu-west-1", health_answer={"status": 200, "body": "ok"})
    fleet.behaviour("eu-west-1").health_answer["status"] = 503
    assert fleet.behaviour("eu-west-1").health_answer["status"] == 200


def test_request_count_counts_both_endpoints_per_region(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    get(client, fleet, "eu-west-1", HEALTH)
    get(client, fleet, "eu-west-1", DEPLOYMENT)
    fleet.set("eu-west-1", mode="http_500")
    get(client, fleet, "eu-west-1", HEALTH)
    assert fleet.request_count("eu-west-1") == 3
    assert fleet.request_count("us-east-1") == 0


def test_behaviour_set_before_start_is_served() -> None:
    fleet = SimulatedFleet(REGIONS)
    fleet.set("eu-west-1", mode="wrong_shape")
    with fleet, http_client() as client:
        assert get(client, fleet, "eu-west-1", HEALTH).json() == ["ok"]


# -- control API ---------------------------------------------------------------------------------


def control_urls(fleet: SimulatedFleet) -> list[str]:
    if fleet.layout == "prefix":
        return [fleet.control_url]
    return [base + "/_sim/regions" for base in fleet.base_urls.values()]


def test_control_api_merges_fields_and_answers_the_behaviour(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    for url in control_urls(fleet):
        fleet.reset()
        response = client.post(url + "/eu-west-1", json={"mode": "degraded", "error_rate": 0.3})
        assert response.status_code == 200
        assert response.json()["mode"] == "degraded"
        response = client.post(url + "/eu-west-1", json={"version": "1.0.1"})
        expected = RegionBehaviour(mode="degraded", error_rate=0.3, version="1.0.1")
        assert response.json() == vars(expected)
        assert fleet.behaviour("eu-west-1").version == "1.0.1"
        assert get(client, fleet, "eu-west-1", HEALTH).json()["status"] == "degraded"


def test_control_api_reset_restores_defaults(fleet: SimulatedFleet, client: httpx.Client) -> None:
    fleet.set("eu-west-1", mode="http_500", version="9")
    response = client.post(fleet.control_url + "/eu-west-1", json={"reset": True})
    assert response.status_code == 200
    assert response.json() == vars(RegionBehaviour())
    response = client.post(fleet.control_url + "/eu-west-1", json={"reset": True, "mode": "drop"})
    assert response.json()["mode"] == "drop"


@pytest.mark.parametrize(
    "body, code",
    [
        (b'{"colour": "red"}', "invalid_field"),
        (b'{"mode": "exploded"}', "invalid_field"),
        (b'{"delay_seconds": -2}', "invalid_field"),
        (b'{"reset": "yes"}', "invalid_value"),
        (b"[1, 2]", "invalid_json"),
        (b"{not json", "invalid_json"),
    ],
)
def test_control_api_rejects_bad_bodies_with_400(
    fleet: SimulatedFleet, client: httpx.Client, body: bytes, code: str
) -> None:
    response = client.post(fleet.control_url + "/eu-west-1", content=body)
    assert response.status_code == 400
    assert response.json()["error"] == code
    assert response.json()["message"]
    assert fleet.behaviour("eu-west-1") == RegionBehaviour()


def test_control_api_answers_404_for_an_unknown_region(
    fleet: SimulatedFleet, client: httpx.Client
) -> None:
    for method in ("GET", "POST"):
        response = client.request(method, fleet.control_url + "/mars-1", json={})
        assert response.status_code == 404
        assert response.json()["error"] == "unknown_region"


def test_control_api_lists_every_region(fleet: SimulatedFleet, client: httpx.Client) -> None:
    fleet.set("ap-southeast-1", mode="hang")
    get(client, fleet, "eu-west-1", HEALTH)
    listing = client.get(fleet.control_url).json()
    assert listing["primary_region"] == "us-east-1"
    assert list(listing["regions"]) == REGIONS
    assert listing["regions"]["ap-southeast-1"]["behaviour"]["mode"] == "hang"
    assert listing["regions"]["eu-west-1"]["request_count"] == 1
    assert listing["regions"]["eu-west-1"]["base_url"] == fleet.base_urls["eu-west-1"]
    one = client.get(fleet.control_url + "/ap-southeast-1").json()
    assert one == listing["regions"]["ap-southeast-1"]["behaviour"]


# -- lifecycle -----------------------------------------------------------------------------------


def test_stop_returns_promptly_with_a_hanging_request_in_flight(fleet: SimulatedFleet) -> None:
    fleet.set("eu-west-1", mode="hang")
    errors: list[BaseException] = []

    def hang() -> None:
        with http_client(timeout=10.0) as client:
            try:
                get(client, fleet, "eu-west-1", HEALTH)
            except httpx.HTTPError as exc:
                errors.append(exc)

    thread = threading.Thread(target=hang)
    thread.start()
    deadline = time.monotonic() + 5
    while fleet.request_count("eu-west-1") == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    started = time.perf_counter()
    fleet.stop()
    assert time.perf_counter() - started < 1.0
    thread.join(5)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], httpx.RemoteProtocolError)


def test_stop_is_idempotent_and_closes_the_ports(fleet: SimulatedFleet) -> None:
    url = fleet.base_urls["us-east-1"] + HEALTH
    fleet.stop()
    fleet.stop()
    with http_client() as client, pytest.raises(httpx.ConnectError):
        client.get(url)


def test_a_stopped_fleet_cannot_be_started_again() -> None:
    fleet = SimulatedFleet(REGIONS).start()
    fleet.stop()
    with pytest.raises(RuntimeError, match="already been started"):
        fleet.start()


def test_start_on_a_busy_port_raises_and_releases_what_it_bound() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(OSError):
            SimulatedFleet(REGIONS, layout="prefix", port=port).start()


def test_fixed_port_gives_stable_base_urls() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with SimulatedFleet(REGIONS, layout="prefix", port=port) as fleet:
        assert fleet.base_urls["eu-west-1"] == f"http://127.0.0.1:{port}/eu-west-1"


def test_stop_before_start_does_nothing() -> None:
    SimulatedFleet(REGIONS).stop()


# -- scripted incident ---------------------------------------------------------------------------


def test_incident_script_walks_the_region_down_and_back_up(fleet: SimulatedFleet) -> None:
    seen: list[tuple[str, RegionBehaviour, str]] = []

    def on_step(description: str) -> None:
        rollout_version = fleet.behaviour("us-east-1").version
        seen.append((description, fleet.behaviour("eu-west-1"), rollout_version))

    script = IncidentScript(fleet, "eu-west-1", step_seconds=0.01, loop=False, on_step=on_step)
    assert script.rollout_region == "us-east-1"
    script.start()
    assert script.join(5)

    assert [d for d, _, _ in seen] == [d for d, _ in script.steps]
    modes = [b.mode for _, b, _ in seen]
    collapsed = [m for i, m in enumerate(modes) if i == 0 or modes[i - 1] != m]
    assert collapsed == ["healthy", "degraded", "http_500", "drop", "hang", "http_500", "healthy"]
    rates = [b.error_rate for _, b, _ in seen if b.mode == "healthy" and b.error_rate]
    assert max(rates) > rates[0]  # the error rate climbs before the region goes down
    versions = [v for _, _, v in seen]
    assert "1.0.1" in versions and versions[-1] == "1.0.0"  # version skew for a while
    assert fleet.behaviour("eu-west-1") == RegionBehaviour()


def test_incident_script_loops_until_stopped(fleet: SimulatedFleet) -> None:
    descriptions: list[str] = []
    script = IncidentScript(
        fleet, "ap-southeast-1", step_seconds=0.002, on_step=descriptions.append
    ).start()
    deadline = time.monotonic() + 5
    while len(descriptions) <= len(script.steps) and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    script.stop()
    assert time.perf_counter() - started < 1.0
    assert descriptions[len(script.steps)] == descriptions[0]
    assert script.join(0)


def test_default_incident_takes_a_watchable_two_to_three_minutes() -> None:
    script = IncidentScript(SimulatedFleet(REGIONS), "eu-west-1")
    assert 120 <= len(script.steps) * script.step_seconds <= 180


def test_incident_script_rejects_an_unknown_region() -> None:
    with pytest.raises(KeyError, match="mars-1"):
        IncidentScript(SimulatedFleet(REGIONS), "mars-1")


# -- command line --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--regions", ""], "--regions"),
        (["--regions", "us-east-1,bad name"], "--regions"),
        (["--regions", "us-east-1", "--incident", "eu-west-1"], "--incident"),
        (["--layout", "subdomains"], "--layout"),
        (["--step-seconds", "0"], "--step-seconds"),
    ],
)
def test_command_line_rejects_bad_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_command_line_prints_the_deployment_block_and_serves_until_terminated() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "dashboard.demo.simulator", "--regions", "us-east-1,eu-west-1",
         "--layout", "prefix", "--incident", "eu-west-1", "--step-seconds", "30"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(7)]
        assert lines[0] == "deployment:\n"
        assert lines[3] == "  regions: ['us-east-1', 'eu-west-1']\n"
        assert lines[6].startswith("    eu-west-1: 'http://127.0.0.1:")
        url = lines[6].split(": ", 1)[1].strip().strip("'")
        with http_client() as client:
            assert client.get(url + DEPLOYMENT).json()["region"] == "eu-west-1"
        assert "control API" in process.stdout.readline()
        assert "incident: eu-west-1: healthy" in process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_modes_constant_lists_every_documented_mode() -> None:
    assert set(MODES) == {
        "healthy", "degraded", "failing", "http_500", "hang", "drop",
        "bad_json", "html", "huge", "redirect", "wrong_shape",
    }


def test_in_the_ports_layout_every_other_request_is_the_regions_application() -> None:
    """What an edge router in front of the fleet sends traffic to: any path, any method, and the
    answer says which region served it, whatever the region's health behaviour."""
    with SimulatedFleet(REGIONS, layout="ports") as fleet, http_client() as client:
        fleet.set("eu-west-1", mode="http_500")
        base = fleet.base_urls["eu-west-1"]
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            response = client.request(method, base + "/api/v1/orders/7", content=b"{}")
            assert response.status_code == 200, method
            assert response.json() == {"region": "eu-west-1", "method": method, "path": "/api/v1/orders/7"}
        assert client.post(base + HEALTH).json()["method"] == "POST"  # only GET is the health endpoint
        assert client.get(base + HEALTH).status_code == 500
        assert fleet.request_count("eu-west-1") == 1  # application requests are not polls
