"""/metrics and /healthz of the running product, and what it logs: a real `Runtime` (waitress,
scheduler, poller, notifier) on loopback, polling the simulated fleet every second, talked to over
real HTTP. Nothing waits a fixed time: every wait polls the API until what it waits for is true."""
from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from werkzeug.security import generate_password_hash

from dashboard.config import Settings, mask_secret_url
from dashboard.demo.simulator import SimulatedFleet
from dashboard.logs import KEY_VALUE_FORMAT
from dashboard.poller import CycleReport
from dashboard.routing import Change
from dashboard.runtime import Runtime
from dashboard.store import Store

from .conftest import REGIONS, wait_until

ENDPOINTS = ("health", "deployment")
WAIT_SECONDS = 10.0
SECRET_PATH = "/hooks/T0001/B0002/0ps-s3cr3t-webhook-path"
OPERATOR_PASSWORD = "correct horse battery staple"
API_TOKEN = "tok-" + "Zq9" * 12
# A key=value line: `key=value` pairs separated by single spaces; a value is a bare word or a
# Python repr of a string (quoted, so it may hold spaces).
_PAIR = r"""[a-z_]+=(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"]\S*)"""
KEY_VALUE_LINE = re.compile(rf"^{_PAIR}(?: {_PAIR})*$")


# --- the running product -------------------------------------------------------------------------


@dataclass
class Live:
    """A started Runtime, an HTTP client for it, and every cycle report it produced."""

    runtime: Runtime
    client: httpx.Client
    settings: Settings
    reports: list[CycleReport] = field(default_factory=list)
    server_threads: list[threading.Thread] = field(default_factory=list)  # waitress's, started with it
    stopped: bool = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.client.close()
            self.runtime.stop()
            # Wait for the server's loop to end, so anything it raises on the way out is reported
            # against this test rather than whichever test happens to run when it dies.
            for thread in self.server_threads:
                if thread.name == "waitress":
                    thread.join(2)

    def states(self) -> dict[str, str]:
        return {r["region"]: r["state"] for r in self.client.get("/api/v1/status").json()["regions"]}

    def wait_for_states(self, expected: dict[str, str]) -> None:
        wait_until(lambda: self.states() == expected, f"states {expected}, last seen {self.states()}")

    def healthz(self) -> httpx.Response:
        return self.client.get("/healthz")


@pytest.fixture
def start_runtime(fleet: SimulatedFleet, make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Live]]:
    """Start the real Runtime on 127.0.0.1, an ephemeral port, polling `fleet` every second; extra
    keyword arguments are dashboard settings. Stopped at the end of the test."""
    made: list[Live] = []

    def start(**dashboard: Any) -> Live:
        settings = make_settings(fleet, **dashboard)
        reports: list[CycleReport] = []
        runtime = Runtime(settings, on_cycle=reports.append)
        before = set(threading.enumerate())
        url = runtime.start("127.0.0.1", 0)
        threads = [t for t in set(threading.enumerate()) - before if t.name.startswith("waitress")]
        live = Live(runtime, httpx.Client(base_url=url, timeout=10), settings, reports, threads)
        made.append(live)
        return live

    yield start
    for live in reversed(made):
        live.stop()


# --- /metrics ------------------------------------------------------------------------------------


class Scrape:
    """One /metrics answer, parsed by prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample `name` whose labels are exactly `labels`; None when there is none."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, f"{name}{labels} appears {len(found)} times"
        return found[0] if found else None


def scrape(live: Live) -> Scrape:
    response = live.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


def test_metrics_parse_and_carry_region_states_probe_counts_latency_cycles_and_overrides(start_runtime, fleet):
    live = start_runtime(failure_threshold=2)
    live.wait_for_states({r: "up" for r in REGIONS})
    before = scrape(live)
    assert before.value("dashboard_routing_overrides_active") == 0
    assert before.value("dashboard_region_up", region="eu-west-1") == 1

    fleet.set("eu-west-1", mode="http_500")
    # A misrouted region answers as a name we never configured: it must not become a label value.
    fleet.set("ap-southeast-1", answers_as="evil<script>")
    live.wait_for_states({"us-east-1": "up", "eu-west-1": "down", "ap-southeast-1": "degraded"})
    router = live.runtime.app.extensions["dashboard"].router
    router.set_override(Change("eu-west-1", target_region="us-east-1", reason="drill"), actor="t")
    # Freeze the poller (stop waits for a cycle in flight), so every count below is from one moment.
    live.runtime.service.stop()
    cycles = len(live.reports)
    status = {r["region"]: r for r in live.client.get("/api/v1/status").json()["regions"]}
    after = scrape(live)
    now = time.time()

    expected = {"us-east-1": "up", "eu-west-1": "down", "ap-southeast-1": "degraded"}
    for region, state in expected.items():
        for name in ("unknown", "up", "degraded", "down", "stale"):
            assert after.value("dashboard_region_state", region=region, state=name) == (name == state), (
                region, name)
        assert after.value("dashboard_region_up", region=region) == (state == "up")
        assert after.value("dashboard_region_error_rate", region=region, window="5m") == pytest.approx(
            status[region]["error_rate_5m"])
    assert after.value("dashboard_region_error_rate", region="eu-west-1", window="5m") > 0
    assert after.value("dashboard_region_error_rate", region="us-east-1", window="5m") == 0

    # Probe counts by outcome, and one latency observation per probe: both endpoints of every
    # region once per cycle, whatever the answer.
    assert cycles >= 3
    assert after.value("dashboard_poll_cycle_duration_seconds_count") == cycles
    for region in REGIONS:
        for endpoint in ENDPOINTS:
            ok = after.value("dashboard_probes_total", region=region, endpoint=endpoint, outcome="ok") or 0
            failed = after.value("dashboard_probes_total", region=region, endpoint=endpoint, outcome="failed") or 0
            assert ok + failed == cycles, (region, endpoint)
            assert after.value("dashboard_probe_latency_seconds_count", region=region, endpoint=endpoint) == cycles
            assert after.value("dashboard_probe_latency_seconds_bucket", region=region, endpoint=endpoint,
                               le="+Inf") == cycles
            assert after.value("dashboard_probe_latency_seconds_sum", region=region, endpoint=endpoint) > 0
    assert after.value("dashboard_probes_total", region="eu-west-1", endpoint="health", outcome="failed") >= 2
    assert after.value("dashboard_probes_total", region="us-east-1", endpoint="health", outcome="failed") is None

    last_cycle = after.value("dashboard_last_cycle_completed_timestamp_seconds")
    assert now - live.settings.dashboard.poll_interval_seconds * 3 < last_cycle <= now

    assert after.value("dashboard_routing_overrides_active") == 1
    assert after.value("dashboard_routing_override", region="eu-west-1", target_region="us-east-1") == 1
    assert after.value("dashboard_routing_version") == before.value("dashboard_routing_version") + 1

    # Labels are bounded by the configured regions, whatever a region says about itself.
    for sample in after.samples:
        for key in ("region", "target_region"):
            if key in sample.labels:
                assert sample.labels[key] in REGIONS, sample
    assert "evil" not in after.text


# --- /healthz ------------------------------------------------------------------------------------


def healthy(live: Live) -> dict[str, Any] | None:
    response = live.healthz()
    return response.json() if response.status_code == 200 else None


def test_healthz_is_ok_while_running_and_503_naming_the_scheduler_once_it_stops(start_runtime):
    live = start_runtime()
    body = wait_until(lambda: healthy(live), "/healthz 200 after the first cycle")
    assert body["status"] == "ok" and body["problems"] == []
    assert body["poller"]["running"] is True
    assert body["last_cycle_finished_at"] > time.time() - 3

    live.runtime.service.stop()
    response = live.healthz()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["status"] == "fail" and body["poller"]["running"] is False
    # The last cycle is still recent and the database writable: the scheduler is the one problem.
    (problem,) = body["problems"]
    assert "scheduler" in problem


def test_healthz_is_503_naming_the_last_cycle_once_no_cycle_finished_for_three_intervals(start_runtime):
    live = start_runtime()
    wait_until(lambda: healthy(live), "/healthz 200 after the first cycle")
    live.runtime.service.stop()
    assert not any("last poll cycle" in p for p in live.healthz().json()["problems"])

    def stale_problem() -> tuple[dict, float] | None:
        response = live.healthz()
        body = response.json()
        if any("last poll cycle" in p for p in body["problems"]):
            return body, time.time()
        return None

    body, seen_at = wait_until(stale_problem, "a problem naming the last poll cycle", timeout=6)
    assert live.healthz().status_code == 503
    assert seen_at - body["last_cycle_finished_at"] > 3 * live.settings.dashboard.poll_interval_seconds
    (problem,) = [p for p in body["problems"] if "last poll cycle" in p]
    assert "three intervals" in problem


def test_healthz_is_503_naming_the_database_while_another_connection_holds_its_write_lock(start_runtime):
    live = start_runtime()
    wait_until(lambda: healthy(live), "/healthz 200 after the first cycle")
    context = live.runtime.app.extensions["dashboard"]
    # The store's 5 s busy timeout would make /healthz itself wait 5 s on the lock; the web side
    # gets a store on the same file with a short one (the poller keeps the real store).
    quick = Store(live.settings.database_path, busy_timeout_ms=200)
    context.store = quick
    try:
        with closing(sqlite3.connect(live.settings.database_path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            try:
                started = time.monotonic()
                response = live.healthz()
                took = time.monotonic() - started
            finally:
                other.execute("ROLLBACK")
        assert response.status_code == 503
        problems = response.json()["problems"]
        assert len(problems) == 1 and "database is not writable" in problems[0], problems
        assert took < 2
        wait_until(lambda: healthy(live), "/healthz 200 again once the lock is released")
    finally:
        context.store = live.runtime.store
        quick.close()


def test_stop_closes_kept_alive_connections_and_ends_every_web_server_thread(start_runtime):
    live = start_runtime()
    wait_until(lambda: healthy(live), "/healthz 200 after the first cycle")
    server_threads = live.server_threads  # its loop and its request workers
    assert "waitress" in [t.name for t in server_threads] and len(server_threads) > 1
    # The client keeps its connection alive, as a browser or a Prometheus scraper does.
    live.runtime.stop()
    with pytest.raises(httpx.TransportError):
        live.client.get("/healthz")  # nothing answers once stopped, not even on an open connection
    for thread in server_threads:
        thread.join(2)
    assert [t.name for t in server_threads if t.is_alive()] == []


# --- notifications on /healthz, and what is logged -----------------------------------------------


@dataclass
class Received:
    path: str
    body: Any


class Receiver:
    """A webhook receiver on loopback that records every request and answers `status`."""

    def __init__(self, status: int) -> None:
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.requests.append(Received(self.path, json.loads(raw)))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"no_service")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def failing_receiver() -> Iterator[Receiver]:
    receiver = Receiver(500)
    yield receiver
    receiver.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(200)
    yield receiver
    receiver.close()


def test_failed_deliveries_show_on_healthz_without_the_webhook_secret(start_runtime, fleet, failing_receiver, caplog):
    caplog.set_level(logging.DEBUG)
    live = start_runtime(failure_threshold=1, notifications={
        "webhooks": [{"name": "ops", "url": failing_receiver.url, "retries": 0, "timeout_seconds": 2}],
        "min_interval_seconds": 0})
    live.wait_for_states({r: "up" for r in REGIONS})
    fleet.set("eu-west-1", mode="http_500")
    live.wait_for_states({"us-east-1": "up", "eu-west-1": "down", "ap-southeast-1": "up"})
    wait_until(lambda: any(r.body.get("new_state") == "down" for r in failing_receiver.received()),
               "the notice of eu-west-1 going down reaching the receiver")

    def settled() -> httpx.Response | None:
        response = live.healthz()
        failed = response.json()["notifications"]["failed"]
        return response if failed == len(failing_receiver.received()) else None

    # retries 0: every request the receiver answered 500 is one failed delivery.
    response = wait_until(settled, "every failed delivery counted on /healthz")
    # A dead webhook is shown, but does not make the dashboard unhealthy.
    assert response.status_code == 200
    notifications = response.json()["notifications"]
    assert notifications["sent"] == 0 and notifications["failed"] >= 4  # 3 regions unknown->up, then down
    failure = notifications["last_failure"]
    assert failure["receiver"] == "ops"
    assert failure["url"] == mask_secret_url(failing_receiver.url)
    assert failure["error"] == "HTTP 500"  # what kind, never what the receiver answered (open to anyone)
    assert time.time() - 10 < failure["at"] <= time.time()
    (hook,) = notifications["receivers"]
    assert hook["failed"] == notifications["failed"] and hook["last_failure_at"] == failure["at"]
    assert all(r.path == SECRET_PATH for r in failing_receiver.received())

    # Given up, not lost from sight: the failed rows stay in the outbox for /healthz and /metrics.
    assert notifications["outbox"]["failed"] == notifications["failed"] and notifications["queued"] == 0
    metrics = scrape(live)
    assert metrics.value("dashboard_notifications_failed_total") == notifications["failed"]
    assert metrics.value("dashboard_notifications_outbox", state="failed") == notifications["failed"]

    live.stop()  # the shutdown's log lines are checked too
    for text in (response.text, metrics.text, caplog.text):
        assert "s3cr3t" not in text and SECRET_PATH not in text
    assert "event=notice_failed" in caplog.text and mask_secret_url(failing_receiver.url) in caplog.text


def test_events_are_logged_as_one_key_value_line_each_without_secrets(start_runtime, fleet, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    operator_hash = generate_password_hash(OPERATOR_PASSWORD)
    token_hash = generate_password_hash(API_TOKEN, method="pbkdf2:sha256:1000")
    live = start_runtime(
        failure_threshold=1,
        auth={"operators": {"alice": operator_hash}, "api_tokens": {"ci": token_hash}},
        notifications={"webhooks": [{"name": "ops", "url": receiver.url}], "min_interval_seconds": 0})
    live.wait_for_states({r: "up" for r in REGIONS})
    fleet.set("eu-west-1", mode="http_500")
    live.wait_for_states({"us-east-1": "up", "eu-west-1": "down", "ap-southeast-1": "up"})
    rejected = live.client.post("/api/v1/routing/overrides", json={"region": "eu-west-1", "reason": "drill"},
                                headers={"Authorization": f"Bearer {API_TOKEN}x"})
    assert rejected.status_code == 401
    failover = live.client.post(
        "/api/v1/routing/overrides", headers={"Authorization": f"Bearer {API_TOKEN}"},
        json={"region": "eu-west-1", "target_region": "us-east-1", "reason": "eu-west-1 answers 500"})
    assert failover.status_code == 201
    wait_until(lambda: any(r.body.get("kind") == "failover" for r in receiver.received()),
               "the failover notice reaching the receiver")
    live.stop()

    messages = [r.getMessage() for r in caplog.records]

    def one(prefix: str, **fields: str) -> str:
        found = [m for m in messages if m.startswith(prefix + " ")
                 and all(f" {k}={v}" in m for k, v in fields.items())]
        assert found, f"no log line {prefix} {fields}"
        return found[0]

    events = [one("event=cycle", regions="3"),
              one("event=state_change", region="eu-west-1", old="up", new="down"),
              one("event=failover", region="eu-west-1", target="us-east-1", actor="'token:ci'")]
    for message in events:
        assert KEY_VALUE_LINE.match(message), message
    # Every line the dashboard itself logs is one key=value line, as the configured format prints it.
    formatter = logging.Formatter(KEY_VALUE_FORMAT)
    own = [r for r in caplog.records if r.name.split(".")[0] == "dashboard"]
    assert len(own) >= len(events)
    for record in own:
        line = formatter.format(record)
        assert "\n" not in line, line
        assert KEY_VALUE_LINE.match(record.getMessage()), line

    secrets = [operator_hash, operator_hash.rsplit("$", 1)[-1], OPERATOR_PASSWORD, token_hash,
               token_hash.rsplit("$", 1)[-1], API_TOKEN, SECRET_PATH, "s3cr3t"]
    logged = "\n".join(formatter.format(r) for r in caplog.records)
    for secret in secrets:
        assert secret not in logged, f"a secret is logged: {secret[:12]}..."
