"""The values that cross layers: probe results, poll outcomes, region states, events, reports, rows.

Standard library only, so every layer (probes, evaluation, store, poller, pages, CLI) can share
them without importing one another: the pure evaluation never pulls in the network stack, and the
read side never pulls in the poller. Import-linter contracts in pyproject.toml keep it that way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

# -- region states -------------------------------------------------------------------------------

UNKNOWN, UP, DEGRADED, DOWN, STALE = "unknown", "up", "degraded", "down", "stale"
STATES = (UNKNOWN, UP, DEGRADED, DOWN, STALE)

# -- the two endpoints every region is polled on -------------------------------------------------

HEALTH = "health"
DEPLOYMENT = "deployment"
ENDPOINT_PATHS = {
    HEALTH: "/api/v1/system/health",
    DEPLOYMENT: "/api/v1/system/deployment",
}


# How much of an answer that is not JSON a probe keeps as text: enough for any health word, the
# failing lines of a Kubernetes /healthz and an error page's title; the evaluation never scans more.
TEXT_LIMIT = 4096


def declares_json(content_type: str) -> bool:
    """Whether a (lower-case, parameter-free) content type says the body is JSON."""
    return content_type == "application/json" or (content_type.startswith("application/")
                                                    and content_type.endswith("+json"))


@dataclass(frozen=True)
class ProbeResult:
    """One request to one endpoint of one region: what came back, or why nothing usable did.

    A complete answer of any status keeps what its body said (`body` or `text`), so the evaluation
    can read a failing answer's failing components; a redirect, a body over the size cap, a timeout
    or a transport error keeps nothing but its reason."""

    region: str
    endpoint: str
    started_at: float  # unix time the request was sent
    ok: bool  # a complete 2xx answer within the deadline and the size cap (the body may be text)
    status_code: int | None
    latency_ms: float | None  # until the whole body arrived, or until the failure
    reason: str  # empty when ok; "HTTP 503" for a complete answer that is not 2xx
    body: Any = None  # the parsed JSON, when the answer was JSON (any status)
    content_type: str = ""  # lower case, without parameters
    text: str = ""  # the decoded body clipped to TEXT_LIMIT bytes, when it was not JSON; empty when JSON parsed
    answered: bool = False  # the whole answer arrived, whatever its status (always so when ok)
    timed_out: bool = False  # no complete answer within the deadline: a verdict made by the clock


# -- evaluation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthReading:
    """What a health probe says: pass, warn or fail, why, and any error rate the region reports."""

    verdict: str
    reason: str
    reported_error_rate: float | None = None


@dataclass(frozen=True)
class DeploymentReading:
    """What a region says it is, and where that disagrees with our view of the fleet."""

    ok: bool
    reason: str = ""
    region: str | None = None
    version: str | None = None
    misrouted: bool = False
    drift: tuple[str, ...] = ()
    payload: Any = None


@dataclass(frozen=True)
class PollOutcome:
    """One region's verdict for one cycle, before the state machine."""

    region: str
    at: float
    failed: bool
    reason: str
    latency_ms: float | None
    degraded_reasons: tuple[str, ...] = ()
    reported_error_rate: float | None = None
    deployment: DeploymentReading = field(default_factory=lambda: DeploymentReading(ok=False))
    # Slow, but measured while the poller was starved: no slowness verdict either way this cycle.
    latency_held: bool = False
    # The health probe ran out of time while the poller was starved: neither a success nor a
    # failure. The state machine keeps the region as it was, and the error-rate window leaves it out.
    held: bool = False


@dataclass(frozen=True)
class RegionState:
    """The stored state of a region; `revision` makes every update a compare-and-set."""

    region: str
    state: str = UNKNOWN
    reason: str = "not polled yet"
    since: float | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_poll_at: float | None = None
    revision: int = 0


@dataclass(frozen=True)
class Transition:
    """A region's change of state: the row every change leaves in the event history."""

    region: str
    old_state: str
    new_state: str
    reason: str
    at: float


@dataclass(frozen=True)
class WindowCounts:
    """A region's health polls in the error-rate window, as stored before this cycle."""

    failed: int = 0
    polls: int = 0


@dataclass(frozen=True)
class Sample:
    """One stored probe: the row `samples` keeps for charts, error rates and the probe table."""

    ts: float
    region: str
    endpoint: str
    ok: bool
    http_status: int | None
    latency_ms: float | None
    reason: str
    reported_error_rate: float | None = None


@dataclass(frozen=True)
class NewEvent:
    """An event to store: a change of state, a new version, or an audited routing action."""

    at: float
    region: str | None
    kind: str
    reason: str
    old_state: str | None = None
    new_state: str | None = None
    actor: str | None = None
    details: dict[str, Any] | None = None


# What a region says it is, kept in columns beside its payload; bounded, however big the payload.
_IDENTITY_TEXT_LIMIT = 200
_IDENTITY_REGIONS_LIMIT = 200


@dataclass(frozen=True)
class ReportedIdentity:
    """What a region's deployment answer says it is: its name, and its view of the fleet."""

    region: str | None = None
    primary_region: str | None = None
    regions: tuple[str, ...] | None = None

    @classmethod
    def of(cls, payload: Any) -> ReportedIdentity:
        if not isinstance(payload, dict):
            return cls()

        def text(value: Any) -> str | None:
            return value[:_IDENTITY_TEXT_LIMIT] if isinstance(value, str) else None

        regions = payload.get("regions")
        return cls(
            region=text(payload.get("region")),
            primary_region=text(payload.get("primary_region")),
            regions=tuple(str(r)[:_IDENTITY_TEXT_LIMIT] for r in regions[:_IDENTITY_REGIONS_LIMIT])
            if isinstance(regions, list) else None,
        )


@dataclass(frozen=True)
class RegionUpdate:
    """Everything one cycle changes in one region's row, written with a compare-and-set."""

    state: RegionState
    expected_revision: int
    latency_ms: float | None
    reported_error_rate: float | None
    markers: dict[str, Any]
    deployment: Any = None  # the payload the region sent, when its deployment probe answered
    deployment_at: float | None = None  # when it answered; None: keep the stored payload and version
    version: str | None = None  # the region's version as known after the cycle
    window: WindowCounts = WindowCounts()


@dataclass(frozen=True)
class CycleResult:
    """The pure evaluation of one cycle: what to store, and the changes it found."""

    at: float
    samples: tuple[Sample, ...]
    updates: tuple[RegionUpdate, ...]
    events: tuple[NewEvent, ...]
    transitions: tuple[Transition, ...]


# -- what the poller reports ---------------------------------------------------------------------


@dataclass(frozen=True)
class RegionReport:
    """A region as one cycle left it: what the table and the JSON of `poll --once` show."""

    region: str
    state: str
    reason: str
    latency_ms: float | None
    error_rate: float | None
    version: str | None
    markers: dict[str, Any]
    last_poll_at: float | None
    since: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "state": self.state,
            "reason": self.reason,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "error_rate": self.error_rate,
            "version": self.version,
            "markers": self.markers,
            "last_poll_at": self.last_poll_at,
            "since": self.since,
        }


@dataclass
class CycleReport:
    """What one run of the poller did: the regions as it left them, and its changes of state."""

    started_at: float
    duration_seconds: float
    regions: list[RegionReport]
    transitions: list[Transition] = field(default_factory=list)
    stored: bool = True
    note: str = ""
    results: list[ProbeResult] = field(default_factory=list)  # this cycle's probes, for metrics
    lag_ms: float | None = None  # the probe event loop's worst lag during the cycle
    cpu_starved_ms: float | None = None  # how long the probe thread waited for a CPU (Linux)
    overloaded: bool = False  # lag past the bound: this cycle's latencies made no slow verdict
    slo_changes: list[SloAlertChange] = field(default_factory=list)  # SLO alerts started or ended


@dataclass(frozen=True)
class SloAlertChange:
    """An SLO alert of a region starting or ending (dashboard.slo), for events and notices."""

    region: str
    severity: str  # "page" or "ticket"
    started: bool
    windows: tuple[str, ...]  # the rule's long and short window
    burn_rates: dict[str, float | None]
    threshold: float
    at: float
    since: float  # when the alert started (== at for a start)
    old_level: str  # the region's gravest firing severity before ("ok" for none), and after
    new_level: str

    @property
    def reason(self) -> str:
        rates = ", ".join(f"{w} {_rate_text(self.burn_rates.get(w))}" for w in self.windows)
        if self.started:
            return f"SLO {self.severity} alert: burn rate {rates} (both over {self.threshold:g})"
        minutes = max(0, round((self.at - self.since) / 60))
        lasted = f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"
        return f"SLO {self.severity} alert ended after {lasted}: burn rate {rates}"


def _rate_text(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.1f}x"


# -- shared control state ------------------------------------------------------------------------


class Override(TypedDict):
    """A routing override: region's new traffic goes to target_region."""

    region: str
    target_region: str
    read_only: bool
    reason: str
    actor: str
    since: float
    until: float | None
    forced: bool


@dataclass(frozen=True)
class RoutingSnapshot:
    """The overrides in force and the routing table's version, read together."""

    overrides: list[Override]
    version: int


@dataclass(frozen=True)
class LeaseResult:
    """The answer to a request for the poller lease: who holds it now, and until when."""

    acquired: bool
    holder: str
    expires_at: float


# -- rows the read side gets ---------------------------------------------------------------------


class EventRow(TypedDict):
    id: int
    at: float
    region: str | None
    kind: str
    old_state: str | None
    new_state: str | None
    reason: str | None
    actor: str | None
    details: dict[str, Any] | None


class RegionRow(TypedDict):
    """What is stored about a region, as status reads need it: everything but the payload itself
    (`StateQueries.region_deployment` reads that, for the region page only)."""

    region: str
    state: str
    reason: str | None
    since: float | None
    consecutive_failures: int
    consecutive_successes: int
    last_poll_at: float | None
    revision: int
    latency_ms: float | None
    reported_error_rate: float | None
    version: str | None
    reported_region: str | None  # what the region's last deployment answer says it is
    reported_primary_region: str | None
    reported_regions: list[str] | None  # its view of the fleet
    deployment_at: float | None
    markers: dict[str, Any]


class SampleRow(TypedDict):
    """One stored probe, as the region page's probe table and the API show it."""

    id: int
    ts: float
    region: str
    endpoint: str
    ok: int
    http_status: int | None
    latency_ms: float | None
    reason: str | None
    reported_error_rate: float | None


class PublisherRow(TypedDict):
    """What one publisher last did, as stored: the newest table version it applied, its last error."""

    name: str
    type: str
    version: int | None  # None: it never applied a table
    applied_at: float | None
    error: str | None  # the last attempt's error; None once an attempt succeeds
    failed_at: float | None
    consecutive_failures: int
    failures_total: int
    next_attempt_at: float | None  # back-off: when the scheduler may try it again


class RegionStatus(TypedDict):
    """A region as readers see it now: stale applied, error rates, markers, the override in force."""

    region: str
    state: str
    reason: str
    since: float | None
    last_poll_at: float | None
    latency_ms: float | None
    error_rate_5m: float | None
    error_rate_1h: float | None
    reported_error_rate: float | None
    version: str | None
    markers: dict[str, Any]
    reported_region: str | None
    reported_primary_region: str | None
    reported_regions: list[str] | None
    deployment_at: float | None
    override: Override | None
