"""/healthz and /metrics: the dashboard's own health, for load balancers and Prometheus."""
from __future__ import annotations

import sqlite3
import time

from flask import Blueprint, Response, jsonify
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST

from ..cluster import cluster_problems, cluster_report
from ..heartbeat import poller_notices
from .context import ctx

blueprint = Blueprint("ops", __name__)


def health_problems() -> tuple[list[str], dict]:
    """Why this dashboard is not healthy (empty when it is), and the facts behind it."""
    c = ctx()
    problems: list[str] = []
    now = time.time()
    service = c.service
    if service is None or not service.running:
        problems.append("the poller (its scheduler) is not running")
    last = c.store.last_poll_at()
    limit = c.settings.stale_after_seconds
    if last is None:
        problems.append("no poll cycle has completed yet")
    elif now - last > limit:
        problems.append(f"the last poll cycle finished {now - last:.0f} s ago (more than three intervals, {limit:g} s)")
    try:
        c.store.check_writable()
    except sqlite3.Error as exc:
        problems.append(f"the database is not writable: {exc}")
    notices = poller_notices(c.store, now)
    if notices["down_since"] is not None:
        down = time.strftime("%H:%M:%S UTC", time.gmtime(notices["down_since"]))
        problems.append(f"the poller process is down since {down}")
    facts = {
        "last_cycle_finished_at": last,
        "poll_interval_seconds": c.settings.dashboard.poll_interval_seconds,
        "poller": None if service is None else {
            "running": service.running, "standby": service.standby_reason, "last_error": service.last_error},
        # Not a problem (the dashboard serves), but its latencies are not measured right now.
        "overloaded_since": notices["overloaded_since"],
        "event_loop_lag_ms": notices["lag_ms"],
        # /healthz is open to anyone: counts and kinds of failure, never a receiver's words.
        "notifications": None if c.notifier is None else c.notifier.status(public=True),
    }
    if c.vantages is not None:
        # Cluster mode: said, but not a reason to take this instance out of a load balancer: it
        # serves its own view without etcd (the cluster's health is for the operator).
        report = cluster_report(c.settings, c.vantages, now)
        facts["cluster"] = {"problems": cluster_problems(report), "leader": report["leader"],
                            "etcd_reachable": report["etcd"]["reachable"],
                            "live_members": sorted(m["name"] for m in report["members"] if m["live"])}
    return problems, facts


@blueprint.get("/healthz")
def healthz() -> ResponseReturnValue:
    problems, facts = health_problems()
    body = {"status": "fail" if problems else "ok", "problems": problems, **facts}
    response = jsonify(body)
    response.status_code = 503 if problems else 200
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/metrics")
def metrics() -> ResponseReturnValue:
    return Response(ctx().metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)
