"""The JSON API under /api/v1/: read-only views of the store.

Errors are always JSON `{"error": <code>, "message": <text>}` with the right 4xx status.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, get_args

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel

from .. import charts, routing, slo
from ..cluster import cluster_report
from ..maintenance import public_window
from ..model import RegionStatus
from ..status import summary
from . import openapi
from .auth import api_operator_required
from .context import ctx
from .errors import api_error
from .params import BadParameter, UnknownRegion, event_query, known_region, series_query
from .shared_views import Built, shared_response

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")


@blueprint.errorhandler(BadParameter)
def _bad_parameter(exc: BadParameter) -> ResponseReturnValue:
    return api_error(400, "bad_parameter", str(exc))


@blueprint.errorhandler(UnknownRegion)
def _unknown_region(exc: UnknownRegion) -> ResponseReturnValue:
    return api_error(404, "unknown_region", str(exc))


def public_region(region: RegionStatus) -> dict[str, Any]:
    """A region as the API shows it (the deployment payload only on the region's own endpoint)."""
    return {k: v for k, v in region.items() if k not in ("deployment_at", "override", "maintenance")}


@blueprint.get("/status")
def status() -> ResponseReturnValue:
    """The fleet, built once for every caller until it changes (web/shared_views.py)."""
    c = ctx()
    view = c.shared_views.get("status", c.store.data_version(), _status_body)
    return shared_response(view, "application/json")


def _status_body() -> Built:
    c = ctx()
    regions, deadline = c.fleet_until()
    figures, alerts = slo.latest_figures(c.store, c.settings), slo.stored_alerts(c.store)
    body = {
        "generated_at": charts.iso(time.time()),
        "dashboard_region": c.settings.deployment.region,
        "primary_region": c.settings.deployment.primary_region,
        "poll_interval_seconds": c.settings.dashboard.poll_interval_seconds,
        "summary": summary(regions),
        "regions": [{**public_region(r), "slo": slo.short_json(figures[r["region"]], alerts)} for r in regions],
    }
    return current_app.json.dumps(body).encode() + b"\n", deadline


@blueprint.get("/cluster")
def cluster() -> ResponseReturnValue:
    c = ctx()
    return jsonify(cluster_report(c.settings, c.vantages))


@blueprint.get("/regions/<region>")
def region_detail(region: str) -> ResponseReturnValue:
    c = ctx()
    known_region(c.settings, region)
    row = next(r for r in c.fleet() if r["region"] == region)
    return jsonify({
        **{k: v for k, v in row.items() if k not in ("override", "maintenance")},
        "deployment": c.store.region_deployment(region),
        "recent_probes": c.store.recent_samples(region, limit=50),
        "events": c.store.events(region=region, limit=50),
    })


@blueprint.get("/regions/<region>/series")
def region_series(region: str) -> ResponseReturnValue:
    c = ctx()
    known_region(c.settings, region)
    metric, window = series_query(request.args)
    return jsonify(charts.series(c.store, region, metric, window, c.settings.dashboard.poll_interval_seconds))


@blueprint.get("/regions/<region>/slo")
def region_slo(region: str) -> ResponseReturnValue:
    """Availability, error budget, burn rates and firing alerts of one region (dashboard.slo)."""
    c = ctx()
    known_region(c.settings, region)
    figures = slo.figures(c.store, c.settings, [region])[region]
    return jsonify(slo.as_json(figures, slo.stored_alerts(c.store)))


@blueprint.get("/events")
def events() -> ResponseReturnValue:
    c = ctx()
    region, limit, before = event_query(request.args, c.settings)
    rows = c.store.events(region=region, limit=limit + 1, before=before)
    more = len(rows) > limit
    rows = rows[:limit]
    return jsonify({"events": rows, "next_before": rows[-1]["id"] if more and rows else None})


@blueprint.errorhandler(routing.RoutingError)
def _routing_refused(exc: routing.RoutingError) -> ResponseReturnValue:
    return api_error(exc.status, exc.rule, exc.message)


def _with_published(table: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The table with every publisher's last outcome, and an ETag that changes when either does."""
    published = ctx().router.published(table["version"])
    digest = hashlib.sha256(json.dumps(published, sort_keys=True).encode()).hexdigest()[:12]
    return {**table, "published": published}, f"routing-v{table['version']}-{digest}"


@blueprint.get("/routing")
def routing_table() -> ResponseReturnValue:
    c = ctx()
    c.router.lapse_expired()
    body, etag = _with_published(c.router.current_table())
    if request.if_none_match.contains(etag):
        response = Response(status=304)
        response.set_etag(etag)
        return response
    response = jsonify(body)
    response.set_etag(etag)
    return response


def _json_types(model: type[BaseModel]) -> dict[str, tuple[type, ...]]:
    """The JSON types each field of a body model accepts (a number field takes an integer too)."""
    fields = {}
    for name, info in model.model_fields.items():
        types = get_args(info.annotation) or (info.annotation,)
        fields[name] = (int, *types) if float in types and int not in types else tuple(types)
    return fields


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The request's JSON object, with every field checked against the body's model (the one the
    OpenAPI document shows); BadBody names what is wrong. Values are checked by the routing rules."""
    allowed = _json_types(model)
    required = tuple(name for name, info in model.model_fields.items() if info.is_required())
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # silent covers bad JSON, not JSON nested thousands deep
        raise routing.BadRequest("bad_body", "the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise routing.BadRequest("bad_body", "the body must be a JSON object (Content-Type: application/json)")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise routing.BadRequest("bad_body", f"unknown field(s): {', '.join(unknown)}; "
                                             f"allowed: {', '.join(allowed)}")
    for name in required:
        if name not in body:
            raise routing.BadRequest("bad_body", f"{name}: required")
    for name, value in body.items():
        types = allowed[name]
        # JSON true is a Python bool, which is also an int: a number field must not take it.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join("null" if t is type(None) else {str: "string", bool: "boolean", int: "integer",
                                                                   float: "number"}[t] for t in types)
            raise routing.BadRequest("bad_body", f"{name}: must be {expected} (got {type(value).__name__})")
    return body


@blueprint.post("/routing/overrides")
@api_operator_required
def set_override() -> ResponseReturnValue:
    body = _json_body(openapi.OverrideRequest)
    if body.get("target_region") == "":  # the form's "primary region" choice; the API says null
        raise routing.BadRequest("bad_body", "target_region: a configured region, or null for the primary region"
                                             " (got an empty string)")
    change = routing.Change(
        region=body["region"], target_region=body.get("target_region"), read_only=body.get("read_only", True),
        reason=body["reason"], expires_in_minutes=body.get("expires_in_minutes"),
        confirm_healthy=body.get("confirm_healthy", False), force=body.get("force", False),
    )
    table = ctx().router.set_override(change, actor=g.actor, expected_version=body.get("expected_version"))
    answer, etag = _with_published(table)
    response = jsonify(answer)
    response.status_code = 201
    response.set_etag(etag)
    return response


@blueprint.delete("/routing/overrides/<region>")
@api_operator_required
def clear_override(region: str) -> ResponseReturnValue:
    body = _json_body(openapi.ClearOverrideRequest)
    table = ctx().router.clear_override(region, reason=body["reason"], actor=g.actor,
                                        expected_version=body.get("expected_version"))
    answer, etag = _with_published(table)
    response = jsonify(answer)
    response.set_etag(etag)
    return response


# -- maintenance windows (issue 15): the same auth and error shapes as the routing API -----------


@blueprint.get("/maintenance")
def maintenance_list() -> ResponseReturnValue:
    c = ctx()
    c.maintenance.lapse_expired()
    now = time.time()
    return jsonify({"windows": [public_window(w, now) for w in c.maintenance.windows()]})


@blueprint.post("/maintenance")
@api_operator_required
def maintenance_start() -> ResponseReturnValue:
    body = _json_body(openapi.MaintenanceRequest)
    started = ctx().maintenance.start(body["region"], reason=body["reason"], actor=g.actor,
                                      duration_minutes=body.get("duration_minutes"), ends_at=body.get("ends_at"),
                                      starts_at=body.get("starts_at"))
    response = jsonify(public_window(started.window))
    response.status_code = 201
    return response


@blueprint.delete("/maintenance/<window_id>")
@api_operator_required
def maintenance_end(window_id: str) -> ResponseReturnValue:
    if not window_id.isascii() or not window_id.isdigit() or len(window_id) > 18:
        return api_error(404, "unknown_window", f"no maintenance window with id {window_id[:40]!r}")
    # The body is optional here (a reason only): an empty one is an empty object.
    body = _json_body(openapi.EndMaintenanceRequest) if request.get_data() else {}
    ended = ctx().maintenance.end(window_id=int(window_id), reason=body.get("reason"), actor=g.actor)
    return jsonify(public_window(ended))


@blueprint.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    """The OpenAPI document of this API, built once per app from the code and the settings."""
    app = current_app
    if "dashboard_openapi" not in app.extensions:
        app.extensions["dashboard_openapi"] = openapi.document(ctx().settings)
    return jsonify(app.extensions["dashboard_openapi"])


@blueprint.route("/<path:anything>")
def not_found(anything: str) -> ResponseReturnValue:
    return api_error(404, "not_found", f"no such API endpoint: /api/v1/{anything}")
