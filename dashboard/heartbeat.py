"""What the poller process tells the web process, through the database it already shares.

The poller writes a heartbeat row after every cycle (or standby check); the process that watches
it (`supervisor`) writes whether it is up, down since when, and the last gap. The web layer reads
both and never asks a poller object: it may run in another process, or on another machine.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from .store import Store

HEARTBEAT_KEY = "poller_heartbeat"
POLLING_METRICS_KEY = "poller_metrics"  # the poller process's own Prometheus series, as text
PROCESS_KEY = "poller_process"
# How long a restart gap stays on the overview after the poller is back.
GAP_SHOWN_SECONDS = 3600.0


@dataclass(frozen=True)
class Heartbeat:
    """The poller's last word: who, when, and whether its last cycle's latencies can be trusted."""

    pid: int
    at: float
    standby: str | None = None
    last_error: str | None = None
    lag_ms: float | None = None  # the event loop's worst lag during the last cycle
    cpu_starved_ms: float | None = None  # wall time the process wanted the CPU and did not get it
    overloaded: bool = False  # the last cycle's latencies were held: unreliable
    overloaded_since: float | None = None  # first cycle of the current run of overloaded cycles


def write_heartbeat(store: Store, beat: Heartbeat) -> None:
    store.set_state(HEARTBEAT_KEY, json.dumps(asdict(beat)))


def read_heartbeat(store: Store) -> Heartbeat | None:
    raw = store.get_state(HEARTBEAT_KEY)
    if raw is None:
        return None
    data = json.loads(raw)
    return Heartbeat(**{k: v for k, v in data.items() if k in Heartbeat.__dataclass_fields__})


def write_polling_metrics(store: Store, exposition: str) -> None:
    """The poller process's probe and cycle series, for the web process's /metrics to serve."""
    store.set_state(POLLING_METRICS_KEY, exposition)


def read_polling_metrics(store: Store) -> str | None:
    return store.get_state(POLLING_METRICS_KEY)


def write_process_state(store: Store, state: dict[str, Any]) -> None:
    store.set_state(PROCESS_KEY, json.dumps(state))


def read_process_state(store: Store) -> dict[str, Any]:
    """What the supervisor last wrote: {"pid", "down_since", "restarts", "last_gap": [from, to]}."""
    raw = store.get_state(PROCESS_KEY)
    return json.loads(raw) if raw else {}


class StoredPollerStatus:
    """The poller as the web layer sees it (`web.context.PollerStatus`), read from the database."""

    def __init__(self, store: Store, fresh_seconds: float) -> None:
        self.store = store
        self.fresh_seconds = fresh_seconds  # a heartbeat older than this means no poller runs

    def heartbeat(self) -> Heartbeat | None:
        return read_heartbeat(self.store)

    @property
    def running(self) -> bool:
        beat = read_heartbeat(self.store)
        down = read_process_state(self.store).get("down_since")
        return beat is not None and down is None and time.time() - beat.at <= self.fresh_seconds

    @property
    def standby_reason(self) -> str | None:
        beat = read_heartbeat(self.store)
        return beat.standby if beat is not None else None

    @property
    def last_error(self) -> str | None:
        beat = read_heartbeat(self.store)
        return beat.last_error if beat is not None else None


def poller_notices(store: Store, now: float | None = None) -> dict[str, Any]:
    """What the overview and /healthz say about the poller: down since, the last gap, overloaded since."""
    now = time.time() if now is None else now
    process = read_process_state(store)
    beat = read_heartbeat(store)
    gap = process.get("last_gap")
    return {
        "down_since": process.get("down_since"),
        "gap": gap if gap and now - gap[1] <= GAP_SHOWN_SECONDS else None,
        "overloaded_since": beat.overloaded_since if beat is not None and beat.overloaded else None,
        "lag_ms": None if beat is None else beat.lag_ms,
    }
