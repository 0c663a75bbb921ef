"""What each publisher of the routing table last did: the version it applied, its last error."""
from __future__ import annotations

from ..model import PublisherRow
from .connection import Database


class PublisherQueries(Database):
    """The `publishers` rows: one per publisher, written after every attempt to apply the table."""

    def publisher_rows(self) -> dict[str, PublisherRow]:
        rows = self.db.query("select name, type, version, applied_at, error, failed_at, consecutive_failures,"
                             " failures_total, next_attempt_at from publishers")
        return {row["name"]: PublisherRow(**row) for row in rows}  # type: ignore[typeddict-item]

    def record_published(self, name: str, type_: str, version: int, at: float) -> None:
        """The publisher applied `version`: its error and back-off are cleared; its version never goes back."""
        with self.transaction() as conn:
            conn.execute(
                "insert into publishers (name, type, version, applied_at) values (?, ?, ?, ?)"
                " on conflict(name) do update set type = excluded.type,"
                " version = max(coalesce(publishers.version, -1), excluded.version),"
                " applied_at = excluded.applied_at, error = null, consecutive_failures = 0, next_attempt_at = null",
                (name, type_, version, at),
            )

    def record_publish_failure(self, name: str, type_: str, version: int, error: str, at: float, *,
                               retry_base_seconds: float, retry_max_seconds: float) -> None:
        """The publisher failed to apply `version`: count it, keep the error, and back off exponentially
        (base, 2 x base, 4 x base, ... up to the maximum). A failure with a table older than the one
        it already applied (another process was faster) changes nothing."""
        with self.transaction() as conn:
            conn.execute(
                "insert into publishers (name, type, error, failed_at, consecutive_failures, failures_total,"
                " next_attempt_at) values (:name, :type, :error, :at, 1, 1, :at + :base)"
                " on conflict(name) do update set type = excluded.type, error = excluded.error,"
                " failed_at = excluded.failed_at, failures_total = publishers.failures_total + 1,"
                " next_attempt_at = :at + min(:cap, :base * (1 << min(publishers.consecutive_failures, 20))),"
                " consecutive_failures = publishers.consecutive_failures + 1"
                " where coalesce(publishers.version, -1) <= :version",
                {"name": name, "type": type_, "error": error, "at": at, "base": retry_base_seconds,
                 "cap": retry_max_seconds, "version": version},
            )
