"""The database schema: every change only through sqlite-utils `Migrations`, applied in order."""
from __future__ import annotations

import json

import sqlite_utils
from sqlite_utils.migrations import Migrations

from ..model import UNKNOWN, ReportedIdentity

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


@migrations()
def m005_notification_outbox(db: sqlite_utils.Database) -> None:
    # One row per (notice, receiver): a notice waits here until that receiver answered 2xx, so a
    # crash or a restart never loses it. `notice_id` is shared by the rows of one notice and sent
    # as its idempotency key. A row is `pending` until `delivered`, `failed` (retries used up or a
    # permanent error) or `dropped` (the receiver's queue was full, or it left the config);
    # `claimed_by` / `claimed_until` let one delivering process at a time work on it.
    db.execute(
        "create table notification_outbox ("
        " id integer primary key,"
        " notice_id text not null,"
        " receiver text not null,"
        " kind text not null,"
        " region text,"
        " notice_json text not null,"
        " state text not null default 'pending',"
        " created_at real not null,"
        " next_attempt_at real not null,"
        " attempts integer not null default 0,"
        " claimed_by text,"
        " claimed_until real,"
        " last_error text,"
        " last_attempt_at real,"
        " finished_at real,"
        " unique (notice_id, receiver))"
    )
    # The delivery worker's query: one receiver's pending rows, oldest first.
    db.table("notification_outbox").create_index(["receiver", "state", "id"], index_name="outbox_receiver_state_id")
    # Pruning finished rows by age.
    db.table("notification_outbox").create_index(["finished_at"], index_name="outbox_finished_at")


@migrations()
def m006_operator_sessions(db: sqlite_utils.Database) -> None:
    # One row per browser login: a session cookie is honoured only while its row exists, so logout
    # and a changed or removed operator end sessions on the server, not only in the browser.
    db["operator_sessions"].create(
        {"id": str, "operator": str, "hash_digest": str, "created_at": float, "expires_at": float},
        pk="id",
        not_null={"operator", "hash_digest", "created_at", "expires_at"},
    )
    db["operator_sessions"].create_index(["operator"], index_name="operator_sessions_operator")
    db["operator_sessions"].create_index(["expires_at"], index_name="operator_sessions_expires_at")


@migrations()
def m007_login_throttle(db: sqlite_utils.Database) -> None:
    # Failed logins per (user name, address): the throttle's back-off grows per pair, so guessing
    # alice's password from one address never locks alice out from hers. login_failures (m002)
    # is no longer written.
    db.execute(
        "create table login_throttle ("
        " username text not null, remote_addr text not null,"
        " failures integer not null, last_failure_at real not null,"
        " primary key (username, remote_addr)) without rowid"
    )
    db["login_throttle"].create_index(["last_failure_at"], index_name="login_throttle_last_failure_at")


@migrations()
def m008_region_identity_columns(db: sqlite_utils.Database) -> None:
    # What a region says it is (its name, its view of the fleet), in columns written with its
    # payload, so reading the status never parses a payload that may be a megabyte.
    for column in ("reported_region", "reported_primary_region", "reported_regions_json"):
        db["regions"].add_column(column, str)
    for region, raw in db.execute("select region, deployment_json from regions where deployment_json is not null"
                                  ).fetchall():
        try:
            identity = ReportedIdentity.of(json.loads(raw))
        except ValueError:
            continue
        db.execute("update regions set reported_region = ?, reported_primary_region = ?, reported_regions_json = ?"
                   " where region = ?", (identity.region, identity.primary_region,
                                         None if identity.regions is None else json.dumps(identity.regions), region))


@migrations()
def m020_publishers(db: sqlite_utils.Database) -> None:
    # One row per publisher (routing file, nginx, HAProxy): what it last applied and its last error,
    # shared by every process on this database (the CLI, the web workers, the scheduler).
    # `version` only goes up; `failures_total` only grows (a Prometheus counter); a failure sets
    # `next_attempt_at`, the back-off after which the scheduler tries again.
    db.execute(
        "create table publishers ("
        " name text primary key,"
        " type text not null,"
        " version integer,"
        " applied_at real,"
        " error text,"
        " failed_at real,"
        " consecutive_failures integer not null default 0,"
        " failures_total integer not null default 0,"
        " next_attempt_at real)"
    )


@migrations()
def m025_health_counts(db: sqlite_utils.Database) -> None:
    # Polls and failed polls of each region's health endpoint per minute (width 60), hour (3600)
    # and UTC day (86400), added to in the same transaction as the samples they count. Windowed error
    # rates read these instead of counting raw samples, so a status read costs the same after a
    # day as after a minute: see SampleQueries.window_counts.
    db.execute(
        "create table health_counts ("
        " region text not null, width integer not null, bucket integer not null,"
        " polls integer not null, failed integer not null,"
        " primary key (region, width, bucket)) without rowid"
    )
    # Existing history: counted from the raw samples still kept; the hour holding a region's oldest
    # raw sample, and every hour before it, from its hourly rollups (counted before retention
    # pruned part of that hour's samples).
    for width in (60, 3600):
        db.execute(
            "insert into health_counts select region, ?, cast(ts / ? as integer) * ?, count(*), sum(1 - ok)"
            " from samples where endpoint = 'health' group by region, cast(ts / ? as integer)",
            (width, width, width, width),
        )
    db.execute(
        "insert or replace into health_counts select rollup_hour.region, 3600, hour, polls, failures"
        " from rollup_hour where hour <= coalesce((select min(ts) from samples"
        " where samples.region = rollup_hour.region and endpoint = 'health'), 1e18)"
    )
    db.execute(
        "insert into health_counts select region, 86400, bucket / 86400 * 86400, sum(polls), sum(failed)"
        " from health_counts where width = 3600 group by region, bucket / 86400"
    )


@migrations()
def m026_deployment_payloads_apart(db: sqlite_utils.Database) -> None:
    # A region's deployment payload (its fleet view: about 12 KB at 200 regions) lived in its
    # `regions` row, before the columns every status read wants; SQLite reaches a column past a
    # big one by walking that value's overflow pages, so every status read paid for 200 payloads
    # it never selected. The payload now has its own table, written only when it changed.
    db.execute("create table region_deployments (region text primary key, payload text not null)")
    db.execute("insert into region_deployments select region, deployment_json from regions"
               " where deployment_json is not null")
    db["regions"].transform(drop={"deployment_json"})
