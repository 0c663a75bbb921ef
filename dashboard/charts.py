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


# -- error budget charts (issue 14): new figures, built beside the ones above -----------------------

SLO_METRICS = ("burn_rate", "error_budget")
# The workbook's alert thresholds, drawn on the burn-rate chart (dashboard.slo.ALERT_RULES).
BURN_THRESHOLDS = ((14.4, "page: 1 h & 5 m"), (6.0, "page: 6 h & 30 m"), (1.0, "ticket: 3 d & 6 h"))


def burn_rate_figure(data: dict[str, Any], target: float, current: dict[str, float | None]) -> dict[str, Any]:
    """Each bucket's burn rate (its bad fraction / (1 - target)) over the window, the alert thresholds
    as lines, and the burn rates the alerts read now in the legend."""
    budget = 1.0 - target
    points = data["points"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[p["t"] for p in points], y=[p["error_rate"] / budget for p in points], name="per bucket",
        mode="lines", line={"color": "#cf222e", "shape": "hv"},
        customdata=[[p["failed"], p["polls"]] for p in points],
        hovertemplate="%{y:.1f}x (%{customdata[0]} of %{customdata[1]} polls bad)<extra>burn rate</extra>"))
    now_text = ", ".join(f"{w} {'n/a' if r is None else f'{r:.1f}x'}" for w, r in current.items())
    shapes, annotations = [], []
    for threshold, label in BURN_THRESHOLDS:
        shapes.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": threshold,
                       "y1": threshold, "line": {"color": "#bf8700" if threshold == 1.0 else "#cf222e",
                                                 "width": 1, "dash": "dash"}})
        # On a log axis an annotation's y is the log of the value (a shape's is the value itself).
        annotations.append({"xref": "paper", "yref": "y", "x": 1, "y": math.log10(threshold), "xanchor": "right",
                            "yanchor": "bottom", "showarrow": False, "text": f"{threshold:g}x {label}",
                            "font": {"size": 10}})
    peak = max([p["error_rate"] / budget for p in points] + [20.0])
    fig.update_layout(
        margin={"l": 60, "r": 20, "t": 24, "b": 40}, height=240, hovermode="closest", showlegend=False,
        title={"text": f"now: {now_text}", "font": {"size": 11}, "x": 0, "xanchor": "left"},
        xaxis={"type": "date", "range": [data["start"], data["end"]]},
        # Burn rates span 0 to 1000x: a log axis keeps 1x and 14.4x readable beside a full outage.
        yaxis={"title": {"text": "burn rate (x)"}, "type": "log", "range": [-1, math.log10(peak * 1.2)]},
        shapes=shapes, annotations=annotations, paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
    )
    return fig.to_plotly_json()


def budget_figure(days: list[tuple[str, int, int]], target: float, window_days: int) -> dict[str, Any]:
    """Error budget remaining over the SLO window, day by day: 1 - bad polls so far / (1 - target) /
    polls in the whole window, so it ends at today's figure; bars of each day's bad polls."""
    total = sum(polls for _, polls, _ in days)
    allowed = (1.0 - target) * total
    remaining, spent = [], 0
    for _, _, failed in days:
        spent += failed
        remaining.append(1.0 - spent / allowed if allowed else None)
    xs = [day for day, _, _ in days]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=xs, y=[failed for _, _, failed in days], name="bad polls", yaxis="y2",
                         marker={"color": "rgba(207, 34, 46, 0.35)"},
                         hovertemplate="%{y} bad polls<extra>%{x|%Y-%m-%d}</extra>"))
    fig.add_trace(go.Scatter(x=xs, y=remaining, name="budget left", mode="lines+markers",
                             line={"color": "#0969da"}, marker={"size": 4},
                             hovertemplate="%{y:.1%} left<extra>%{x|%Y-%m-%d}</extra>"))
    fig.update_layout(
        margin={"l": 60, "r": 60, "t": 10, "b": 40}, height=240, hovermode="closest",
        xaxis={"type": "date"}, bargap=0.2,
        yaxis={"title": {"text": f"budget left ({window_days} d)"}, "tickformat": PERCENT_TICKS,
               "zeroline": True, "zerolinecolor": "#cf222e", "zerolinewidth": 2},
        yaxis2={"overlaying": "y", "side": "right", "rangemode": "tozero", "title": {"text": "bad polls"},
                "showgrid": False, "tickformat": "d"},
        legend={"orientation": "h", "y": -0.2}, paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
    )
    return fig.to_plotly_json()
