"""The OpenAPI 3.1 document of /api/v1, generated from the code, served at /api/v1/openapi.json.

Every body and response is a pydantic model here; the request models are also what
`api._json_body` checks a body against, so the document and the checks cannot drift apart, and the
suite runs Schemathesis against the live app to hold the responses to the document. apispec
assembles the paths, parameters, security schemes and components; the document is built per app,
since the region names and whether reading needs credentials come from its settings.
"""
from __future__ import annotations

from typing import Any, Literal

from apispec import APISpec
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from .. import charts
from ..config import Settings
from ..routing import MAX_EXPIRY_MINUTES, MAX_REASON_LENGTH
from .params import DEFAULT_EVENTS_PAGE, MAX_EVENTS_PAGE, MAX_ID

REF = "#/components/schemas/{model}"
State = Literal["unknown", "up", "degraded", "down", "stale"]  # model.STATES; a test holds them equal


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- request bodies ------------------------------------------------------------------------------


class OverrideRequest(_Body):
    """POST /routing/overrides: send `region`'s new traffic to `target_region`."""

    region: str = Field(description="The region to fail over (a configured region).")
    target_region: str | None = Field(None, description="Where its new traffic goes; default the primary region.")
    read_only: bool = Field(True, description="Whether the region's existing sessions become read-only.")
    reason: str = Field(max_length=MAX_REASON_LENGTH, description="Why, for the audit trail (required).")
    expires_in_minutes: float | None = Field(None, ge=1, le=MAX_EXPIRY_MINUTES,
                                             description="Lapse by itself after this many minutes.")
    confirm_healthy: bool = Field(False, description="Allow overriding a region that is up.")
    force: bool = Field(False, description="Break glass: skip the health rules (recorded as forced).")
    expected_version: int | None = Field(None, description="Refuse (409 conflict) if the routing table's "
                                                           "version is no longer this one.")


class ClearOverrideRequest(_Body):
    """DELETE /routing/overrides/{region}: the region serves its own traffic again."""

    reason: str = Field(max_length=MAX_REASON_LENGTH, description="Why, for the audit trail (required).")
    expected_version: int | None = Field(None, description="Refuse (409 conflict) if the routing table's "
                                                           "version is no longer this one.")


class MaintenanceRequest(_Body):
    """POST /maintenance: start (or plan) a maintenance window; one overlapping an open window of the
    region extends it."""

    region: str = Field(description="The region under planned work (a configured region).")
    reason: str = Field(max_length=MAX_REASON_LENGTH, description="Why, for the audit trail (required).")
    duration_minutes: float | None = Field(None, gt=0, description="How long from its start (or give ends_at).")
    ends_at: float | None = Field(None, description="Unix time it ends (or give duration_minutes).")
    starts_at: float | None = Field(None, description="Unix time it starts; default now.")


class EndMaintenanceRequest(_Body):
    """DELETE /maintenance/{id}: end the window now (a window not started yet is called off)."""

    reason: str | None = Field(None, max_length=MAX_REASON_LENGTH, description="Why, for the audit trail.")


# -- responses -----------------------------------------------------------------------------------


class Error(_Body):
    """Every error of the API."""

    error: str = Field(description="A code: bad_parameter, bad_body, unauthorized, csrf_failed, unknown_region, "
                                   "not_found, conflict, a safety rule's name, too_many_requests, ...")
    message: str = Field(description="What is wrong, for people.")


class SloShort(_Body):
    """A region's SLO at a glance (dashboard.slo); GET /regions/{region}/slo has the rest."""

    target: float = Field(description="The objective: the share of polls that must be good.")
    availability_24h: float | None
    availability_30d: float | None
    error_budget_remaining: float | None = Field(description="Over the SLO window; negative once overspent.")
    alerts: list[Literal["page", "ticket"]] = Field(description="SLO alerts firing now.")


class VantageView(_Body):
    state: State
    reason: str
    at: float | None = Field(description="When that instance last polled the region.")


class RegionStatus(_Body):
    region: str
    state: State
    reason: str
    since: float | None = Field(description="Unix time the state began.")
    last_poll_at: float | None
    latency_ms: float | None
    error_rate_5m: float | None
    error_rate_1h: float | None
    reported_error_rate: float | None = Field(description="The error rate the region reports about itself.")
    version: str | None
    markers: dict[str, str] = Field(description="misrouted, drift, skew, stale, deployment_unavailable, override: "
                                                "each with a note.")
    reported_region: str | None = Field(description="What the region's deployment answer says it is.")
    reported_primary_region: str | None
    reported_regions: list[str] | None = Field(description="The region's view of the fleet.")
    slo: SloShort | None = Field(None, description="In /status only.")
    vantage: dict[str, VantageView] = Field(description="Each vantage point's own view (instance name -> view): "
                                                        "this instance alone when standalone; in cluster mode "
                                                        "every live instance, `state` above being the agreed one.")
    disputed: bool = Field(description="Cluster mode: some live vantage points see the region down, fewer than "
                                       "dashboard.cluster.down_quorum (`reason` says who sees what).")


class ClusterMember(_Body):
    name: str
    live: bool = Field(description="Its verdicts have not lapsed (verdict_ttl_seconds).")
    last_seen: float | None = Field(description="Unix time of its latest verdicts.")
    applied_version: int | None = Field(description="The routing table version all its publishers applied.")


class ClusterEtcd(_Body):
    reachable: bool
    unreachable_since: float | None
    error: str | None
    endpoints: list[str]
    version: str | None
    leader_member: str | None = Field(description="etcd's own Raft leader (a member id).")


class Cluster(_Body):
    mode: Literal["standalone", "cluster"]
    instance: str = Field(description="This instance's vantage name.")
    leader: str | None = Field(description="The instance doing the cluster's singleton work (state notices).")
    down_quorum: str | int | None = None
    verdict_ttl_seconds: float | None = None
    members: list[ClusterMember]
    etcd: ClusterEtcd | None


class Summary(_Body):
    up: int
    degraded: int
    down: int
    stale: int
    unknown: int


class Status(_Body):
    generated_at: str
    dashboard_region: str
    primary_region: str
    poll_interval_seconds: float
    summary: Summary
    regions: list[RegionStatus]


class Probe(_Body):
    id: int
    ts: float
    region: str
    endpoint: Literal["health", "deployment"]
    ok: int
    http_status: int | None
    latency_ms: float | None
    reason: str | None
    reported_error_rate: float | None


class Event(_Body):
    id: int
    at: float
    region: str | None
    kind: str = Field(description="state, version, failover, failback, lapse, ...; cluster_state: the "
                            "cluster's agreed change (cluster mode, actor `cluster`, views in details.vantage)")
    old_state: str | None
    new_state: str | None
    reason: str | None
    actor: str | None
    details: dict[str, Any] | None


class RegionDetail(RegionStatus):
    deployment_at: float | None
    deployment: Any = Field(description="The region's last deployment answer, as it sent it.")
    recent_probes: list[Probe]
    events: list[Event]


class Events(_Body):
    events: list[Event]
    next_before: int | None = Field(description="Pass as ?before= for the next page; null on the last.")


class ErrorRatePoint(_Body):
    t: str
    polls: int
    failed: int
    error_rate: float
    reported_error_rate: float | None


class LatencyPoint(_Body):
    t: str
    p50_ms: float
    p95_ms: float


class Mark(_Body):
    t: str
    kind: str
    label: str
    state: str | None


class Series(_Body):
    region: str
    metric: Literal["error_rate", "latency"]
    window: str
    bucket_seconds: float
    source: str
    start: str
    end: str
    points: list[ErrorRatePoint] | list[LatencyPoint]
    marks: list[Mark]


class SloAlert(_Body):
    severity: Literal["page", "ticket"]
    windows: list[str] = Field(description="The rule's long and short window, both burning over its threshold.")
    since: str


class Slo(_Body):
    """A region's error budget and burn rates against its objective; null where nothing was polled."""

    region: str
    target: float
    window_days: int
    availability: dict[str, float | None] = Field(description="Good polls / polls over 1h, 24h, 7d and 30d.")
    error_budget_remaining: float | None = Field(
        description="1 - bad fraction over the SLO window / (1 - target); negative once overspent.")
    burn_rate: dict[str, float | None] = Field(
        description="Bad fraction / (1 - target) over 5m, 30m, 1h, 6h and 3d.")
    alerts: list[SloAlert]


class RouteOverride(_Body):
    target_region: str
    read_only: bool
    reason: str
    actor: str
    since: str
    until: str | None
    forced: bool


class Route(_Body):
    serving_region: str
    base_url: str
    read_only: bool
    override: RouteOverride | None


class Published(_Body):
    """What one publisher of the routing table (the routing file, nginx, HAProxy) last applied."""

    name: str
    type: str
    version: int | None
    applied_at: str | None
    error: str | None
    behind: bool
    failed_at: str | None
    consecutive_failures: int
    next_attempt_at: str | None


class RoutingTable(_Body):
    version: int
    generated_at: str
    primary_region: str
    regions: dict[str, Route]
    published: list[Published]


class MaintenanceWindowOut(_Body):
    id: int
    region: str
    starts_at: str
    ends_at: str = Field(description="The planned end (an extension moves it).")
    reason: str
    actor: str
    created_at: str
    ended_at: str | None = Field(description="When it was ended or lapsed; null while open.")
    end_kind: Literal["ended", "lapsed"] | None
    active: bool = Field(description="Whether it covers its region now.")


class MaintenanceList(_Body):
    windows: list[MaintenanceWindowOut] = Field(description="Open windows (current and planned), soonest first.")


MODELS: tuple[type[BaseModel], ...] = (OverrideRequest, ClearOverrideRequest, Error, Status, RegionDetail, Events,
                                       Series, RoutingTable, Slo, MaintenanceRequest, EndMaintenanceRequest,
                                       MaintenanceWindowOut, MaintenanceList, Cluster)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel] | None, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if model is not None:
        response["content"] = {"application/json": {"schema": _ref(model)}}
    if headers:
        response["headers"] = headers
    return response


ERRORS = {
    400: "A parameter or the body is not usable; the message names it.",
    401: "Credentials required, or not valid.",
    403: "A browser session without its CSRF token.",
    404: "No such region (or path).",
    409: "A safety rule (the error code names it) or a conflict refused the change.",
    413: "The body is larger than the dashboard accepts (64 KB).",
    429: "Too many wrong bearer tokens from this address; see Retry-After.",
}


def _errors(*codes: int) -> dict[str, Any]:
    headers = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
    return {str(code): _json(Error, ERRORS[code], headers if code == 429 else None) for code in codes}


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of this app's /api/v1."""
    spec = APISpec(
        title="Region dashboard API", version="1", openapi_version="3.1.0",
        info={"description": "Every region's state, history and routing; failover and failback. Errors are "
                             "JSON {\"error\": <code>, \"message\": <text>}."},
        servers=[{"url": "/api/v1"}],
    )
    _, schemas = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    definitions = schemas["$defs"]
    # The regions a body may name are this instance's: any other is a 404 unknown_region.
    known = {"type": "string", "enum": list(settings.regions)}
    definitions["OverrideRequest"]["properties"]["region"].update(known)
    definitions["OverrideRequest"]["properties"]["target_region"]["anyOf"] = [known, {"type": "null"}]
    definitions["MaintenanceRequest"]["properties"]["region"].update(known)
    for name, schema in definitions.items():
        spec.components.schema(name, schema)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                               "description": "A token from `dashboard hash-password --new-token`."})
    spec.components.security_scheme("session", {"type": "apiKey", "in": "cookie", "name": "dashboard_session",
                                                "description": "An operator's browser session (log in at /login)."})
    spec.components.security_scheme("csrf", {"type": "apiKey", "in": "header", "name": "X-CSRFToken",
                                             "description": "The CSRF token of the session's pages."})
    mutate: list[dict[str, list[str]]] = [{"bearer": []}, {"session": [], "csrf": []}]
    if settings.dashboard.auth.read_requires_login:
        read: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]
        read_errors: tuple[int, ...] = (401, 429)
    else:
        read, read_errors = [{}], ()
    region = {"name": "region", "in": "path", "required": True, "description": "A configured region.",
              "schema": {"type": "string", "enum": list(settings.regions)}}

    def get(summary: str, model: type[BaseModel], *errors: int, parameters: list[dict[str, Any]] | None = None,
            **extra: Any) -> dict[str, Any]:
        return {"get": {"summary": summary, "security": read, "parameters": parameters or [],
                        "responses": {"200": _json(model, summary), **_errors(*errors, *read_errors)}, **extra}}

    spec.path(path="/status", operations=get("Every region: state, reason, error rates, version, markers.", Status))
    spec.path(path="/cluster", operations=get("Cluster mode: this instance, the members, the leader, etcd's health.",
                                              Cluster))
    spec.path(path="/regions/{region}", parameters=[region],
              operations=get("One region, with its deployment payload, recent probes and events.", RegionDetail, 404))
    spec.path(path="/regions/{region}/series", parameters=[region], operations=get(
        "Bucketed points (at most ~360) and marks of state, version and routing changes.", Series, 400, 404,
        parameters=[
            {"name": "metric", "in": "query", "required": True,
             "schema": {"type": "string", "enum": list(charts.METRICS)}},
            {"name": "window", "in": "query", "schema": {"type": "string", "enum": list(charts.WINDOWS),
                                                         "default": charts.DEFAULT_WINDOW}},
        ]))
    spec.path(path="/regions/{region}/slo", parameters=[region], operations=get(
        "Availability, error budget remaining, burn rates and firing SLO alerts.", Slo, 404))
    spec.path(path="/events", operations=get("Events, newest first.", Events, 400, 404, parameters=[
        {"name": "region", "in": "query", "schema": {"type": "string", "enum": ["", *settings.regions]}},
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS_PAGE, "default": DEFAULT_EVENTS_PAGE}},
        {"name": "before", "in": "query", "description": "An event id: only older events.",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
    ]))
    etag = {"ETag": {"schema": {"type": "string"}, "required": True, "description": "routing-v<version>"}}
    routing_read = get("The effective routing table.", RoutingTable, parameters=[
        {"name": "If-None-Match", "in": "header", "schema": {"type": "string"},
         "description": "The ETag of a table already held: 304 while it is current."}])
    routing_read["get"]["responses"]["200"]["headers"] = etag
    routing_read["get"]["responses"]["304"] = {"description": "The table is the one held.", "headers": etag}
    spec.path(path="/routing", operations=routing_read)
    spec.path(path="/routing/overrides", operations={"post": {
        "summary": "Fail a region over: its new traffic goes to another region.", "security": mutate,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(OverrideRequest)}}},
        "responses": {"201": _json(RoutingTable, "The new routing table.", etag),
                      **_errors(400, 401, 403, 404, 409, 413, 429)}}})
    spec.path(path="/routing/overrides/{region}", parameters=[region],
              operations={"delete": {
                  "summary": "Fail a region back: it serves its own traffic again.", "security": mutate,
                  "requestBody": {"required": True,
                                  "content": {"application/json": {"schema": _ref(ClearOverrideRequest)}}},
                  "responses": {"200": _json(RoutingTable, "The new routing table.", etag),
                                **_errors(400, 401, 403, 404, 409, 413, 429)}}})
    spec.path(path="/maintenance", operations={
        **get("Maintenance windows not over yet, current and planned.", MaintenanceList),
        "post": {"summary": "Start or plan a maintenance window (or extend the open one it overlaps).",
                 "security": mutate,
                 "requestBody": {"required": True,
                                 "content": {"application/json": {"schema": _ref(MaintenanceRequest)}}},
                 "responses": {"201": _json(MaintenanceWindowOut, "The window as it is now."),
                               **_errors(400, 401, 403, 404, 409, 413, 429)}}})
    spec.path(path="/maintenance/{window_id}", parameters=[
        {"name": "window_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}],
        operations={"delete": {
            "summary": "End a maintenance window now; what its region did meanwhile is summarised.",
            "security": mutate,
            "requestBody": {"required": False,
                            "content": {"application/json": {"schema": _ref(EndMaintenanceRequest)}}},
            "responses": {"200": _json(MaintenanceWindowOut, "The window, ended."),
                          **_errors(400, 401, 403, 404, 409, 413, 429)}}})
    spec.path(path="/openapi.json", operations={"get": {
        "summary": "This document.", "security": read,
        "responses": {"200": {"description": "The OpenAPI document.",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      **_errors(*read_errors)}}})
    return spec.to_dict()
