"""Windowed error-rate counts from `health_counts` equal a direct count over the raw samples.

`SampleQueries.window_counts` reads whole hours and minutes from counts kept beside the samples,
and only the partial minutes at the edges from raw rows; every test holds it to
`window_counts_from_samples`, the plain count over the same real SQLite file.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from dashboard.config import load_settings
from dashboard.history import RetentionResult, retention_step, rollup_step
from dashboard.model import RegionState, Sample, WindowCounts
from dashboard.probes import HEALTH
from dashboard.store import Store
from dashboard.store.samples import window_spans

from .conftest import deployment_block, write_config

# Hour-aligned, so edges can be put exactly on minute and hour boundaries.
NOW = 1_800_000_000.0
REGIONS = ["us-east-1", "eu-west-1", "ap-south-1", "never-polled"]


def health(ts: float, region: str, ok: bool) -> Sample:
    return Sample(ts, region, HEALTH, ok, 200 if ok else 500, 40.0, "" if ok else "health: HTTP 500")


def write(store: Store, samples: list[Sample]) -> None:
    with store.transaction():
        store.insert_samples(samples)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Three hours of polls at irregular intervals for three regions (one with none), written in
    cycles of mixed sizes as the poller and the seed write them; a poll exactly on each of a few
    minute and hour boundaries."""
    store = Store(tmp_path_factory.mktemp("counts") / "dashboard.db")
    rng = random.Random(7)
    samples = []
    for region, failure_rate in (("us-east-1", 0.02), ("eu-west-1", 0.3), ("ap-south-1", 0.9)):
        t = NOW - 3 * 3600 - 17.5
        while t < NOW + 30:
            samples.append(health(t, region, rng.random() >= failure_rate))
            t += rng.choice((0.5, 1.0, 7.0, 15.0, 15.0, 61.0))
        for edge in (NOW - 3600, NOW - 300, NOW - 60, NOW):
            samples.append(health(edge, region, ok=False))
    rng.shuffle(samples)
    while samples:
        size = rng.randint(1, 400)
        write(store, samples[:size])
        samples = samples[size:]
    return store


def both(store: Store, since: float, until: float | None) -> tuple[dict[str, WindowCounts], dict[str, WindowCounts]]:
    return store.window_counts(REGIONS, since, until), store.window_counts_from_samples(REGIONS, since, until)


@pytest.mark.parametrize("since, until", [
    (NOW - 300, None),                      # the status page's 5 min, with the poll at NOW in it
    (NOW - 3600, None),                     # the 1 h window starting exactly on a poll and an hour
    (NOW - 3600 + 0.25, None),              # ... and just after that poll
    (NOW - 2 * 3600 - 1234.5, None),        # partial minute, partial hour, whole hours, open end
    (NOW - 3 * 3600 - 100, NOW + 1000),     # everything, closed
    (NOW - 2 * 3600 + 30, NOW - 600.5),     # partial edges at both ends, one whole hour between
    (NOW - 3600, NOW),                      # both edges exactly on polls: both included
    (NOW - 300, NOW - 60),                  # whole minutes only, edges on polls
    (NOW - 90, NOW - 30),                   # across one minute boundary: raw only
    (NOW - 59, NOW - 58),                   # inside one minute
    (NOW + 100, None),                      # after every poll: nothing
    (NOW - 10 * 3600, NOW - 9 * 3600),      # before every poll: nothing
])
def test_window_counts_equal_a_direct_count(history: Store, since: float, until: float | None) -> None:
    counted, direct = both(history, since, until)
    assert counted == direct
    assert counted["never-polled"] == WindowCounts()


def test_window_counts_equal_a_direct_count_for_random_windows(history: Store) -> None:
    rng = random.Random(11)
    for _ in range(200):
        since = NOW - rng.uniform(-60, 3.2 * 3600)
        until = None if rng.random() < 0.3 else since + rng.uniform(0, 3 * 3600)
        counted, direct = both(history, since, until)
        assert counted == direct, (since, until)


@pytest.fixture(scope="module")
def days_of_history(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Four days of polls every few minutes, crossing three UTC midnights, for day buckets."""
    store = Store(tmp_path_factory.mktemp("days") / "dashboard.db")
    rng = random.Random(17)
    samples = []
    for region in ("us-east-1", "eu-west-1"):
        t = NOW - 4 * 86400 - 41.5
        while t < NOW:
            samples.append(health(t, region, rng.random() >= 0.1))
            t += rng.choice((30.0, 170.0, 240.0, 600.0))
    write(store, samples)
    return store


def test_windows_over_days_equal_a_direct_count(days_of_history: Store) -> None:
    rng = random.Random(19)
    midnight = NOW // 86400 * 86400
    windows = [(midnight - 2 * 86400, None), (midnight - 86400, midnight), (NOW - 30 * 3600, NOW),
               (NOW - 3.5 * 86400, NOW - 0.5 * 86400)]
    windows += [(since, None if rng.random() < 0.3 else since + rng.uniform(0, 4 * 86400))
                for since in (NOW - rng.uniform(0, 4.2 * 86400) for _ in range(100))]
    for since, until in windows:
        counted, direct = both(days_of_history, since, until)
        assert counted == direct, (since, until)
    assert days_of_history.window_counts(["us-east-1"], NOW - 3 * 86400)["us-east-1"].polls > 500


def test_some_windows_have_polls_and_failures(history: Store) -> None:
    """The windows above are not all empty: the data behind the equalities is there."""
    counts = history.window_counts(REGIONS, NOW - 3600)
    assert counts["us-east-1"].polls > 100
    assert 0 < counts["ap-south-1"].failed < counts["ap-south-1"].polls


def test_every_instant_lies_in_exactly_one_span() -> None:
    rng = random.Random(3)
    for _ in range(300):
        since = NOW - rng.uniform(0, 3 * 86400)
        until = None if rng.random() < 0.3 else since + rng.choice((0, 1, 59, 60, 61, 3600, 7300, 86400 * 2))
        spans = window_spans(since, until)
        probes = [since, since + 0.001, NOW + 5e6] if until is None else [since, until, (since + until) / 2]
        probes += [rng.uniform(since, until if until is not None else NOW + 86400) for _ in range(20)]
        for t in probes:
            if until is not None and t > until:
                continue
            holders = [w for w, lo, hi in spans.buckets if lo <= (t // w) * w < hi and (t // w) * w >= since]
            holders += ["raw" for lo, hi, closed in spans.raw if lo <= t and (t <= hi if closed else t < hi)]
            assert len(holders) == 1, (since, until, t, spans)


def test_counts_follow_every_write_including_a_rejected_cycle(tmp_path: Path) -> None:
    store = Store(tmp_path / "dashboard.db")
    write(store, [health(NOW, "us-east-1", True), health(NOW + 1, "us-east-1", False)])
    with pytest.raises(RuntimeError), store.transaction():
        store.insert_samples([health(NOW + 2, "us-east-1", False)])
        raise RuntimeError("the cycle's write failed after its samples")
    assert store.window_counts(["us-east-1"], NOW - 1) == {"us-east-1": WindowCounts(failed=1, polls=2)}
    assert store.window_counts(["us-east-1"], NOW - 1) == store.window_counts_from_samples(["us-east-1"], NOW - 1)


def test_retention_prunes_counts_with_the_raw_samples(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", deployment_block(["us-east-1"]), database="dashboard.db",
                          raw_retention_hours=1)
    settings = load_settings(config)
    store = Store(tmp_path / "dashboard.db")
    write(store, [health(NOW - h * 3600, "us-east-1", True) for h in range(6)])
    with store.transaction():  # retention walks the regions the poller has written rows for
        assert store.compare_and_set_state(RegionState(region="us-east-1", state="up", revision=1), 0)
    while rollup_step(store, NOW, max_transactions=500):
        pass  # raw samples, and their minute counts, go only once rollups cover them
    result = retention_step(store, settings, NOW)
    # Raw samples older than 1 h go (2 to 5 hours back); minute counts are kept an hour longer, so
    # the minutes 3, 4 and 5 hours back go; hour counts are kept as long as hourly rollups.
    assert result == RetentionResult(samples=4, counts=3)
    minutes = store.conn.execute("select count(*) from health_counts where width = 60").fetchone()[0]
    hours = store.conn.execute("select count(*) from health_counts where width = 3600").fetchone()[0]
    assert (minutes, hours) == (3, 6)
