"""HTML pages and the htmx fragments they refresh themselves with.

A page includes the same partial its fragment endpoint returns, so the first paint and every
refresh are the same markup; fragments send `Vary: HX-Request`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from .. import charts, health, routing, slo
from ..cluster import EtcdControl, applied_summary
from ..heartbeat import GAP_SHOWN_SECONDS, poller_notices
from ..history import size_notice
from ..maintenance import shade_windows
from .auth import login_required
from .context import ctx
from .errors import api_error
from .overview import lay_out
from .params import BadParameter, UnknownRegion, event_query, known_region, series_query
from .shared_views import Built, shared_response

blueprint = Blueprint("pages", __name__)
WINDOW_CHOICES = list(charts.WINDOWS)
REFRESH_SECONDS = 5


def _error_page(status: int, title: str, message: str) -> Response:
    response = make_response(render_template("pages/error.html", status=status, title=title, message=message),
                             status)
    return response


@blueprint.app_errorhandler(UnknownRegion)
def _unknown_region(exc: UnknownRegion) -> ResponseReturnValue:
    return _error_page(404, "Unknown region", str(exc))


@blueprint.app_errorhandler(BadParameter)
def _bad_parameter(exc: BadParameter) -> ResponseReturnValue:
    return _error_page(400, "Bad request", str(exc))


@blueprint.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> ResponseReturnValue:
    if request.path.startswith("/api/"):
        return api_error(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")
    return _error_page(exc.code or 500, exc.name or "Error", exc.description or "")


def _fragment(html: str) -> Response:
    response = make_response(html)
    response.headers["Vary"] = "HX-Request"
    return response


def overview_context() -> dict[str, Any]:
    """Everything the overview partial shows."""
    return overview_context_until()[0]


def overview_context_until() -> tuple[dict[str, Any], float | None]:
    """Everything the overview partial shows, and the first moment time alone changes it."""
    c = ctx()
    regions, deadline = c.fleet_until()
    notices = poller_notices(c.store)
    if notices["gap"]:  # the gap's notice is shown for an hour after the poller came back
        gap_hidden_at = notices["gap"][1] + GAP_SHOWN_SECONDS + 0.001
        deadline = gap_hidden_at if deadline is None else min(deadline, gap_hidden_at)
    alerts = [r for r in regions if r["state"] in (health.DOWN, health.STALE)]
    overridden = [r for r in regions if r["override"]]
    home = next((r for r in regions if r["region"] == c.settings.deployment.region), None)
    version = c.control.routing().version
    layout = lay_out(regions)
    # Error-budget cards only for the regions shown as cards: a tile shows none, and at 200
    # regions building 200 strips of 30 days was most of the overview's time.
    carded = [item.status["region"] for item in layout.attention + ([] if layout.compact else layout.fine)]
    return {
        "regions": regions,
        "layout": layout,
        "alerts": alerts,
        "overridden": overridden,
        "home_region": c.settings.deployment.region,
        "home": home,
        "primary_region": c.settings.deployment.primary_region,
        "last_poll_at": c.store.last_poll_at(),
        "poll_interval": c.settings.dashboard.poll_interval_seconds,
        "poller": _poller_state(),
        "refresh_seconds": REFRESH_SECONDS,
        "size_notice": size_notice(c.store),
        "routing_version": version,
        "publish_problems": [p for p in c.router.published(version) if p["behind"] or p["error"]],
        "poller_notices": notices,
        "slo": slo_cards(carded),
    }, deadline


def _daily_counts() -> slo.DailyCounts:
    """Per-day counts of completed days, kept for the life of the app (see slo.DailyCounts)."""
    cache: slo.DailyCounts = current_app.extensions.setdefault("dashboard_slo_days", slo.DailyCounts())
    return cache


def slo_cards(regions: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Each region's error budget at a glance: figures, firing alerts and 30 daily bars."""
    c = ctx()
    figures = slo.latest_figures(c.store, c.settings, regions)
    active = slo.stored_alerts(c.store)
    bars = slo.daily_bars(c.store, c.settings, _daily_counts(), regions=list(figures))
    cards = {}
    for region, fig in figures.items():
        alerts = slo.alerts_of(region, active)
        cards[region] = {"figures": fig, "alerts": alerts, "alert_texts": slo.alert_texts(alerts),
                         "strip": (strip := slo.strip(bars[region], fig.target)),
                         "strip_summary": slo.strip_summary(strip)}
    return cards


def _poller_state() -> str:
    service = ctx().service
    if service is None:
        return "not in this process"
    if service.standby_reason:
        return "standby: " + service.standby_reason
    return "running" if service.running else "stopped"


@blueprint.get("/")
def overview() -> ResponseReturnValue:
    return render_template("pages/overview.html", **overview_context())


@blueprint.get("/fragments/overview")
def overview_fragment() -> ResponseReturnValue:
    """The overview's live part, built once for every viewer until it changes (web/shared_views.py)."""
    c = ctx()
    key = (c.store.data_version(), _poller_state())
    # Its links carry the URL prefix a proxy may set per request: one shared view per prefix.
    view = c.shared_views.get(f"overview{request.script_root}", key, _overview_fragment_body)
    response = shared_response(view, "text/html")
    response.headers["Vary"] = "HX-Request"
    return response


def _overview_fragment_body() -> Built:
    context, deadline = overview_context_until()
    return render_template("partials/_overview.html", **context).encode(), deadline


def region_context(region: str) -> dict[str, Any]:
    c = ctx()
    known_region(c.settings, region)
    status = next(r for r in c.fleet() if r["region"] == region)
    return {"r": status, "region": region, "refresh_seconds": REFRESH_SECONDS,
            "base_url": c.settings.base_url(region), "primary_region": c.settings.deployment.primary_region,
            "cluster_name": c.settings.cluster_name}


@blueprint.get("/regions/<region>")
def region_page(region: str) -> ResponseReturnValue:
    context = region_context(region)
    c = ctx()
    deployment = c.store.region_deployment(region)  # the one page that parses the payload
    return render_template(
        "pages/region.html",
        **context,
        probes=c.store.recent_samples(region, limit=40),
        events=c.store.events(region=region, limit=30),
        deployment_json=json.dumps(deployment, indent=2, sort_keys=True) if deployment is not None else None,
        windows=WINDOW_CHOICES,
        default_window="1h",
        slo=slo_cards([region]),
    )


@blueprint.get("/fragments/regions/<region>/summary")
def region_summary_fragment(region: str) -> ResponseReturnValue:
    return _fragment(render_template("partials/_region_summary.html", **region_context(region)))


@blueprint.get("/charts/<region>")
def region_chart(region: str) -> ResponseReturnValue:
    """A Plotly figure (JSON) for the region page's charts."""
    c = ctx()
    known_region(c.settings, region)
    metric, window = series_query(request.args)
    data = charts.series(c.store, region, metric, window, c.settings.dashboard.poll_interval_seconds)
    now = time.time()
    windows = c.control.maintenance_windows(region=region, start=now - charts.WINDOWS[window], end=now)
    response = make_response(json.dumps(shade_windows(charts.figure(data), windows)))
    response.mimetype = "application/json"
    return response


@blueprint.get("/charts/<region>/slo")
def region_slo_chart(region: str) -> ResponseReturnValue:
    """A Plotly figure (JSON) of the region page's error budget charts: `metric=burn_rate` over
    the chosen window, `metric=error_budget` over the SLO window, day by day."""
    c = ctx()
    known_region(c.settings, region)
    metric = request.args.get("metric")
    if metric not in charts.SLO_METRICS:
        raise BadParameter(f"metric: must be one of {', '.join(charts.SLO_METRICS)} (got {metric!r})")
    target, window_days = c.settings.dashboard.slo.target_for(region), c.settings.dashboard.slo.window_days
    if metric == "burn_rate":
        _, window = series_query({"metric": "error_rate", "window": request.args.get("window", "1h")})
        data = charts.series(c.store, region, "error_rate", window, c.settings.dashboard.poll_interval_seconds)
        now = slo.figures(c.store, c.settings, [region])[region].burn_rate
        figure = charts.burn_rate_figure(data, target, now)
    else:
        bars = slo.daily_bars(c.store, c.settings, _daily_counts(), days=window_days, regions=[region])[region]
        figure = charts.budget_figure([(charts.iso(b.day), b.polls, b.failed) for b in bars], target, window_days)
    response = make_response(json.dumps(figure))
    response.mimetype = "application/json"
    return response


@blueprint.get("/events")
def events_page() -> ResponseReturnValue:
    c = ctx()
    region, limit, before = event_query(request.args, c.settings)
    rows = c.store.events(region=region, limit=limit + 1, before=before)
    older = rows[limit - 1]["id"] if len(rows) > limit else None
    return render_template("pages/events.html", events=rows[:limit], regions=c.settings.regions,
                           region=region, limit=limit, before=before, older=older, now=time.time())


# -- routing: the routing page and the failover / failback controls ------------------------------

EXPIRY_CHOICES = [("", "no expiry"), ("15", "15 minutes"), ("30", "30 minutes"), ("60", "1 hour"),
                  ("120", "2 hours"), ("240", "4 hours"), ("480", "8 hours"), ("1440", "24 hours")]


@blueprint.get("/routing")
def routing_page() -> ResponseReturnValue:
    c = ctx()
    c.router.lapse_expired()
    table = c.router.current_table()
    states = {r["region"]: r for r in c.fleet()}
    applied = applied_summary(c.control.applied(), table["version"]) if isinstance(c.control, EtcdControl) else None
    return render_template("pages/routing.html", table=table, states=states, cluster_applied=applied,
                           **_publishers_context(table["version"]))


def _publishers_context(version: int | None = None) -> dict[str, Any]:
    c = ctx()
    version = c.control.routing().version if version is None else version
    return {"publishers": c.router.published(version), "version": version, "refresh_seconds": REFRESH_SECONDS}


@blueprint.get("/fragments/publishers")
def publishers_fragment() -> ResponseReturnValue:
    return _fragment(render_template("partials/_publishers.html", **_publishers_context()))


def _failover_context(region: str, form: Mapping[str, str] | None = None, error: str | None = None,
                      rule: str | None = None) -> dict[str, Any]:
    c = ctx()
    known_region(c.settings, region)
    form = form or {}
    regions = {r["region"]: r for r in c.fleet()}
    snap = c.control.routing()
    overrides = snap.overrides
    target = form.get("target_region") or c.settings.deployment.primary_region
    if target not in c.settings.regions:
        target = c.settings.deployment.primary_region
    pinned = region in c.settings.dashboard.residency_pinned
    # A checkbox left unticked is absent from a submitted form; with no form yet, read-only is the default.
    read_only = True if pinned else (form.get("read_only") == "on" if form else True)
    change = routing.Change(region, target, read_only, form.get("reason", ""))
    preview_overrides = [o for o in overrides if o["region"] != region] + [
        {"region": region, "target_region": target, "read_only": read_only, "reason": "(this change)",
         "actor": "(you)", "since": time.time(), "until": None, "forced": False}]
    states = {name: r["state"] for name, r in regions.items()}
    return {
        "region": region,
        "r": regions[region],
        "regions": regions,
        "targets": [name for name in c.settings.regions if name != region],
        "target": target,
        "pinned": pinned,
        "read_only": read_only,
        "form": form,
        "error": error,
        "rule": rule,
        "expiry_choices": EXPIRY_CHOICES,
        "version": snap.version,
        "broken": routing.check_rules(c.settings, states, overrides, change, c.router.regions_in_maintenance()),
        "preview": routing.routing_table(c.settings, preview_overrides, snap.version + 1),
        "primary_region": c.settings.deployment.primary_region,
    }


def _panel(template: str, status: int = 200, **context: Any) -> Response:
    """A form or result: the bare partial for htmx, inside a full page otherwise."""
    if request.headers.get("HX-Request"):
        response = make_response(render_template(f"partials/{template}", **context), status)
        response.headers["Vary"] = "HX-Request"
        return response
    return make_response(render_template("pages/action.html", partial=f"partials/{template}", **context), status)


def _form_int(name: str) -> int | None:
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise routing.BadRequest("bad_form", f"{name}: must be a whole number (got {raw[:20]!r})") from None


@blueprint.get("/regions/<region>/failover")
@login_required
def failover_form(region: str) -> ResponseReturnValue:
    return _panel("_failover_form.html", **_failover_context(region))


@blueprint.post("/regions/<region>/failover/preview")
@login_required
def failover_preview(region: str) -> ResponseReturnValue:
    """The form again for another target or read-only choice: what would result, nothing changed."""
    return _panel("_failover_form.html", **_failover_context(region, request.form))


@blueprint.post("/regions/<region>/failover")
@login_required
def failover_submit(region: str) -> ResponseReturnValue:
    c = ctx()
    form = request.form
    try:
        expiry = _form_int("expires_in_minutes")
        change = routing.Change(
            region=region, target_region=form.get("target_region") or None,
            read_only=form.get("read_only") == "on" or region in c.settings.dashboard.residency_pinned,
            reason=form.get("reason", ""), expires_in_minutes=expiry,
            confirm_healthy=form.get("confirm_healthy") == "on", force=form.get("force") == "on",
        )
        table = c.router.set_override(change, actor=g.actor, expected_version=_form_int("expected_version"))
    except routing.RoutingError as refused:
        if isinstance(refused, routing.UnknownRegionError) and refused.rule == "unknown_region":
            raise UnknownRegion(refused.message) from None
        return _panel("_failover_form.html", refused.status,
                      **_failover_context(region, form, refused.message, refused.rule))
    return _changed(region, table, f"{region}'s new traffic now goes to {table['regions'][region]['serving_region']}.")


@blueprint.get("/regions/<region>/failback")
@login_required
def failback_form(region: str) -> ResponseReturnValue:
    c = ctx()
    known_region(c.settings, region)
    snap = c.control.routing()
    override = next((o for o in snap.overrides if o["region"] == region), None)
    return _panel("_failback_form.html", region=region, override=override, error=None, form={},
                  version=snap.version)


@blueprint.post("/regions/<region>/failback")
@login_required
def failback_submit(region: str) -> ResponseReturnValue:
    c = ctx()
    known_region(c.settings, region)
    try:
        table = c.router.clear_override(region, reason=request.form.get("reason", ""), actor=g.actor,
                                        expected_version=_form_int("expected_version"))
    except routing.RoutingError as refused:
        snap = c.control.routing()
        override = next((o for o in snap.overrides if o["region"] == region), None)
        return _panel("_failback_form.html", refused.status, region=region, override=override,
                      error=refused.message, form=request.form, version=snap.version)
    return _changed(region, table, f"{region} serves its own traffic again.")


def _changed(region: str, table: dict[str, Any], message: str) -> ResponseReturnValue:
    if not request.headers.get("HX-Request"):
        return redirect(url_for("pages.region_page", region=region))
    response = _panel("_action_result.html", region=region, table=table, message=message)
    # Every live partial on the page listens for this and refreshes at once.
    response.headers["HX-Trigger"] = "routing-changed"
    return response


@blueprint.post("/regions/<region>/validate")
@login_required
def region_validate(region: str) -> ResponseReturnValue:
    """The rollout checklist for this region, run now (outbound requests: operators only)."""
    from ..validate import all_passed, validate_region

    c = ctx()
    known_region(c.settings, region)
    checks = validate_region(c.settings, region, store=c.store, prober=c.prober)
    return _panel("_validation.html", region=region, checks=checks, passed=all_passed(checks))


# -- maintenance windows (issue 15) ---------------------------------------------------------------

DURATION_CHOICES = [("30", "30 minutes"), ("60", "1 hour"), ("120", "2 hours"), ("240", "4 hours"),
                    ("480", "8 hours"), ("720", "12 hours"), ("1440", "24 hours")]
STARTS_IN_CHOICES = [("", "now"), ("15", "in 15 minutes"), ("30", "in 30 minutes"), ("60", "in 1 hour"),
                     ("120", "in 2 hours"), ("240", "in 4 hours")]


def _maintenance_context(region: str, form: Mapping[str, str] | None = None, error: str | None = None,
                         rule: str | None = None) -> dict[str, Any]:
    c = ctx()
    known_region(c.settings, region)
    status = next(r for r in c.fleet() if r["region"] == region)
    planned = [w for w in c.maintenance.windows(region=region) if w["starts_at"] > time.time()]
    return {"region": region, "r": status, "form": form or {}, "error": error, "rule": rule,
            "duration_choices": DURATION_CHOICES, "starts_in_choices": STARTS_IN_CHOICES, "planned": planned,
            "max_hours": c.settings.dashboard.maintenance.max_hours}


def _maintenance_done(region: str, message: str) -> ResponseReturnValue:
    if not request.headers.get("HX-Request"):
        return redirect(url_for("pages.region_page", region=region))
    response = _panel("_maintenance_result.html", region=region, message=message)
    response.headers["HX-Trigger"] = "routing-changed"  # every live partial refreshes at once
    return response


@blueprint.get("/regions/<region>/maintenance")
@login_required
def maintenance_form(region: str) -> ResponseReturnValue:
    return _panel("_maintenance_form.html", **_maintenance_context(region))


@blueprint.post("/regions/<region>/maintenance")
@login_required
def maintenance_submit(region: str) -> ResponseReturnValue:
    c = ctx()
    known_region(c.settings, region)
    form = request.form
    try:
        duration = _form_int("duration_minutes")
        starts_in = _form_int("starts_in_minutes")
        now = time.time()
        started = c.maintenance.start(region, reason=form.get("reason", ""), actor=g.actor,
                                      duration_minutes=duration if duration is not None else None,
                                      ends_at=None, starts_at=now + starts_in * 60 if starts_in else None, now=now)
    except routing.RoutingError as refused:
        return _panel("_maintenance_form.html", refused.status,
                      **_maintenance_context(region, form, refused.message, refused.rule))
    window = started.window
    verb = "extended" if started.extended else ("planned" if window["starts_at"] > time.time() else "started")
    until = datetime.fromtimestamp(window["ends_at"], tz=UTC).strftime("%H:%M UTC")
    return _maintenance_done(region, f"Maintenance of {region} {verb}: until {until}.")


@blueprint.post("/regions/<region>/maintenance/end")
@login_required
def maintenance_end(region: str) -> ResponseReturnValue:
    c = ctx()
    known_region(c.settings, region)
    try:
        c.maintenance.end(region=region, reason=request.form.get("reason") or None, actor=g.actor)
    except routing.RoutingError as refused:
        return _panel("_maintenance_form.html", refused.status,
                      **_maintenance_context(region, request.form, refused.message, refused.rule))
    return _maintenance_done(region, f"Maintenance of {region} ended.")
