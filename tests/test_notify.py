"""Webhook notices: a real receiver on loopback, the real Notifier, and the real poller against the
simulated fleet, wired the way the scheduler wires them (each cycle's transitions handed over)."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dashboard.config import Settings, mask_secret_url
from dashboard.health import Transition
from dashboard.notify import Notice, Notifier, Throttle, slack_body, slack_escape, summary_line
from dashboard.poller import Poller
from dashboard.store.outbox import OutboxNotice

SECRET = "T0001/B0002/s3cr3t-t0k3n"


@dataclass
class Received:
    path: str
    body: Any
    at: float


class Receiver:
    """A webhook receiver on loopback that records every request; it can answer 2xx, an error
    status, or hang (never answer) until released."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.status = 200
        self.hang = False
        self.hanging = 0
        self._release = threading.Event()
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._cond:
                    receiver.requests.append(Received(self.path, json.loads(raw), time.time()))
                    receiver._cond.notify_all()
                if receiver.hang:
                    with receiver._cond:
                        receiver.hanging += 1
                    receiver._release.wait()
                    with receiver._cond:
                        receiver.hanging -= 1
                    return  # the client gave up long ago: answer nothing
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if receiver.status < 300 else b"no_service")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/{SECRET}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def count(self) -> int:
        with self._cond:
            return len(self.requests)

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.requests) >= n, timeout), (
                f"expected {n} request(s), got {len(self.requests)}")
            return list(self.requests)

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def notifier_for() -> Iterator[Callable[..., Notifier]]:
    """Build and start notifiers; every one is stopped at the end of the test."""
    made: list[Notifier] = []

    def build(settings: Settings, **kwargs: Any) -> Notifier:
        notifier = Notifier(settings, backoff_seconds=kwargs.pop("backoff_seconds", 0.01), **kwargs)
        made.append(notifier)
        notifier.start()
        return notifier

    yield build
    for notifier in made:
        notifier.stop(timeout=1)
        assert not notifier.running


def hook(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"name": "ops", "url": receiver.url, **extra}


def run_cycles(poller: Poller, notifier: Notifier, n: int = 1) -> list[Transition]:
    """What the lead's on_cycle hook does: hand each cycle's transitions to the notifier."""
    seen = []
    for _ in range(n):
        report = poller.run_cycle()
        notifier.state_changes(report.transitions)
        seen += report.transitions
    return seen


def settle(receiver: Receiver, expected: int, seconds: float = 0.5) -> None:
    """Give a stray extra notice the time to arrive, then check it did not."""
    time.sleep(seconds)
    assert receiver.count() == expected


def t(old: str, new: str, reason: str = "why", at: float = 1_000.0, region: str = "eu-west-1") -> Transition:
    return Transition(region, old, new, reason, at)


# --- through the real poller ---------------------------------------------------------------------


def test_a_region_going_down_after_three_failed_polls_sends_exactly_one_notice(
        fleet, make_settings, poller_for, notifier_for, receiver):
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver)], "min_interval_seconds": 2})
    poller = poller_for(fleet, settings)
    poller.run_cycle()  # the fleet is known to be up before the notifier starts
    notifier = notifier_for(settings)
    fleet.set("eu-west-1", mode="http_500")
    assert run_cycles(poller, notifier, 2) == []  # below the threshold: no change, no notice
    changes = run_cycles(poller, notifier, 1)
    assert [(c.region, c.old_state, c.new_state) for c in changes] == [("eu-west-1", "up", "down")]
    (notice,) = receiver.wait_for(1)
    settle(receiver, 1)
    assert notice.path == f"/services/{SECRET}"
    body = notice.body
    assert body["kind"] == "state_change"
    assert (body["region"], body["old_state"], body["new_state"]) == ("eu-west-1", "up", "down")
    assert body["reason"] == "health: HTTP 500 (3 failed polls in a row)"
    assert body["dashboard_region"] == settings.deployment.region
    assert body["held_back"] == [] and body["at"].endswith("Z")
    assert notifier.status()["sent"] == 1


def test_every_change_is_one_notice_without_a_minimum_interval(
        fleet, make_settings, poller_for, notifier_for, receiver):
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
    received = receiver.wait_for(5)
    settle(receiver, 5)
    assert sorted(r.body["region"] for r in received[:3]) == ["ap-southeast-1", "eu-west-1", "us-east-1"]
    assert [(r.body["old_state"], r.body["new_state"]) for r in received[3:]] == [("up", "down"), ("down", "up")]


def test_a_flap_inside_the_minimum_interval_sends_one_notice_then_one_summary(
        fleet, make_settings, poller_for, notifier_for, receiver):
    interval = 2
    settings = make_settings(fleet, failure_threshold=1, success_threshold=1,
                             notifications={"webhooks": [hook(receiver)], "min_interval_seconds": interval})
    poller = poller_for(fleet, settings)
    poller.run_cycle()
    notifier = notifier_for(settings)
    first_change_handed_over = time.time()
    for mode in ("http_500", "healthy", "http_500", "healthy"):  # up->down->up->down->up
        fleet.set("eu-west-1", mode=mode)
        assert len(run_cycles(poller, notifier)) == 1
    (first,) = receiver.wait_for(1)
    assert (first.body["old_state"], first.body["new_state"]) == ("up", "down")
    # Nothing more inside the interval...
    time.sleep(max(0.0, first_change_handed_over + interval - 0.5 - time.time()))
    assert receiver.count() == 1
    assert notifier.status()["held_back"] == 3
    # ...then one summary, with the latest state and what was held back, without any further change.
    summary = receiver.wait_for(2)[1]
    assert summary.at >= first_change_handed_over + interval
    body = summary.body
    assert (body["old_state"], body["new_state"]) == ("down", "up")
    assert [(h["old_state"], h["new_state"]) for h in body["held_back"]] == [
        ("down", "up"), ("up", "down"), ("down", "up")]
    assert "3 more changes held back since" in body["summary"]
    settle(receiver, 2)


def test_a_hanging_receiver_delays_neither_polling_nor_notices_and_stop_does_not_wait_for_it(
        fleet, make_settings, poller_for, receiver):
    receiver.hang = True
    settings = make_settings(fleet, failure_threshold=1, success_threshold=1, notifications={
        "webhooks": [hook(receiver, timeout_seconds=30, retries=0)], "min_interval_seconds": 0})
    poller = poller_for(fleet, settings)
    poller.run_cycle()
    notifier = Notifier(settings, backoff_seconds=0.01, max_queue=2)
    notifier.start()
    try:
        fleet.set("eu-west-1", mode="http_500")
        run_cycles(poller, notifier)
        receiver.wait_for(1)  # the notice is now stuck in the hanging receiver
        for mode in ("healthy", "http_500", "healthy", "http_500"):
            fleet.set("eu-west-1", mode=mode)
            report = poller.run_cycle()
            assert report.stored and len(report.transitions) == 1
            notifier.state_changes(report.transitions)
            notifier.routing_changed("failover", "eu-west-1", "alice", "drill", {"target_region": "us-east-1"})
        # Every cycle and every call completed while the receiver still hangs; the queue stays bounded.
        assert receiver.hanging == 1 and receiver.count() == 1
        status = notifier.status()
        # At most max_queue waiting to be taken, max_queue waiting for the receiver, one in flight.
        assert status["queued"] <= 2 * 2 + 1 and status["dropped"] >= 1
    finally:
        notifier.stop(timeout=0.2)
    assert not notifier.running
    assert receiver.hanging == 1  # stop() returned without waiting for the receiver
    assert notifier.status()["sent"] == 0


@pytest.mark.parametrize(("status", "attempts"), [(500, 3), (404, 1)])
def test_a_failing_receiver_is_retried_then_the_failure_is_recorded_with_the_url_masked(
        fleet, make_settings, notifier_for, receiver, caplog, status, attempts):
    caplog.set_level(logging.DEBUG)
    receiver.status = status
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver, retries=2, timeout_seconds=2)]})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down", "health: HTTP 500"))
    receiver.wait_for(attempts)
    deadline = time.time() + 5
    while notifier.status()["failed"] == 0 and time.time() < deadline:
        time.sleep(0.02)
    settle(receiver, attempts, 0.2)  # a 404 is not retried: repeating it cannot help
    state = notifier.status()
    assert state["failed"] == 1 and state["sent"] == 0
    failure = state["last_failure"]
    assert failure["webhook"] == "ops"
    assert failure["error"] == f"HTTP {status}: no_service"
    assert failure["url"] == mask_secret_url(receiver.url)
    assert "s3cr3t" not in json.dumps(state)
    assert "event=notice_failed" in caplog.text and mask_secret_url(receiver.url) in caplog.text
    assert "s3cr3t" not in caplog.text


def test_successful_deliveries_never_log_the_webhook_url(fleet, make_settings, notifier_for, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver)]})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down"))
    receiver.wait_for(1)
    notifier.stop(timeout=1)
    assert "event=notice_sent" in caplog.text
    assert "s3cr3t" not in caplog.text and SECRET not in json.dumps(notifier.status())


def test_routing_actions_are_never_rate_limited(fleet, make_settings, notifier_for, receiver):
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


def test_a_slack_webhook_gets_slack_blocks_with_region_text_escaped(fleet, make_settings, notifier_for, receiver):
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver, format="slack")]})
    notifier = notifier_for(settings)
    notifier.state_changed(t("up", "down", "health: HTTP 500 <!here> <https://evil.example|login> & co"))
    body = receiver.wait_for(1)[0].body
    assert set(body) == {"text", "blocks"}
    assert body["text"] == (":red_circle: eu-west-1 is DOWN (was up): health: HTTP 500 &lt;!here&gt; "
                            "&lt;https://evil.example|login&gt; &amp; co")
    assert body["blocks"][0] == {"type": "section", "text": {"type": "mrkdwn", "text": body["text"]}}
    assert all(block["type"] in ("section", "context") for block in body["blocks"])
    assert "<" not in json.dumps(body).replace("\\u003c", "<").replace("&lt;", "")


def test_without_webhooks_the_notifier_does_nothing(fleet, make_settings):
    notifier = Notifier(make_settings(fleet))
    notifier.start()
    notifier.state_changed(t("up", "down"))
    assert not notifier.running
    assert notifier.status()["webhooks"] == 0 and notifier.status()["queued"] == 0
    notifier.stop()


def test_held_changes_are_sent_at_stop(fleet, make_settings, receiver):
    settings = make_settings(fleet, notifications={"webhooks": [hook(receiver)], "min_interval_seconds": 600})
    notifier = Notifier(settings, backoff_seconds=0.01)
    notifier.start()
    notifier.state_changed(t("up", "down"))
    notifier.state_changed(t("down", "up", at=1_010.0))
    receiver.wait_for(1)
    notifier.stop(timeout=2)
    received = receiver.wait_for(2)
    assert (received[1].body["old_state"], received[1].body["new_state"]) == ("down", "up")
    assert len(received[1].body["held_back"]) == 1


# --- the rate limit and the bodies, pure ---------------------------------------------------------


def test_throttle_sends_the_first_change_and_holds_the_rest_until_the_interval_ends():
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


def test_throttle_is_per_region():
    throttle = Throttle(60)
    throttle.offer([t("up", "down")], now=0)
    sent, _ = throttle.offer([t("up", "down", region="us-east-1")], now=1)
    assert [n.region for n in sent] == ["us-east-1"]


def test_changes_of_one_cycle_fold_into_one_notice():
    stale = t("up", "stale", "no poll result for 2 min (the poller was not running)")
    back = t("stale", "up", "healthy")
    (notice,), held = Throttle(300).offer([stale, back], now=0)
    assert (notice.old_state, notice.new_state, notice.reason) == ("up", "up", "healthy")
    assert notice.held_back == (stale, back) and held == []


def test_a_long_flap_keeps_a_bounded_summary():
    throttle = Throttle(10_000)
    throttle.offer([t("up", "down")], now=0)
    states = ["down", "up"] * 100
    for i, (old, new) in enumerate(zip(states, states[1:] + ["down"])):
        throttle.offer([t(old, new, at=1_000 + i)], now=1 + i)
    (summary,) = throttle.flush(now=500)
    assert len(summary.changes) == 50 and summary.omitted == 150
    assert summary.old_state == "down"  # the state the last notice announced is kept
    line = slack_body(summary, "us-east-1")["blocks"][1]["elements"][0]["text"]
    assert line.startswith("200 more changes held back since 00:16:40 UTC: (190 earlier), ")


def test_slack_escape_neutralises_control_characters():
    assert slack_escape("<@U1> & <!channel>") == "&lt;@U1&gt; &amp; &lt;!channel&gt;"


def test_failover_summary_names_target_mode_expiry_and_force():
    notice = Notice(kind="failover", region="eu-west-1", reason="db down", at=0, actor="alice",
                    details={"target_region": "us-east-1", "read_only": False, "forced": True,
                             "skipped_rules": ["target_unhealthy"], "until": "2026-01-01T00:30:00Z"})
    assert summary_line(notice) == (":twisted_rightwards_arrows: eu-west-1 failed over to us-east-1 (read-write) "
                                    "by alice: db down; until 2026-01-01T00:30:00Z; FORCED past target_unhealthy")


# --- the outbox, on a real database --------------------------------------------------------------


def _outbox_notice(notice_id: str) -> OutboxNotice:
    return OutboxNotice(notice_id, "state_change", "eu-west-1", json.dumps({"id": notice_id}))


def test_a_claimed_row_is_not_claimed_again_until_its_claim_lapses(make_store):
    store, _ = make_store()
    (row_id,) = store.enqueue_notices([_outbox_notice("n1")], ["ops"], now=100.0, max_pending=10).ids
    first = store.claim_due("ops", "a", now=100.0, claim_until=110.0)
    assert first is not None and first.id == row_id
    assert store.claim_due("ops", "b", now=105.0, claim_until=115.0) is None  # a's claim still runs
    assert not store.extend_claim(row_id, "b", 120.0)
    lapsed = store.claim_due("ops", "b", now=111.0, claim_until=121.0)  # a died: its claim lapsed
    assert lapsed is not None and lapsed.id == row_id
    assert not store.extend_claim(row_id, "a", 130.0)  # a's late attempt learns it lost the row


def test_a_delivered_row_is_never_claimed_again(make_store):
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


def test_a_full_outbox_drops_the_oldest_waiting_rows_of_that_receiver_only(make_store):
    store, _ = make_store()
    done = store.enqueue_notices([_outbox_notice(f"n{i}") for i in range(3)], ["ops", "chat"], now=1.0,
                                 max_pending=2)
    assert len(done.ids) == 6 and done.dropped == {"ops": 1, "chat": 1}
    row = store.claim_due("ops", "a", now=2.0, claim_until=3.0)
    assert row is not None and row.notice_id == "n1"
