"""Notices of every change of region state and every routing action, kept in an outbox until sent.

Hand-over: `Notifier.state_changes` / `state_changed` (the poller's cycle transitions) and
`routing_changed` (the Router, once a change is committed) apply the flap limit below and write the
notices it lets through to the durable outbox (`dashboard.store.outbox`), one row per receiver,
in one transaction, before they return. They never wait for a receiver and never raise: a
receiver that hangs, fails or is unreachable never delays or fails a poll cycle or a failover.

Delivery: one worker thread per receiver claims that receiver's due rows, oldest first, one at a
time (so a dead Slack never holds back the generic receiver, and one receiver gets its notices in
order). A row is marked delivered in its own transaction right after the receiver's 2xx and is
never sent again; a restart takes up every row not delivered. The one unavoidable window: a
crash after the receiver's 2xx but before that mark sends the notice once more after the restart,
so every notice carries an id (`notice_id` in the generic body, and an `Idempotency-Key` header)
for receivers to drop that duplicate. Claims lapse by themselves, so a process that died never
holds a row for long, and two processes on one database never send the same row at once.

Receivers: `dashboard.notifications.webhooks` get our own JSON (`format: generic`, or Slack's
`{"text", "blocks"}`) in one httpx POST per attempt, under a hard deadline, without following
redirects; `dashboard.notifications.targets` take any Apprise URL (Teams, PagerDuty, Opsgenie,
e-mail, ntfy, ...), sent through Apprise with its own retries and redirects off.

Retries: stamina, with exponential backoff and jitter. A network error, a timeout, 408, 425, 429
and 5xx are retried (a 429 or 503's Retry-After replaces the backoff, up to a minute); another
status (a 404 from a revoked Slack hook) fails at once, since repeating it cannot help. Apprise
reports no status, so every failure of a target is retried. After `retries` retries a row is
`failed`, kept (like delivered rows) for /healthz and /metrics until pruned after a week.

Secrets: a receiver's URL (Slack's carries its token) is never logged or shown: webhooks appear as
scheme and host, targets as scheme only, and every error text is scrubbed of the URL's pieces even
when the receiver echoes them back %-encoded, JSON-escaped or on their own.

Flap limit, per region, for state changes (`Throttle`; routing actions are never held: each is a
deliberate operator act and gets its own notice):

- The first change of a region is sent at once. Changes of the same region within
  `min_interval_seconds` of its last notice are held. When the interval has passed, ONE notice is
  sent with the region's latest state, `old_state` being the state the last notice announced, and
  `held_back` listing every held change ("3 more changes held back since 03:12:05 UTC: up->down,
  down->up, up->down"). The workers look every second, so the final state is sent even if no
  further change comes.
- A flap that ends where it started (up->down->up) therefore sends the first change at once
  (DOWN) and, when the interval expires, one summary (UP, was down, 1 change held back). We always
  send the summary rather than dropping a flap that "cancelled out": the last notice the on-call
  saw said DOWN, and silence would leave them believing it.
- Changes of one region handed over together (one poll cycle's `report.transitions`) fold into one
  notice: after a gap the poller records X->stale and stale->Y in the same cycle, and the on-call
  wants "eu-west-1 is UP", not "STALE" now and "UP" five minutes later.
- Held changes live in memory (the throttle is pure); `stop()` writes their summaries to the
  outbox. A crash loses the summary of a flap in progress (the changes stay in the event history).
"""
from __future__ import annotations

import asyncio
import html
import json
import logging
import math
import os
import re
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import httpx
import stamina
import stamina.instrumentation

from .config import Settings, mask_secret_url, mask_target_url, quiet_apprise_logging
from .model import SloAlertChange, Transition
from .store import Store
from .store.outbox import OUTBOX_STATES, PENDING, OutboxNotice, OutboxQueries, OutboxRow
from .text import clip, iso

if TYPE_CHECKING:
    import apprise

log = logging.getLogger(__name__)

STATE_CHANGE = "state_change"
# An SLO alert starting or ending (dashboard.slo): flap-limited like state changes, per region.
SLO_ALERT = "slo_alert"
SLO_EMOJI = {"page": ":rotating_light:", "ticket": ":warning:", "ok": ":white_check_mark:"}
SLO_APPRISE_TYPES = {"page": "failure", "ticket": "warning", "ok": "success"}
ROUTING_KINDS = ("failover", "failback", "lapse")
# Most rows one receiver may have waiting; past it the oldest go (a receiver dead for days).
DEFAULT_MAX_QUEUE = 1000
# A region flapping every poll for a day would otherwise hold thousands of changes in memory:
# a summary keeps the first held change (it carries the state the last notice announced) and the
# most recent ones, and counts what it left out.
MAX_HELD_CHANGES = 50
MAX_LISTED_IN_TEXT = 10
# Slack refuses a section over 3,000 characters, and escaping can make a text five times longer.
MAX_REASON_CHARS = 500
MAX_ERROR_CHARS = 200
MAX_BACKOFF_SECONDS = 60.0
RETRY_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "region-dashboard-notifier"
# A claim covers one attempt (its deadline) and the time to record its outcome; it lapses by
# itself, so the rows of a process that died are taken up again this long after its last attempt.
CLAIM_MARGIN_SECONDS = 2.0
# How often an idle worker looks for rows another process wrote, and for held summaries due.
IDLE_POLL_SECONDS = 1.0
# Delivered, failed and dropped rows are kept this long for /healthz and /metrics.
OUTBOX_KEEP_SECONDS = 7 * 86_400
PRUNE_EVERY_SECONDS = 3600.0
# Pieces of a URL shorter than this are not scrubbed from error texts ("a", "v1" are everywhere).
MIN_SECRET_PIECE = 4

EMOJI = {"up": ":large_green_circle:", "degraded": ":large_yellow_circle:", "down": ":red_circle:",
         "stale": ":large_purple_circle:", "unknown": ":white_circle:"}
ROUTING_EMOJI = {"failover": ":twisted_rightwards_arrows:", "failback": ":leftwards_arrow_with_hook:",
                 "lapse": ":hourglass:"}
# Apprise's notification types, which services such as PagerDuty or Opsgenie map to a severity.
APPRISE_TYPES = {"down": "failure", "up": "success", "degraded": "warning", "stale": "warning",
                 "failover": "warning"}


def _clock_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%H:%M:%S UTC")


@dataclass(frozen=True)
class Notice:
    """One message to every receiver: a region's state change (possibly summarising several) or a
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
    # The idempotency key, given when the notice enters the outbox; the same for every receiver.
    id: str = ""

    @property
    def held_back(self) -> tuple[Transition, ...]:
        """The changes a reader did not get a notice of their own for."""
        if self.held_since is not None or len(self.changes) > 1:
            return self.changes
        return ()


def notice_to_json(notice: Notice) -> str:
    """The notice as the outbox keeps it."""
    return json.dumps({
        "id": notice.id, "kind": notice.kind, "region": notice.region, "reason": notice.reason, "at": notice.at,
        "old_state": notice.old_state, "new_state": notice.new_state,
        "changes": [[t.region, t.old_state, t.new_state, t.reason, t.at] for t in notice.changes],
        "held_since": notice.held_since, "omitted": notice.omitted, "actor": notice.actor,
        "details": notice.details,
    }, default=str)


def notice_from_json(text: str) -> Notice:
    data = json.loads(text)
    return Notice(kind=str(data["kind"]), region=str(data["region"]), reason=str(data["reason"]),
                  at=float(data["at"]), old_state=data["old_state"], new_state=data["new_state"],
                  changes=tuple(Transition(str(r), str(o), str(n), str(why), float(at))
                                for r, o, n, why, at in data["changes"]),
                  held_since=data["held_since"], omitted=int(data["omitted"]), actor=data["actor"],
                  details=data["details"], id=str(data["id"]))


def _state_notice(changes: Sequence[Transition], held_since: float | None = None, omitted: int = 0,
                  kind: str = STATE_CHANGE) -> Notice:
    first, last = changes[0], changes[-1]
    return Notice(kind=kind, region=last.region, reason=last.reason, at=last.at,
                  old_state=first.old_state, new_state=last.new_state, changes=tuple(changes),
                  held_since=held_since, omitted=omitted)


@dataclass
class _RegionHold:
    kind: str = STATE_CHANGE
    last_sent_at: float | None = None
    held: list[Transition] = field(default_factory=list)
    omitted: int = 0


class Throttle:
    """The per-region rate limit, pure: changes and the current time in, notices out."""

    def __init__(self, min_interval_seconds: float) -> None:
        self.min_interval = min_interval_seconds
        self._regions: dict[str, _RegionHold] = {}

    def offer(self, transitions: Iterable[Transition], now: float,
              kind: str = STATE_CHANGE) -> tuple[list[Notice], list[Transition]]:
        """Changes handed over together; returns the notices to send now and the changes held.

        Each kind of change (state, SLO alert level) has its own limit per region: an SLO alert
        never holds back the region's state notice, nor the other way round."""
        groups: dict[str, list[Transition]] = {}
        for t in transitions:
            groups.setdefault(t.region, []).append(t)
        notices: list[Notice] = []
        held: list[Transition] = []
        for region, group in groups.items():
            hold = self._regions.setdefault(region if kind == STATE_CHANGE else f"{kind}:{region}", _RegionHold(kind))
            if hold.last_sent_at is not None and now - hold.last_sent_at < self.min_interval:
                self._hold(hold, group)
                held.extend(group)
                continue
            if hold.held:  # the interval passed but the summary was not sent yet: one notice for all
                notice = _state_notice(hold.held + group, hold.held[0].at, hold.omitted, kind)
            else:
                notice = _state_notice(group, kind=kind)
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
        notice = _state_notice(hold.held, hold.held[0].at, hold.omitted, hold.kind)
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


def summary_line(notice: Notice, *, emoji: bool = True) -> str:
    """The one-line, plain-text summary of a notice (not escaped); Slack's emoji code first."""
    reason = clip(notice.reason, MAX_REASON_CHARS)
    if notice.kind == STATE_CHANGE:
        new, old = notice.new_state or "unknown", notice.old_state or "unknown"
        was = "unchanged since the last notice" if new == old else f"was {old}"
        line = f"{notice.region} is {new.upper()} ({was}): {reason}"
        return f"{EMOJI.get(new, ':white_circle:')} {line}" if emoji else line
    if notice.kind == SLO_ALERT:
        new, old = notice.new_state or "ok", notice.old_state or "ok"
        line = f"{notice.region} SLO alert {new.upper()} (was {old}): {reason}"
        return f"{SLO_EMOJI.get(new, ':warning:')} {line}" if emoji else line
    details = notice.details or {}
    actor = clip(notice.actor or "unknown", 100)
    if notice.kind == "failover":
        target = details.get("target_region") or "another region"
        mode = "read-only" if details.get("read_only") else "read-write"
        line = f"{notice.region} failed over to {target} ({mode}) by {actor}: {reason}"
        if details.get("until"):
            line += f"; until {details['until']}"
        if details.get("forced"):
            skipped = ", ".join(str(s) for s in details.get("skipped_rules") or []) or "safety rules"
            line += f"; FORCED past {skipped}"
    elif notice.kind == "failback":
        line = f"{notice.region} failed back (serves its own traffic again) by {actor}: {reason}"
    else:
        line = f"{notice.region}'s routing override lapsed (serves its own traffic again): {reason}"
    return f"{ROUTING_EMOJI.get(notice.kind, ':information_source:')} {line}" if emoji else line


def full_text(notice: Notice, *, emoji: bool = True) -> str:
    """The summary line and, when changes were held back or folded, the line saying which."""
    held = _held_line(notice)
    return summary_line(notice, emoji=emoji) + (f" ({held})" if held else "")


def generic_body(notice: Notice, dashboard_region: str) -> dict[str, Any]:
    """The generic JSON body; the same keys for every kind, null where they do not apply."""
    return {
        "notice_id": notice.id,
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


def apprise_message(notice: Notice, dashboard_region: str) -> tuple[str, str, str]:
    """(title, body, Apprise notification type) of a notice for a target: plain text, no emoji codes."""
    if notice.kind == STATE_CHANGE:
        state = notice.new_state or "unknown"
        title, kind = f"{notice.region} is {state.upper()}", APPRISE_TYPES.get(state, "info")
    elif notice.kind == SLO_ALERT:
        level = notice.new_state or "ok"
        title, kind = f"{notice.region} SLO alert: {level.upper()}", SLO_APPRISE_TYPES.get(level, "info")
    else:
        title = {"failover": f"{notice.region} failed over", "failback": f"{notice.region} failed back"}.get(
            notice.kind, f"{notice.region}'s routing override lapsed")
        kind = APPRISE_TYPES.get(notice.kind, "info")
    body = f"{full_text(notice, emoji=False)}\n{iso(notice.at)} · dashboard in {dashboard_region} · notice {notice.id}"
    return title, body, kind


# --- secrets ---------------------------------------------------------------------------------------

def secret_pieces(url: str, *, host_too: bool = False) -> tuple[str, ...]:
    """The pieces of a receiver's URL that must never appear in a log line or on a page, longest first:
    the path's segments, the query's values, the user and password (and, for an Apprise URL, whose
    "host" is often a token, the host)."""
    parts = urlsplit(url)
    pieces = [unquote(s) for s in parts.path.split("/")] + [v for _, v in parse_qsl(parts.query)]
    pieces += [unquote(parts.password or ""), unquote(parts.username or "")]
    if host_too:
        pieces += [unquote(parts.netloc), unquote(parts.netloc.rpartition("@")[2]), parts.hostname or ""]
    return tuple(sorted({p for p in pieces if len(p) >= MIN_SECRET_PIECE}, key=len, reverse=True))


_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def scrub(text: str, pieces: Sequence[str]) -> str:
    """An error text safe to log and show: every secret piece replaced by ***, also where the
    receiver echoed it back %-encoded (even twice), JSON- or HTML-escaped, or in another case."""
    for _ in range(3):
        decoded = html.unescape(unquote(text))
        if decoded == text:
            break
        text = decoded
    text = _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text).replace("\\/", "/")
    for piece in pieces:
        text = re.sub(re.escape(piece), "***", text, flags=re.IGNORECASE)
    return clip(text, MAX_ERROR_CHARS)


# --- one attempt -----------------------------------------------------------------------------------

def error_kind(error: str) -> str:
    """What kind of failure an error is, without what the receiver said: "HTTP 404: <its body>" is
    "HTTP 404"; our own messages ("no answer within 5 s") have no receiver text and stay whole."""
    head = error.split(":", 1)[0].strip()
    return clip(head, 60) if head else "error"


class DeliveryError(Exception):
    """One attempt that did not end in a 2xx; `error` is already scrubbed of the URL's secrets."""

    def __init__(self, error: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


class _Halted(Exception):
    """The worker must stop working on this row: the notifier stops, or another process took the row."""


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from now, within 0..60; None if unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_BACKOFF_SECONDS)


def retry_decision(exc: Exception) -> bool | float:
    """stamina's `on=` hook: False to give up, a float to wait exactly that long, True for the backoff."""
    if isinstance(exc, DeliveryError) and exc.retryable:
        return exc.retry_after if exc.retry_after is not None else True
    return False


@dataclass(frozen=True)
class Receiver:
    """One configured receiver: a webhook (our own JSON) or an Apprise target."""

    name: str
    format: str  # generic, slack or apprise
    url: str
    timeout_seconds: float
    retries: int

    @property
    def masked(self) -> str:
        return mask_target_url(self.url) if self.format == "apprise" else mask_secret_url(self.url)

    def scrub(self, text: str) -> str:
        return scrub(text, secret_pieces(self.url, host_too=self.format == "apprise"))


def receivers_of(settings: Settings) -> list[Receiver]:
    notifications = settings.dashboard.notifications
    return ([Receiver(h.name, h.format, h.url, h.timeout_seconds, h.retries) for h in notifications.webhooks]
            + [Receiver(t.name, "apprise", t.url, t.timeout_seconds, t.retries) for t in notifications.targets])


class _Sender:
    """Sends one notice to one receiver, once; raises DeliveryError unless the receiver took it."""

    def send(self, notice: Notice) -> None:
        raise NotImplementedError


class WebhookSender(_Sender):
    """Our own JSON body in one httpx POST: a hard deadline, no redirects, and no URL in any log line."""

    def __init__(self, receiver: Receiver, dashboard_region: str) -> None:
        self.receiver = receiver
        self.dashboard_region = dashboard_region
        parts = urlsplit(receiver.url)
        # user:password@host is sent as Basic auth (httpx's own), never in the request line.
        self.auth = (httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
                     if parts.username is not None else None)
        self.url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, ""))

    def send(self, notice: Notice) -> None:
        receiver = self.receiver
        content = render(notice, receiver.format, self.dashboard_region)
        try:
            # httpx's own timeouts bound each socket operation, not the whole exchange: a receiver
            # trickling bytes could hold a worker for ever. asyncio.timeout is a real deadline.
            status, retry_after, text = asyncio.run(self._post(content, notice.id))
        except TimeoutError:
            raise DeliveryError(f"no answer within {receiver.timeout_seconds:g} s") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(receiver.scrub(f"{type(exc).__name__}: {exc}" if str(exc)
                                               else type(exc).__name__)) from None
        if 200 <= status < 300:
            return
        raise DeliveryError(receiver.scrub(f"HTTP {status}" + (f": {text}" if text else "")),
                            retryable=status in RETRY_STATUSES or status >= 500,
                            retry_after=retry_after_seconds(retry_after, time.time()) if status in (429, 503) else None)

    async def _post(self, content: bytes, notice_id: str) -> tuple[int, str | None, str]:
        timeout = self.receiver.timeout_seconds
        request = httpx.Request(
            "POST", self.url, content=content,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, "Idempotency-Key": notice_id},
            extensions={"timeout": httpx.Timeout(timeout).as_dict()})
        if self.auth is not None:
            request = next(self.auth.auth_flow(request))
        # Straight to a transport: httpx's clients log every request's full URL at INFO.
        async with asyncio.timeout(timeout), httpx.AsyncHTTPTransport(retries=0) as transport:
            response = await transport.handle_async_request(request)
            try:
                raw = b""
                # aiter_raw is an async generator: close it when we stop reading early.
                async with aclosing(cast(AsyncGenerator[bytes, None], response.aiter_raw())) as chunks:
                    async for chunk in chunks:
                        raw += chunk
                        if len(raw) >= 2048:
                            break
            finally:
                await response.aclose()
        return response.status_code, response.headers.get("retry-after"), raw[:200].decode("utf-8", "replace").strip()


def apprise_url(url: str, timeout_seconds: float) -> str:
    """The target's URL with Apprise's own retries and redirects off (stamina retries; a redirect
    would turn the POST into a GET reported as success) and its socket timeouts set."""
    base, _, query = url.partition("?")
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in ("retry", "redirect")]
    keys = {k for k, _ in pairs}
    pairs += [("retry", "0"), ("redirect", "no")]
    pairs += [(k, f"{timeout_seconds:g}") for k in ("rto", "cto") if k not in keys]
    return f"{base}?{urlencode(pairs)}"


class AppriseSender(_Sender):
    """Plain text through Apprise. It tells only success or failure: no status, no Retry-After."""

    def __init__(self, receiver: Receiver, dashboard_region: str) -> None:
        quiet_apprise_logging()
        import apprise

        self.receiver = receiver
        self.dashboard_region = dashboard_region
        self._text = apprise.NotifyFormat.TEXT  # Slack-like services then escape <!here> and links
        self._apprise: apprise.Apprise = apprise.Apprise()
        self._ready = self._apprise.add(apprise_url(receiver.url, receiver.timeout_seconds))

    def send(self, notice: Notice) -> None:
        if not self._ready:
            raise DeliveryError("not a URL Apprise can send to", retryable=False)
        title, body, kind = apprise_message(notice, self.dashboard_region)
        # timeout= is a deadline for the whole call (rto/cto are per socket operation).
        result = self._apprise.notify(body=body, title=title, notify_type=kind, body_format=self._text,
                                      timeout=self.receiver.timeout_seconds + 1)
        if not result:
            # Never the result itself: its repr and its JSON carry the URL.
            why = "; ".join(entry.message for entry in result.logs())
            raise DeliveryError(self.receiver.scrub(f"apprise {result.status.name}" + (f": {why}" if why else "")))


# --- the delivery workers --------------------------------------------------------------------------

class _Worker:
    """Delivers one receiver's rows from the outbox, oldest first, one at a time, in its own thread."""

    def __init__(self, notifier: Notifier, receiver: Receiver, sender: _Sender) -> None:
        self.notifier = notifier
        self.receiver = receiver
        self.sender = sender
        self.wake = threading.Event()
        # Set when stop() gave up waiting: the thread then ends without touching the store again,
        # except to record a delivery that its last attempt made after all.
        self.abandoned = False
        self._made = 0  # attempts made on the row in hand
        self.thread = threading.Thread(target=self._run, name=f"notify:{receiver.name}", daemon=True)

    def _run(self) -> None:
        notifier = self.notifier
        while not self.abandoned:
            self.wake.clear()
            try:
                notifier._housekeeping()
                if notifier._past_deadline():
                    return
                row = notifier._claim(self.receiver)
                if row is not None:
                    self._deliver(row)
                    continue
                if notifier._draining:
                    return
                wait = notifier._idle_wait(self.receiver)
            except sqlite3.Error as exc:  # the database is busy or gone: look again later
                log.warning("event=outbox_unavailable receiver=%s error=%r", self.receiver.name, str(exc))
                wait = IDLE_POLL_SECONDS
            except Exception:
                log.exception("event=notice_delivery_crashed receiver=%s", self.receiver.name)
                wait = IDLE_POLL_SECONDS
            self.wake.wait(wait)

    def _halted(self) -> bool:
        return self.abandoned or self.notifier._past_deadline()

    def _deliver(self, row: OutboxRow) -> None:
        notifier, receiver, store = self.notifier, self.receiver, self.notifier.store
        try:
            notice = notice_from_json(row.notice_json)
        except (ValueError, KeyError, TypeError):
            store.mark_failed(row.id, time.time(), "the stored notice cannot be read")
            notifier._failed(receiver, "the stored notice cannot be read")
            return
        attempts = receiver.retries + 1 - row.attempts  # after a restart, only the attempts left
        self._made = 0
        try:
            if attempts <= 0:
                raise DeliveryError("its attempts were used up before the last stop", retryable=False)
            for attempt in stamina.retry_context(
                    on=retry_decision, attempts=attempts, timeout=None, wait_initial=notifier.backoff_seconds,
                    wait_max=MAX_BACKOFF_SECONDS, wait_jitter=notifier.backoff_seconds, wait_exp_base=2):
                with attempt:
                    self._attempt(row, notice, attempt, attempts)
        except _Halted:
            if not self.abandoned:
                store.release_claim(row.id, notifier.holder)
            return
        except DeliveryError as exc:
            # Each failed attempt was recorded with its error as it happened; only giving up is left.
            store.mark_failed(row.id, time.time(), None if self._made else exc.error)
            notifier._failed(receiver, exc.error)
            log.warning("event=notice_failed receiver=%s url=%s notice=%s kind=%s region=%s attempts=%d error=%r",
                        receiver.name, receiver.masked, notice.id, notice.kind, notice.region,
                        row.attempts + self._made, exc.error)
            return
        self._mark_delivered(row)
        notifier._delivered(receiver)
        log.info("event=notice_sent receiver=%s url=%s notice=%s kind=%s region=%s attempt=%d",
                 receiver.name, receiver.masked, notice.id, notice.kind, notice.region, row.attempts + self._made)

    def _attempt(self, row: OutboxRow, notice: Notice, attempt: stamina.Attempt, attempts: int) -> None:
        if self._halted():
            raise _Halted()
        self._made = attempt.num
        try:
            self.sender.send(notice)
            return
        except DeliveryError as exc:
            failure = exc
        except Exception as exc:  # noqa: BLE001 - an unforeseen error is one more failed attempt
            failure = DeliveryError(self.receiver.scrub(f"{type(exc).__name__}: {exc}"))
        if self.abandoned:
            raise _Halted()
        decision = retry_decision(failure)
        # Before stamina waits: when the next attempt is due (stamina adds up to backoff_seconds of
        # jitter) and a claim that spans the wait, so that no other process takes the row meanwhile.
        wait = attempt.next_wait if decision is True else float(decision)
        now = time.time()
        claim = now + wait + self.notifier.backoff_seconds + self.receiver.timeout_seconds + CLAIM_MARGIN_SECONDS
        if not self.notifier.store.record_attempt(row.id, self.notifier.holder, failure.error, now, now + wait, claim):
            raise _Halted()  # our claim lapsed and another process has the row now
        if decision is not False and attempt.num < attempts:
            log.info("event=notice_retry receiver=%s url=%s notice=%s attempt=%d error=%r retry_in_s=%.2f",
                     self.receiver.name, self.receiver.masked, notice.id, row.attempts + attempt.num,
                     failure.error, wait)
        raise failure

    def _mark_delivered(self, row: OutboxRow) -> None:
        """Right after the 2xx, in its own transaction; a busy database is waited out, since a row
        left unmarked would be sent again once its claim lapses."""
        for attempt in stamina.retry_context(on=sqlite3.OperationalError, attempts=5, timeout=None,
                                             wait_initial=0.1, wait_max=1.0, wait_jitter=0.1):
            with attempt:
                self.notifier.store.mark_delivered(row.id, time.time())


@dataclass
class _ReceiverCounts:
    """One receiver as /healthz shows it: what this process delivered to it and when it last failed."""

    name: str
    format: str
    url: str
    sent: int = 0
    failed: int = 0
    last_sent_at: float | None = None
    last_failure_at: float | None = None


def _holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# How far back a restart looks for state changes a dead process stored but never announced.
RECOVER_WINDOW_SECONDS = 3600.0
RECOVER_MAX_EVENTS = 1000

class Notifier:
    """Writes notices of state changes and routing actions to the outbox; its workers deliver them.

    `scope="own"` (the CLI) delivers only the notices this notifier wrote: a server running on the
    same database delivers the rest, and whatever is left at `stop()` stays in the outbox for it.
    """

    def __init__(self, settings: Settings, *, store: OutboxQueries | None = None,
                 clock: Callable[[], float] = time.time, backoff_seconds: float = 1.0,
                 max_queue: int = DEFAULT_MAX_QUEUE, scope: Literal["all", "own"] = "all") -> None:
        notifications = settings.dashboard.notifications
        self.receivers = receivers_of(settings)
        self.webhooks = list(notifications.webhooks)
        self.targets = list(notifications.targets)
        self.dashboard_region = settings.deployment.region
        self.backoff_seconds = backoff_seconds
        self.max_queue = max_queue
        self.scope = scope
        self.holder = _holder_name()
        self._owns_store = store is None and bool(self.receivers)
        self._store = Store(settings.database_path) if self._owns_store else store
        self._clock = clock
        self._throttle = Throttle(notifications.min_interval_seconds)
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "failed": 0, "dropped": 0, "held_back": 0}
        self._by_receiver = {r.name: _ReceiverCounts(r.name, r.format, r.masked) for r in self.receivers}
        self._last_failure: dict[str, Any] | None = None
        self._holding = 0
        self._unsaved: list[Notice] = []  # notices the outbox could not take yet (database busy)
        self._unsaved_until: float | None = None  # and the watermark that goes with them
        self._own_ids: set[int] = set()
        self._workers: list[_Worker] = []
        self._started = False
        self._stopped = False
        self._draining = False
        self._deadline = math.inf  # monotonic; set by stop()
        self._next_prune = 0.0

    @property
    def store(self) -> OutboxQueries:
        if self._store is None:
            raise RuntimeError("this notifier has no receivers and so no outbox")
        return self._store

    @property
    def enabled(self) -> bool:
        return bool(self.receivers)

    @property
    def running(self) -> bool:
        return self._started and not self._stopped and any(w.thread.is_alive() for w in self._workers)

    def start(self) -> None:
        """Start one delivery worker per receiver; does nothing without receivers or when started."""
        if not self.receivers:
            log.info("event=notifications_disabled reason=no_receivers")
            return
        with self._lock:
            if self._started or self._stopped:
                return
            self._started = True
        # stamina's default hooks log a line with the call's arguments and count retries in the
        # default Prometheus registry; we log our own line, masked, and count in our own registry.
        stamina.instrumentation.set_on_retry_hooks([])
        if self.scope == "all":
            try:
                gone = self.store.drop_unknown_receivers([r.name for r in self.receivers], time.time())
            except sqlite3.Error as exc:
                log.warning("event=outbox_unavailable error=%r", str(exc))
                gone = 0
            if gone:
                log.warning("event=notices_dropped count=%d reason=receiver_no_longer_configured", gone)
            self._recover_unannounced()
        for receiver in self.receivers:
            sender: _Sender = (AppriseSender(receiver, self.dashboard_region) if receiver.format == "apprise"
                               else WebhookSender(receiver, self.dashboard_region))
            self._workers.append(_Worker(self, receiver, sender))
        for worker in self._workers:
            worker.thread.start()
        log.info("event=notifier_started receivers=%s min_interval_s=%g scope=%s",
                 ",".join(f"{r.name}:{r.format}:{r.masked}" for r in self.receivers), self._throttle.min_interval,
                 self.scope)

    def stop(self, timeout: float = 5.0) -> None:
        """Write held summaries to the outbox, deliver what is due within `timeout` seconds, then
        return; anything not delivered stays in the outbox for the next start."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            summaries = self._throttle.flush(self._clock())
            self._holding = 0
        if summaries:
            self._enqueue(summaries)
        if not self._workers:
            self._close_store()
            return
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._draining = True
        self._wake_all()
        for worker in self._workers:
            worker.thread.join(max(0.0, self._deadline - time.monotonic()) + 0.05)
        stuck = [w for w in self._workers if w.thread.is_alive()]
        for worker in stuck:
            worker.abandoned = True  # an attempt in flight ends at its own deadline; its row's claim lapses
        try:
            waiting = self._waiting()
        except sqlite3.Error:
            waiting = -1
        if stuck:
            log.warning("event=notifier_stop_timeout timeout_s=%g receivers=%s left_in_outbox=%d", timeout,
                        ",".join(w.receiver.name for w in stuck), waiting)
        elif waiting > 0:
            log.warning("event=notifier_stopped left_in_outbox=%d", waiting)
        else:
            log.info("event=notifier_stopped left_in_outbox=0")
        if not stuck:
            self._close_store()

    # --- called from the poller, the router and the web app: never block on a receiver, never raise ----

    def state_changed(self, transition: Transition) -> None:
        """Hand over one change of region state."""
        self.state_changes([transition])

    def state_changes(self, transitions: Sequence[Transition]) -> None:
        """Hand over one poll cycle's changes; changes of one region handed over together fold into one notice."""
        try:
            if not transitions or not self.receivers:
                return
            with self._lock:
                notices, held = self._throttle.offer(transitions, self._clock())
                self._holding = self._throttle.holding
                self._counts["held_back"] += len(held)
            if held:
                log.info("event=notice_held regions=%s changes=%d min_interval_s=%g",
                         ",".join(sorted({t.region for t in held})), len(held), self._throttle.min_interval)
            # The watermark moves even when the throttle holds everything back: these changes
            # have been handed over, and a restart must not announce them again.
            self._enqueue(notices, max(t.at for t in transitions))
        except Exception:
            log.exception("event=notice_enqueue_failed")

    def slo_alerts_changed(self, changes: Sequence[SloAlertChange]) -> None:
        """Hand over one cycle's SLO alert starts and ends: a notice per region saying its alert
        level (page, ticket, ok), under the same flap limit as state changes (its own, per region)."""
        try:
            if not changes or not self.receivers:
                return
            # A region's changes of one cycle (a page and a ticket starting together) are one
            # transition of its level: one notice, saying both, not "2 changes: ok->page, ok->page".
            by_region: dict[str, list[SloAlertChange]] = {}
            for change in changes:
                by_region.setdefault(change.region, []).append(change)
            transitions = [Transition(region, group[0].old_level, group[-1].new_level,
                                      "; ".join(c.reason for c in group), group[-1].at)
                           for region, group in by_region.items()]
            with self._lock:
                notices, held = self._throttle.offer(transitions, self._clock(), kind=SLO_ALERT)
                self._holding = self._throttle.holding
                self._counts["held_back"] += len(held)
            if held:
                log.info("event=notice_held kind=slo_alert regions=%s changes=%d",
                         ",".join(sorted({t.region for t in held})), len(held))
            self._enqueue(notices)
        except Exception:
            log.exception("event=notice_enqueue_failed")

    def routing_changed(self, kind: str, region: str, actor: str, reason: str, details: dict | None = None,
                        *, at: float | None = None) -> None:
        """Hand over a failover, failback or lapse; these are never rate-limited."""
        try:
            if not self.receivers:
                return
            if kind not in ROUTING_KINDS:
                log.error("event=notice_unknown_kind kind=%r region=%s", kind, region)
                return
            notice = Notice(kind=kind, region=region, reason=str(reason), at=self._clock() if at is None else at,
                            actor=actor, details=dict(details or {}))
            self._enqueue([notice])
        except Exception:
            log.exception("event=notice_enqueue_failed")

    def status(self, *, public: bool = False) -> dict[str, Any]:
        """Counters for /healthz and /metrics; URLs masked.

        `public` (for the unauthenticated /healthz): the last failure says only its kind ("HTTP
        404", "timeout"), never the text a receiver sent back, which is not ours to publish.

        `sent`, `failed` and `dropped` count deliveries (a notice to one receiver) by this process
        since it started; `held_back` counts state changes the rate limit held for a later summary.
        `queued` and `outbox` come from the outbox, so they cover every process on this database.
        """
        with self._lock:
            counts = dict(self._counts)
            last_failure = dict(self._last_failure) if self._last_failure else None
            receivers: list[dict[str, Any]] = [asdict(r) for r in self._by_receiver.values()]
            unsaved = len(self._unsaved) * len(self.receivers)
        if public and last_failure is not None:
            last_failure["error"] = error_kind(str(last_failure["error"]))
        outbox: dict[str, int] = dict.fromkeys(OUTBOX_STATES, 0)
        by_receiver: dict[str, dict[str, int]] = {}
        queued: int | None = unsaved
        if self._store is not None:
            try:
                by_receiver = self._store.outbox_counts()
            except sqlite3.Error:
                queued = None
        for states in by_receiver.values():
            for state, n in states.items():
                outbox[state] = outbox.get(state, 0) + n
        if queued is not None:
            queued += outbox[PENDING]
        for receiver in receivers:
            receiver["queued"] = by_receiver.get(receiver["name"], {}).get(PENDING, 0)
        return {"webhooks": len(self.webhooks), "targets": len(self.targets), "running": self.running,
                "queued": queued, **counts, "holding_regions": self._holding, "last_failure": last_failure,
                "receivers": receivers, "outbox": outbox}

    # --- the outbox --------------------------------------------------------------------------------

    def _enqueue(self, notices: Sequence[Notice], announced_until: float | None = None) -> None:
        """Write notices to the outbox (and move the state-change watermark with them, in the same
        transaction); when the database cannot take them, keep both to try again."""
        if not self.receivers or (not notices and announced_until is None):
            return
        notices = [n if n.id else replace(n, id=uuid.uuid4().hex) for n in notices]
        try:
            done = self.store.enqueue_notices(
                [OutboxNotice(n.id, n.kind, n.region, notice_to_json(n)) for n in notices],
                [r.name for r in self.receivers], time.time(), self.max_queue, announced_until=announced_until)
        except sqlite3.Error as exc:
            with self._lock:
                if announced_until is not None:
                    self._unsaved_until = max(self._unsaved_until or 0.0, announced_until)
                self._unsaved.extend(notices)
                lost = len(self._unsaved) - self.max_queue
                if lost > 0:
                    del self._unsaved[:lost]
                    self._counts["dropped"] += lost * len(self.receivers)
            log.warning("event=outbox_unavailable error=%r kept_in_memory=%d", str(exc), len(notices))
            return
        with self._lock:
            if self.scope == "own":
                self._own_ids.update(done.ids)
            self._counts["dropped"] += sum(done.dropped.values())
        for name, n in done.dropped.items():
            log.warning("event=notices_dropped receiver=%s count=%d reason=queue_full max_queue=%d",
                        name, n, self.max_queue)
        self._wake_all()

    def _recover_unannounced(self) -> None:
        """Announce the state changes a process stored but died before handing over.

        A cycle's state events are committed first and handed to the notifier right after; a
        kill -9 in between leaves events newer than the watermark, which are announced here, once.
        Only the last `RECOVER_WINDOW_SECONDS` count: older changes are history, not news. With no
        watermark yet (notifications just configured), nothing from before is announced."""
        now = time.time()
        try:
            since = self.store.announced_until()
            if since is None:
                self.store.enqueue_notices([], [], now, self.max_queue, announced_until=now)
                return
            missed = self.store.state_events_after(max(since, now - RECOVER_WINDOW_SECONDS), RECOVER_MAX_EVENTS)
        except sqlite3.Error as exc:
            log.warning("event=outbox_unavailable error=%r", str(exc))
            return
        if missed:
            log.warning("event=notices_recovered changes=%d since=%s", len(missed), _clock_text(since))
            self.state_changes(missed)

    def _claim(self, receiver: Receiver) -> OutboxRow | None:
        now = time.time()
        return self.store.claim_due(receiver.name, self.holder, now,
                                    now + receiver.timeout_seconds + CLAIM_MARGIN_SECONDS, self._only_ids())

    def _only_ids(self) -> set[int] | None:
        """The rows this notifier may deliver: its own (scope "own"), or every row (None)."""
        if self.scope != "own":
            return None
        with self._lock:
            return set(self._own_ids)

    def _waiting(self) -> int:
        """Rows still to deliver: this notifier's own, or every receiver's."""
        own = self._only_ids()
        if own is not None:
            return self.store.pending_among(own)
        return sum(states.get(PENDING, 0) for states in self.store.outbox_counts().values())

    def _housekeeping(self) -> None:
        """Held summaries that fell due and notices kept in memory go to the outbox; old rows go."""
        with self._lock:
            due = self._throttle.due(self._clock())
            self._holding = self._throttle.holding
            unsaved, self._unsaved = self._unsaved, []
            unsaved_until, self._unsaved_until = self._unsaved_until, None
            prune = self.scope == "all" and time.monotonic() >= self._next_prune
            if prune:
                self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
        if unsaved or due or unsaved_until is not None:
            self._enqueue(unsaved + due, unsaved_until)
        if prune:
            pruned = self.store.prune_outbox(time.time() - OUTBOX_KEEP_SECONDS)
            if pruned:
                log.info("event=outbox_pruned rows=%d", pruned)

    def _idle_wait(self, receiver: Receiver) -> float:
        waits = [IDLE_POLL_SECONDS]
        with self._lock:
            next_due = self._throttle.next_due()
        if next_due is not None:
            waits.append(next_due - self._clock())
        try:
            claimable = self.store.next_claimable_at(receiver.name, self._only_ids())
        except sqlite3.Error:
            claimable = None
        if claimable is not None:
            waits.append(claimable - time.time())
        return max(min(waits), 0.01)

    def _past_deadline(self) -> bool:
        return self._draining and time.monotonic() >= self._deadline

    def _wake_all(self) -> None:
        for worker in self._workers:
            worker.wake.set()

    def _close_store(self) -> None:
        if self._owns_store and self._store is not None:
            self._store.close()

    def _delivered(self, receiver: Receiver) -> None:
        with self._lock:
            self._counts["sent"] += 1
            counts = self._by_receiver[receiver.name]
            counts.sent += 1
            counts.last_sent_at = self._clock()

    def _failed(self, receiver: Receiver, error: str) -> None:
        now = self._clock()
        with self._lock:
            self._counts["failed"] += 1
            counts = self._by_receiver[receiver.name]
            counts.failed += 1
            counts.last_failure_at = now
            self._last_failure = {"receiver": receiver.name, "url": receiver.masked, "at": now, "error": error}


__all__ = ["DeliveryError", "Notice", "Notifier", "Receiver", "Throttle", "apprise_url", "generic_body",
           "retry_after_seconds", "scrub", "secret_pieces", "slack_body", "slack_escape", "summary_line"]
