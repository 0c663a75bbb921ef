"""HTML pages and the htmx fragments they refresh themselves with.

A page includes the same partial its fragment endpoint returns, so the first paint and every
refresh are the same markup; fragments send `Vary: HX-Request`.
"""
from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Response, make_response, render_template, request
from werkzeug.exceptions import HTTPException

from .. import charts, health
from ..status import fleet_status, summary
from . import ctx
from .params import BadParameter, UnknownRegion, event_query, known_region, series_query

blueprint = Blueprint("pages", __name__)
WINDOW_CHOICES = list(charts.WINDOWS)
REFRESH_SECONDS = 5


def _error_page(status: int, title: str, message: str) -> Response:
    response = make_response(render_template("pages/error.html", status=status, title=title, message=message),
                             status)
    return response


@blueprint.app_errorhandler(UnknownRegion)
def _unknown_region(exc: UnknownRegion):
    return _error_page(404, "Unknown region", str(exc))


@blueprint.app_errorhandler(BadParameter)
def _bad_parameter(exc: BadParameter):
    return _error_page(400, "Bad request", str(exc))


@blueprint.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    if request.path.startswith("/api/"):
        from .api import api_error

        return api_error(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")
    return _error_page(exc.code or 500, exc.name or "Error", exc.description or "")


def _fragment(html: str) -> Response:
    response = make_response(html)
    response.headers["Vary"] = "HX-Request"
    return response


def overview_context() -> dict[str, Any]:
    """Everything the overview partial shows."""
    c = ctx()
    regions = fleet_status(c.settings, c.store)
    alerts = [r for r in regions if r["state"] in (health.DOWN, health.STALE)]
    home = next((r for r in regions if r["region"] == c.settings.deployment.region), None)
    return {
        "regions": regions,
        "summary": summary(regions),
        "alerts": alerts,
        "home_region": c.settings.deployment.region,
        "home": home,
        "primary_region": c.settings.deployment.primary_region,
        "last_poll_at": c.store.last_poll_at(),
        "poll_interval": c.settings.dashboard.poll_interval_seconds,
        "poller": _poller_state(),
        "refresh_seconds": REFRESH_SECONDS,
    }


def _poller_state() -> str:
    service = ctx().service
    if service is None:
        return "not in this process"
    if service.standby_reason:
        return "standby: " + service.standby_reason
    return "running" if service.running else "stopped"


@blueprint.get("/")
def overview():
    return render_template("pages/overview.html", **overview_context())


@blueprint.get("/fragments/overview")
def overview_fragment():
    return _fragment(render_template("partials/_overview.html", **overview_context()))


def region_context(region: str) -> dict[str, Any]:
    c = ctx()
    known_region(c.settings, region)
    status = next(r for r in fleet_status(c.settings, c.store) if r["region"] == region)
    return {"r": status, "region": region, "refresh_seconds": REFRESH_SECONDS,
            "base_url": c.settings.base_url(region), "primary_region": c.settings.deployment.primary_region}


@blueprint.get("/regions/<region>")
def region_page(region: str):
    context = region_context(region)
    c = ctx()
    deployment = context["r"]["deployment"]
    return render_template(
        "pages/region.html",
        **context,
        probes=c.store.recent_samples(region, limit=40),
        events=c.store.events(region=region, limit=30),
        deployment_json=json.dumps(deployment, indent=2, sort_keys=True) if deployment is not None else None,
        windows=WINDOW_CHOICES,
        default_window="1h",
    )


@blueprint.get("/fragments/regions/<region>/summary")
def region_summary_fragment(region: str):
    return _fragment(render_template("partials/_region_summary.html", **region_context(region)))


@blueprint.get("/charts/<region>")
def region_chart(region: str):
    """A Plotly figure (JSON) for the region page's charts."""
    c = ctx()
    known_region(c.settings, region)
    metric, window = series_query(request.args)
    data = charts.series(c.store, region, metric, window, c.settings.dashboard.poll_interval_seconds)
    response = make_response(json.dumps(charts.figure(data)))
    response.mimetype = "application/json"
    return response


@blueprint.get("/events")
def events_page():
    c = ctx()
    region, limit, before = event_query(request.args, c.settings)
    rows = c.store.events(region=region, limit=limit + 1, before=before)
    older = rows[limit - 1]["id"] if len(rows) > limit else None
    return render_template("pages/events.html", events=rows[:limit], regions=c.settings.regions,
                           region=region, limit=limit, before=before, older=older, now=time.time())
