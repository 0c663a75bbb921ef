"""Auth state the web processes share: failed logins for the throttle, and the app's own secrets."""
from __future__ import annotations

from collections.abc import Callable

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

    def app_secret(self, name: str, make: Callable[[], str]) -> str:
        """A secret the app keeps for itself, created once (by `make()`) and shared by every process."""
        with self.transaction() as conn:
            row = conn.execute("select value from app_secrets where name = ?", (name,)).fetchone()
            if row:
                return str(row[0])
            value = make()
            conn.execute("insert into app_secrets (name, value) values (?, ?)", (name, value))
            return value
