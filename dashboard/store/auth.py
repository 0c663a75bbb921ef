"""Auth state the web processes share: failed logins for the throttle, operator sessions, and the
app's own secrets."""
from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

from .connection import Database


class AuthQueries(Database):
    def record_login_failure(self, username: str, remote_addr: str, at: float) -> None:
        with self.transaction() as conn:
            conn.execute("insert into login_failures (username, remote_addr, at) values (?, ?, ?)",
                         (username, remote_addr, at))
            # Keep the table small: only the last day matters to the throttle.
            conn.execute("delete from login_failures where at < ?", (at - 86400,))

    def login_failures_since(self, username: str, remote_addr: str, since: float) -> tuple[int, int]:
        """(failures for this user name, failures from this address) since a time."""
        row = self.conn.execute(
            "select (select count(*) from login_failures where username = ? and at >= ?),"
            " (select count(*) from login_failures where remote_addr = ? and at >= ?)",
            (username, since, remote_addr, since),
        ).fetchone()
        return int(row[0]), int(row[1])

    def clear_login_failures(self, username: str) -> None:
        with self.transaction() as conn:
            conn.execute("delete from login_failures where username = ?", (username,))

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
