"""Outbound probes over real HTTP on loopback: what a probe keeps of each kind of answer."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from dashboard.demo.simulator import SimulatedFleet
from dashboard.model import DEPLOYMENT, HEALTH, TEXT_LIMIT
from dashboard.probes import Prober, ProbeResult

from .conftest import REGIONS


@pytest.fixture
def prober() -> Iterator[Prober]:
    with Prober(timeout_seconds=2, max_body_bytes=4096) as made:
        yield made


def probe_health(fleet: SimulatedFleet, prober: Prober, status: int, content_type: str, body: str) -> ProbeResult:
    fleet.set("eu-west-1", health_answer={"status": status, "content_type": content_type, "body": body})
    results = prober.probe_all([("eu-west-1", fleet.base_urls["eu-west-1"])])
    return next(r for r in results if r.endpoint == HEALTH)


def test_a_failing_answer_keeps_its_json_body(fleet, prober):
    body = '{"status": "DOWN", "components": {"db": {"status": "DOWN"}}}'
    result = probe_health(fleet, prober, 503, "application/vnd.spring-boot.actuator.v3+json", body)
    assert (result.ok, result.answered, result.status_code, result.reason) == (False, True, 503, "HTTP 503")
    assert result.body == {"status": "DOWN", "components": {"db": {"status": "DOWN"}}}
    assert result.text == ""
    assert result.content_type == "application/vnd.spring-boot.actuator.v3+json"


def test_a_plain_text_answer_is_ok_and_kept_as_text(fleet, prober):
    result = probe_health(fleet, prober, 200, "text/plain; charset=utf-8", "ok")
    assert (result.ok, result.answered, result.reason, result.body, result.text) == (True, True, "", None, "ok")
    assert result.content_type == "text/plain"


def test_json_sent_as_text_is_parsed_and_json_that_does_not_parse_is_kept_as_text(fleet, prober):
    assert probe_health(fleet, prober, 200, "text/plain", '{"status": "UP"}').body == {"status": "UP"}
    broken = probe_health(fleet, prober, 200, "application/json", '{"status": "UP"')
    assert (broken.ok, broken.body, broken.text) == (True, None, '{"status": "UP"')


def test_text_is_clipped_to_the_limit(fleet):
    with Prober(timeout_seconds=2, max_body_bytes=64 * 1024) as roomy:
        result = probe_health(fleet, roomy, 500, "text/plain", "x" * (3 * TEXT_LIMIT))
    assert result.answered and len(result.text) == TEXT_LIMIT


def test_a_failing_answer_over_the_cap_names_its_status_and_the_cap(fleet, prober):
    result = probe_health(fleet, prober, 503, "application/json", '{"status": "fail", "pad": "' + "x" * 5000 + '"}')
    assert (result.ok, result.answered, result.status_code) == (False, False, 503)
    assert result.reason.startswith("HTTP 503, answer too large")
    assert "4096" in result.reason
    assert result.body is None and result.text == ""


def test_a_redirect_is_not_followed_nor_read(fleet, prober):
    fleet.set("eu-west-1", mode="redirect")
    result = prober.probe_all([("eu-west-1", fleet.base_urls["eu-west-1"])])[0]
    assert (result.ok, result.answered, result.status_code) == (False, False, 302)
    assert result.reason == "HTTP 302 redirect to '/elsewhere'"


def test_both_endpoints_of_every_region_come_back_in_target_order(fleet, prober):
    results = prober.probe_all([(region, fleet.base_urls[region]) for region in REGIONS])
    assert [(r.region, r.endpoint) for r in results] == [(r, e) for r in REGIONS for e in (HEALTH, DEPLOYMENT)]
    assert all(r.ok and r.answered for r in results)
