"""Time series for a region's charts, and the Plotly figures drawn from them.

Each window is cut into at most a few hundred buckets, never finer than the poll interval, so a
chart carries a readable number of points whatever the window.
"""
from __future__ import annotations

import html
import math
import time
from typing import Any

import plotly.graph_objects as go

from .history import percentile, watermark
from .store import Store
from .text import iso

WINDOWS = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "1y": 365 * 86400}
# Each window reads the coarsest table that still gives it a few hundred points or more.
SOURCES = {"1h": "samples", "6h": "samples", "24h": "rollup_minute", "7d": "rollup_minute",
           "30d": "rollup_hour", "1y": "rollup_hour"}
METRICS = ("error_rate", "latency")
DEFAULT_WINDOW = "24h"
ROUTING_EVENTS = ("failover", "failback", "lapse")
MAX_POINTS = 370
# Bucket sizes a person reads easily on a time axis.
_NICE_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
# An error rate is failed polls / polls in a bucket: a bucket of one poll can only say 0 % or 100 %,
# so the error-rate chart never cuts finer than a minute (four polls at the default interval).
ERROR_RATE_MIN_BUCKET_SECONDS = 60
# d3-format's "~%": a percentage with as many decimals as the tick needs, trailing zeros trimmed,
# so ticks on small rates read "0.5%, 1%, 1.5%" rather than "0%, 0%, 1%".
PERCENT_TICKS = "~%"
STATE_COLOURS = {"up": "#1a7f37", "degraded": "#b35900", "down": "#cf222e", "stale": "#6e40c9",
                 "unknown": "#57606a"}


def bucket_seconds(window_seconds: float, poll_interval_seconds: float) -> int:
    """The smallest readable bucket that keeps the window under MAX_POINTS and above one poll."""
    wanted = max(window_seconds / MAX_POINTS, poll_interval_seconds)
    return next((b for b in _NICE_BUCKETS if b >= wanted), _NICE_BUCKETS[-1])


class _Bucket:
    """What one chart bucket adds up, from rollup rows and raw samples alike."""

    __slots__ = ("polls", "failed", "reported_sum", "reported_n", "latencies", "p50_sum", "p95_sum", "weight")

    def __init__(self) -> None:
        self.polls = self.failed = self.reported_n = 0
        self.reported_sum = self.p50_sum = self.p95_sum = self.weight = 0.0
        self.latencies: list[float] = []

    def latency_percentiles(self) -> tuple[float, float] | None:
        """Exact from raw latencies; from rollups, the poll-weighted mean of each minute's or hour's
        percentile (an approximation: percentiles do not add up; documented in docs/storage.md)."""
        parts: list[tuple[float, float, float]] = []
        if self.latencies:
            values = sorted(self.latencies)
            parts.append((percentile(values, 0.5), percentile(values, 0.95), len(values)))
        if self.weight:
            parts.append((self.p50_sum / self.weight, self.p95_sum / self.weight, self.weight))
        if not parts:
            return None
        total = sum(w for *_, w in parts)
        return sum(p50 * w for p50, _, w in parts) / total, sum(p95 * w for _, p95, w in parts) / total


def series(store: Store, region: str, metric: str, window: str, poll_interval_seconds: float,
           now: float | None = None) -> dict[str, Any]:
    """A region's error rate or latency over a window, bucketed, with state, version and routing marks.

    Long windows read rollups up to where the rollups reach and raw samples after that, so the
    last minutes of an incident are on the chart even before they are rolled up."""
    now = time.time() if now is None else now
    span = WINDOWS[window]
    source = SOURCES[window]
    finest = max(poll_interval_seconds, ERROR_RATE_MIN_BUCKET_SECONDS) if metric == "error_rate" \
        else poll_interval_seconds
    bucket = bucket_seconds(span, finest)
    # Align buckets to the clock so the same bucket keeps its boundaries from one refresh to the next.
    end = math.floor(now / bucket) * bucket + bucket
    start = end - span - bucket
    buckets: dict[int, _Bucket] = {}
    raw_start: float = start
    if source != "samples":
        covered = watermark(store, source)
        rollup_end = min(max(covered or start, start), end)
        for b, polls, failures, p50, p95, _max, reported, reported_n in store.rollup_rows(
                source, region, int(start), int(rollup_end)):
            agg = buckets.setdefault(int((b - start) // bucket), _Bucket())
            agg.polls += polls
            agg.failed += failures
            if reported is not None:
                agg.reported_sum += reported * reported_n
                agg.reported_n += reported_n
            if p50 is not None and polls:
                agg.p50_sum += p50 * polls
                agg.p95_sum += p95 * polls
                agg.weight += polls
        raw_start = rollup_end
    if metric == "error_rate":
        for index, polls, failed, reported_sum, reported_n in store.poll_buckets(region, raw_start, end, bucket, start):
            agg = buckets.setdefault(index, _Bucket())
            agg.polls += polls
            agg.failed += failed
            agg.reported_sum += reported_sum or 0.0
            agg.reported_n += reported_n
    else:
        for index, latency in store.latency_samples(region, raw_start, end, bucket, start):
            buckets.setdefault(index, _Bucket()).latencies.append(latency)
    points: list[dict[str, Any]] = []
    for index in sorted(buckets):
        agg = buckets[index]
        t = iso(start + index * bucket)
        if metric == "error_rate":
            if agg.polls:
                points.append({"t": t, "polls": agg.polls, "failed": agg.failed,
                               "error_rate": agg.failed / agg.polls,
                               "reported_error_rate": agg.reported_sum / agg.reported_n if agg.reported_n else None})
        else:
            percentiles = agg.latency_percentiles()
            if percentiles:
                points.append({"t": t, "p50_ms": round(percentiles[0], 1), "p95_ms": round(percentiles[1], 1)})
    marks = [
        {
            "t": iso(event["at"]),
            "kind": event["kind"],
            "label": (f"{event['old_state']} → {event['new_state']}: {event['reason']}"
                      if event["kind"] == "state" else f"{event['kind']}: {event['reason']}"),
            "state": event["new_state"],
        }
        for event in store.events_between(region, now - span, end, ("state", "version") + ROUTING_EVENTS)
    ]
    return {"region": region, "metric": metric, "window": window, "bucket_seconds": bucket, "source": source,
            "start": iso(now - span), "end": iso(now), "points": points, "marks": marks}


def _mark_colour(mark: dict[str, Any]) -> str:
    if mark["kind"] == "state":
        return STATE_COLOURS.get(mark["state"] or "", "#57606a")
    return "#0969da" if mark["kind"] == "version" else "#bf8700"  # routing changes in amber


def figure(data: dict[str, Any]) -> dict[str, Any]:
    """The Plotly figure (data + layout) for a series, state and version changes on the time axis."""
    fig = go.Figure()
    xs = [p["t"] for p in data["points"]]
    if data["metric"] == "error_rate":
        fig.add_trace(go.Scatter(x=xs, y=[p["error_rate"] for p in data["points"]], name="polled",
                                 mode="lines+markers", line={"color": "#cf222e", "shape": "hv"},
                                 marker={"size": 3},
                                 customdata=[[p["failed"], p["polls"]] for p in data["points"]],
                                 hovertemplate="%{y:.1%} (%{customdata[0]} of %{customdata[1]} polls failed)"
                                               "<extra>polled</extra>"))
        reported = [p["reported_error_rate"] for p in data["points"]]
        if any(v is not None for v in reported):
            fig.add_trace(go.Scatter(x=xs, y=reported, name="reported by region", mode="lines",
                                     line={"color": "#0969da", "dash": "dot"},
                                     hovertemplate="%{y:.2%}<extra>reported</extra>"))
        yaxis = {"title": {"text": "error rate"}, "tickformat": PERCENT_TICKS, "rangemode": "tozero"}
    else:
        fig.add_trace(go.Scatter(x=xs, y=[p["p50_ms"] for p in data["points"]], name="p50", mode="lines",
                                 line={"color": "#0969da"}, hovertemplate="%{y:.0f} ms<extra>p50</extra>"))
        fig.add_trace(go.Scatter(x=xs, y=[p["p95_ms"] for p in data["points"]], name="p95", mode="lines",
                                 line={"color": "#8250df"}, hovertemplate="%{y:.0f} ms<extra>p95</extra>"))
        yaxis = {"title": {"text": "latency (ms)"}, "rangemode": "tozero"}
    shapes = []
    for mark in data["marks"]:
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": mark["t"], "x1": mark["t"],
                       "y0": 0, "y1": 1, "line": {"color": _mark_colour(mark), "width": 1,
                                                  "dash": "solid" if mark["kind"] == "state" else "dot"}})
    if data["marks"]:
        # Invisible-ish markers at the top of the chart carry each mark's text on hover.
        fig.add_trace(go.Scatter(
            x=[m["t"] for m in data["marks"]], y=[1] * len(data["marks"]), yaxis="y2", mode="markers",
            name="changes", marker={"symbol": "triangle-down", "size": 9,
                                    "color": [_mark_colour(m) for m in data["marks"]]},
            # plotly.js renders a subset of HTML in hover text; a region's words must stay words.
            text=[html.escape(m["label"], quote=False) for m in data["marks"]],
            hovertemplate="%{text}<extra>%{x}</extra>",
        ))
    fig.update_layout(
        margin={"l": 60, "r": 20, "t": 10, "b": 40}, height=260, hovermode="closest",
        xaxis={"type": "date", "range": [data["start"], data["end"]]},
        yaxis=yaxis, yaxis2={"overlaying": "y", "range": [0, 1.05], "visible": False, "fixedrange": True},
        legend={"orientation": "h", "y": -0.2}, paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
        showlegend=True,
    )
    return fig.to_plotly_json()
