"""Load and validate the dashboard's settings once, at start.

The file holds the `deployment:` block exactly as the services use it and a `dashboard:` block of
our own. Every problem is reported with the key it concerns; an unknown key is an error, because a
typo that is silently ignored leaves an operator believing a setting is in force when it is not.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

CONFIG_ENV = "DASHBOARD_CONFIG"
REGIONS_ENV = "REVERSEAI_DEPLOYMENT_REGIONS"
DEFAULT_CONFIG_FILE = "config.yaml"
# Region names end up in URLs, file names and log lines: keep them to a safe alphabet.
REGION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# A region is stale when no result is newer than this many poll intervals (DESIGN.md).
STALE_AFTER_INTERVALS = 3


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists each one as 'key: what is wrong'."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid configuration{where}:\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeploymentConfig(_Strict):
    """The fleet, as the services themselves describe it."""

    region: str = Field(description="Where this dashboard itself runs.")
    primary_region: str = Field(description="Default failover target.")
    regions: list[str] = Field(min_length=1)
    region_base_urls: dict[str, str]

    @field_validator("region", "primary_region")
    @classmethod
    def _region_name(cls, value: str) -> str:
        return _check_region_name(value)

    @field_validator("regions")
    @classmethod
    def _region_list(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            _check_region_name(name)
            if name in seen:
                raise ValueError(f"region {name!r} is listed twice")
            seen.add(name)
        return value

    @field_validator("region_base_urls")
    @classmethod
    def _base_urls(cls, value: dict[str, str]) -> dict[str, str]:
        return {_check_region_name(region): _normalise_base_url(region, url) for region, url in value.items()}


# Hashes made by `dashboard hash-password` (werkzeug's formats); a plain password is refused.
PASSWORD_HASH = re.compile(r"^(scrypt|pbkdf2):[^$]+\$[^$]+\$[0-9a-f]+$")
# A token from `hash-password --new-token` is 256 random bits: it needs no slow hash, and a slow one
# would make every API call, and every wrong token anyone sends, cost that much server time.
FAST_TOKEN_HASH = re.compile(r"^pbkdf2:[a-z0-9]+:(\d+)\$")
MAX_TOKEN_HASH_ITERATIONS = 10_000


class AuthConfig(_Strict):
    """Who may change routing: operators log in; automation presents a bearer token."""

    operators: dict[str, str] = Field(default_factory=dict)
    api_tokens: dict[str, str] = Field(default_factory=dict)
    read_requires_login: bool = False
    login_max_failures: int = Field(5, ge=1, le=100)
    # The longest wait the login throttle imposes on one (user name, address) pair.
    login_lockout_seconds: int = Field(900, ge=10, le=86_400)

    @field_validator("operators", "api_tokens")
    @classmethod
    def _hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, hashed in value.items():
            if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$", name):
                raise ValueError(f"{name!r} is not a valid name (letters, digits, '.', '_', '@', '-')")
            # Never echo the value: it may be a password pasted where its hash belongs.
            if not isinstance(hashed, str) or not PASSWORD_HASH.match(hashed):
                raise ValueError(f"the entry for {name!r} is not a hash made by `dashboard hash-password`")
        return value

    @field_validator("api_tokens")
    @classmethod
    def _fast_token_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, hashed in value.items():
            fast = FAST_TOKEN_HASH.match(hashed)
            if fast is None or int(fast.group(1)) > MAX_TOKEN_HASH_ITERATIONS:
                raise ValueError(f"the entry for {name!r} is a slow hash (made for passwords): every API call, and "
                                 "every wrong token sent, would pay for it; make the token with "
                                 "`dashboard hash-password --new-token`")
        return value


# Where a receiver that is not a JSON or Slack webhook goes, said whenever a webhook is refused.
TARGETS_HINT = ("for Microsoft Teams, PagerDuty, Opsgenie, email, ntfy and the rest, add it under "
                "dashboard.notifications.targets as {name: ..., url: 'workflows://...'} (any Apprise URL)")
# An Apprise URL starts with its scheme; what follows is the service's own (often a token).
APPRISE_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]{0,31})://", re.IGNORECASE)


class WebhookConfig(_Strict):
    """One notification receiver of our own JSON: a generic JSON body, or Slack's incoming-webhook format."""

    name: str = Field(min_length=1, max_length=64)
    url: str
    format: str = "generic"
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    retries: int = Field(3, ge=0, le=10)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The URL itself is a secret (Slack's carries the token): never echo it.
            raise ValueError(f"must be an http:// or https:// URL with a host; {TARGETS_HINT}")
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in ("generic", "slack"):
            raise ValueError(f"must be 'generic' or 'slack'; {TARGETS_HINT}")
        return value


class TargetConfig(_Strict):
    """One notification receiver reached through Apprise: Teams (workflows://), PagerDuty, Opsgenie, email, ..."""

    name: str = Field(min_length=1, max_length=64)
    url: str
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    retries: int = Field(3, ge=0, le=10)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        # Never echo the URL: for most services it carries the token or the password.
        if not APPRISE_SCHEME.match(value) or not apprise_accepts(value):
            raise ValueError("is not a URL Apprise can send to (e.g. workflows://... for Teams, pagerduty://..., "
                             "opsgenie://..., mailto://..., json://...; the URL is not shown, it may hold a secret)")
        return value


def _file_mode(value: Any) -> int:
    """A file mode as an octal string ('0644', '644', '0o644') or an int (YAML reads 0644 as 420)."""
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3}", value.strip()):
        mode = int(value.strip().removeprefix("0").removeprefix("o") or "0", 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ValueError("must be a file mode as an octal string, e.g. '0644'")
    if not 0 <= mode <= 0o777:
        raise ValueError("must be a file mode between '0000' and '0777' (quote it: '0644')")
    if mode & 0o600 != 0o600:
        raise ValueError("must let its owner read and write the file (the dashboard reads it back)")
    if mode & 0o002:
        raise ValueError("must not be writable by everyone (anyone could rewrite the routing table)")
    return mode


# Kept as an int, shown (check-config) as the octal string an operator writes.
FileMode = Annotated[int, BeforeValidator(_file_mode), PlainSerializer(lambda mode: f"0{mode:o}", return_type=str,
                                                                      when_used="json")]


class NotificationsConfig(_Strict):
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    targets: list[TargetConfig] = Field(default_factory=list)
    # A flapping region sends at most one notice per this many seconds; what is held back is summarised.
    min_interval_seconds: float = Field(300, ge=0, le=86_400)

    @model_validator(mode="after")
    def _unique_names(self) -> NotificationsConfig:
        # The name identifies a receiver in the outbox, the logs and /healthz: one name, one receiver.
        seen: set[str] = set()
        for name in [w.name for w in self.webhooks] + [t.name for t in self.targets]:
            if name in seen:
                raise ValueError(f"the receiver name {name!r} is used twice (webhooks and targets share one "
                                 "set of names)")
            seen.add(name)
        return self


# An HTTP status a health answer may carry. 3xx is refused where codes are configured: a redirect is
# never followed and never read, so a rule about one could never apply.
StatusCode = Annotated[int, Field(ge=100, le=599)]


# An objective of 50 % or less is no objective; one of 100 % leaves no error budget to burn.
SloTarget = Annotated[float, Field(gt=0.5, lt=1)]


class SloConfig(_Strict):
    """The availability objective error budgets and burn rates are measured against: the share of
    good polls over `window_days`, per region where `regions` names one."""

    target: SloTarget = 0.999
    window_days: int = Field(30, ge=1, le=90)
    regions: dict[str, SloTarget] = Field(default_factory=dict)

    def target_for(self, region: str) -> float:
        return self.regions.get(region, self.target)


def _check_codes(value: list[int] | None) -> list[int] | None:
    if value is None:
        return None
    redirects = sorted({code for code in value if 300 <= code < 400})
    if redirects:
        raise ValueError(f"{redirects} are redirects, which are never followed or read: always a failed probe")
    return sorted(set(value))


@dataclass(frozen=True)
class HealthRule:
    """How one region's health status codes read: which mean ok (the body then decides), which degraded."""

    ok_status_codes: frozenset[int] | None = None  # None: any 2xx
    degraded_status_codes: frozenset[int] = frozenset({429})

    def is_ok(self, status: int) -> bool:
        if self.ok_status_codes is None:
            return 200 <= status < 300
        return status in self.ok_status_codes

    def is_degraded(self, status: int) -> bool:
        return status in self.degraded_status_codes


class HealthRegionConfig(_Strict):
    """A region's own status codes; each key given replaces the `dashboard.health` one for that region."""

    degraded_status_codes: list[StatusCode] = Field(default_factory=list)
    ok_status_codes: list[StatusCode] | None = Field(None, min_length=1)

    _codes = field_validator("degraded_status_codes", "ok_status_codes")(_check_codes)


class WebConfig(_Strict):
    """How many requests the web server works on at once, and how many may wait for a worker."""

    # Rendering holds the interpreter lock, so more threads add waiting, not throughput.
    threads: int = Field(8, ge=1, le=64)
    # A request that would wait behind this many others is answered 503 + Retry-After at once.
    queue_limit: int = Field(16, ge=1, le=10_000)


class HealthConfig(_Strict):
    """How health answers' status codes read: any 2xx is ok unless `ok_status_codes` says which; 429 is
    degraded (Consul's "warning") unless the body says it is failing; any other code is down."""

    degraded_status_codes: list[StatusCode] = Field(default_factory=lambda: [429])
    ok_status_codes: list[StatusCode] | None = Field(None, min_length=1)
    regions: dict[str, HealthRegionConfig] = Field(default_factory=dict)
    # Every region's effective rule, built once: the poller looks one up per region and cycle.
    _rules: dict[str, HealthRule] = PrivateAttr(default_factory=dict)
    _default: HealthRule = PrivateAttr(default_factory=HealthRule)

    _codes = field_validator("degraded_status_codes", "ok_status_codes")(_check_codes)

    def model_post_init(self, context: Any, /) -> None:
        self._default = self._rule(self.ok_status_codes, self.degraded_status_codes)
        self._rules = {region: self._rule_of(override) for region, override in self.regions.items()}

    def _rule_of(self, override: HealthRegionConfig) -> HealthRule:
        given = override.model_fields_set
        ok = override.ok_status_codes if "ok_status_codes" in given else self.ok_status_codes
        degraded = override.degraded_status_codes if "degraded_status_codes" in given else self.degraded_status_codes
        return self._rule(ok, degraded)

    @staticmethod
    def _rule(ok: list[int] | None, degraded: list[int]) -> HealthRule:
        return HealthRule(None if ok is None else frozenset(ok), frozenset(degraded))

    @property
    def default_rule(self) -> HealthRule:
        """The rule of every region without keys of its own."""
        return self._default

    def rule_for(self, region: str) -> HealthRule:
        """The region's effective rule: its own keys where given, else the block's."""
        return self._rules.get(region, self._default)

    def effective(self) -> dict[str, Any]:
        """The block as it applies: the defaults, and every listed region's rule with both keys filled."""

        def shown(rule: HealthRule) -> dict[str, Any]:
            ok = None if rule.ok_status_codes is None else sorted(rule.ok_status_codes)
            return {"degraded_status_codes": sorted(rule.degraded_status_codes), "ok_status_codes": ok}

        return {**shown(self._default), "regions": {region: shown(self.rule_for(region)) for region in self.regions}}


# A publisher's name is a metric label, a database key and a word in log lines.
PUBLISHER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# The routing file (`dashboard.routing_file`) is always published, under this name.
ROUTING_FILE_PUBLISHER = "routing-file"
# Words an nginx `map` block reads as its own directives, never as a key: no region may be one.
NGINX_MAP_WORDS = frozenset({"default", "hostnames", "include", "volatile"})


def _check_command(value: list[str]) -> list[str]:
    if not value or not all(isinstance(part, str) and part for part in value):
        raise ValueError("must be a non-empty list of non-empty strings: the program and its arguments, no shell")
    return value


class _PublisherConfig(_Strict):
    """What every router publisher has: a name, and the two map files it writes."""

    name: str
    map_file: str = Field(min_length=1, description="'<region> <serving region>' per line")
    read_only_map_file: str = Field(min_length=1, description="'<region> <0|1>' per line")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not PUBLISHER_NAME.match(value):
            raise ValueError("must be letters, digits, '.', '_', '-' (at most 63), starting with a letter or digit")
        if value == ROUTING_FILE_PUBLISHER:
            raise ValueError(f"{ROUTING_FILE_PUBLISHER!r} is the name of dashboard.routing_file's own publisher")
        return value


class NginxPublisherConfig(_PublisherConfig):
    """nginx: write the map files, test the config, reload; on a failed test put the old maps back."""

    type: Literal["nginx"]
    test_command: list[str] = Field(default_factory=lambda: ["nginx", "-t"])
    reload_command: list[str] = Field(default_factory=lambda: ["nginx", "-s", "reload"])
    timeout_seconds: float = Field(10.0, gt=0, le=300)

    @field_validator("test_command", "reload_command", mode="before")
    @classmethod
    def _commands(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("must be a list such as ['nginx', '-t']: the program and its arguments, never a "
                             "shell string")
        return value

    _commands_filled = field_validator("test_command", "reload_command")(_check_command)


class HaproxyPublisherConfig(_PublisherConfig):
    """HAProxy: write the map files (a restart keeps the table) and set the maps on the runtime API."""

    type: Literal["haproxy"]
    socket: str = Field(min_length=1, description="HAProxy's stats socket with `level admin` (a unix socket path)")
    timeout_seconds: float = Field(5.0, gt=0, le=300)


def _publisher_type(value: Any) -> str | None:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


PublisherConfig = Annotated[
    Annotated[NginxPublisherConfig, Tag("nginx")] | Annotated[HaproxyPublisherConfig, Tag("haproxy")],
    Discriminator(_publisher_type, custom_error_type="publisher_type",
                  custom_error_message="type: required, 'nginx' or 'haproxy'"),
]


class MaintenanceConfig(_Strict):
    """Maintenance windows (issue 15)."""

    # The longest window one start (or extension) may ask for: planned work, not a way to mute a region.
    max_hours: float = Field(24, gt=0, le=24 * 30)
    # Where error budgets exist, bad polls inside a window are left out of them (model.polls_in_windows).
    exclude_from_error_budget: bool = True


# An environment variable's name, as `cluster.password_env` gives it.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _etcd_endpoint(value: str) -> str:
    parts = urlsplit(value.strip()) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an etcd client URL (e.g. 'http://10.0.0.1:2379')")
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r}: an etcd endpoint is scheme, host and port only (credentials go in "
                         "username and password_env)")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


class ClusterConfig(_Strict):
    """Cluster mode: several instances, one per region, sharing the control state through etcd.

    No block, or no endpoints, is standalone mode (SQLite alone, as ever)."""

    etcd_endpoints: list[str] = Field(default_factory=list)
    # This instance's vantage name; default deployment.region (see Settings.cluster_name).
    name: str | None = None
    key_prefix: str = "/region-dashboard/"
    # Live vantage points that must see a region down for the cluster to call it down.
    down_quorum: Literal["majority"] | int = "majority"
    # How long a verdict outlives its instance; default 3 poll intervals (Settings.verdict_ttl_seconds).
    verdict_ttl_seconds: float | None = Field(None, ge=2, le=3600)
    username: str | None = Field(None, min_length=1, max_length=128)
    # The password is read from this environment variable at start, never from the file.
    password_env: str | None = None
    ca_file: str | None = Field(None, min_length=1)
    cert_file: str | None = Field(None, min_length=1)
    key_file: str | None = Field(None, min_length=1)

    @field_validator("etcd_endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        endpoints = [_etcd_endpoint(url) for url in value]
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("an endpoint is listed twice")
        return endpoints

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _check_region_name(value)

    @field_validator("down_quorum", mode="before")
    @classmethod
    def _quorum(cls, value: Any) -> Any:
        if value == "majority" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100):
            return value
        raise ValueError("must be 'majority' or a count of vantage points between 1 and 100")

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"/([A-Za-z0-9._-]+/)*", value):
            raise ValueError("must start and end with '/' and hold only letters, digits, '.', '_', '-' between")
        return value

    @field_validator("password_env")
    @classmethod
    def _password_env(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.match(value):
            raise ValueError("must be the name of an environment variable (the password itself never goes in "
                             "the file)")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.etcd_endpoints)


class DashboardConfig(_Strict):
    """The dashboard's own settings; every default here is documented in the README."""

    database: str = "data/dashboard.db"
    poll_interval_seconds: float = Field(15.0, ge=1, le=3600)
    timeout_seconds: float = Field(5.0, gt=0, le=120)
    failure_threshold: int = Field(3, ge=1, le=100)
    success_threshold: int = Field(2, ge=1, le=100)
    degraded_error_rate: float = Field(0.05, gt=0, le=1)
    slow_latency_ms: float = Field(2000.0, gt=0, le=600_000)
    error_rate_window_seconds: int = Field(300, ge=10, le=86_400)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    web: WebConfig = WebConfig()
    log_level: str = "INFO"
    log_format: str = "keyvalue"
    # Shorter than a chart window that reads the table (6 h raw, 7 d minute, 1 y hourly) cuts that
    # chart short; allowed, for small installations and tests, and said in the README.
    raw_retention_hours: float = Field(48, ge=1, le=24 * 30)
    minute_rollup_retention_days: float = Field(30, ge=1, le=400)
    hour_rollup_retention_days: float = Field(400, ge=1, le=3650)
    max_database_mb: float = Field(1024, ge=10, le=1_000_000)
    routing_file: str = "data/routing.json"
    # Routers that apply the routing table after every change and at start, beside routing_file.
    publish: list[PublisherConfig] = Field(default_factory=list)
    # Readable by a router running as another user; the database itself is always 0600.
    routing_file_mode: FileMode = 0o644
    residency_pinned: list[str] = Field(default_factory=list)
    # How many proxies in front of the dashboard set X-Forwarded-For/-Proto (0: none; the headers
    # are then ignored, so a client cannot choose the address the login throttle sees).
    trusted_proxies: int = Field(0, ge=0, le=10)
    auth: AuthConfig = AuthConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    health: HealthConfig = HealthConfig()
    slo: SloConfig = SloConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    cluster: ClusterConfig | None = None
    # Bind outbound probes to this local address (a multi-homed host; the cluster demo's vantages).
    probe_source_address: str | None = None

    @field_validator("probe_source_address")
    @classmethod
    def _source_address(cls, value: str | None) -> str | None:
        if value is not None:
            import ipaddress

            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError("must be an IP address of this host, e.g. '10.0.0.5'") from None
        return value

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in ("keyvalue", "json"):
            raise ValueError("must be 'keyvalue' or 'json'")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return upper


class Settings(_Strict):
    """The whole validated configuration."""

    deployment: DeploymentConfig
    dashboard: DashboardConfig = DashboardConfig()
    # Where the settings came from, for messages; relative paths in the file resolve against it.
    source: str | None = None

    @property
    def database_path(self) -> Path:
        return self._resolve(self.dashboard.database)

    @property
    def routing_file_path(self) -> Path:
        return self._resolve(self.dashboard.routing_file)

    def resolve_path(self, value: str) -> Path:
        """A path from the config: relative paths resolve against the config file's folder."""
        return self._resolve(value)

    def _resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        if not path.is_absolute() and self.source:
            path = Path(self.source).resolve().parent / path
        return path

    @property
    def regions(self) -> list[str]:
        return list(self.deployment.regions)

    def base_url(self, region: str) -> str:
        return self.deployment.region_base_urls[region]

    @property
    def stale_after_seconds(self) -> float:
        return STALE_AFTER_INTERVALS * self.dashboard.poll_interval_seconds

    @property
    def cluster(self) -> ClusterConfig | None:
        """The cluster block when cluster mode is on (endpoints given); None: standalone."""
        cluster = self.dashboard.cluster
        return cluster if cluster is not None and cluster.enabled else None

    @property
    def cluster_name(self) -> str:
        """This instance's vantage name: cluster.name, else the region it runs in."""
        cluster = self.dashboard.cluster
        return (cluster.name if cluster is not None and cluster.name else None) or self.deployment.region

    @property
    def verdict_ttl_seconds(self) -> float:
        """How long an instance's verdicts outlive it in etcd (default 3 poll intervals)."""
        cluster = self.dashboard.cluster
        given = cluster.verdict_ttl_seconds if cluster is not None else None
        return given if given is not None else STALE_AFTER_INTERVALS * self.dashboard.poll_interval_seconds


def _check_region_name(name: str) -> str:
    if not isinstance(name, str) or not REGION_NAME.match(name):
        raise ValueError(f"{name!r} is not a region name (letters, digits, '.', '_', '-'; at most 63)")
    return name


def _normalise_base_url(region: str, url: str) -> str:
    if not isinstance(url, str):
        raise ValueError(f"base URL of {region} must be a string")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"base URL of {region} must start with http:// or https:// (got {url!r})")
    if not parts.hostname:
        raise ValueError(f"base URL of {region} has no host (got {url!r})")
    if parts.query or parts.fragment:
        raise ValueError(f"base URL of {region} must not carry a query or fragment (got {url!r})")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"base URL of {region} has an invalid port (got {url!r})") from None
    # A path prefix is kept: endpoints are appended to it, never resolved against the host's root.
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str | None = None) -> dict:
    """Parse config text into a mapping, or raise ConfigError saying where it fails."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"YAML does not parse: {where}{problem}"], source) from None
    if data is None:
        raise ConfigError(["the file is empty; it needs at least a deployment: block"], source)
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping of keys, not {type(data).__name__}"], source)
    return data


def _apply_env(data: dict, environ: Mapping[str, str]) -> list[str]:
    raw = environ.get(REGIONS_ENV)
    if raw is None:
        return []
    regions = [part.strip() for part in raw.split(",") if part.strip()]
    if not regions:
        return [f"{REGIONS_ENV}: is set but names no region (expected e.g. us-east-1,eu-west-1)"]
    deployment = data.get("deployment")
    if isinstance(deployment, dict):
        data["deployment"] = {**deployment, "regions": regions}
    return []


def _format_error(error: ErrorDetails) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown key (check its spelling; see the README for the keys)"
    if error["type"] == "missing":
        return f"{loc}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    secret = any(key in error["loc"] for key in ("auth", "webhooks", "targets"))
    shown = "" if secret or isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
    return f"{loc}: {message}{shown}"


def _cross_checks(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    deployment = settings.deployment
    problems = []
    if deployment.primary_region not in deployment.regions:
        problems.append(
            f"deployment.primary_region: {deployment.primary_region!r} is not among "
            f"deployment.regions {deployment.regions}"
        )
    for region in deployment.regions:
        if region not in deployment.region_base_urls:
            problems.append(f"deployment.region_base_urls: region {region!r} has no base URL")
    dash = settings.dashboard
    for region in dash.residency_pinned:
        if region not in deployment.regions:
            problems.append(f"dashboard.residency_pinned: {region!r} is not among deployment.regions")
    for region in dash.health.regions:
        if region not in deployment.regions:
            problems.append(f"dashboard.health.regions: {region!r} is not among deployment.regions")
    for region in dash.slo.regions:
        if region not in deployment.regions:
            problems.append(f"dashboard.slo.regions: {region!r} is not among deployment.regions")
    rules = [("dashboard.health", dash.health.default_rule)]
    rules += [(f"dashboard.health.regions.{region}", dash.health.rule_for(region)) for region in dash.health.regions]
    for key, rule in rules:
        both = sorted(code for code in rule.degraded_status_codes if rule.is_ok(code))
        if both:
            said = "in ok_status_codes" if rule.ok_status_codes is not None else "2xx, ok while ok_status_codes is null"
            problems.append(f"{key}: {both} cannot be both ok ({said}) and in degraded_status_codes")
    if dash.timeout_seconds >= dash.poll_interval_seconds:
        problems.append(
            f"dashboard.timeout_seconds: must be shorter than dashboard.poll_interval_seconds "
            f"({dash.timeout_seconds:g} >= {dash.poll_interval_seconds:g}), or cycles would overlap"
        )
    problems += _publish_checks(settings)
    problems += _cluster_checks(settings, environ)
    return problems


def _cluster_checks(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """The cluster block's keys that depend on each other, and its password's variable."""
    cluster = settings.dashboard.cluster
    if cluster is None:
        return []
    key, problems = "dashboard.cluster", []
    ttl, interval = cluster.verdict_ttl_seconds, settings.dashboard.poll_interval_seconds
    if ttl is not None and ttl <= interval:
        problems.append(f"{key}.verdict_ttl_seconds: must be longer than dashboard.poll_interval_seconds "
                        f"({ttl:g} <= {interval:g}), or every verdict lapses between two polls")
    if (cluster.username is None) != (cluster.password_env is None):
        problems.append(f"{key}: username and password_env go together (etcd authentication needs both)")
    if cluster.password_env is not None and not environ.get(cluster.password_env):
        # Named, never shown: the variable's value is the password.
        problems.append(f"{key}.password_env: the environment variable {cluster.password_env} is not set or empty")
    if (cluster.cert_file is None) != (cluster.key_file is None):
        problems.append(f"{key}: cert_file and key_file go together (a client certificate needs its key)")
    problems += _tls_file_checks(settings, cluster)
    if not cluster.enabled and any(getattr(cluster, k) is not None for k in ("username", "ca_file", "cert_file")):
        problems.append(f"{key}.etcd_endpoints: empty, so this is standalone mode and the etcd settings beside it "
                        "are not used; give the endpoints or remove the block")
    return problems


# Enough to find the PEM header of any certificate bundle or key file an operator would give.
TLS_FILE_READ_LIMIT = 1 << 20


def _tls_file_checks(settings: Settings, cluster: ClusterConfig) -> list[str]:
    """TLS to etcd: each file given exists, can be read and is PEM, and some endpoint uses https.
    Checked at start, so a typo is a config error, not a "cluster unreachable" banner later."""
    key, problems = "dashboard.cluster", []
    given = {name: getattr(cluster, name) for name in ("ca_file", "cert_file", "key_file")}
    for name, value in given.items():
        if value is None:
            continue
        path = settings.resolve_path(value)
        try:
            with open(path, "rb") as handle:
                head = handle.read(TLS_FILE_READ_LIMIT)
        except FileNotFoundError:
            problems.append(f"{key}.{name}: file {str(path)!r} does not exist")
            continue
        except OSError as exc:
            problems.append(f"{key}.{name}: file {str(path)!r} cannot be read ({exc.strerror or exc})")
            continue
        if b"-----BEGIN " not in head:  # the file's content is never shown: it may be a private key
            problems.append(f"{key}.{name}: file {str(path)!r} is not PEM (no '-----BEGIN' line)")
    if cluster.enabled and any(given.values()) and not any(u.startswith("https://") for u in cluster.etcd_endpoints):
        problems.append(f"{key}.etcd_endpoints: ca_file/cert_file/key_file are given but no endpoint is https://, "
                        "so TLS would not be used")
    return problems


def _publish_checks(settings: Settings) -> list[str]:
    """Publisher names unique, no two writers of one file, and region names an nginx map can hold."""
    problems = []
    names: set[str] = set()
    files = {settings.routing_file_path: "dashboard.routing_file"}
    for i, publisher in enumerate(settings.dashboard.publish):
        key = f"dashboard.publish.{i}"
        if publisher.name in names:
            problems.append(f"{key}.name: {publisher.name!r} is used by another publisher")
        names.add(publisher.name)
        for field in ("map_file", "read_only_map_file"):
            path = settings.resolve_path(getattr(publisher, field))
            if path in files:
                problems.append(f"{key}.{field}: {str(path)!r} is already written by {files[path]}")
            files[path] = f"{key}.{field}"
        if publisher.type == "nginx":
            for region in settings.deployment.regions:
                if region.lower() in NGINX_MAP_WORDS:
                    problems.append(f"{key}: region {region!r} cannot be a key of an nginx map "
                                    f"({', '.join(sorted(NGINX_MAP_WORDS))} are nginx's own words there)")
    return problems


def settings_from_mapping(
    data: dict, *, source: str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate an already parsed mapping (env overrides applied) into Settings."""
    environ = os.environ if environ is None else environ
    data = dict(data)
    problems = _apply_env(data, environ)
    if "source" in data:
        problems.append("source: unknown key (check its spelling; see the README for the keys)")
        data.pop("source")
    try:
        settings = Settings.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(problems + [_format_error(e) for e in exc.errors()], source) from None
    problems += _cross_checks(settings, environ)
    if problems:
        raise ConfigError(problems, source)
    return settings


def resolve_config_path(path: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file to read: --config, else $DASHBOARD_CONFIG, else ./config.yaml."""
    environ = os.environ if environ is None else environ
    return Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)


def load_settings(path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, parse and validate the config file; raise ConfigError naming every problem."""
    environ = os.environ if environ is None else environ
    config_path = resolve_config_path(path, environ)
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"config file {str(config_path)!r} does not exist (pass --config PATH or set {CONFIG_ENV})"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"config file {str(config_path)!r} cannot be read: {exc}"]) from None
    return settings_from_mapping(parse_yaml(text, str(config_path)), source=str(config_path), environ=environ)


def mask_url(url: str) -> str:
    """Hide a password carried in a URL's user part."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def mask_secret_url(url: str) -> str:
    """Scheme and host only: a webhook's path and query often carry its secret token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}/***"


def mask_target_url(url: str) -> str:
    """Scheme only: in an Apprise URL even the "host" is often the token (tgram://TOKEN/...)."""
    match = APPRISE_SCHEME.match(url)
    return f"{match.group(1).lower()}://***" if match else "***"


def quiet_apprise_logging() -> None:
    """Keep Apprise's log out of ours; call before importing it.

    At DEBUG and below Apprise logs target URLs with their tokens, and requests' urllib3 pool logs
    each request's path; the notifier logs its own masked line instead."""
    logging.getLogger("apprise").propagate = False
    pool = logging.getLogger("urllib3")
    if pool.level < logging.INFO:
        pool.setLevel(logging.INFO)


def apprise_accepts(url: str) -> bool:
    """Whether Apprise knows how to send to this URL. Imports Apprise: call only for a configured target."""
    quiet_apprise_logging()
    import apprise

    return apprise.Apprise.instantiate(url) is not None


def effective_config(settings: Settings) -> dict[str, Any]:
    """The settings as a plain mapping with defaults filled, env applied and secrets masked."""
    data = settings.model_dump(mode="json", exclude={"source"})
    auth = data["dashboard"]["auth"]
    for key in ("operators", "api_tokens"):
        auth[key] = {name: "*** (hash)" for name in auth[key]}
    for hook in data["dashboard"]["notifications"]["webhooks"]:
        hook["url"] = mask_secret_url(hook["url"])
    for target in data["dashboard"]["notifications"]["targets"]:
        target["url"] = mask_target_url(target["url"])
    data["dashboard"]["health"] = settings.dashboard.health.effective()
    data["deployment"]["region_base_urls"] = {
        region: mask_url(url) for region, url in data["deployment"]["region_base_urls"].items()
    }
    return data
