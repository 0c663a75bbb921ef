"""The one connection class every part of the store works over: SQLite in WAL mode, per thread.

WAL so pages read while the poller writes; a busy timeout so a brief lock waits instead of
failing; `BEGIN IMMEDIATE` transactions so a writer waits at the start, never half way through.
Times are unix seconds (REAL) so range queries are plain comparisons on an index.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from .schema import migrations

BUSY_TIMEOUT_MS = 5000
# The database holds the session signing key: only its owner may read it, whatever the umask.
FILE_MODE = 0o600
log = logging.getLogger(__name__)


class Database:
    """The dashboard's SQLite file; one connection per thread, opened lazily, migrated at open."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._watcher: sqlite3.Connection | None = None  # see data_version
        self._watcher_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._restrict_file_modes()
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

    def _restrict_file_modes(self) -> None:
        """Create the file owner-only before SQLite opens it, and make an existing one so.

        SQLite gives the -wal and -shm files the mode of the database file, so they follow."""
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        for suffix in ("", "-wal", "-shm"):
            try:
                os.chmod(f"{self.path}{suffix}", FILE_MODE)
            except FileNotFoundError:
                pass
            except PermissionError:
                log.warning("event=database_mode_not_restricted path=%s%s reason=not_owner", self.path, suffix)

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
            with self._connections_lock:
                self._connections.append(conn)
        return db

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def data_version(self) -> int:
        """A number that moves whenever anyone commits to the database, from any connection or
        process: the poller's cycle, a routing change, a maintenance window, a lapse.

        SQLite's `PRAGMA data_version` moves for commits by *other* connections only, so it is read
        on a connection of its own that never writes. It costs microseconds: pages ask it to know
        whether an answer built earlier still holds (web/shared_views.py)."""
        with self._watcher_lock:
            if self._watcher is None:
                self._watcher = sqlite3.connect(str(self.path), timeout=self.busy_timeout_ms / 1000,
                                                isolation_level=None, check_same_thread=False)
                with self._connections_lock:
                    self._connections.append(self._watcher)
            return int(self._watcher.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        """Close every thread's connection (call at shutdown)."""
        with self._watcher_lock:
            self._watcher = None
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.ProgrammingError:
                pass
        self._local = threading.local()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front, so it waits
        (up to the busy timeout) at the start instead of failing half way through."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def durable_transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction whose commit is on disk before it returns, even across an OS crash or a
        power cut (`synchronous=FULL` syncs the WAL at commit; NORMAL, the default here, leaves the
        last commits to the next checkpoint).

        For routing changes: the routing file they publish is fsynced, so a table version must never
        survive in the file and be lost from the database, or the next change would reuse its number
        and routers, which never take a version they have, would refuse it."""
        conn = self.conn
        conn.execute("PRAGMA synchronous=FULL")
        try:
            with self.transaction() as inside:
                yield inside
        finally:
            conn.execute("PRAGMA synchronous=NORMAL")

    def check_writable(self, timeout_ms: int = 500) -> None:
        """Take the write lock and let it go, waiting at most `timeout_ms`; raises sqlite3.Error.

        For /healthz: a load balancer's check must not wait out the 5 s busy timeout."""
        conn = sqlite3.connect(str(self.path), timeout=timeout_ms / 1000, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    # -- small facts the maintenance jobs keep (app_state) ---------------------------------------

    def get_state(self, name: str) -> str | None:
        row = self.conn.execute("select value from app_state where name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_state(self, name: str, value: str) -> None:
        self.conn.execute("insert or replace into app_state (name, value) values (?, ?)", (name, value))

    # -- size ------------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes the database's live pages take (free pages are reused before the file grows)."""
        conn = self.conn
        page_size = conn.execute("pragma page_size").fetchone()[0]
        pages = conn.execute("pragma page_count").fetchone()[0]
        free = conn.execute("pragma freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def vacuum(self) -> None:
        """Rebuild the file without its free pages (after a large prune; takes the write lock)."""
        with self.db.ensure_autocommit_on():
            self.db.execute("vacuum")

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += Path(str(self.path) + suffix).stat().st_size
            except FileNotFoundError:
                pass
        return total
