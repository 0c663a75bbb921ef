"""The notification outbox: one row per (notice, receiver), kept until that receiver answered 2xx.

A notice is written here as soon as it is handed over, in one transaction for all its receivers,
so a crash or a restart never loses it. A delivery worker claims one due row at a time (a
compare-and-set, so two processes on one database never send the same row at once), marks it
delivered in its own transaction right after the receiver's 2xx, and never sends a delivered row
again. A claim lapses by itself (`claimed_until`), so the rows of a process that died are taken up
again by the next one. Finished rows are kept for a while for /healthz and /metrics, then pruned.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..model import Transition
from .connection import Database

ANNOUNCED_UNTIL = "notifications_announced_until"
PENDING, DELIVERED, FAILED, DROPPED = "pending", "delivered", "failed", "dropped"
OUTBOX_STATES = (PENDING, DELIVERED, FAILED, DROPPED)


@dataclass(frozen=True)
class OutboxNotice:
    """A notice to store once per receiver; `notice_id` is its idempotency key."""

    notice_id: str
    kind: str
    region: str | None
    notice_json: str


@dataclass(frozen=True)
class OutboxRow:
    """A claimed row: what the delivery worker needs to send it."""

    id: int
    notice_id: str
    receiver: str
    notice_json: str
    attempts: int
    created_at: float


@dataclass(frozen=True)
class Enqueued:
    """What `enqueue_notices` did: the new rows' ids, and the rows it dropped per receiver."""

    ids: list[int]
    dropped: dict[str, int]


class OutboxQueries(Database):
    def enqueue_notices(self, notices: Sequence[OutboxNotice], receivers: Sequence[str], now: float,
                        max_pending: int, *, announced_until: float | None = None) -> Enqueued:
        """Store every notice for every receiver in one transaction; a receiver with more than
        `max_pending` rows waiting loses its oldest unclaimed ones (marked dropped).

        `announced_until` moves the state-change watermark in the same transaction: the state
        events up to that time have been handed to the notifier, so they are never announced twice,
        and those after it (stored by a cycle whose process died before handing them over) are
        announced at the next start."""
        ids: list[int] = []
        dropped: dict[str, int] = {}
        with self.transaction() as conn:
            if announced_until is not None:
                # The maximum is taken here, not in SQL: SQLite turns a REAL back into text with 15
                # digits, which would put the watermark a hair before the event it covers.
                row = conn.execute("select value from app_state where name = ?", (ANNOUNCED_UNTIL,)).fetchone()
                until = max(float(row[0]), announced_until) if row else float(announced_until)
                conn.execute("insert or replace into app_state (name, value) values (?, ?)",
                             (ANNOUNCED_UNTIL, repr(until)))
            for notice in notices:
                for receiver in receivers:
                    cursor = conn.execute(
                        "insert into notification_outbox (notice_id, receiver, kind, region, notice_json, state,"
                        " created_at, next_attempt_at) values (?, ?, ?, ?, ?, ?, ?, ?)",
                        (notice.notice_id, receiver, notice.kind, notice.region, notice.notice_json, PENDING,
                         now, now))
                    ids.append(int(cursor.lastrowid or 0))
            for receiver in receivers:
                (waiting,) = conn.execute(
                    "select count(*) from notification_outbox where receiver = ? and state = ?",
                    (receiver, PENDING)).fetchone()
                excess = int(waiting) - max_pending
                if excess > 0:
                    cursor = conn.execute(
                        "update notification_outbox set state = ?, finished_at = ?, last_error = ?"
                        " where id in (select id from notification_outbox where receiver = ? and state = ?"
                        " and (claimed_until is null or claimed_until < ?) order by id limit ?)",
                        (DROPPED, now, "queue full", receiver, PENDING, now, excess))
                    if cursor.rowcount:
                        dropped[receiver] = cursor.rowcount
        return Enqueued(ids, dropped)

    def announced_until(self) -> float | None:
        """State events up to this time have been handed to the notifier (None: never, so far)."""
        row = self.conn.execute("select value from app_state where name = ?", (ANNOUNCED_UNTIL,)).fetchone()
        return float(row[0]) if row else None

    def state_events_after(self, after: float, limit: int) -> list[Transition]:
        """State changes stored after a time, oldest first: what a dead process never announced."""
        return [Transition(region, old, new, reason or "", at) for region, old, new, reason, at in self.conn.execute(
            "select region, old_state, new_state, reason, at from events where kind = 'state' and at > ?"
            " order by at, id limit ?", (after, limit))]

    def claim_due(self, receiver: str, holder: str, now: float, claim_until: float,
                  only_ids: Collection[int] | None = None) -> OutboxRow | None:
        """Claim the receiver's oldest row that is due and not claimed by a live claim, or None."""
        if only_ids is not None and not only_ids:
            return None
        sql, params = self._due_query(receiver, now, only_ids)
        # Look without the write lock first: an idle worker asks every second.
        if self.conn.execute(sql, params).fetchone() is None:
            return None
        with self.transaction() as conn:
            row = conn.execute(sql, params).fetchone()
            if row is None:
                return None
            conn.execute("update notification_outbox set claimed_by = ?, claimed_until = ? where id = ?",
                         (holder, claim_until, row[0]))
        return OutboxRow(int(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4]), float(row[5]))

    @staticmethod
    def _due_query(receiver: str, now: float, only_ids: Collection[int] | None) -> tuple[str, list[object]]:
        among = "" if only_ids is None else f" and id in ({','.join('?' * len(only_ids))})"
        sql = ("select id, notice_id, receiver, notice_json, attempts, created_at from notification_outbox"
               " where receiver = ? and state = ? and next_attempt_at <= ?"
               " and (claimed_until is null or claimed_until < ?)" + among + " order by id limit 1")
        return sql, [receiver, PENDING, now, now, *(only_ids or ())]

    def record_attempt(self, row_id: int, holder: str, error: str, at: float, next_attempt_at: float,
                       claim_until: float) -> bool:
        """One more failed attempt, and when the next one is due (the claim spans the wait);
        False when the row is no longer ours (our claim lapsed and another process took it)."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "update notification_outbox set attempts = attempts + 1, last_error = ?, last_attempt_at = ?,"
                " next_attempt_at = ?, claimed_until = ? where id = ? and claimed_by = ? and state = ?",
                (error, at, next_attempt_at, claim_until, row_id, holder, PENDING))
        return cursor.rowcount == 1

    def mark_delivered(self, row_id: int, at: float) -> None:
        """The receiver answered 2xx: never send this row again (whoever holds the claim)."""
        with self.transaction() as conn:
            conn.execute(
                "update notification_outbox set state = ?, attempts = attempts + 1, last_attempt_at = ?,"
                " finished_at = ?, claimed_by = null, claimed_until = null where id = ?",
                (DELIVERED, at, at, row_id))

    def mark_failed(self, row_id: int, at: float, error: str | None = None) -> None:
        """Give up on a row (its last attempt is already recorded, with its error, unless one is given)."""
        with self.transaction() as conn:
            conn.execute(
                "update notification_outbox set state = ?, last_error = coalesce(?, last_error), finished_at = ?,"
                " claimed_by = null, claimed_until = null where id = ? and state = ?",
                (FAILED, error, at, row_id, PENDING))

    def release_claim(self, row_id: int, holder: str) -> None:
        """Let the row go, still pending, for whoever runs next (at stop)."""
        with self.transaction() as conn:
            conn.execute("update notification_outbox set claimed_by = null, claimed_until = null"
                         " where id = ? and claimed_by = ?", (row_id, holder))

    def drop_unknown_receivers(self, receivers: Collection[str], now: float) -> int:
        """Rows waiting for a receiver that is no longer configured would wait forever: drop them."""
        marks = ",".join("?" * len(receivers))
        where = "state = ?" + (f" and receiver not in ({marks})" if receivers else "")
        with self.transaction() as conn:
            cursor = conn.execute(
                f"update notification_outbox set state = ?, finished_at = ?, last_error = ? where {where}",
                (DROPPED, now, "receiver no longer configured", PENDING, *receivers))
        return cursor.rowcount

    def prune_outbox(self, finished_before: float) -> int:
        """Delete rows delivered, failed or dropped before a time; pending rows are never pruned."""
        with self.transaction() as conn:
            cursor = conn.execute("delete from notification_outbox where state != ? and finished_at < ?",
                                  (PENDING, finished_before))
        return cursor.rowcount

    def next_claimable_at(self, receiver: str, only_ids: Collection[int] | None = None) -> float | None:
        """When the receiver's earliest pending row (of `only_ids`, if given) can next be claimed,
        or None when none waits."""
        if only_ids is not None and not only_ids:
            return None
        among = "" if only_ids is None else f" and id in ({','.join('?' * len(only_ids))})"
        row = self.conn.execute(
            "select min(max(next_attempt_at, coalesce(claimed_until, 0))) from notification_outbox"
            " where receiver = ? and state = ?" + among, (receiver, PENDING, *(only_ids or ()))).fetchone()
        return None if row[0] is None else float(row[0])

    def outbox_counts(self) -> dict[str, dict[str, int]]:
        """Rows per receiver and state (finished rows until they are pruned)."""
        counts: dict[str, dict[str, int]] = {}
        for receiver, state, n in self.conn.execute(
                "select receiver, state, count(*) from notification_outbox group by receiver, state"):
            counts.setdefault(str(receiver), {})[str(state)] = int(n)
        return counts

    def pending_among(self, ids: Collection[int]) -> int:
        """How many of these rows still wait for delivery."""
        if not ids:
            return 0
        (n,) = self.conn.execute(
            f"select count(*) from notification_outbox where state = ? and id in ({','.join('?' * len(ids))})",
            (PENDING, *ids)).fetchone()
        return int(n)
