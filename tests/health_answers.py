"""The health answers real services send, byte for byte, with where each comes from and what it must give.

One table, played by the simulated fleet (`RegionBehaviour.health_answer`) through a real `poll --once`
in test_health_answers.py: one region per answer, each named by its `id`. `state` is what one poll
leaves with `failure_threshold: 1` (so a failed poll is `down` at once), and `named` must appear in
the region's reason: the failing component, or the word the answer said.

Sources (the answers are rebuilt from the code that writes them, not from screenshots):
- Kubernetes: k8s.io/apiserver pkg/server/healthz/healthz.go, handleRootHealth: `ok` as
  "text/plain; charset=utf-8" when every check passes; with ?verbose or on failure one line per
  check (`[+]name ok`, `[-]name failed: reason withheld`), then "healthz check passed|failed"; a
  failure goes through http.Error (status 500, a trailing newline).
- ASP.NET Core: Microsoft.AspNetCore.Diagnostics.HealthChecks, HealthCheckResponseWriters
  .WriteMinimalPlaintext writes HealthStatus as text/plain; HealthCheckOptions.ResultStatusCodes
  maps Healthy and Degraded to 200, Unhealthy to 503. The JSON "UI" writer is
  Xabaril/AspNetCore.Diagnostics.HealthChecks src/HealthChecks.UI.Client/UIResponseWriter.cs
  (UIHealthReport, camelCase, enums as strings, TimeSpan as "hh:mm:ss.fffffff").
- django-health-check 4.x: health_check/views.py render_to_response_json, {repr(check):
  pretty_status()} with 500 on any error (warnings too, unless warnings_as_errors is False);
  pretty_status is "OK" or "<Type>: <message>" (health_check/exceptions.py). 3.x wrote the class
  name and "working" / "unavailable: ...".
- Consul: agent HTTP API, GET /v1/agent/health/service/id/<id> (one object) and .../name/<name>
  (a list): 200 passing, 429 warning, 503 critical, with AggregatedStatus, Service and Checks.
- IETF: draft-inadarei-api-health-check (application/health+json), section 3 and its example.
- Spring Boot actuator: /actuator/health with show-details; 503 for DOWN and OUT_OF_SERVICE,
  content type application/vnd.spring-boot.actuator.v3+json (or application/json when asked).
- MicroProfile Health 3.x: {"status", "checks": [{"name", "status", "data"}]}, 503 when DOWN.
- problem+json: RFC 9457 section 3 (application/problem+json, a numeric "status").
- nginx: its built-in 502 page. The issue-10 rows are taken as the issue writes them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    id: str  # the simulated region's name
    source: str
    status: int
    content_type: str
    body: str
    state: str  # after one poll with failure_threshold 1
    named: str | None = None  # must be in the reason

    @property
    def health_answer(self) -> dict:
        return {"status": self.status, "content_type": self.content_type, "body": self.body}


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


K8S_TEXT = "text/plain; charset=utf-8"
K8S_CHECKS_OK = ("[+]ping ok\n[+]log ok\n[+]etcd ok\n[+]poststarthook/start-kube-apiserver-admission-initializer ok\n"
                 "[+]poststarthook/generic-apiserver-start-informers ok\n")
K8S_CHECKS_FAILING = ("[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n"
                      "[+]poststarthook/start-kube-apiserver-admission-initializer ok\n"
                      "[+]poststarthook/generic-apiserver-start-informers ok\n")

ASPNET_UI = "AspNetCore.HealthChecks.UI.Client UIResponseWriter"


def _aspnet_ui(status: str, npgsql: dict, redis: dict) -> str:
    return _json({"status": status, "totalDuration": "00:00:00.0153281", "entries": {
        "npgsql": {"data": {}, "duration": "00:00:00.0121337", **npgsql, "tags": ["db"]},
        "redis": {"data": {}, "duration": "00:00:00.0031944", **redis, "tags": ["cache"]},
    }})


DJANGO = "django-health-check 4.x HealthCheckView (JSON)"
DJANGO_OK = {"Cache(alias='default')": "OK", "Database(alias='default')": "OK",
             "Disk(path='/app', hostname='web-7f9c')": "OK", "Memory(hostname='web-7f9c')": "OK",
             "Storage(alias='default')": "OK"}

CONSUL = "Consul agent API /v1/agent/health/service/id/api-1"


def _consul(aggregated: str, check: str, output: str) -> dict:
    return {
        "AggregatedStatus": aggregated,
        "Service": {"ID": "api-1", "Service": "api", "Tags": ["v1"], "Meta": {}, "Port": 8080, "Address": "10.0.0.7",
                    "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False, "Datacenter": "dc1"},
        "Checks": [{"Node": "node-1", "CheckID": "service:api-1", "Name": "Service 'api' check", "Status": check,
                    "Notes": "", "Output": output, "ServiceID": "api-1", "ServiceName": "api", "ServiceTags": ["v1"],
                    "Type": "http", "Interval": "10s", "Timeout": "5s", "CreateIndex": 0, "ModifyIndex": 0}],
    }


IETF = "draft-inadarei-api-health-check, application/health+json"
IETF_TYPE = "application/health+json"
IETF_EXAMPLE = {
    "status": "pass", "version": "1", "releaseId": "1.2.2", "notes": [""], "output": "",
    "serviceId": "f03e522f-1f44-4062-9b55-9587f91c9c41", "description": "health of authz service",
    "checks": {
        "cassandra:responseTime": [{"componentId": "dfd6cf2b-1b6e-4412-a0b8-f6f7797a60d2",
                                    "componentType": "datastore", "observedValue": 250, "observedUnit": "ms",
                                    "status": "pass", "affectedEndpoints": ["/users/{userId}"],
                                    "time": "2018-01-17T03:36:48Z", "output": ""}],
        "uptime": [{"componentType": "system", "observedValue": 1209600.245, "observedUnit": "s", "status": "pass",
                    "time": "2018-01-17T03:36:48Z"}],
    },
    "links": {"about": "http://api.example.com/about/authz"},
}

SPRING = "Spring Boot actuator /actuator/health (show-details: always)"
SPRING_TYPE = "application/vnd.spring-boot.actuator.v3+json"
SPRING_DISK = {"status": "UP", "details": {"total": 499963174912, "free": 336121122816, "threshold": 10485760,
                                           "path": "/app/.", "exists": True}}

NGINX_502 = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
             "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
SPA_INDEX = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Acme console</title>'
             '<script type="module" src="/assets/index-4f1b.js"></script></head>'
             '<body><div id="root"></div></body></html>')

ANSWERS: tuple[Answer, ...] = (
    # Kubernetes /healthz
    Answer("k8s-healthz", "Kubernetes /healthz", 200, K8S_TEXT, "ok", "up"),
    Answer("k8s-healthz-verbose", "Kubernetes /healthz?verbose", 200, K8S_TEXT,
           K8S_CHECKS_OK + "healthz check passed\n", "up"),
    Answer("k8s-healthz-failing", "Kubernetes /healthz, a check failing", 500, K8S_TEXT,
           K8S_CHECKS_FAILING + "healthz check failed\n", "down", "etcd failed"),
    # ASP.NET Core, default writer and the JSON UI writer
    Answer("aspnet-healthy", "ASP.NET Core MapHealthChecks, default writer", 200, "text/plain", "Healthy", "up"),
    Answer("aspnet-degraded", "ASP.NET Core MapHealthChecks, default writer", 200, "text/plain", "Degraded",
           "degraded", "Degraded"),
    Answer("aspnet-unhealthy", "ASP.NET Core MapHealthChecks, default writer", 503, "text/plain", "Unhealthy",
           "down", "Unhealthy"),
    Answer("aspnet-ui-healthy", ASPNET_UI, 200, "application/json",
           _aspnet_ui("Healthy", {"status": "Healthy"}, {"status": "Healthy"}), "up"),
    Answer("aspnet-ui-degraded", ASPNET_UI, 200, "application/json",
           _aspnet_ui("Degraded", {"status": "Healthy"},
                      {"description": "redis latency 850 ms over 500 ms", "status": "Degraded"}),
           "degraded", "redis Degraded"),
    Answer("aspnet-ui-unhealthy", ASPNET_UI, 503, "application/json",
           _aspnet_ui("Unhealthy", {"description": "Failed to connect to 10.0.0.5:5432",
                                    "exception": "Failed to connect to 10.0.0.5:5432", "status": "Unhealthy"},
                      {"status": "Healthy"}),
           "down", "npgsql Unhealthy (Failed to connect"),
    # django-health-check
    Answer("django-hc-ok", DJANGO, 200, "application/json", _json(DJANGO_OK), "up"),
    Answer("django-hc-warning", DJANGO + ", warnings_as_errors = False", 200, "application/json",
           _json({**DJANGO_OK, "Disk(path='/app', hostname='web-7f9c')": "Warning: 92.3\u202f% disk usage"}),
           "degraded", "Disk(path='/app', hostname='web-7f9c') Warning"),
    Answer("django-hc-failing", DJANGO, 500, "application/json",
           _json({**DJANGO_OK, "Database(alias='default')": "Unavailable: Database health check failed: "
                  "connection to server at \"db\" (10.0.0.5), port 5432 failed: Connection refused"}),
           "down", "Database(alias='default') Unavailable"),
    Answer("django-hc-3x", "django-health-check 3.x MainView (JSON)", 200, "application/json",
           _json({"CacheBackend": "working", "DatabaseBackend": "working", "DiskUsage": "working"}), "up"),
    # Consul agent health
    Answer("consul-passing", CONSUL, 200, "application/json",
           _json(_consul("passing", "passing", "HTTP GET http://10.0.0.7:8080/health: 200 OK Output: ok")), "up"),
    Answer("consul-warning", CONSUL, 429, "application/json",
           _json(_consul("warning", "warning", "HTTP GET http://10.0.0.7:8080/health: 429 Too Many Requests")),
           "degraded", "Service 'api' check warning"),
    Answer("consul-critical", CONSUL, 503, "application/json",
           _json(_consul("critical", "critical", "Get \"http://10.0.0.7:8080/health\": dial tcp: connection refused")),
           "down", "Service 'api' check critical"),
    Answer("consul-by-name", "Consul agent API /v1/agent/health/service/name/api", 200, "application/json",
           _json([_consul("passing", "passing", "HTTP GET http://10.0.0.7:8080/health: 200 OK Output: ok")]), "up"),
    # IETF application/health+json
    Answer("ietf-pass", IETF + " (the draft's example)", 200, IETF_TYPE, _json(IETF_EXAMPLE), "up"),
    Answer("ietf-warn", IETF, 200, IETF_TYPE,
           _json({**IETF_EXAMPLE, "status": "warn", "checks": {"cassandra:responseTime": [
               {"componentType": "datastore", "observedValue": 950, "observedUnit": "ms", "status": "warn",
                "output": "slow responses"}]}}),
           "degraded", "cassandra:responseTime warn"),
    Answer("ietf-fail", IETF + " (issue 10)", 503, IETF_TYPE,
           _json({"status": "fail", "checks": {"postgres:responseTime": [{"status": "fail"}]}}),
           "down", "postgres:responseTime"),
    Answer("ietf-error-rate-percent", IETF + " (issue 10: 0.5 % is under 5 %)", 200, IETF_TYPE,
           _json({"status": "pass", "checks": {"http:errorRate": [
               {"status": "pass", "observedValue": 0.5, "observedUnit": "percent"}]}}), "up"),
    # Spring Boot actuator
    Answer("spring-up", SPRING, 200, SPRING_TYPE,
           _json({"status": "UP", "components": {
               "db": {"status": "UP", "details": {"database": "PostgreSQL", "validationQuery": "isValid()"}},
               "diskSpace": SPRING_DISK, "ping": {"status": "UP"}}}), "up"),
    Answer("spring-down", SPRING + " (issue 10)", 503, "application/json",
           _json({"status": "DOWN", "components": {
               "db": {"status": "DOWN", "details": {"error": "org.springframework.jdbc.CannotGetJdbcConnectionException"
                                                             ": Failed to obtain JDBC Connection"}},
               "diskSpace": SPRING_DISK, "ping": {"status": "UP"}}}), "down", "db DOWN"),
    Answer("spring-out-of-service", SPRING + " (issue 10)", 503, SPRING_TYPE,
           _json({"status": "OUT_OF_SERVICE", "components": {"ping": {"status": "UP"},
                                                              "readinessState": {"status": "OUT_OF_SERVICE"}}}),
           "down", "OUT_OF_SERVICE"),
    # MicroProfile Health
    Answer("microprofile-down", "MicroProfile Health 3.x /health", 503, "application/json",
           _json({"status": "DOWN", "checks": [
               {"name": "database", "status": "DOWN", "data": {"error": "Connection refused"}},
               {"name": "ping", "status": "UP"}]}),
           "down", "database DOWN"),
    # problem+json
    Answer("problem-json", "RFC 9457 problem details", 503, "application/problem+json",
           _json({"type": "https://example.com/probs/unavailable", "title": "Service Unavailable", "status": 503,
                  "detail": "The database connection pool is exhausted", "instance": "/api/v1/system/health"}),
           "down", "Service Unavailable: The database connection pool is exhausted"),
    # The rest of issue 10's table, and today's own format
    Answer("issue-empty-object", "issue 10: no status field at all", 200, "application/json", "{}", "up"),
    Answer("issue-database-online", "issue 10: no status field at all", 200, "application/json",
           '{"database": "online"}', "up"),
    Answer("plain-ok", "this product's own services", 200, "application/json", '{"status": "ok"}', "up"),
    Answer("plain-degraded", "this product's own services", 200, "application/json", '{"status": "degraded"}',
           "degraded", "degraded"),
    Answer("plain-text-no-type", "a bare word with no content type", 200, "", "OK", "up"),
    # What must never read as up
    Answer("spa-fallback", "a single-page app's index.html served for every path", 200, "text/html; charset=utf-8",
           SPA_INDEX, "down", "an HTML page, not a health answer"),
    Answer("nginx-502", "nginx's own 502 page", 502, "text/html", NGINX_502, "down", "502 Bad Gateway"),
)
