"""Webhook notices of every change of region state and every routing action, sent off the poll path.

`Notifier.state_changes` / `state_changed` and `routing_changed` only append to a bounded in-memory
queue and return: a receiver that hangs, fails or is unreachable never delays or fails a poll
cycle. One background thread runs an asyncio loop that delivers to every webhook independently
(a dead Slack does not hold back the generic receiver), each attempt under a hard deadline, with
retries and exponential backoff. Failures are logged as key=value lines and shown by `status()`.
The webhook URL is a secret (Slack's carries its token): only `mask_secret_url(url)` is ever logged
or shown, and requests go straight to an httpx transport so httpx's own per-request INFO line
(which prints the full URL) is never emitted.

Rate limit, per region, for state changes (routing actions are never held: each is a deliberate
operator act and gets its own notice):

- The first change of a region is sent at once. Changes of the same region within
  `min_interval_seconds` of its last notice are held. When the interval has passed, ONE notice is
  sent with the region's latest state, `old_state` being the state the last notice announced, and
  `held_back` listing every held change ("3 more changes held back since 03:12:05 UTC: up->down,
  down->up, up->down"). The worker wakes up when the interval expires, so the final state is sent
  even if no further change comes.
- A flap that ends where it started (up->down->up) therefore sends the first change at once
  (DOWN) and, when the interval expires, one summary (UP, was down, 1 change held back). We always
  send the summary rather than dropping a flap that "cancelled out": the last notice the on-call
  saw said DOWN, and silence would leave them believing it. A summary whose state equals the last
  notice's still goes out, because a region that flapped is worth knowing about.
- Changes of one region handed over together (one poll cycle's `report.transitions`, through
  `state_changes`) fold into one notice: after a gap the poller records X->stale and stale->Y in
  the same cycle, and the on-call wants "eu-west-1 is UP", not "STALE" now and "UP" five minutes
  later. The folded changes are listed in `held_back` too.
- At `stop()`, held changes are sent at once (the process is going away; they would be lost).

Delivery: any 2xx is success; a network error, a timeout, 408, 425, 429 and 5xx are retried
(`retries` times, backoff `backoff_seconds * 2**attempt`, or the receiver's Retry-After up to a
minute); another status (a 404 from a revoked Slack hook) fails at once, since repeating it cannot
help. Redirects are not followed. A full queue drops its oldest notice, logs it and counts it.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from .config import Settings, WebhookConfig, mask_secret_url
from .health import Transition
from .text import clip

log = logging.getLogger(__name__)

STATE_CHANGE = "state_change"
ROUTING_KINDS = ("failover", "failback", "lapse")
DEFAULT_MAX_QUEUE = 1000
# A region flapping every poll for a day would otherwise hold thousands of changes in memory:
# a summary keeps the first held change (it carries the state the last notice announced) and the
# most recent ones, and counts what it left out.
MAX_HELD_CHANGES = 50
MAX_LISTED_IN_TEXT = 10
# Slack refuses a section over 3,000 characters, and escaping can make a text five times longer.
MAX_REASON_CHARS = 500
MAX_BACKOFF_SECONDS = 60.0
RETRY_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "region-dashboard-notifier"

EMOJI = {"up": ":large_green_circle:", "degraded": ":large_yellow_circle:", "down": ":red_circle:",
         "stale": ":large_purple_circle:", "unknown": ":white_circle:"}
ROUTING_EMOJI = {"failover": ":twisted_rightwards_arrows:", "failback": ":leftwards_arrow_with_hook:",
                 "lapse": ":hourglass:"}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _clock_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%H:%M:%S UTC")


@dataclass(frozen=True)
class Notice:
    """One message to every webhook: a region's state change (possibly summarising several) or a
    routing action."""

    kind: str
    region: str
    reason: str
    at: float
    old_state: str | None = None
    new_state: str | None = None
    # State changes this notice covers, oldest first; more than one when held back or folded.
    changes: tuple[Transition, ...] = ()
    # When the first held change happened; None for a notice sent as soon as its change came.
    held_since: float | None = None
    # Held changes left out of `changes` to bound memory (a region flapping for hours).
    omitted: int = 0
    actor: str | None = None
    details: dict[str, Any] | None = None

    @property
    def held_back(self) -> tuple[Transition, ...]:
        """The changes a reader did not get a notice of their own for."""
        if self.held_since is not None or len(self.changes) > 1:
            return self.changes
        return ()


def _state_notice(changes: Sequence[Transition], held_since: float | None = None, omitted: int = 0) -> Notice:
    first, last = changes[0], changes[-1]
    return Notice(kind=STATE_CHANGE, region=last.region, reason=last.reason, at=last.at,
                  old_state=first.old_state, new_state=last.new_state, changes=tuple(changes),
                  held_since=held_since, omitted=omitted)


@dataclass
class _RegionHold:
    last_sent_at: float | None = None
    held: list[Transition] = field(default_factory=list)
    omitted: int = 0


class Throttle:
    """The per-region rate limit, pure: changes and the current time in, notices out."""

    def __init__(self, min_interval_seconds: float) -> None:
        self.min_interval = min_interval_seconds
        self._regions: dict[str, _RegionHold] = {}

    def offer(self, transitions: Iterable[Transition], now: float) -> tuple[list[Notice], list[Transition]]:
        """Changes handed over together; returns the notices to send now and the changes held."""
        groups: dict[str, list[Transition]] = {}
        for t in transitions:
            groups.setdefault(t.region, []).append(t)
        notices: list[Notice] = []
        held: list[Transition] = []
        for region, group in groups.items():
            hold = self._regions.setdefault(region, _RegionHold())
            if hold.last_sent_at is not None and now - hold.last_sent_at < self.min_interval:
                self._hold(hold, group)
                held.extend(group)
                continue
            if hold.held:  # the interval passed but the summary was not sent yet: one notice for all
                notice = _state_notice(hold.held + group, hold.held[0].at, hold.omitted)
            else:
                notice = _state_notice(group)
            hold.held, hold.omitted, hold.last_sent_at = [], 0, now
            notices.append(notice)
        return notices, held

    def due(self, now: float) -> list[Notice]:
        """Summaries of regions whose interval has passed since their last notice."""
        return [self._release(hold, now) for hold in self._regions.values()
                if hold.held and now - (hold.last_sent_at or 0.0) >= self.min_interval]

    def flush(self, now: float) -> list[Notice]:
        """Every held summary, interval or not (at shutdown)."""
        return [self._release(hold, now) for hold in self._regions.values() if hold.held]

    def next_due(self) -> float | None:
        """When the earliest held summary falls due, or None when nothing is held."""
        times = [(hold.last_sent_at or 0.0) + self.min_interval for hold in self._regions.values() if hold.held]
        return min(times, default=None)

    @property
    def holding(self) -> int:
        return sum(1 for hold in self._regions.values() if hold.held)

    @staticmethod
    def _hold(hold: _RegionHold, group: list[Transition]) -> None:
        hold.held.extend(group)
        excess = len(hold.held) - MAX_HELD_CHANGES
        if excess > 0:
            del hold.held[1:1 + excess]  # keep the first: its old_state is what the last notice said
            hold.omitted += excess

    @staticmethod
    def _release(hold: _RegionHold, now: float) -> Notice:
        notice = _state_notice(hold.held, hold.held[0].at, hold.omitted)
        hold.held, hold.omitted, hold.last_sent_at = [], 0, now
        return notice


# --- message bodies -------------------------------------------------------------------------------

def _change_word(t: Transition) -> str:
    return f"{t.old_state}->{t.new_state}"


def _held_line(notice: Notice) -> str:
    """'3 more changes held back since 03:12:05 UTC: up->down, down->up, up->down', or ''."""
    changes = notice.held_back
    if not changes:
        return ""
    total = len(changes) + notice.omitted
    listed = [_change_word(t) for t in changes[-MAX_LISTED_IN_TEXT:]]
    if total > len(listed):
        listed.insert(0, f"({total - len(listed)} earlier)")
    plural = "change" if total == 1 else "changes"
    if notice.held_since is not None:
        return f"{total} more {plural} held back since {_clock_text(notice.held_since)}: " + ", ".join(listed)
    return f"{total} {plural} in one poll: " + ", ".join(listed)


def summary_line(notice: Notice) -> str:
    """The one-line, plain-text summary of a notice (not escaped)."""
    reason = clip(notice.reason, MAX_REASON_CHARS)
    if notice.kind == STATE_CHANGE:
        new, old = notice.new_state or "unknown", notice.old_state or "unknown"
        was = "unchanged since the last notice" if new == old else f"was {old}"
        return f"{EMOJI.get(new, ':white_circle:')} {notice.region} is {new.upper()} ({was}): {reason}"
    details = notice.details or {}
    actor = clip(notice.actor or "unknown", 100)
    emoji = ROUTING_EMOJI.get(notice.kind, ":information_source:")
    if notice.kind == "failover":
        target = details.get("target_region") or "another region"
        mode = "read-only" if details.get("read_only") else "read-write"
        line = f"{emoji} {notice.region} failed over to {target} ({mode}) by {actor}: {reason}"
        if details.get("until"):
            line += f"; until {details['until']}"
        if details.get("forced"):
            skipped = ", ".join(str(s) for s in details.get("skipped_rules") or []) or "safety rules"
            line += f"; FORCED past {skipped}"
        return line
    if notice.kind == "failback":
        return f"{emoji} {notice.region} failed back (serves its own traffic again) by {actor}: {reason}"
    return f"{emoji} {notice.region}'s routing override lapsed (serves its own traffic again): {reason}"


def full_text(notice: Notice) -> str:
    """The summary line and, when changes were held back or folded, the line saying which."""
    held = _held_line(notice)
    return summary_line(notice) + (f" ({held})" if held else "")


def generic_body(notice: Notice, dashboard_region: str) -> dict[str, Any]:
    """The generic JSON body; the same keys for every kind, null where they do not apply."""
    return {
        "kind": notice.kind,
        "region": notice.region,
        "old_state": notice.old_state,
        "new_state": notice.new_state,
        "reason": notice.reason,
        "at": iso(notice.at),
        "dashboard_region": dashboard_region,
        "held_back": [{"old_state": t.old_state, "new_state": t.new_state, "reason": t.reason, "at": iso(t.at)}
                      for t in notice.held_back],
        "held_back_since": iso(notice.held_since) if notice.held_since is not None else None,
        "held_back_omitted": notice.omitted,
        "actor": notice.actor,
        "details": notice.details,
        "summary": full_text(notice),
    }


def slack_escape(text: str) -> str:
    """Escape Slack's control characters so region-supplied text cannot mention, link or format."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(notice: Notice, dashboard_region: str) -> dict[str, Any]:
    """Slack's incoming-webhook format: a plain fallback `text` and Block Kit `blocks`."""
    line = slack_escape(summary_line(notice))
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": line}}]
    held = _held_line(notice)
    if held:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(held)}]})
    blocks.append({"type": "context", "elements": [{
        "type": "mrkdwn", "text": slack_escape(f"{iso(notice.at)} · dashboard in {dashboard_region}")}]})
    return {"text": slack_escape(full_text(notice)), "blocks": blocks}


def render(notice: Notice, fmt: str, dashboard_region: str) -> bytes:
    body = slack_body(notice, dashboard_region) if fmt == "slack" else generic_body(notice, dashboard_region)
    return json.dumps(body, default=str).encode("utf-8")


# --- delivery --------------------------------------------------------------------------------------

def _scrub(text: str, url: str) -> str:
    """Remove a webhook's URL, or its secret path, from an error text before it is logged or shown."""
    parts = urlsplit(url)
    for secret in (url, parts.path + (f"?{parts.query}" if parts.query else ""), parts.path, parts.query,
                   parts.password or ""):
        if secret and secret != "/":
            text = text.replace(secret, "/***")
    return clip(text, 200)


def _retry_after(response_headers: httpx.Headers) -> float | None:
    try:
        value = float(response_headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(max(value, 0.0), MAX_BACKOFF_SECONDS)


class _Sender:
    """Delivers notices to one webhook, in order, one at a time."""

    def __init__(self, notifier: Notifier, hook: WebhookConfig, transport: httpx.AsyncHTTPTransport) -> None:
        self.notifier = notifier
        self.hook = hook
        self.masked = mask_secret_url(hook.url)
        self.transport = transport
        self.queue: deque[Notice] = deque()
        self.in_flight = 0
        self.closing = False
        self.wake = asyncio.Event()
        parts = urlsplit(hook.url)
        self.headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if parts.username is not None:  # user:password@host: send it as Basic auth, as httpx's client would
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")

    def put(self, notice: Notice) -> None:
        if len(self.queue) >= self.notifier.max_queue:
            lost = self.queue.popleft()
            self.notifier._count("dropped")
            log.warning("event=notice_dropped webhook=%s url=%s kind=%s region=%s reason=queue_full",
                        self.hook.name, self.masked, lost.kind, lost.region)
        self.queue.append(notice)
        self.wake.set()

    def close(self) -> None:
        self.closing = True
        self.wake.set()

    async def run(self) -> None:
        while True:
            while not self.queue:
                if self.closing:
                    return
                self.wake.clear()
                await self.wake.wait()
            notice = self.queue.popleft()
            self.in_flight = 1
            try:
                await self.deliver(notice)
            finally:
                self.in_flight = 0

    async def deliver(self, notice: Notice) -> bool:
        hook = self.hook
        content = render(notice, hook.format, self.notifier.dashboard_region)
        attempts = hook.retries + 1
        error = ""
        for attempt in range(attempts):
            delay = self.notifier.backoff_seconds * 2 ** attempt
            try:
                async with asyncio.timeout(hook.timeout_seconds):
                    status, headers, text = await self._post(content)
            except TimeoutError:
                error, retry = f"no answer within {hook.timeout_seconds:g} s", True
            except httpx.HTTPError as exc:
                error, retry = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, True
            else:
                if 200 <= status < 300:
                    self.notifier._delivered(hook.name)
                    log.info("event=notice_sent webhook=%s url=%s kind=%s region=%s status=%d attempt=%d",
                             hook.name, self.masked, notice.kind, notice.region, status, attempt + 1)
                    return True
                error = f"HTTP {status}" + (f": {text}" if text else "")
                retry = status in RETRY_STATUSES or status >= 500
                asked = _retry_after(headers) if status in (429, 503) else None
                delay = delay if asked is None else asked
            error = _scrub(error, hook.url)
            if not retry or attempt + 1 >= attempts:
                break
            log.info("event=notice_retry webhook=%s url=%s kind=%s region=%s attempt=%d error=%r retry_in_s=%.2f",
                     hook.name, self.masked, notice.kind, notice.region, attempt + 1, error,
                     min(delay, MAX_BACKOFF_SECONDS))
            await asyncio.sleep(min(delay, MAX_BACKOFF_SECONDS))
        self.notifier._failed(hook.name, self.masked, error)
        log.warning("event=notice_failed webhook=%s url=%s kind=%s region=%s attempts=%d error=%r",
                    hook.name, self.masked, notice.kind, notice.region, attempt + 1, error)
        return False

    async def _post(self, content: bytes) -> tuple[int, httpx.Headers, str]:
        timeout = httpx.Timeout(self.hook.timeout_seconds).as_dict()
        request = httpx.Request("POST", self.hook.url, content=content, headers=self.headers,
                                extensions={"timeout": timeout})
        # Straight to the transport: httpx.AsyncClient logs every request's full URL at INFO.
        response = await self.transport.handle_async_request(request)
        try:
            raw = b""
            async with aclosing(response.aiter_raw()) as chunks:
                async for chunk in chunks:
                    raw += chunk
                    if len(raw) >= 2048:
                        break
        finally:
            await response.aclose()
        return response.status_code, response.headers, raw[:200].decode("utf-8", "replace").strip()


class Notifier:
    """Sends webhook notices of state changes and routing actions from one background thread."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 backoff_seconds: float = 1.0, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        notifications = settings.dashboard.notifications
        self.webhooks = list(notifications.webhooks)
        self.dashboard_region = settings.deployment.region
        self.backoff_seconds = backoff_seconds
        self.max_queue = max_queue
        self._clock = clock
        self._throttle = Throttle(notifications.min_interval_seconds)
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, Any, float]] = deque()
        self._counts = {"sent": 0, "failed": 0, "dropped": 0, "held_back": 0}
        self._by_hook = {h.name: {"name": h.name, "format": h.format, "url": mask_secret_url(h.url),
                                  "sent": 0, "failed": 0, "last_sent_at": None, "last_failure_at": None}
                         for h in self.webhooks}
        self._last_failure: dict[str, Any] | None = None
        self._holding = 0  # regions with held changes, copied out of the loop thread for status()
        self._senders: list[_Sender] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._stop_timeout = 5.0

    # --- called from the poller, the router and the web app: never block, never raise ----------

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the delivery thread; does nothing without webhooks or when already started."""
        if not self.webhooks:
            log.info("event=notifications_disabled reason=no_webhooks")
            return
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=5)
        log.info("event=notifier_started webhooks=%s min_interval_s=%g",
                 ",".join(f"{h.name}:{h.format}:{mask_secret_url(h.url)}" for h in self.webhooks),
                 self._throttle.min_interval)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what can be sent within `timeout` seconds (held summaries included), then give up."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._stop_timeout = max(0.0, timeout)
            thread = self._thread
        if thread is None:
            lost = len(self._inbox) * len(self.webhooks)
            self._inbox.clear()
            if lost:
                self._count("dropped", lost)
                log.warning("event=notices_dropped count=%d reason=notifier_never_started", lost)
            return
        self._poke()
        # Past the timeout the loop cancels what is in flight; the margin covers that cancellation.
        thread.join(self._stop_timeout + 2.0)
        if thread.is_alive():
            log.error("event=notifier_stop_timeout timeout_s=%g", timeout)
        else:
            log.info("event=notifier_stopped")

    def state_changed(self, transition: Transition) -> None:
        """Queue a notice of one change of region state."""
        self.state_changes([transition])

    def state_changes(self, transitions: Sequence[Transition]) -> None:
        """Queue one poll cycle's changes; changes of one region handed over together fold into one notice."""
        try:
            if transitions:
                self._enqueue("state", tuple(transitions))
        except Exception:  # noqa: BLE001 - a notice must never fail a poll cycle
            log.exception("event=notice_enqueue_failed")

    def routing_changed(self, kind: str, region: str, actor: str, reason: str, details: dict | None = None,
                        *, at: float | None = None) -> None:
        """Queue a notice of a failover, failback or lapse; these are never rate-limited."""
        try:
            if kind not in ROUTING_KINDS:
                log.error("event=notice_unknown_kind kind=%r region=%s", kind, region)
                return
            notice = Notice(kind=kind, region=region, reason=str(reason), at=self._clock() if at is None else at,
                            actor=actor, details=dict(details or {}))
            self._enqueue("routing", notice)
        except Exception:  # noqa: BLE001 - a notice must never fail a routing change
            log.exception("event=notice_enqueue_failed")

    def status(self) -> dict[str, Any]:
        """Counters for /healthz and /metrics; URLs masked.

        `queued`, `sent`, `failed` and `dropped` count deliveries (a notice to one webhook);
        `held_back` counts state changes the rate limit held for a later summary.
        """
        with self._lock:
            counts = dict(self._counts)
            last_failure = dict(self._last_failure) if self._last_failure else None
            receivers = [dict(r) for r in self._by_hook.values()]
        queued = len(self._inbox) * len(self.webhooks) + sum(len(s.queue) + s.in_flight for s in list(self._senders))
        return {"webhooks": len(self.webhooks), "running": self.running, "queued": queued, **counts,
                "holding_regions": self._holding, "last_failure": last_failure,
                "receivers": receivers}

    def _enqueue(self, kind: str, item: Any) -> None:
        if not self.webhooks:
            return
        if self._stopping:
            log.warning("event=notice_dropped kind=%s reason=notifier_stopped", kind)
            self._count("dropped", len(self.webhooks))
            return
        with self._lock:
            if len(self._inbox) >= self.max_queue:
                self._inbox.popleft()
                self._counts["dropped"] += len(self.webhooks)
                dropped = True
            else:
                dropped = False
            self._inbox.append((kind, item, self._clock()))
        if dropped:
            log.warning("event=notice_dropped reason=queue_full max_queue=%d", self.max_queue)
        self._poke()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has already closed: stop() has run
                pass

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _delivered(self, hook: str) -> None:
        with self._lock:
            self._counts["sent"] += 1
            self._by_hook[hook]["sent"] += 1
            self._by_hook[hook]["last_sent_at"] = self._clock()

    def _failed(self, hook: str, masked_url: str, error: str) -> None:
        now = self._clock()
        with self._lock:
            self._counts["failed"] += 1
            self._by_hook[hook]["failed"] += 1
            self._by_hook[hook]["last_failure_at"] = now
            self._last_failure = {"webhook": hook, "url": masked_url, "at": now, "error": error}

    # --- the delivery thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # noqa: BLE001 - logged; notices are lost, polling goes on
            log.exception("event=notifier_crashed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        transport = httpx.AsyncHTTPTransport(retries=0)
        self._senders = [_Sender(self, hook, transport) for hook in self.webhooks]
        tasks = [asyncio.create_task(s.run(), name=f"notify:{s.hook.name}") for s in self._senders]
        self._loop = loop
        self._ready.set()
        try:
            while not self._stopping:
                self._wake.clear()
                self._pump(self._clock())
                next_due = self._throttle.next_due()
                # Re-checked at least every second, so an injected clock is followed too.
                wait = None if next_due is None else min(max(next_due - self._clock(), 0.0), 1.0)
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            deadline = loop.time() + self._stop_timeout
            self._pump(self._clock(), flush=True)
            for sender in self._senders:
                sender.close()
            await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with self._lock:  # anything queued after the last look, while stop() was starting
                lost = len(self._inbox) * len(self.webhooks)
                self._inbox.clear()
            lost += sum(len(s.queue) + s.in_flight for s in self._senders)
            for sender in self._senders:
                sender.queue.clear()
                sender.in_flight = 0
            if lost:
                self._count("dropped", lost)
                log.warning("event=notices_dropped count=%d reason=stopped_before_delivery", lost)
            await transport.aclose()

    def _pump(self, now: float, flush: bool = False) -> None:
        """Take what was queued, apply the rate limit, hand the notices to every webhook."""
        notices: list[Notice] = []
        while True:
            with self._lock:
                if not self._inbox:
                    break
                kind, item, received_at = self._inbox.popleft()
            if kind == "routing":
                notices.append(item)
                continue
            sent, held = self._throttle.offer(item, received_at)
            notices.extend(sent)
            if held:
                self._count("held_back", len(held))
                log.info("event=notice_held regions=%s changes=%d min_interval_s=%g",
                         ",".join(sorted({t.region for t in held})), len(held), self._throttle.min_interval)
        notices.extend(self._throttle.flush(now) if flush else self._throttle.due(now))
        self._holding = self._throttle.holding
        for notice in notices:
            for sender in self._senders:
                sender.put(notice)
