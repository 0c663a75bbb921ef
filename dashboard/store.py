"""Every SQL statement of the dashboard, behind small named functions.

SQLite in WAL mode so pages read while the poller writes; a busy timeout so a brief lock waits
instead of failing; schema changes only through sqlite-utils `Migrations`. Times are unix seconds
(REAL) so range queries are plain comparisons on an index.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from .health import UNKNOWN, RegionState

BUSY_TIMEOUT_MS = 5000

migrations = Migrations("region-dashboard")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["regions"].create(
        {
            "region": str,
            "state": str,
            "reason": str,
            "since": float,
            "consecutive_failures": int,
            "consecutive_successes": int,
            "last_poll_at": float,
            "revision": int,
            "latency_ms": float,
            "reported_error_rate": float,
            "version": str,
            "deployment_json": str,
            "deployment_at": float,
            "markers_json": str,
        },
        pk="region",
        not_null={"state", "revision"},
        defaults={"state": UNKNOWN, "revision": 0, "consecutive_failures": 0, "consecutive_successes": 0},
    )
    db["samples"].create(
        {
            "id": int,
            "ts": float,
            "region": str,
            "endpoint": str,
            "ok": int,
            "http_status": int,
            "latency_ms": float,
            "reason": str,
            "reported_error_rate": float,
        },
        pk="id",
        not_null={"ts", "region", "endpoint", "ok"},
    )
    # Every read of samples is "one region's endpoint over a time range".
    db["samples"].create_index(["region", "endpoint", "ts"], index_name="samples_region_endpoint_ts")
    db["events"].create(
        {
            "id": int,
            "at": float,
            "region": str,
            "kind": str,
            "old_state": str,
            "new_state": str,
            "reason": str,
            "actor": str,
            "details_json": str,
        },
        pk="id",
        not_null={"at", "kind"},
    )
    db["events"].create_index(["region", "at"], index_name="events_region_at")
    db["events"].create_index(["at"], index_name="events_at")
    # One row: which process may poll this database, until when.
    db["poller_lease"].create(
        {"id": int, "holder": str, "acquired_at": float, "expires_at": float}, pk="id"
    )


@migrations()
def m002_routing_and_auth(db: sqlite_utils.Database) -> None:
    # One row per region under an override: its new traffic goes to target_region.
    db["overrides"].create(
        {
            "region": str,
            "target_region": str,
            "read_only": int,
            "reason": str,
            "actor": str,
            "since": float,
            "until": float,
            "forced": int,
        },
        pk="region",
        not_null={"target_region", "read_only", "reason", "actor", "since", "forced"},
    )
    # The routing table's version: grows by one with every change, so a stale view is detectable.
    db["routing_state"].create({"id": int, "version": int, "updated_at": float}, pk="id")
    db["routing_state"].insert({"id": 1, "version": 0, "updated_at": None})
    # Failed logins, for the throttle; shared by every process serving this database.
    db["login_failures"].create({"id": int, "username": str, "remote_addr": str, "at": float}, pk="id")
    db["login_failures"].create_index(["username", "at"], index_name="login_failures_username_at")
    db["login_failures"].create_index(["remote_addr", "at"], index_name="login_failures_addr_at")
    # Secrets the app generates for itself (the session signing key): kept out of config and repo.
    db["app_secrets"].create({"name": str, "value": str}, pk="name")


@migrations()
def m003_rollups(db: sqlite_utils.Database) -> None:
    # Per region and minute / hour: what the charts of long windows read instead of raw samples.
    # WITHOUT ROWID: the primary key (region, bucket) is the table's only index and its order.
    for table, bucket in (("rollup_minute", "minute"), ("rollup_hour", "hour")):
        db.execute(
            f"create table {table} ("
            f" region text not null, {bucket} integer not null,"
            " polls integer not null, failures integer not null,"
            " latency_p50 real, latency_p95 real, latency_max real,"
            " reported_error_rate real, reported_polls integer not null default 0,"
            f" primary key (region, {bucket})) without rowid"
        )
    # Small facts the maintenance jobs keep: how far rollups reached, what the size bound dropped.
    db["app_state"].create({"name": str, "value": str}, pk="name")


@migrations()
def m004_events_by_region_newest_first(db: sqlite_utils.Database) -> None:
    # The events of one region, newest first, paged by id: served straight from this index.
    db["events"].create_index(["region", "id"], index_name="events_region_id")


@dataclass(frozen=True)
class Sample:
    ts: float
    region: str
    endpoint: str
    ok: bool
    http_status: int | None
    latency_ms: float | None
    reason: str
    reported_error_rate: float | None = None


@dataclass(frozen=True)
class LeaseResult:
    acquired: bool
    holder: str
    expires_at: float


class Store:
    """The dashboard's SQLite database; one connection per thread, opened lazily."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self.db
        with db.ensure_autocommit_on():
            db.execute("PRAGMA journal_mode=WAL")
        self._migrate(db)

    def _migrate(self, db: sqlite_utils.Database) -> None:
        # Two processes starting at once must not both run a migration: take the write lock first.
        for attempt in range(3):
            try:
                migrations.apply(db)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 2:
                    raise

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection (sqlite3 connections must not be shared across threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_ms / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            # WAL + NORMAL is durable across an application crash; only an OS crash can lose the
            # last transactions, which for monitoring samples is the right trade for speed.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            db = sqlite_utils.Database(conn)
            self._local.db = db
            connections = getattr(self, "_connections", None)
            if connections is None:
                self._connections: list[sqlite3.Connection] = []
            self._connections.append(conn)
        return db

    def close(self) -> None:
        """Close every thread's connection (call at shutdown)."""
        for conn in getattr(self, "_connections", []):
            try:
                conn.close()
            except sqlite3.ProgrammingError:
                pass
        self._connections = []
        self._local = threading.local()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front, so it waits
        (up to the busy timeout) at the start instead of failing half way through."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def check_writable(self, timeout_ms: int = 500) -> None:
        """Take the write lock and let it go, waiting at most `timeout_ms`; raises sqlite3.Error.

        For /healthz: a load balancer's check must not wait out the 5 s busy timeout."""
        conn = sqlite3.connect(str(self.path), timeout=timeout_ms / 1000, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    # -- region states ---------------------------------------------------------------------------

    def region_states(self, regions: Sequence[str]) -> dict[str, RegionState]:
        """Stored state of each region; a region never stored is unknown."""
        rows = {
            row["region"]: row
            for row in self.db.query(
                "select region, state, reason, since, consecutive_failures, consecutive_successes,"
                " last_poll_at, revision from regions"
            )
        }
        states = {}
        for region in regions:
            row = rows.get(region)
            states[region] = RegionState(
                region=region,
                state=row["state"],
                reason=row["reason"] or "",
                since=row["since"],
                consecutive_failures=row["consecutive_failures"] or 0,
                consecutive_successes=row["consecutive_successes"] or 0,
                last_poll_at=row["last_poll_at"],
                revision=row["revision"],
            ) if row else RegionState(region=region)
        return states

    def compare_and_set_state(self, new: RegionState, expected_revision: int) -> bool:
        """Write a region's state only if nobody changed it since `expected_revision` was read."""
        conn = self.db.conn
        values = (
            new.state, new.reason, new.since, new.consecutive_failures, new.consecutive_successes,
            new.last_poll_at, new.revision,
        )
        if expected_revision == 0:
            cursor = conn.execute(
                "insert into regions (region, state, reason, since, consecutive_failures,"
                " consecutive_successes, last_poll_at, revision) values (?, ?, ?, ?, ?, ?, ?, ?)"
                " on conflict(region) do update set state = excluded.state, reason = excluded.reason,"
                " since = excluded.since, consecutive_failures = excluded.consecutive_failures,"
                " consecutive_successes = excluded.consecutive_successes,"
                " last_poll_at = excluded.last_poll_at, revision = excluded.revision"
                " where regions.revision = 0",
                (new.region, *values),
            )
        else:
            cursor = conn.execute(
                "update regions set state = ?, reason = ?, since = ?, consecutive_failures = ?,"
                " consecutive_successes = ?, last_poll_at = ?, revision = ?"
                " where region = ? and revision = ?",
                (*values, new.region, expected_revision),
            )
        return cursor.rowcount == 1

    def update_region_details(
        self,
        region: str,
        *,
        latency_ms: float | None,
        reported_error_rate: float | None,
        markers: dict[str, Any],
    ) -> None:
        self.db.conn.execute(
            "update regions set latency_ms = ?, reported_error_rate = ?, markers_json = ? where region = ?",
            (latency_ms, reported_error_rate, json.dumps(markers), region),
        )

    def update_deployment(self, region: str, payload: Any, version: str | None, at: float) -> str | None:
        """Keep the latest deployment payload of a region; returns the version stored before."""
        conn = self.db.conn
        row = conn.execute("select version from regions where region = ?", (region,)).fetchone()
        previous = row[0] if row else None
        conn.execute(
            "update regions set deployment_json = ?, deployment_at = ?, version = ? where region = ?",
            (json.dumps(payload), at, version, region),
        )
        return previous

    def stored_versions(self) -> dict[str, str | None]:
        return {row["region"]: row["version"] for row in self.db.query("select region, version from regions")}

    def region_rows(self, regions: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Everything stored about each region, for pages and the CLI (markers and payload decoded)."""
        rows = {row["region"]: row for row in self.db.query("select * from regions")}
        names = list(regions) if regions is not None else sorted(rows)
        result = []
        for region in names:
            row = dict(rows.get(region) or {"region": region, "state": UNKNOWN, "reason": "not polled yet",
                                            "revision": 0})
            row["markers"] = json.loads(row.pop("markers_json", None) or "{}")
            raw = row.pop("deployment_json", None)
            row["deployment"] = json.loads(raw) if raw else None
            result.append(row)
        return result

    # -- samples ---------------------------------------------------------------------------------

    def insert_samples(self, samples: Iterable[Sample]) -> None:
        self.db.conn.executemany(
            "insert into samples (ts, region, endpoint, ok, http_status, latency_ms, reason,"
            " reported_error_rate) values (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (s.ts, s.region, s.endpoint, int(s.ok), s.http_status, s.latency_ms, s.reason or None,
                 s.reported_error_rate)
                for s in samples
            ],
        )

    def poll_counts(self, region: str, since: float, until: float | None = None) -> tuple[int, int]:
        """(failed polls, polls) of a region's health endpoint in [since, until]."""
        until = time.time() + 1e9 if until is None else until
        row = self.db.conn.execute(
            "select count(*), coalesce(sum(1 - ok), 0) from samples"
            " where region = ? and endpoint = 'health' and ts >= ? and ts <= ?",
            (region, since, until),
        ).fetchone()
        return int(row[1]), int(row[0])

    def error_rate(self, region: str, since: float, until: float | None = None) -> float | None:
        """Failed polls / polls in the window; None when nothing was polled in it."""
        failed, total = self.poll_counts(region, since, until)
        return failed / total if total else None

    def recent_samples(self, region: str, limit: int = 50) -> list[dict[str, Any]]:
        """A region's latest probes, both endpoints, newest first.

        One index range per endpoint, read backwards: ordering all of a region's samples by time
        would sort days of rows to return fifty."""
        return list(
            self.db.query(
                "select * from (select * from samples where region = :region and endpoint = 'health'"
                " order by ts desc limit :limit)"
                " union all select * from (select * from samples where region = :region"
                " and endpoint = 'deployment' order by ts desc limit :limit)"
                " order by ts desc, id desc limit :limit",
                {"region": region, "limit": limit},
            )
        )

    # -- events ----------------------------------------------------------------------------------

    def insert_event(
        self,
        *,
        at: float,
        region: str | None,
        kind: str,
        reason: str,
        old_state: str | None = None,
        new_state: str | None = None,
        actor: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        cursor = self.db.conn.execute(
            "insert into events (at, region, kind, old_state, new_state, reason, actor, details_json)"
            " values (?, ?, ?, ?, ?, ?, ?, ?)",
            (at, region, kind, old_state, new_state, reason, actor, json.dumps(details) if details else None),
        )
        return int(cursor.lastrowid)

    def events(
        self, *, region: str | None = None, limit: int = 50, before: int | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """Events newest first; `before` is an event id, for paging."""
        where, params = [], []
        if region is not None:
            where.append("region = ?")
            params.append(region)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        sql = "select * from events"
        if where:
            sql += " where " + " and ".join(where)
        sql += " order by id desc limit ?"
        rows = []
        for row in self.db.query(sql, [*params, limit]):
            raw = row.pop("details_json")
            row["details"] = json.loads(raw) if raw else None
            rows.append(row)
        return rows

    # -- the poller lease ------------------------------------------------------------------------

    def acquire_lease(self, holder: str, ttl_seconds: float, now: float | None = None) -> LeaseResult:
        """Take or renew the right to poll this database; refused while another holder's lease runs."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            conn.execute(
                "insert into poller_lease (id, holder, acquired_at, expires_at) values (1, ?, ?, ?)"
                " on conflict(id) do update set holder = excluded.holder,"
                " acquired_at = case when poller_lease.holder = excluded.holder"
                "   then poller_lease.acquired_at else excluded.acquired_at end,"
                " expires_at = excluded.expires_at"
                " where poller_lease.holder = excluded.holder or poller_lease.expires_at < ?",
                (holder, now, now + ttl_seconds, now),
            )
            current, expires_at = conn.execute("select holder, expires_at from poller_lease where id = 1").fetchone()
        return LeaseResult(current == holder, current, expires_at)

    def release_lease(self, holder: str) -> None:
        with self.transaction() as conn:
            conn.execute("delete from poller_lease where id = 1 and holder = ?", (holder,))

    # -- series for charts -----------------------------------------------------------------------

    def poll_buckets(self, region: str, start: float, end: float, bucket_seconds: float,
                     origin: float) -> list[tuple[int, int, int, float | None, int]]:
        """Per bucket (counted from `origin`) of a region's health polls in [start, end):
        (bucket, polls, failed polls, sum of reported error rates, how many reported one)."""
        return self.db.conn.execute(
            "select cast((ts - :origin) / :bucket as integer) as bucket, count(*), sum(1 - ok),"
            " sum(reported_error_rate), count(reported_error_rate)"
            " from samples where region = :region and endpoint = 'health' and ts >= :start and ts < :end"
            " group by bucket order by bucket",
            {"region": region, "start": start, "end": end, "bucket": bucket_seconds, "origin": origin},
        ).fetchall()

    def latency_samples(self, region: str, start: float, end: float, bucket_seconds: float,
                        origin: float) -> list[tuple[int, float]]:
        """(bucket, latency) of a region's answered health polls in [start, end), for percentiles."""
        return self.db.conn.execute(
            "select cast((ts - ?) / ? as integer), latency_ms from samples"
            " where region = ? and endpoint = 'health' and ts >= ? and ts < ? and ok = 1"
            " and latency_ms is not null",
            (origin, bucket_seconds, region, start, end),
        ).fetchall()

    def events_between(self, region: str, start: float, end: float, kinds: Sequence[str]) -> list[dict[str, Any]]:
        marks = ",".join("?" for _ in kinds)
        return list(self.db.query(
            f"select id, at, kind, old_state, new_state, reason from events"
            f" where region = ? and at >= ? and at < ? and kind in ({marks}) order by at",
            [region, start, end, *kinds],
        ))

    def last_poll_at(self) -> float | None:
        """When any region was last polled: how fresh the whole picture is."""
        row = self.db.conn.execute("select max(last_poll_at) from regions").fetchone()
        return row[0] if row else None

    # -- routing overrides -----------------------------------------------------------------------

    def overrides(self) -> list[dict[str, Any]]:
        return [
            {**row, "read_only": bool(row["read_only"]), "forced": bool(row["forced"])}
            for row in self.db.query("select * from overrides order by region")
        ]

    def routing_version(self) -> int:
        return int(self.db.conn.execute("select version from routing_state where id = 1").fetchone()[0])

    def bump_routing_version(self, now: float) -> int:
        self.db.conn.execute("update routing_state set version = version + 1, updated_at = ? where id = 1", (now,))
        return self.routing_version()

    def put_override(self, override: dict[str, Any]) -> None:
        self.db.conn.execute(
            "insert or replace into overrides (region, target_region, read_only, reason, actor, since, until,"
            " forced) values (:region, :target_region, :read_only, :reason, :actor, :since, :until, :forced)",
            {**override, "read_only": int(override["read_only"]), "forced": int(override["forced"])},
        )

    def delete_override(self, region: str, *, expired_before: float | None = None) -> bool:
        """Remove a region's override (only if it expired before the given time, when given)."""
        if expired_before is None:
            cursor = self.db.conn.execute("delete from overrides where region = ?", (region,))
        else:
            cursor = self.db.conn.execute(
                "delete from overrides where region = ? and until is not null and until <= ?",
                (region, expired_before),
            )
        return cursor.rowcount == 1

    def expired_overrides(self, now: float) -> list[str]:
        return [row[0] for row in self.db.conn.execute(
            "select region from overrides where until is not null and until <= ? order by region", (now,))]

    # -- login throttle and app secrets ----------------------------------------------------------

    def record_login_failure(self, username: str, remote_addr: str, at: float) -> None:
        with self.transaction() as conn:
            conn.execute("insert into login_failures (username, remote_addr, at) values (?, ?, ?)",
                         (username, remote_addr, at))
            # Keep the table small: only the last day matters to the throttle.
            conn.execute("delete from login_failures where at < ?", (at - 86400,))

    def login_failures_since(self, username: str, remote_addr: str, since: float) -> tuple[int, int]:
        """(failures for this user name, failures from this address) since a time."""
        row = self.db.conn.execute(
            "select (select count(*) from login_failures where username = ? and at >= ?),"
            " (select count(*) from login_failures where remote_addr = ? and at >= ?)",
            (username, since, remote_addr, since),
        ).fetchone()
        return int(row[0]), int(row[1])

    def clear_login_failures(self, username: str) -> None:
        with self.transaction() as conn:
            conn.execute("delete from login_failures where username = ?", (username,))

    def app_secret(self, name: str, make: Any) -> str:
        """A secret the app keeps for itself, created once (by `make()`) and shared by every process."""
        with self.transaction() as conn:
            row = conn.execute("select value from app_secrets where name = ?", (name,)).fetchone()
            if row:
                return row[0]
            value = make()
            conn.execute("insert into app_secrets (name, value) values (?, ?)", (name, value))
            return value

    # -- rollups, retention, size ----------------------------------------------------------------

    def get_state(self, name: str) -> str | None:
        row = self.db.conn.execute("select value from app_state where name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_state(self, name: str, value: str) -> None:
        self.db.conn.execute("insert or replace into app_state (name, value) values (?, ?)", (name, value))

    def sample_regions(self) -> list[str]:
        """Every region with stored rows, configured now or not (retention covers them all)."""
        # Every region ever polled or seeded has a row in regions, and rows there are never deleted.
        return [row[0] for row in self.db.conn.execute("select region from regions order by region")]

    def health_samples_between(self, region: str, start: float, end: float) -> list[tuple[float, int, float | None, float | None]]:
        """(ts, ok, latency_ms, reported_error_rate) of a region's health polls in [start, end)."""
        return self.db.conn.execute(
            "select ts, ok, latency_ms, reported_error_rate from samples"
            " where region = ? and endpoint = 'health' and ts >= ? and ts < ? order by ts",
            (region, start, end),
        ).fetchall()

    def first_health_sample_at(self) -> float | None:
        rows = [self.db.conn.execute(
            "select min(ts) from samples where region = ? and endpoint = 'health'", (region,)).fetchone()[0]
            for region in self.sample_regions()]
        rows = [r for r in rows if r is not None]
        return min(rows) if rows else None

    def put_rollups(self, table: str, rows: Iterable[tuple]) -> None:
        """Insert or replace rows of rollup_minute / rollup_hour:
        (region, bucket, polls, failures, p50, p95, max, reported_error_rate, reported_polls)."""
        if table not in ("rollup_minute", "rollup_hour"):
            raise ValueError(table)
        self.db.conn.executemany(f"insert or replace into {table} values (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def rollup_rows(self, table: str, region: str, start: int, end: int) -> list[tuple]:
        """(bucket, polls, failures, p50, p95, max, reported_error_rate, reported_polls) in [start, end)."""
        column = {"rollup_minute": "minute", "rollup_hour": "hour"}[table]
        return self.db.conn.execute(
            f"select {column}, polls, failures, latency_p50, latency_p95, latency_max, reported_error_rate,"
            f" reported_polls from {table} where region = ? and {column} >= ? and {column} < ?"
            f" order by {column}",
            (region, start, end),
        ).fetchall()

    def delete_samples_before(self, region: str, cutoff: float, limit: int) -> int:
        """Delete up to `limit` of a region's oldest samples older than cutoff; returns how many."""
        cursor = self.db.conn.execute(
            "delete from samples where id in (select id from samples where region = ? and endpoint = 'health'"
            " and ts < ? limit ?) or id in (select id from samples where region = ? and endpoint = 'deployment'"
            " and ts < ? limit ?)",
            (region, cutoff, limit, region, cutoff, limit),
        )
        return cursor.rowcount

    def delete_rollups_before(self, table: str, region: str, cutoff: int, limit: int) -> int:
        column = {"rollup_minute": "minute", "rollup_hour": "hour"}[table]
        cursor = self.db.conn.execute(
            f"delete from {table} where region = ? and {column} in"
            f" (select {column} from {table} where region = ? and {column} < ? order by {column} limit ?)",
            (region, region, cutoff, limit),
        )
        return cursor.rowcount

    def oldest_rollup(self, table: str) -> int | None:
        column = {"rollup_minute": "minute", "rollup_hour": "hour"}[table]
        values = [self.db.conn.execute(f"select min({column}) from {table} where region = ?", (region,)).fetchone()[0]
                  for region in self.sample_regions()]
        values = [v for v in values if v is not None]
        return min(values) if values else None

    def used_bytes(self) -> int:
        """Bytes the database's live pages take (free pages are reused before the file grows)."""
        conn = self.db.conn
        page_size = conn.execute("pragma page_size").fetchone()[0]
        pages = conn.execute("pragma page_count").fetchone()[0]
        free = conn.execute("pragma freelist_count").fetchone()[0]
        return (pages - free) * page_size

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += Path(str(self.path) + suffix).stat().st_size
            except FileNotFoundError:
                pass
        return total
