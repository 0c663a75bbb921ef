"""What the load benchmarks share: a crowd of viewers refreshing the overview and the status API.

Each viewer is a thread with its own keep-alive connection that GETs `/api/v1/status` and the
overview fragment (as htmx asks for it) every `period` seconds, starting at staggered offsets so
the crowd does not arrive in one burst. Every request is recorded with when it was sent, so a
benchmark can cut the run into minutes. Run the crowd in its own process (`viewers`): its CPU
then competes with the server the way real browsers on other machines do not, but it never shares
an interpreter lock with what it measures.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx

STATUS_PATH = "/api/v1/status"
OVERVIEW_PATH = "/fragments/overview"
# What one viewer requests every period: the status API, and the overview's live fragment.
VIEWER_REQUESTS = ((STATUS_PATH, {}), (OVERVIEW_PATH, {"HX-Request": "true"}))


@dataclass(frozen=True)
class Request:
    """One viewer request: when it was sent (seconds after the crowd started), what, how long, answer."""

    at: float
    path: str
    seconds: float
    status: int  # 0: no answer (a transport error)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` 0.5 for the median, 0.95 for p95); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def p95(values: list[float]) -> float:
    return percentile(values, 0.95)


def run_viewers(url: str, count: int, period: float, duration: float) -> list[Request]:
    """`count` viewers for `duration` seconds, in threads of this process; every request they made."""
    requests: list[Request] = []
    lock = threading.Lock()
    began = time.monotonic()
    end = began + duration

    def viewer(offset: float) -> None:
        time.sleep(offset)
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < end:
                started = time.monotonic()
                for path, headers in VIEWER_REQUESTS:
                    sent = time.monotonic()
                    try:
                        status = client.get(path, headers=headers).status_code
                    except httpx.HTTPError:
                        status = 0
                    record = Request(sent - began, path, time.monotonic() - sent, status)
                    with lock:
                        requests.append(record)
                time.sleep(max(0.0, period - (time.monotonic() - started)))

    threads = [threading.Thread(target=viewer, args=(i * period / count,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return requests


def viewers(url: str, count: int, period: float, duration: float, conn) -> None:
    """In a child process: run the crowd (`run_viewers`) and send back its requests."""
    conn.send(run_viewers(url, count, period, duration))
