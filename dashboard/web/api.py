"""The JSON API under /api/v1/: read-only views of the store.

Errors are always JSON `{"error": <code>, "message": <text>}` with the right 4xx status.
"""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, jsonify, request

from .. import charts
from ..status import fleet_status, summary
from . import ctx
from .params import BadParameter, UnknownRegion, event_query, known_region, series_query

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")


def api_error(status: int, code: str, message: str):
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    return response


@blueprint.errorhandler(BadParameter)
def _bad_parameter(exc: BadParameter):
    return api_error(400, "bad_parameter", str(exc))


@blueprint.errorhandler(UnknownRegion)
def _unknown_region(exc: UnknownRegion):
    return api_error(404, "unknown_region", str(exc))


def public_region(region: dict[str, Any]) -> dict[str, Any]:
    """A region as the API shows it (the deployment payload only on the region's own endpoint)."""
    return {k: v for k, v in region.items() if k not in ("deployment", "deployment_at")}


@blueprint.get("/status")
def status():
    c = ctx()
    regions = fleet_status(c.settings, c.store)
    return jsonify({
        "generated_at": charts.iso(time.time()),
        "dashboard_region": c.settings.deployment.region,
        "primary_region": c.settings.deployment.primary_region,
        "poll_interval_seconds": c.settings.dashboard.poll_interval_seconds,
        "summary": summary(regions),
        "regions": [public_region(r) for r in regions],
    })


@blueprint.get("/regions/<region>")
def region_detail(region: str):
    c = ctx()
    known_region(c.settings, region)
    row = next(r for r in fleet_status(c.settings, c.store) if r["region"] == region)
    return jsonify({
        **row,
        "recent_probes": c.store.recent_samples(region, limit=50),
        "events": c.store.events(region=region, limit=50),
    })


@blueprint.get("/regions/<region>/series")
def region_series(region: str):
    c = ctx()
    known_region(c.settings, region)
    metric, window = series_query(request.args)
    return jsonify(charts.series(c.store, region, metric, window, c.settings.dashboard.poll_interval_seconds))


@blueprint.get("/events")
def events():
    c = ctx()
    region, limit, before = event_query(request.args, c.settings)
    rows = c.store.events(region=region, limit=limit + 1, before=before)
    more = len(rows) > limit
    rows = rows[:limit]
    return jsonify({"events": rows, "next_before": rows[-1]["id"] if more and rows else None})


@blueprint.route("/<path:anything>")
def not_found(anything: str):
    return api_error(404, "not_found", f"no such API endpoint: /api/v1/{anything}")
