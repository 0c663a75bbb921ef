"""Auth state the web processes share: failed logins for the throttle, operator sessions, and the
app's own secrets."""
from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Mapping

from .connection import Database

# How long a (name, address) pair's failures are remembered without a new one.
FORGET_FAILURES_AFTER_SECONDS = 86_400


class AuthQueries(Database):
    # -- the login throttle: failures per (user name, address) ----------------------------------

    def reserve_login_attempt(self, username: str, remote_addr: str, now: float,
                              backoff: Callable[[int], float]) -> float:
        """Check and record in one transaction: the seconds this pair must still wait, or 0 after
        counting this attempt as a failure in advance (a success clears it). Concurrent attempts
        are serialised here, so a burst gets no more tries than one at a time would.

        `backoff(failures)` is the wait owed after that many failures in a row."""
        with self.transaction() as conn:
            conn.execute("delete from login_throttle where last_failure_at < ?",
                         (now - FORGET_FAILURES_AFTER_SECONDS,))
            row = conn.execute("select failures, last_failure_at from login_throttle"
                               " where username = ? and remote_addr = ?", (username, remote_addr)).fetchone()
            if row is not None:
                wait = row[1] + backoff(int(row[0])) - now
                if wait > 0:
                    return float(wait)
            self._add_failure(conn, username, remote_addr, now)
            return 0.0

    def record_login_failure(self, username: str, remote_addr: str, at: float) -> None:
        with self.transaction() as conn:
            self._add_failure(conn, username, remote_addr, at)

    @staticmethod
    def _add_failure(conn: sqlite3.Connection, username: str, remote_addr: str, at: float) -> None:
        conn.execute("insert into login_throttle (username, remote_addr, failures, last_failure_at)"
                     " values (?, ?, 1, ?) on conflict (username, remote_addr) do update set"
                     " failures = failures + 1, last_failure_at = max(last_failure_at, excluded.last_failure_at)",
                     (username, remote_addr, at))

    def login_failures(self, username: str, remote_addr: str) -> int:
        row = self.conn.execute("select failures from login_throttle where username = ? and remote_addr = ?",
                                (username, remote_addr)).fetchone()
        return int(row[0]) if row else 0

    def clear_login_failures(self, username: str, remote_addr: str) -> None:
        with self.transaction() as conn:
            conn.execute("delete from login_throttle where username = ? and remote_addr = ?", (username, remote_addr))

    # -- operator sessions: a browser login is honoured only while its row exists ------------------

    def create_session(self, operator: str, hash_digest: str, now: float, lifetime_seconds: float) -> str:
        """A new session of `operator`, logged in with the hash whose digest is given; returns its id."""
        session_id = secrets.token_urlsafe(32)
        with self.transaction() as conn:
            conn.execute("delete from operator_sessions where expires_at < ?", (now,))
            conn.execute("insert into operator_sessions (id, operator, hash_digest, created_at, expires_at)"
                         " values (?, ?, ?, ?, ?)", (session_id, operator, hash_digest, now, now + lifetime_seconds))
        return session_id

    def session_of(self, session_id: str, now: float) -> tuple[str, str] | None:
        """(operator, hash digest) of a session that has not ended or expired."""
        row = self.conn.execute("select operator, hash_digest from operator_sessions where id = ? and expires_at >= ?",
                                (session_id, now)).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def end_session(self, session_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("delete from operator_sessions where id = ?", (session_id,))

    def end_sessions_not_matching(self, operators: Mapping[str, str]) -> int:
        """End every session of an operator no longer configured, or logged in with another hash
        than the one now configured (`operators`: name -> hash digest). Returns how many ended."""
        with self.transaction() as conn:
            ended = 0
            for row in conn.execute("select id, operator, hash_digest from operator_sessions").fetchall():
                if operators.get(row[1]) != row[2]:
                    conn.execute("delete from operator_sessions where id = ?", (row[0],))
                    ended += 1
            return ended

    def app_secret(self, name: str, make: Callable[[], str]) -> str:
        """A secret the app keeps for itself, created once (by `make()`) and shared by every process."""
        with self.transaction() as conn:
            row = conn.execute("select value from app_secrets where name = ?", (name,)).fetchone()
            if row:
                return str(row[0])
            value = make()
            conn.execute("insert into app_secrets (name, value) values (?, ?)", (name, value))
            return value
