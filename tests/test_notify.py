"""Notifications: a real receiver on loopback, the real Notifier on a real SQLite outbox, and the
real poller against the simulated fleet, wired the way the scheduler wires them (each cycle's
transitions handed over). A killed `dashboard poll` shows that the outbox outlives a crash.

stamina runs in its testing mode here (retries happen at once), so no test waits out a backoff.
Nothing sleeps a fixed time: every wait is for a condition, with a deadline."""
from __future__ import annotations

import base64
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import quote

import pytest
import stamina

from dashboard.config import Settings, mask_secret_url
from dashboard.demo.simulator import SimulatedFleet
from dashboard.model import Transition
from dashboard.notify import (
    DEFAULT_MAX_QUEUE,
    Notice,
    Notifier,
    Throttle,
    apprise_url,
    notice_from_json,
    notice_to_json,
    retry_after_seconds,
    scrub,
    secret_pieces,
    slack_body,
    slack_escape,
    summary_line,
)
from dashboard.poller import Poller
from dashboard.store import Sample, Store
from dashboard.store.outbox import OutboxNotice
from dashboard.web import create_app

from .conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "T0001/B0002/s3cr3t-t0k3n"
SECRET_BITS = ("s3cr3t", "T0001", "B0002")
WAIT_SECONDS = 10.0
T = TypeVar("T")
MakeSettings = Callable[..., Settings]
PollerFor = Callable[..., Poller]
MakeStore = Callable[..., tuple[Store, Settings]]


class NotifierFor(Protocol):
    def __call__(self, settings: Settings, *, start: bool = True, clock: Callable[[], float] = time.time,
                 max_queue: int = DEFAULT_MAX_QUEUE, scope: Literal["all", "own"] = "all") -> Notifier: ...


@pytest.fixture(autouse=True)
def retries_without_waiting() -> Iterator[None]:
    """stamina's testing mode: no backoff, no Retry-After wait; each delivery keeps its own attempts."""
    with stamina.set_testing(True, attempts=10, cap=True):
        yield


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]  # the JSON it was sent
    answered: int | None = None  # the status it was answered with; None while (or if never) answered


@dataclass
class Receiver:
    """A webhook receiver on loopback that records every request. It answers `status` (or the next
    of `script`), or hangs (never answers) until released, or echoes its own path back (`echo`)."""

    status: int = 200
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    hang: bool = False
    echo: Callable[[str], str] | None = None
    requests: list[Received] = field(default_factory=list)
    hanging: int = 0

    def __post_init__(self) -> None:
        self._release = threading.Event()
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                got = Received(self.path, dict(self.headers), json.loads(raw))
                with receiver._cond:
                    receiver.requests.append(got)
                    receiver._cond.notify_all()
                    hang = receiver.hang
                    status, headers = receiver.script.pop(0) if receiver.script else (receiver.status, {})
                if hang:
                    with receiver._cond:
                        receiver.hanging += 1
                    receiver._release.wait()
                    with receiver._cond:
                        receiver.hanging -= 1
                    return  # the client gave up long ago: answer nothing
                body = (receiver.echo(self.path) if receiver.echo else "ok" if status < 300 else "no_service").encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                with receiver._cond:
                    got.answered = status
                    receiver._cond.notify_all()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/services/{SECRET}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def count(self) -> int:
        with self._cond:
            return len(self.requests)

    def wait_for(self, n: int, timeout: float = WAIT_SECONDS) -> list[Received]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.requests) >= n, timeout), (
                f"expected {n} request(s), got {len(self.requests)}")
            return list(self.requests)

    def delivered(self) -> list[Received]:
        """The requests it answered with a 2xx: the notices it really has."""
        with self._cond:
            return [r for r in self.requests if r.answered is not None and 200 <= r.answered < 300]

    def release(self) -> None:
        """Stop hanging: what hangs now ends without an answer, what comes next is answered."""
        with self._cond:
            self.hang = False
        self._release.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def notifier_for() -> Iterator[NotifierFor]:
    """Build (and start) notifiers on the settings' database; every one is stopped at the end."""
    made: list[tuple[Notifier, Store]] = []

    def build(settings: Settings, *, start: bool = True, clock: Callable[[], float] = time.time,
              max_queue: int = DEFAULT_MAX_QUEUE, scope: Literal["all", "own"] = "all") -> Notifier:
        store = Store(settings.database_path)
        notifier = Notifier(settings, store=store, backoff_seconds=0.01, clock=clock, max_queue=max_queue,
                            scope=scope)
        made.append((notifier, store))
        if start:
            notifier.start()
        return notifier

    yield build
    for notifier, store in made:
        notifier.stop(timeout=1)
        assert not notifier.running
        store.close()


def hook(receiver: Receiver, **extra: object) -> dict[str, object]:
    return {"name": "ops", "url": receiver.url, **extra}


def run_cycles(poller: Poller, notifier: Notifier, n: int = 1) -> list[Transition]:
    """What the Runtime's on_cycle hook does: hand each cycle's transitions to the notifier."""
    seen: list[Transition] = []
    for _ in range(n):
        report = poller.run_cycle()
        notifier.state_changes(report.transitions)
        seen += report.transitions
    return seen


def t(old: str, new: str, reason: str = "why", at: float = 1_000.0, region: str = "eu-west-1") -> Transition:
    return Transition(region, old, new, reason, at)


def outbox_rows(settings: Settings) -> list[dict[str, Any]]:
    """The outbox as another process sees it: read straight from the SQLite file."""
    conn = sqlite3.connect(str(settings.database_path), timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("select * from notification_outbox order by id")]
    finally:
        conn.close()


def reaching_our_handlers(caplog: pytest.LogCaptureFixture) -> str:
    """The log text the dashboard's own handlers (on the root logger) would get: caplog also
    listens on loggers that do not propagate, such as Apprise's, whose DEBUG lines hold URLs."""
    def reaches_root(name: str) -> bool:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None and logger.parent is not None:
            if not logger.propagate:
                return False
            logger = logger.parent
        return True

    return "\n".join(caplog.handler.format(r) for r in caplog.records if reaches_root(r.name))


def no_secret_in(*texts: str) -> bool:
    return not any(bit.lower() in text.lower() for text in texts for bit in SECRET_BITS)


class Clock:
    """An injected clock for the rate limit: it moves only when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- through the real poller ---------------------------------------------------------------------


def test_a_region_going_down_after_three_failed_polls_sends_exactly_one_notice(
        fleet: SimulatedFleet, make_settings: MakeSettings, poller_for: PollerFor, notifier_for: NotifierFor,
        receiver: Receiver) -> None:
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver)], "min_interval_seconds": 2})
    poller = poller_for(fleet, settings)
    poller.run_cycle()  # the fleet is known to be up before the notifier starts
    notifier = notifier_for(settings)
    fleet.set("eu-west-1", mode="http_500")
    assert run_cycles(poller, notifier, 2) == []  # below the threshold: no change, no notice
    changes = run_cycles(poller, notifier, 1)
    assert [(c.region, c.old_state, c.new_state) for c in changes] == [("eu-west-1", "up", "down")]
    receiver.wait_for(1)
    notifier.stop(timeout=2)  # whatever else was due would have been sent by now
    (notice,) = receiver.requests
    assert notice.path == f"/services/{SECRET}"
    body = notice.body
    assert body["kind"] == "state_change"
    assert (body["region"], body["old_state"], body["new_state"]) == ("eu-west-1", "up", "down")
    assert body["reason"] == "health: HTTP 500 (3 failed polls in a row)"
    assert body["dashboard_region"] == settings.deployment.region
    assert body["held_back"] == [] and body["at"].endswith("Z")
    # The idempotency key a receiver drops a duplicate by, in the body and as a header.
    assert len(body["notice_id"]) == 32 and notice.headers["Idempotency-Key"] == body["notice_id"]
    assert notifier.status()["sent"] == 1
    (row,) = outbox_rows(settings)
    assert (row["notice_id"], row["state"], row["attempts"], row["claimed_by"]) == (
        body["notice_id"], "delivered", 1, None)


def test_every_change_is_one_notice_without_a_minimum_interval(
        fleet: SimulatedFleet, make_settings: MakeSettings, poller_for: PollerFor, notifier_for: NotifierFor,
        receiver: Receiver) -> None:
    settings = make_settings(fleet, failure_threshold=1, success_threshold=1,
                             notifications={"webhooks": [hook(receiver)], "min_interval_seconds": 0})
    poller = poller_for(fleet, settings)
    notifier = notifier_for(settings)
    run_cycles(poller, notifier)  # first poll: each region unknown -> up, one notice each
    receiver.wait_for(3)
    fleet.set("eu-west-1", mode="http_500")
    run_cycles(poller, notifier)
    fleet.reset("eu-west-1")
    run_cycles(poller, notifier)
    receiver.wait_for(5)
    notifier.stop(timeout=2)
    received = receiver.requests
    assert len(received) == 5
    assert sorted(r.body["region"] for r in received[:3]) == ["ap-southeast-1", "eu-west-1", "us-east-1"]
    assert [(r.body["old_state"], r.body["new_state"]) for r in received[3:]] == [("up", "down"), ("down", "up")]


def test_a_flap_inside_the_minimum_interval_sends_one_notice_then_one_summary(
        fleet: SimulatedFleet, make_settings: MakeSettings, poller_for: PollerFor, notifier_for: NotifierFor,
        receiver: Receiver) -> None:
    interval = 60
    clock = Clock(10_000.0)
    settings = make_settings(fleet, failure_threshold=1, success_threshold=1,
                             notifications={"webhooks": [hook(receiver)], "min_interval_seconds": interval})
    poller = poller_for(fleet, settings)
    poller.run_cycle()
    notifier = notifier_for(settings, clock=clock)
    for mode in ("http_500", "healthy", "http_500", "healthy"):  # up->down->up->down->up
        fleet.set("eu-west-1", mode=mode)
        assert len(run_cycles(poller, notifier)) == 1
        clock.now += 1
    (first,) = receiver.wait_for(1)
    assert (first.body["old_state"], first.body["new_state"]) == ("up", "down")
    wait_until(lambda: notifier.status()["sent"] == 1, "the first notice delivered and marked so")
    # Inside the interval the held changes are only in the rate limit: nothing waits in the outbox.
    status = notifier.status()
    assert status["held_back"] == 3 and status["holding_regions"] == 1
    assert status["outbox"] == {"pending": 0, "delivered": 1, "failed": 0, "dropped": 0}
    # Once the interval has passed: one summary with the latest state and what was held back,
    # without any further change.
    clock.now = 10_000.0 + interval
    summary = receiver.wait_for(2)[1]
    body = summary.body
    assert (body["old_state"], body["new_state"]) == ("down", "up")
    assert [(h["old_state"], h["new_state"]) for h in body["held_back"]] == [
        ("down", "up"), ("up", "down"), ("down", "up")]
    assert "3 more changes held back since" in body["summary"]
    notifier.stop(timeout=2)
    assert receiver.count() == 2


def test_a_hanging_receiver_delays_neither_polling_nor_notices_and_stop_does_not_wait_for_it(
        fleet: SimulatedFleet, make_settings: MakeSettings, poller_for: PollerFor, notifier_for: NotifierFor,
        receiver: Receiver) -> None:
    receiver.hang = True
    settings = make_settings(fleet, failure_threshold=1, success_threshold=1, notifications={
        "webhooks": [hook(receiver, timeout_seconds=30, retries=0)], "min_interval_seconds": 0})
    poller = poller_for(fleet, settings)
    poller.run_cycle()
    notifier = notifier_for(settings, max_queue=2)
    fleet.set("eu-west-1", mode="http_500")
    run_cycles(poller, notifier)
    receiver.wait_for(1)  # the notice is now stuck in the hanging receiver
    for mode in ("healthy", "http_500", "healthy", "http_500"):
        fleet.set("eu-west-1", mode=mode)
        report = poller.run_cycle()
        assert report.stored and len(report.transitions) == 1
        notifier.state_changes(report.transitions)
        notifier.routing_changed("failover", "eu-west-1", "alice", "drill", {"target_region": "us-east-1"})
    # Every cycle and every call completed while the receiver still hangs; the outbox stays bounded:
    # the notice in flight and the newest one wait, the 7 in between were dropped.
    assert receiver.hanging == 1 and receiver.count() == 1
    status = notifier.status()
    assert status["queued"] == 2 and status["dropped"] == 7
    assert status["outbox"] == {"pending": 2, "delivered": 0, "failed": 0, "dropped": 7}
    notifier.stop(timeout=0.2)
    assert not notifier.running
    assert receiver.hanging == 1  # stop() returned without waiting for the receiver
    assert notifier.status()["sent"] == 0
    assert [r["state"] for r in outbox_rows(settings)].count("pending") == 2  # for the next start


# --- retries, failures and secrets ----------------------------------------------------------------


@pytest.mark.parametrize(("status", "attempts"), [(500, 3), (404, 1), (302, 1)])
def test_a_failing_receiver_is_retried_then_the_failure_is_recorded_with_the_url_masked(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver,
        caplog: pytest.LogCaptureFixture, status: int, attempts: int) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.status = status
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver, retries=2, timeout_seconds=2)]})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down", "health: HTTP 500"))
    wait_until(lambda: notifier.status()["failed"], "the delivery given up")
    notifier.stop(timeout=2)
    # A 404 (revoked hook) or a redirect (never followed) is not retried: repeating it cannot help.
    assert receiver.count() == attempts
    state = notifier.status()
    assert state["failed"] == 1 and state["sent"] == 0
    failure = state["last_failure"]
    assert failure["receiver"] == "ops"
    assert failure["error"] == f"HTTP {status}: no_service"
    assert failure["url"] == mask_secret_url(receiver.url)
    (row,) = outbox_rows(settings)
    assert (row["state"], row["attempts"], row["last_error"]) == ("failed", attempts, f"HTTP {status}: no_service")
    assert state["outbox"]["failed"] == 1  # kept for /healthz and /metrics
    assert no_secret_in(json.dumps(state), caplog.text)
    assert "event=notice_failed" in caplog.text and mask_secret_url(receiver.url) in caplog.text


def test_healthz_says_what_kind_of_failure_and_never_what_the_receiver_sent(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver) -> None:
    """/healthz is open to anyone: a receiver's answer (here "no_service"; it could echo anything)
    stays out of it, while the operator's own status keeps it."""
    receiver.status = 404
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver, retries=0)]})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down"))
    wait_until(lambda: notifier.status()["failed"], "the delivery given up")
    store = Store(settings.database_path)
    try:
        app = create_app(settings, store=store, notifier=notifier)
        body = app.test_client().get("/healthz").get_json()
    finally:
        store.close()
    assert body["notifications"]["last_failure"]["error"] == "HTTP 404"
    assert "no_service" not in json.dumps(body)
    assert notifier.status()["last_failure"]["error"] == "HTTP 404: no_service"


def test_a_503_with_retry_after_is_retried_and_then_delivered(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver) -> None:
    receiver.script = [(503, {"Retry-After": "30"}), (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})]
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver, retries=3)]})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down"))
    wait_until(lambda: notifier.status()["sent"], "the notice delivered")
    notifier.stop(timeout=2)
    assert [r.answered for r in receiver.requests] == [503, 429, 200]
    assert len({r.body["notice_id"] for r in receiver.requests}) == 1  # the same notice, retried
    (row,) = outbox_rows(settings)
    assert (row["state"], row["attempts"]) == ("delivered", 3)


def test_a_receiver_with_a_user_in_its_url_gets_basic_auth_and_the_password_stays_hidden(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = receiver.url.replace("http://", "http://bot:p%40ss-s3cr3t@")
    settings = make_settings(fleet, notifications={"webhooks": [{"name": "ops", "url": url}]})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down"))
    (request,) = receiver.wait_for(1)
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"bot:p@ss-s3cr3t").decode()
    notifier.stop(timeout=2)
    assert no_secret_in(caplog.text, json.dumps(notifier.status()))


ECHOES = {
    "percent-encoded": lambda path: "bad hook " + quote(path, safe=""),
    "percent-encoded twice": lambda path: "bad hook " + quote(quote(path, safe=""), safe=""),
    "JSON-escaped": lambda path: json.dumps({"url": "http://x" + path}).replace("/", "\\/"),
    "unicode-escaped": lambda path: json.dumps({"token": path.rsplit("/", 1)[-1]}).replace("-", "\\u002d"),
    "the token alone, upper case": lambda path: "invalid token " + path.rsplit("/", 1)[-1].upper(),
    "HTML-escaped": lambda path: "<p>no such hook: " + path.replace("/", "&#x2F;") + "</p>",
}


@pytest.mark.parametrize("echo", list(ECHOES), ids=list(ECHOES))
def test_a_receiver_echoing_its_url_back_re_encoded_never_leaks_the_secret(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver,
        caplog: pytest.LogCaptureFixture, echo: str) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.status, receiver.echo = 400, ECHOES[echo]
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver)]})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down"))
    wait_until(lambda: notifier.status()["failed"], "the delivery given up")
    notifier.stop(timeout=2)
    error = notifier.status()["last_failure"]["error"]
    assert error.startswith("HTTP 400: ") and "***" in error
    (row,) = outbox_rows(settings)
    assert no_secret_in(error, row["last_error"], caplog.text, json.dumps(notifier.status()))


def test_successful_deliveries_never_log_the_webhook_url(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver)]})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down"))
    receiver.wait_for(1)
    notifier.stop(timeout=1)
    assert "event=notice_sent" in caplog.text
    assert no_secret_in(caplog.text, json.dumps(notifier.status()))


# --- Apprise targets ----------------------------------------------------------------------------------


def test_an_apprise_target_gets_the_notice_as_text_and_its_url_stays_masked(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    target = {"name": "chat", "url": receiver.url.replace("http://", "json://"), "retries": 0}
    settings = make_settings(fleet, notifications={"targets": [target]})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down", "health: HTTP 500 <!here>"))
    (request,) = receiver.wait_for(1)
    wait_until(lambda: notifier.status()["sent"], "the notice delivered")
    notifier.stop(timeout=2)
    assert request.path == f"/services/{SECRET}"  # our retry=0&redirect=no are Apprise's own, not sent
    body = request.body
    assert (body["title"], body["type"]) == ("eu-west-1 is DOWN", "failure")
    assert body["message"].startswith("eu-west-1 is DOWN (was up): health: HTTP 500 <!here>\n")
    status = notifier.status()
    assert status["receivers"] == [{"name": "chat", "format": "apprise", "url": "json://***", "sent": 1, "failed": 0,
                                    "last_sent_at": status["receivers"][0]["last_sent_at"], "last_failure_at": None,
                                    "queued": 0}]
    assert no_secret_in(reaching_our_handlers(caplog), json.dumps(status))
    assert "event=notice_sent receiver=chat url=json://***" in caplog.text


def test_an_apprise_target_that_fails_is_retried_since_apprise_gives_no_status(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.status = 404  # a permanent error for a webhook, but Apprise reports only "failure"
    target = {"name": "chat", "url": receiver.url.replace("http://", "json://"), "retries": 1}
    settings = make_settings(fleet, notifications={"targets": [target]})
    notifier = notifier_for(settings)
    notifier.routing_changed("failover", "eu-west-1", "alice", "drill", {"target_region": "us-east-1"})
    wait_until(lambda: notifier.status()["failed"], "the delivery given up")
    notifier.stop(timeout=2)
    assert receiver.count() == 2
    failure = notifier.status()["last_failure"]
    assert failure["url"] == "json://***" and failure["error"].startswith("apprise FAILURE")
    assert no_secret_in(reaching_our_handlers(caplog), json.dumps(notifier.status()))


def test_apprise_is_imported_only_when_a_target_is_configured(
        fleet: SimulatedFleet, make_settings: MakeSettings, receiver: Receiver) -> None:
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver)]})
    script = ("import sys\nfrom dashboard.config import load_settings\nfrom dashboard.runtime import Runtime\n"
              "runtime = Runtime(load_settings(sys.argv[1], environ={}))\nruntime.notifier.start()\n"
              "runtime.notifier.stop(timeout=1)\nruntime.close()\nprint('apprise' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script, str(settings.source)], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- routing actions, formats, stop -------------------------------------------------------------


def test_routing_actions_are_never_rate_limited(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver) -> None:
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver, format="slack")],
                                                   "min_interval_seconds": 600})
    notifier = notifier_for(settings)
    notifier.routing_changed("failover", "eu-west-1", "alice", "eu <!channel> is on fire",
                             {"target_region": "us-east-1", "read_only": True, "forced": False})
    notifier.routing_changed("failback", "eu-west-1", "token:ci", "fixed", {"version": 3})
    notifier.routing_changed("lapse", "eu-west-1", "expiry", "override expired", {})
    received = receiver.wait_for(3)
    texts = [r.body["text"] for r in received]
    assert texts[0] == (":twisted_rightwards_arrows: eu-west-1 failed over to us-east-1 (read-only) by alice: "
                        "eu &lt;!channel&gt; is on fire")
    assert texts[1].startswith(":leftwards_arrow_with_hook: eu-west-1 failed back")
    assert "lapsed" in texts[2]


def test_a_slack_webhook_gets_slack_blocks_with_region_text_escaped(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver) -> None:
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver, format="slack")]})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down", "health: HTTP 500 <!here> <https://evil.example|login> & co"))
    request = receiver.wait_for(1)[0]
    body = request.body
    assert set(body) == {"text", "blocks"}  # Slack's own format; the idempotency key is a header only
    assert len(request.headers["Idempotency-Key"]) == 32
    assert body["text"] == (":red_circle: eu-west-1 is DOWN (was up): health: HTTP 500 &lt;!here&gt; "
                            "&lt;https://evil.example|login&gt; &amp; co")
    assert body["blocks"][0] == {"type": "section", "text": {"type": "mrkdwn", "text": body["text"]}}
    assert all(block["type"] in ("section", "context") for block in body["blocks"])
    assert "<" not in json.dumps(body).replace("\\u003c", "<").replace("&lt;", "")


def test_without_receivers_the_notifier_does_nothing(fleet: SimulatedFleet, make_settings: MakeSettings) -> None:
    notifier = Notifier(make_settings(fleet))
    notifier.start()
    notifier.state_changed(t("up", "down"))
    assert not notifier.running
    assert notifier.status()["webhooks"] == 0 and notifier.status()["queued"] == 0
    notifier.stop()


def test_held_changes_are_sent_at_stop(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver) -> None:
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver)], "min_interval_seconds": 600})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down"))
    notifier.state_changed(t("down", "up", at=1_010.0))
    receiver.wait_for(1)
    notifier.stop(timeout=2)
    received = receiver.wait_for(2)
    assert (received[1].body["old_state"], received[1].body["new_state"]) == ("down", "up")
    assert len(received[1].body["held_back"]) == 1


# --- surviving a stop and a crash -----------------------------------------------------------------


def test_what_one_notifier_left_in_the_outbox_the_next_one_delivers_exactly_once(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver) -> None:
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver)]})
    first = notifier_for(settings, start=False)  # a process that stored notices and stopped before sending
    first.state_changed(t("up", "down"))
    first.routing_changed("failover", "eu-west-1", "alice", "drill", {"target_region": "us-east-1"})
    first.stop(timeout=1)
    assert [r["state"] for r in outbox_rows(settings)] == ["pending", "pending"]
    second = notifier_for(settings)
    wait_until(lambda: len(receiver.delivered()) == 2, "both notices delivered by the next notifier")
    second.stop(timeout=2)
    third = notifier_for(settings)  # a delivered row is never sent again
    third.stop(timeout=2)
    assert [r.body["kind"] for r in receiver.requests] == ["state_change", "failover"]
    assert [r["state"] for r in outbox_rows(settings)] == ["delivered", "delivered"]


def test_a_cli_notifier_delivers_its_own_notice_and_leaves_the_rest_to_the_server(
        fleet: SimulatedFleet, make_settings: MakeSettings, notifier_for: NotifierFor, receiver: Receiver) -> None:
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver)]})
    earlier = notifier_for(settings, start=False)
    earlier.state_changed(t("up", "down"))  # waiting for the server, which is not running
    cli = notifier_for(settings, scope="own")
    cli.routing_changed("failback", "eu-west-1", "cli:alice", "fixed", {})
    cli.stop(timeout=5)
    assert [r.body["kind"] for r in receiver.requests] == ["failback"]
    assert [r["state"] for r in outbox_rows(settings)] == ["pending", "delivered"]


def _start_poll(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if key != "DASHBOARD_CONFIG"}
    with log_path.open("ab") as log_file:
        return subprocess.Popen([sys.executable, "-m", "dashboard.cli", "poll", "--config", str(settings.source)],
                                cwd=ROOT, env=env, stdout=log_file, stderr=log_file)


def test_a_notice_stored_before_a_kill_9_is_delivered_exactly_once_after_a_restart(
        fleet: SimulatedFleet, make_settings: MakeSettings, receiver: Receiver, tmp_path: Path) -> None:
    """`dashboard poll` stores eu-west-1 going down, is killed with SIGKILL before any receiver
    answered, and a second `dashboard poll` on the same database delivers every notice once."""
    receiver.hang = True  # takes the request, never answers: not delivered
    fleet.set("eu-west-1", mode="http_500")
    settings = make_settings(fleet, failure_threshold=1, notifications={
        "webhooks": [hook(receiver, timeout_seconds=1, retries=3)], "min_interval_seconds": 0})
    log_path = tmp_path / "poll.log"
    first = _start_poll(settings, log_path)
    try:
        receiver.wait_for(1, timeout=30)  # the cycle is stored and a delivery is in flight
    finally:
        first.kill()  # SIGKILL: no finally block, no stop(), no flush runs in the child
        first.wait(10)
    assert first.returncode == -signal.SIGKILL
    before = outbox_rows(settings)
    # The first cycle's three notices (each region was unknown), eu-west-1's DOWN among them, all
    # stored, none delivered: one was in flight, the others never tried.
    assert sorted(row["region"] for row in before) == ["ap-southeast-1", "eu-west-1", "us-east-1"]
    assert {row["state"] for row in before} == {"pending"} and receiver.delivered() == []
    down = next(json.loads(row["notice_json"]) for row in before if row["region"] == "eu-west-1")
    assert down["new_state"] == "down"

    receiver.release()
    second = _start_poll(settings, log_path)
    try:
        stored_ids = {row["notice_id"] for row in before}
        wait_until(lambda: all(row["state"] == "delivered" for row in outbox_rows(settings)
                               if row["notice_id"] in stored_ids),
                   "every notice of the killed process delivered by the restarted one", timeout=30)
    finally:
        second.send_signal(signal.SIGINT)  # a graceful stop: nothing is in flight any more after it
        second.wait(20)
    assert second.returncode == 0, log_path.read_text()
    delivered = [r.body["notice_id"] for r in receiver.delivered()]
    assert sorted(i for i in delivered if i in stored_ids) == sorted(stored_ids)  # each exactly once
    assert len(delivered) == len(set(delivered))
    assert next(r.body for r in receiver.delivered() if r.body["notice_id"] == down["id"])["new_state"] == "down"
    assert no_secret_in(log_path.read_text())


def test_a_change_stored_but_never_handed_over_is_announced_once_at_the_next_start(
        fleet: SimulatedFleet, make_settings: MakeSettings, poller_for: PollerFor, notifier_for: NotifierFor,
        receiver: Receiver) -> None:
    """The window between a cycle's commit and its hand-over: a poller that stored eu-west-1 going
    down and died before its notifier saw the change. The next notifier to start finds the state
    event newer than what was handed over, announces it once; the one after announces nothing."""
    settings = make_settings(fleet, failure_threshold=1,
                             notifications={"webhooks": [hook(receiver)], "min_interval_seconds": 0})
    poller = poller_for(fleet, settings)
    poller.run_cycle()
    earlier = notifier_for(settings)  # notifications were running before: the watermark exists
    earlier.stop(timeout=1)
    fleet.set("eu-west-1", mode="http_500")
    (change,) = poller.run_cycle().transitions  # stored; no notifier ever sees it
    assert (change.region, change.new_state) == ("eu-west-1", "down")
    assert receiver.requests == [] and outbox_rows(settings) == []

    restarted = notifier_for(settings)
    receiver.wait_for(1)
    restarted.stop(timeout=2)
    again = notifier_for(settings)
    again.stop(timeout=2)
    (notice,) = receiver.requests
    assert (notice.body["region"], notice.body["old_state"], notice.body["new_state"]) == ("eu-west-1", "up", "down")
    assert notice.body["reason"] == change.reason
    assert [r["state"] for r in outbox_rows(settings)] == ["delivered"]


# --- the outbox, on a real database ---------------------------------------------------------------


def _outbox_notice(notice_id: str) -> OutboxNotice:
    return OutboxNotice(notice_id, "state_change", "eu-west-1", json.dumps({"id": notice_id}))


def test_a_claimed_row_is_not_claimed_again_until_its_claim_lapses(make_store: MakeStore) -> None:
    store, _ = make_store()
    (row_id,) = store.enqueue_notices([_outbox_notice("n1")], ["ops"], now=100.0, max_pending=10).ids
    first = store.claim_due("ops", "a", now=100.0, claim_until=110.0)
    assert first is not None and first.id == row_id
    assert store.claim_due("ops", "b", now=105.0, claim_until=115.0) is None  # a's claim still runs
    assert not store.record_attempt(row_id, "b", "HTTP 500", at=105.0, next_attempt_at=106.0, claim_until=120.0)
    lapsed = store.claim_due("ops", "b", now=111.0, claim_until=121.0)  # a died: its claim lapsed
    assert lapsed is not None and lapsed.id == row_id
    # a's late attempt learns that it lost the row, and records nothing.
    assert not store.record_attempt(row_id, "a", "HTTP 500", at=112.0, next_attempt_at=113.0, claim_until=130.0)
    assert store.record_attempt(row_id, "b", "HTTP 500", at=112.0, next_attempt_at=113.0, claim_until=130.0)


def test_a_delivered_row_is_never_claimed_again(make_store: MakeStore) -> None:
    store, _ = make_store()
    store.enqueue_notices([_outbox_notice("n1"), _outbox_notice("n2")], ["ops"], now=100.0, max_pending=10)
    row = store.claim_due("ops", "a", now=100.0, claim_until=110.0)
    assert row is not None and row.notice_id == "n1"
    store.mark_delivered(row.id, at=101.0)
    later = store.claim_due("ops", "b", now=500.0, claim_until=510.0)
    assert later is not None and later.notice_id == "n2"
    assert store.outbox_counts() == {"ops": {"delivered": 1, "pending": 1}}
    assert store.prune_outbox(finished_before=102.0) == 1
    assert store.outbox_counts() == {"ops": {"pending": 1}}


def test_a_full_outbox_drops_the_oldest_waiting_rows_of_that_receiver_only(make_store: MakeStore) -> None:
    store, _ = make_store()
    done = store.enqueue_notices([_outbox_notice(f"n{i}") for i in range(3)], ["ops", "chat"], now=1.0,
                                 max_pending=2)
    assert len(done.ids) == 6 and done.dropped == {"ops": 1, "chat": 1}
    row = store.claim_due("ops", "a", now=2.0, claim_until=3.0)
    assert row is not None and row.notice_id == "n1"


# --- pure parts: the rate limit, the bodies, Retry-After, masking -----------------------------------


def test_throttle_sends_the_first_change_and_holds_the_rest_until_the_interval_ends() -> None:
    throttle = Throttle(60)
    sent, held = throttle.offer([t("up", "down")], now=0)
    assert [(n.old_state, n.new_state) for n in sent] == [("up", "down")] and held == []
    assert throttle.offer([t("down", "up", at=1_010)], now=10) == ([], [t("down", "up", at=1_010)])
    throttle.offer([t("up", "down", at=1_020)], now=20)
    assert throttle.due(59.9) == [] and throttle.next_due() == 60
    (summary,) = throttle.due(60)
    assert (summary.old_state, summary.new_state, summary.held_since) == ("down", "down", 1_010)
    assert summary_line(summary).startswith(":red_circle: eu-west-1 is DOWN (unchanged since the last notice)")
    assert throttle.next_due() is None and throttle.due(1_000) == []
    # The next change after the summary is held again: the summary counts as a notice.
    assert throttle.offer([t("down", "up")], now=61)[0] == []


def test_throttle_is_per_region() -> None:
    throttle = Throttle(60)
    throttle.offer([t("up", "down")], now=0)
    sent, _ = throttle.offer([t("up", "down", region="us-east-1")], now=1)
    assert [n.region for n in sent] == ["us-east-1"]


def test_changes_of_one_cycle_fold_into_one_notice() -> None:
    stale = t("up", "stale", "no poll result for 2 min (the poller was not running)")
    back = t("stale", "up", "healthy")
    (notice,), held = Throttle(300).offer([stale, back], now=0)
    assert (notice.old_state, notice.new_state, notice.reason) == ("up", "up", "healthy")
    assert notice.held_back == (stale, back) and held == []


def test_a_long_flap_keeps_a_bounded_summary() -> None:
    throttle = Throttle(10_000)
    throttle.offer([t("up", "down")], now=0)
    states = ["down", "up"] * 100
    for i, (old, new) in enumerate(zip(states, [*states[1:], "down"], strict=True)):
        throttle.offer([t(old, new, at=1_000 + i)], now=1 + i)
    (summary,) = throttle.flush(now=500)
    assert len(summary.changes) == 50 and summary.omitted == 150
    assert summary.old_state == "down"  # the state the last notice announced is kept
    line = slack_body(summary, "us-east-1")["blocks"][1]["elements"][0]["text"]
    assert line.startswith("200 more changes held back since 00:16:40 UTC: (190 earlier), ")


def test_a_notice_comes_back_from_the_outbox_as_it_went_in() -> None:
    summary = Throttle(60).offer([t("up", "stale"), t("stale", "down")], now=0)[0][0]
    routing = Notice(kind="failover", region="eu-west-1", reason="db down", at=5.0, actor="alice",
                     details={"target_region": "us-east-1", "before": [{"region": "x"}]}, id="abc")
    for notice in (summary, routing):
        assert notice_from_json(notice_to_json(notice)) == notice


def test_slack_escape_neutralises_control_characters() -> None:
    assert slack_escape("<@U1> & <!channel>") == "&lt;@U1&gt; &amp; &lt;!channel&gt;"


def test_failover_summary_names_target_mode_expiry_and_force() -> None:
    notice = Notice(kind="failover", region="eu-west-1", reason="db down", at=0, actor="alice",
                    details={"target_region": "us-east-1", "read_only": False, "forced": True,
                             "skipped_rules": ["target_unhealthy"], "until": "2026-01-01T00:30:00Z"})
    assert summary_line(notice) == (":twisted_rightwards_arrows: eu-west-1 failed over to us-east-1 (read-write) "
                                    "by alice: db down; until 2026-01-01T00:30:00Z; FORCED past target_unhealthy")


def test_retry_after_is_read_as_seconds_or_a_date_and_kept_within_a_minute() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("3600", now) == 60.0
    assert retry_after_seconds("-5", now) == 0.0
    assert retry_after_seconds(format_datetime(datetime(2026, 12, 1, 12, 0, 20, tzinfo=UTC), usegmt=True),
                               now) == 20.0
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None
    assert retry_after_seconds("nan", now) is None


def test_scrub_removes_every_piece_of_the_url_however_it_is_encoded() -> None:
    url = "https://bot:pw-s3cr3t@hooks.example.com/services/T0001/B0002/s3cr3t-t0k3n?key=q-s3cr3t"
    pieces = secret_pieces(url)
    assert {"s3cr3t-t0k3n", "pw-s3cr3t", "q-s3cr3t", "services"} <= set(pieces)
    for text in ("HTTP 401: key q-s3cr3t rejected for bot:pw-s3cr3t",
                 "HTTP 400: " + quote("/services/T0001/B0002/s3cr3t-t0k3n", safe=""),
                 'HTTP 400: {"url":"https:\\/\\/hooks.example.com\\/services\\/T0001\\/B0002\\/s3cr3t-t0k3n"}'):
        assert no_secret_in(scrub(text, pieces)), scrub(text, pieces)
    assert scrub("HTTP 500: no_service", pieces) == "HTTP 500: no_service"
    # In an Apprise URL even the host can be the token.
    assert "123456789" in secret_pieces("tgram://123456789:AAHs3cr3t/chat", host_too=True)


def test_apprise_urls_get_their_own_retries_and_redirects_turned_off() -> None:
    assert apprise_url("json://host/path?retry=3&-token=x", 5) == (
        "json://host/path?-token=x&retry=0&redirect=no&rto=5&cto=5")
    assert apprise_url("mailto://u:p@example.com?to=a%40b.c&rto=2", 2.5) == (
        "mailto://u:p@example.com?to=a%40b.c&rto=2&retry=0&redirect=no&cto=2.5")


# --- SLO alerts (issue 14) -----------------------------------------------------------------------


def test_an_slo_alert_starting_and_ending_is_a_notice_under_its_own_flap_limit(
        fleet: SimulatedFleet, make_settings: MakeSettings, poller_for: PollerFor, notifier_for: NotifierFor,
        receiver: Receiver) -> None:
    clock = Clock(10_000.0)
    # 99.9 % (the default) and a 60 s interval: an hour of good history, enough polls to page on.
    settings = make_settings(fleet, failure_threshold=1, poll_interval_seconds=60,
                             notifications={"webhooks": [hook(receiver)], "min_interval_seconds": 60})
    poller = poller_for(fleet, settings)
    notifier = notifier_for(settings, clock=clock)
    poller.run_cycle()
    start = time.time() - 3590
    with poller.store.transaction():
        poller.store.insert_samples(Sample(start + 60 * k, "eu-west-1", "health", True, 200, 20.0, "")
                                    for k in range(59))
    fleet.set("eu-west-1", mode="http_500")
    report = poller.run_cycle()  # 1 bad of 61 polls in the hour (16x), of 7 in five minutes (143x)
    assert {(c.region, c.severity, c.started) for c in report.slo_changes} == {("eu-west-1", "page", True)}
    notifier.state_changes(report.transitions)
    notifier.slo_alerts_changed(report.slo_changes)
    received = receiver.wait_for(2)
    slo_notice = next(r.body for r in received if r.body["kind"] == "slo_alert")
    assert (slo_notice["region"], slo_notice["old_state"], slo_notice["new_state"]) == ("eu-west-1", "ok", "page")
    assert "eu-west-1 SLO alert PAGE (was ok): SLO page alert: burn rate 1h 16.4x, 5m " in slo_notice["summary"]
    assert "(both over 14.4)" in slo_notice["summary"]
    # The state notice (eu-west-1 is DOWN) went out beside it: neither holds the other back.
    assert any(r.body["kind"] == "state_change" and r.body["new_state"] == "down" for r in received)

    # The alerts end (the store forgets the bad poll's windows) inside the interval: held, then
    # one summary once the interval has passed.
    fleet.reset("eu-west-1")
    with poller.store.transaction() as conn:
        conn.execute("delete from samples where ok = 0")
    report = poller.run_cycle()
    assert {(c.severity, c.started) for c in report.slo_changes} == {("page", False)}
    notifier.slo_alerts_changed(report.slo_changes)
    wait_until(lambda: notifier.status()["held_back"] == 1, "the end of the alerts held back")
    clock.now += 60
    summary = receiver.wait_for(3)[2].body
    assert (summary["kind"], summary["old_state"], summary["new_state"]) == ("slo_alert", "page", "ok")
    assert "ended after" in summary["summary"]
