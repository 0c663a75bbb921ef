"""The vendored plotly.js basic bundle: the very file npm ships, of the plotly.js version the
installed plotly Python package builds figures for, with every trace type our charts draw.
(tests/browser/test_charts_bundle.py draws every chart kind with it in Chromium.)"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from plotly.offline import get_plotlyjs_version

from dashboard import charts
from dashboard.web import PLOTLY_BASIC_JS

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "static" / "vendor"
BUNDLE = ROOT / "static" / PLOTLY_BASIC_JS
# What plotly.js's basic bundle registers (its README; the browser test reads it from the bundle).
BASIC_TRACE_TYPES = {"scatter", "bar", "pie"}


def test_the_bundle_is_the_unmodified_npm_file_with_its_licence_named_in_the_vendor_readme():
    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{BUNDLE.parent.name}/"))
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", row)
    assert recorded, row
    assert hashlib.sha256(BUNDLE.read_bytes()).hexdigest() == recorded.group(1)
    assert "MIT License" in (BUNDLE.parent / "LICENSE").read_text(encoding="utf-8")
    assert f"plotly.js-basic-dist-min@{BUNDLE.parent.name.rsplit('-', 1)[1]}" in row


def test_the_bundle_is_the_plotly_js_version_the_python_package_builds_figures_for():
    header = BUNDLE.read_bytes()[:200].decode()
    bundled = re.search(r"plotly\.js \(basic - minified\) v(\d+\.\d+\.\d+)", header)
    assert bundled, header
    assert bundled.group(1) == get_plotlyjs_version()
    assert BUNDLE.parent.name == f"plotly.js-basic-{bundled.group(1)}"


def test_every_trace_our_figures_use_is_in_the_basic_bundle():
    points = [{"t": "2026-12-01T00:00:00Z", "polls": 4, "failed": 1, "error_rate": 0.25,
               "reported_error_rate": 0.01, "p50_ms": 10.0, "p95_ms": 30.0}]
    marks = [{"t": "2026-12-01T00:00:30Z", "kind": "state", "label": "up → down", "state": "down"}]
    used = set()
    for metric in charts.METRICS:
        figure = charts.figure({"metric": metric, "points": points, "marks": marks,
                                "start": "2026-12-01T00:00:00Z", "end": "2026-12-01T01:00:00Z"})
        used |= {trace.get("type", "scatter") for trace in figure["data"]}
    used |= {trace.get("type", "scatter") for trace in charts.burn_rate_figure(
        {"points": points, "start": "2026-12-01T00:00:00Z", "end": "2026-12-01T01:00:00Z"}, 0.999,
        {"1h": 250.0})["data"]}
    used |= {trace.get("type", "scatter") for trace in charts.budget_figure(
        [("2026-12-01T00:00:00Z", 1440, 3)], 0.999, 30)["data"]}
    assert used == {"scatter", "bar"} and used <= BASIC_TRACE_TYPES
