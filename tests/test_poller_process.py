"""Issue 17: viewer load must never change what the poller sees.

The poller runs in its own process under `serve` (restarted when it dies, the gap shown), and a
cycle in which the poller itself was starved holds its slowness verdicts and says so. Every wait
polls for a condition; the only timed thing is the injected stall itself.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from bs4 import BeautifulSoup
from prometheus_client.parser import text_string_to_metric_families

from dashboard.config import Settings
from dashboard.demo.simulator import SimulatedFleet
from dashboard.poller import LAG_BOUND_MS
from dashboard.runtime import Runtime
from dashboard.scheduler import PollingService

from .conftest import REGIONS
from .test_ops import wait_until
from .web_helpers import Dash

WAIT_SECONDS = 20.0  # a new poller process imports the package before its first cycle


@pytest.fixture
def serve(fleet: SimulatedFleet,
          make_settings: Callable[..., Settings]) -> Iterator[Callable[..., tuple[Runtime, str]]]:
    """`dashboard serve` as the CLI builds it: the web here, the poller as a supervised child process."""
    made: list[Runtime] = []

    def start(**dashboard: Any) -> tuple[Runtime, str]:
        runtime = Runtime(make_settings(fleet, **dashboard), poller_process=True)
        made.append(runtime)
        return runtime, runtime.start("127.0.0.1", 0)

    yield start
    for runtime in made:
        runtime.stop()


def _overview(client: httpx.Client) -> BeautifulSoup:
    response = client.get("/fragments/overview")
    assert response.status_code == 200
    return BeautifulSoup(response.text, "html.parser")


def _states(client: httpx.Client) -> dict[str, str]:
    return {r["region"]: r["state"] for r in client.get("/api/v1/status").json()["regions"]}


def test_poller_process_killed_is_restarted_and_the_overview_shows_the_gap(serve):
    runtime, url = serve(web={"threads": 3, "queue_limit": 5})
    assert (runtime.server.adj.threads, runtime.server.queue_limit) == (3, 5)  # the config's bounds
    supervisor = runtime.supervisor
    assert supervisor is not None and runtime.prober is None  # this process never probes
    supervisor.restart_delay = 3.0  # long enough that the "down" banner is surely seen
    with httpx.Client(base_url=url, timeout=10) as client:
        wait_until(lambda: client.get("/healthz").status_code == 200, "healthz ok", WAIT_SECONDS)
        wait_until(lambda: _states(client) == {r: "up" for r in REGIONS}, "every region up", WAIT_SECONDS)
        first = supervisor.pid
        assert first is not None and first != os.getpid()

        os.kill(first, signal.SIGKILL)
        banner = wait_until(lambda: _overview(client).find(id="poller-down-banner"), "the poller-down banner")
        assert "The poller is down" in banner.get_text(" ", strip=True)
        health = client.get("/healthz")
        assert health.status_code == 503
        assert any("poller process is down" in p for p in health.json()["problems"])

        gap = wait_until(lambda: _overview(client).find(id="poller-gap-banner"), "the gap banner", WAIT_SECONDS)
        assert "no region was polled in between" in gap.get_text(" ", strip=True)
        assert _overview(client).find(id="poller-down-banner") is None
        assert supervisor.pid not in (None, first)
        events = [e for e in runtime.store.events(limit=20) if e["kind"] == "poller"]
        assert any(f"{first} died (killed by SIGKILL)" in e["reason"] for e in events)
        assert any("poller process back" in e["reason"] for e in events)
        wait_until(lambda: client.get("/healthz").status_code == 200, "healthz ok again", WAIT_SECONDS)
        scrape = client.get("/metrics").text
        assert "dashboard_poller_process_restarts_total 1.0" in scrape
        # What only the poller observes reaches the web process's /metrics through the database,
        # once per family (no duplicate HELP/TYPE: Prometheus rejects a scrape with one).
        families = {f.name: f for f in text_string_to_metric_families(scrape)}
        probes = [s for s in families["dashboard_probes"].samples
                  if s.name == "dashboard_probes_total" and s.labels["region"] == "eu-west-1"]
        assert probes and all(s.value >= 1 for s in probes)
        assert "dashboard_probe_latency_seconds" in families
        assert "dashboard_poll_cycle_duration_seconds" in families
        assert scrape.count("# TYPE dashboard_probe_latency_seconds histogram") == 1

    child = supervisor.process
    assert child is not None
    runtime.stop()
    assert child.poll() is not None  # stopped with the server, not left behind
    assert runtime.store.db.execute("select count(*) from poller_lease").fetchone()[0] == 0


def test_a_stalled_event_loop_makes_no_slow_verdicts_and_shows_the_overload_notice(make_dash: Callable[..., Dash]):
    # Slow is 300 ms here, so a 600 ms stall would make every region "slow" if it were believed
    # (the timeout is longer than the stall: a timeout is a failure, and failures still count).
    dash = make_dash(slow_latency_ms=300, timeout_seconds=2, poll_interval_seconds=5, failure_threshold=1)
    dash.fleet.set("eu-west-1", mode="http_500")  # a real failure in the same cycle still counts
    dash.poller.prober.stall_hook = lambda: time.sleep(0.6)  # a blocking call on the probe loop
    service = PollingService(dash.poller, heartbeat=True)

    report = service.run_once()

    assert report is not None and report.overloaded
    assert report.lag_ms is not None and report.lag_ms > LAG_BOUND_MS
    slow_probes = [r for r in report.results if r.latency_ms is not None and r.latency_ms > 300]
    assert slow_probes  # the stall did reach the measured latencies...
    states = {r.region: (r.state, r.reason) for r in report.regions}
    assert not any("slow" in reason for _, reason in states.values())  # ...and made no verdict
    assert states["eu-west-1"][0] == "down"
    assert {s for region, (s, _) in states.items() if region != "eu-west-1"} == {"up"}

    notice = dash.page("/").find(id="overload-banner")
    assert notice is not None
    assert "The dashboard is overloaded: latencies unreliable since" in notice.get_text(" ", strip=True)
    health = dash.json("/healthz")  # overloaded is not unhealthy: the dashboard serves, and says so
    assert health["overloaded_since"] == pytest.approx(report.started_at)
    assert health["event_loop_lag_ms"] > LAG_BOUND_MS
    assert "dashboard_poller_overloaded 1.0" in dash.get("/metrics").get_data(as_text=True)

    dash.poller.prober.stall_hook = None
    calm = service.run_once()
    assert calm is not None and not calm.overloaded
    assert dash.page("/").find(id="overload-banner") is None


def test_a_probe_out_of_time_in_an_overloaded_cycle_is_held_not_failed(make_dash: Callable[..., Dash]):
    """A timeout is a verdict made by the clock: while the poller is starved it is neither a failure
    nor a success (the region stays as it was, the error-rate window leaves it out); in a calm
    cycle the same timeout is a failure again."""
    dash = make_dash(timeout_seconds=0.3, poll_interval_seconds=5, failure_threshold=1)
    service = PollingService(dash.poller, heartbeat=True)
    first = service.run_once()
    assert first is not None and {r.state for r in first.regions} == {"up"}
    region = first.regions[0].region
    window_before = dash.store.window_counts([region], 0)[region]
    dash.fleet.set(region, delay_seconds=1.0)  # answers after the deadline, stalled or not

    dash.poller.prober.stall_hook = lambda: time.sleep(0.6)
    stalled = service.run_once()

    assert stalled is not None and stalled.overloaded
    assert any(r.region == region and r.endpoint == "health" and r.timed_out for r in stalled.results)
    held = {r.region: r for r in stalled.regions}[region]
    assert held.state == "up"  # failure_threshold is 1: a believed timeout would have made it down
    assert not stalled.transitions
    assert dash.store.window_counts([region], 0)[region] == window_before  # no health sample for it

    dash.poller.prober.stall_hook = None
    calm = service.run_once()
    assert calm is not None and not calm.overloaded
    assert {r.region: r.state for r in calm.regions}[region] == "down"
    assert dash.store.window_counts([region], 0)[region].failed == window_before.failed + 1


def test_requests_past_the_queue_limit_get_503_with_retry_after_instead_of_waiting():
    from concurrent.futures import ThreadPoolExecutor

    from flask import Flask

    from dashboard.web.server import start_server, stop_server, url_of

    app = Flask(__name__)
    entered, release = threading.Event(), threading.Event()

    @app.get("/busy")
    def busy() -> str:
        entered.set()
        release.wait(10)
        return "done"

    server = start_server(app, "127.0.0.1", 0, threads=1, queue_limit=1)
    url = url_of(server, "127.0.0.1")
    try:
        with ThreadPoolExecutor(2) as pool:
            working = pool.submit(httpx.get, url + "busy", timeout=10)  # holds the only worker
            assert entered.wait(10)
            waiting = pool.submit(httpx.get, url + "busy", timeout=10)  # the one allowed to wait
            wait_until(lambda: len(server.task_dispatcher.queue) == 1, "one request waiting")
            shed = httpx.get(url + "busy", timeout=10)  # answered while the worker is still busy
            assert not release.is_set()
            assert shed.status_code == 503
            assert shed.headers["Retry-After"] == "2"
            release.set()
            assert working.result().status_code == 200
            assert waiting.result().status_code == 200
    finally:
        release.set()
        stop_server(server)


def _fleet_process(regions: int, slow: str, conn: Any) -> None:
    """The fleet in its own process, so the viewers' load cannot slow its answers for real."""
    fleet = SimulatedFleet(regions, layout="ports").start()
    fleet.set(slow, delay_seconds=2.5)
    conn.send(fleet.deployment_block())
    conn.recv()
    fleet.stop()


def _hammer(url: str, threads: int, conn: Any) -> None:
    """In its own process: viewers with no think time, until told to stop; sends back the count."""
    import threading as th

    done, count = th.Event(), [0]

    def viewer() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not done.is_set():
                client.get("/fragments/overview", headers={"HX-Request": "true"})
                client.get("/api/v1/status")
                count[0] += 2

    workers = [th.Thread(target=viewer) for _ in range(threads)]
    for w in workers:
        w.start()
    conn.recv()
    done.set()
    for w in workers:
        w.join()
    conn.send(count[0])


def test_200_healthy_regions_stay_up_under_heavy_viewer_load_while_a_slow_region_is_degraded(tmp_path):
    import multiprocessing

    from dashboard.config import load_settings

    from .conftest import write_config

    slow = "region-007"
    spawn = multiprocessing.get_context("spawn")
    fleet_end, fleet_conn = spawn.Pipe()
    fleet = spawn.Process(target=_fleet_process, args=(200, slow, fleet_conn))
    fleet.start()
    runtime: Runtime | None = None
    try:
        deployment = fleet_end.recv()
        config = write_config(tmp_path / "config.yaml", deployment, database="dashboard.db",
                              poll_interval_seconds=4, timeout_seconds=3.5)
        runtime = Runtime(load_settings(str(config), environ={}), poller_process=True)
        url = runtime.start("127.0.0.1", 0)
        store = runtime.store
        with httpx.Client(base_url=url, timeout=30) as client:
            before_load = {slow: "degraded", **{f"region-{i:03d}": "up" for i in range(200) if i != 7}}
            wait_until(lambda: _states(client) == before_load, "199 regions up, the slow one degraded", 60)
            load_started = time.time()
            load_end, load_conn = spawn.Pipe()
            load = spawn.Process(target=_hammer, args=(url, 24, load_conn))
            load.start()
            try:
                # Three whole cycles under load, the slow region judged in them.
                wait_until(lambda: store.db.execute(
                    "select count(*) from samples where region = ? and endpoint = 'health' and ts > ?",
                    [slow, load_started]).fetchone()[0] >= 3, "three cycles under load", 60)
            finally:
                load_end.send("stop")
                requests = load_end.recv()
                load.join()
            assert requests > 0
            states = {r["region"]: r for r in client.get("/api/v1/status").json()["regions"]}
        left_up = list(store.db.query(
            "select region, reason from events where kind = 'state' and old_state = 'up' and at >= ?",
            [load_started]))
        assert [e for e in left_up if e["region"] != slow] == []
        assert {r["state"] for name, r in states.items() if name != slow} == {"up"}
        assert states[slow]["state"] == "degraded" and "slow" in states[slow]["reason"]
    finally:
        if runtime is not None:
            runtime.stop()
        fleet_end.send("stop")
        fleet.join()
