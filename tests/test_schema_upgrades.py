"""A database written by an older version opens in this one with nothing lost.

Each test builds the older schema with the real migrations stopped before a change, writes rows
the way that version wrote them, then opens the file with `Store` (which applies the rest)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import sqlite_utils

from dashboard.store import Store, migrations

NOW = 1_800_000_000.0
REGIONS = ["us-east-1", "eu-west-1", "ap-south-1"]


def older_database(path: Path, stop_before: str) -> sqlite_utils.Database:
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before=stop_before)
    return db


def test_history_written_before_the_counts_existed_is_counted(tmp_path: Path) -> None:
    db = older_database(tmp_path / "dashboard.db", "m025_health_counts")
    rng = random.Random(5)
    rows = [(NOW - rng.uniform(0, 3 * 86400), region, "health", int(rng.random() < 0.8))
            for region in REGIONS for _ in range(1500)]
    db.conn.executemany("insert into samples (ts, region, endpoint, ok) values (?, ?, ?, ?)", rows)
    db.conn.commit()
    db.close()

    store = Store(tmp_path / "dashboard.db")
    for since in (NOW - 3 * 86400, NOW - 1.5 * 86400 - 0.5, NOW - 7200, NOW - 3000.5, NOW - 300):
        counts = store.window_counts(REGIONS, since)
        assert counts == store.window_counts_from_samples(REGIONS, since)
        assert sum(c.polls for c in counts.values()) > 0


def test_a_deployment_payload_stored_in_the_regions_row_moves_to_its_own_table(tmp_path: Path) -> None:
    db = older_database(tmp_path / "dashboard.db", "m026_deployment_payloads_apart")
    payload = {"region": "eu-west-1", "regions": REGIONS, "version": "2.0", "build": ["x" * 100] * 100}
    db["regions"].insert({"region": "eu-west-1", "state": "up", "revision": 4, "deployment_json": json.dumps(payload),
                          "deployment_at": NOW, "version": "2.0", "reported_region": "eu-west-1",
                          "reported_regions_json": json.dumps(REGIONS), "markers_json": "{}"})
    db.close()

    store = Store(tmp_path / "dashboard.db")
    assert store.region_deployment("eu-west-1") == payload
    assert "deployment_json" not in {c.name for c in store.db["regions"].columns}
    row = store.region_rows(["eu-west-1"])[0]
    assert (row["state"], row["revision"], row["version"], row["deployment_at"]) == ("up", 4, "2.0", NOW)
    assert row["reported_regions"] == REGIONS


def test_an_unchanged_deployment_payload_is_not_written_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "dashboard.db")
    payload = {"region": "eu-west-1", "regions": REGIONS}

    def rows_written(body: dict) -> int:
        before = store.conn.total_changes
        with store.transaction():
            store.update_deployment("eu-west-1", body, None, NOW)
        return store.conn.total_changes - before

    store.db["regions"].insert({"region": "eu-west-1", "state": "up", "revision": 1})
    assert rows_written(payload) == 2  # the regions row and the new payload
    assert rows_written(payload) == 1  # the regions row only
    assert rows_written({**payload, "version": "2"}) == 2
    assert store.region_deployment("eu-west-1") == {**payload, "version": "2"}
