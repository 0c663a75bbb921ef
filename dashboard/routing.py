"""Routing overrides: safety rules, audit events, and the published routing table.

An override sends region R's new traffic to region T, R's existing sessions read-only or not.
Every change is checked on the state it would produce, written with its audit event in one
transaction that also bumps the table's version (so a change made against a stale view is a
conflict), and then published: to `dashboard.routing_file` and every router of `dashboard.publish`
(see `publish.py`), each publisher on its own, its outcome kept in the store for every process.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from . import health
from .config import Settings
from .control import ControlState, ControlUnavailable
from .model import NewEvent, Override, RoutingSnapshot
from .publish import (
    RETRY_BASE_SECONDS,
    RETRY_MAX_SECONDS,
    Outcome,
    Publisher,
    needs_retry,
    publish_all,
    publisher_status,
    publishers_for,
)
from .publish import write_routing_file as write_routing_file  # its old home; it lives with the other writers
from .status import current_windows, effective_states
from .store import Store
from .text import iso

log = logging.getLogger(__name__)

MAX_REASON_LENGTH = 500
MAX_EXPIRY_MINUTES = 7 * 24 * 60
# Rules force may skip: they are about health, which an operator may know better than the poller
# (a target in maintenance may be done with its work early: the operator who ran it knows).
HEALTH_RULES = frozenset({"target_unhealthy", "region_healthy", "target_in_maintenance", "region_disputed"})


class RoutingListener(Protocol):
    """Told of every committed routing change (the notifier)."""

    def routing_changed(self, kind: str, region: str, actor: str, reason: str, details: dict | None = None,
                        *, at: float | None = None) -> None: ...


class RoutingError(Exception):
    """A change that was not made. `rule` names why; `status` is the HTTP status it maps to."""

    status = 409

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


class BadRequest(RoutingError):
    status = 400


class UnknownRegionError(RoutingError):
    status = 404


class Conflict(RoutingError):
    """The change was prepared against a routing table that has changed since."""


class ClusterUnavailable(RoutingError):
    """Cluster mode, and etcd cannot be reached: the change is refused (break-glass: --local)."""

    status = 503


CLUSTER_UNAVAILABLE_MESSAGE = (
    "the cluster cannot be reached (etcd unreachable or without quorum), so routing changes are refused: an "
    "instance must not publish a table the others do not know. Break-glass, on this instance's host: "
    "`dashboard failover REGION --local --reason ...` changes this instance's published routing only, is "
    "recorded here, and is superseded by the cluster's table when the cluster returns")


@dataclass(frozen=True)
class Change:
    """A requested override, before the rules have seen it."""

    region: str
    target_region: str | None = None
    read_only: bool = True
    reason: str = ""
    expires_in_minutes: float | None = None
    confirm_healthy: bool = False
    force: bool = False


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise BadRequest("reason_required", "a reason is required: say why, for whoever reads the audit trail")
    # Counted as sent, before the whitespace is tidied: the limit the API document states.
    if len(reason) > MAX_REASON_LENGTH:
        raise BadRequest("reason_too_long", f"the reason is {len(reason)} characters; at most {MAX_REASON_LENGTH}")
    return " ".join(reason.split())


def _known(settings: Settings, region: Any, what: str) -> str:
    if not isinstance(region, str) or region not in settings.regions:
        raise UnknownRegionError(f"unknown_{what}",
                                 f"unknown {what.replace('_', ' ')} {region!r}; configured regions: "
                                 f"{', '.join(settings.regions)}")
    return region


def routing_table(settings: Settings, overrides: list[Override], version: int,
                  now: float | None = None) -> dict[str, Any]:
    """The effective routing table: for every configured region, who serves its new traffic."""
    now = time.time() if now is None else now
    by_region = {o["region"]: o for o in overrides}
    regions = {}
    for region in settings.regions:
        override = by_region.get(region)
        serving = override["target_region"] if override else region
        regions[region] = {
            "serving_region": serving,
            "base_url": settings.base_url(serving),
            "read_only": bool(override["read_only"]) if override else False,
            "override": None if override is None else {
                "target_region": override["target_region"],
                "read_only": bool(override["read_only"]),
                "reason": override["reason"],
                "actor": override["actor"],
                "since": iso(override["since"]),
                "until": iso(override["until"]) if override["until"] else None,
                "forced": bool(override["forced"]),
            },
        }
    return {
        "version": version,
        "generated_at": iso(now),
        "primary_region": settings.deployment.primary_region,
        "regions": regions,
    }


def current_table(settings: Settings, control: ControlState, now: float | None = None) -> dict[str, Any]:
    """The effective routing table as the control state has it now."""
    snap = control.routing()
    return routing_table(settings, snap.overrides, snap.version, now)


def _compact(overrides: list[Override]) -> dict[str, Any]:
    """The routing that matters for the audit trail: region -> (serving region, read-only)."""
    return {o["region"]: {"target_region": o["target_region"], "read_only": bool(o["read_only"])}
            for o in overrides}


def check_rules(settings: Settings, states: dict[str, str], overrides: list[Override],
                change: Change, in_maintenance: Collection[str] = (),
                disputed: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Every rule the change breaks, as (rule, message); structural rules first. `in_maintenance`:
    the regions a maintenance window covers now (failing one over is fine; failing over to one is not).
    `disputed`: regions that only some vantage points see down (cluster mode), which the others see
    serving."""
    region, target = change.region, change.target_region or settings.deployment.primary_region
    broken: list[tuple[str, str]] = []
    after = {o["region"]: o["target_region"] for o in overrides if o["region"] != region}
    after[region] = target
    if region == target:
        broken.append(("same_region", f"{region} cannot fail over to itself"))
    # Named before the chain rule, which such a change always breaks too: this says what is at stake.
    if all(r in after for r in settings.regions):
        broken.append(("no_serving_region", "the change would leave no region serving its own traffic"))
    if target in after:
        broken.append(("target_overridden", f"{target} is itself failed over to {after[target]}: "
                                            "no chains; fail over to a region that serves its own traffic"))
    chained = sorted(r for r, t in after.items() if t == region and r != region)
    if chained:
        broken.append(("target_overridden", f"{', '.join(chained)} already fail{'s' if len(chained) == 1 else ''} "
                                            f"over to {region}: fail {'it' if len(chained) == 1 else 'them'} "
                                            "back or elsewhere first (no chains)"))
    if region in settings.dashboard.residency_pinned and not change.read_only:
        broken.append(("residency_pinned", f"{region} is residency-pinned: its workspaces' writes cannot move "
                                           "to another region, so it may only fail over read-only"))
    target_state = states.get(target, health.UNKNOWN)
    if target_state in (health.DOWN, health.STALE, health.UNKNOWN):
        # A region never polled is no safer a target than one known to be failing.
        broken.append(("target_unhealthy", f"target {target} is {target_state}"
                                           + (" (never polled)" if target_state == health.UNKNOWN else "")))
    if target in in_maintenance:
        broken.append(("target_in_maintenance", f"target {target} is in maintenance: planned work may take it "
                                                 "through failing states on purpose"))
    if region in disputed and not change.confirm_healthy:
        broken.append(("region_disputed", f"{region} is down only from some vantage points and up from the others "
                                          "(a partition?): confirm that you mean to override a region that serves"))
    if states.get(region) == health.UP and not change.confirm_healthy:
        broken.append(("region_healthy", f"{region} is up and healthy: confirm that you mean to override a "
                                         "healthy region"))
    return broken


# How often a change is tried again when another writer changed the table between our read and
# our compare-and-set (the caller gave no expected version, so it wants the change on the latest).
MAX_COMMIT_ATTEMPTS = 5


@dataclass(frozen=True)
class _Commit:
    """One routing change ready to commit: its audit event and the override to put or delete."""

    event: NewEvent
    overrides: list[Override]  # the table's overrides once committed
    put: Override | None = None
    delete: str | None = None
    version: int = 0  # the table's version once committed

    def table(self) -> RoutingSnapshot:
        return RoutingSnapshot(sorted(self.overrides, key=lambda o: o["region"]), self.version)


def lapses_standalone(settings: Settings) -> Callable[[], bool]:
    """Who lapses expired overrides and windows unless told otherwise: standalone, any process;
    in cluster mode, no one but the leader (whose poll loop says so)."""
    standalone = settings.cluster is None
    return lambda: standalone


class Router:
    """Makes routing changes through the control state and publishes the table after each.

    `store` gives the region states the health rules look at (this instance's view); `control` holds
    the overrides, the version and the audit trail (the same SQLite store unless another backend is
    given). Every change reads a snapshot, checks the rules on it, and commits with a
    compare-and-set on the version it read: two writers can never both win on a stale view.
    """

    def __init__(self, settings: Settings, store: Store, *, control: ControlState | None = None,
                 notifier: RoutingListener | None = None, publishers: Sequence[Publisher] | None = None,
                 cluster_states: Callable[[float], tuple[dict[str, str], frozenset[str]]] | None = None) -> None:
        self.settings = settings
        self.store = store
        # The region states the health rules decide on: this instance's own view, or in cluster mode
        # the states the vantage points agree on and the disputed regions (cluster.Vantages.for_rules).
        self.cluster_states = cluster_states
        # Told the version every publisher of this instance has applied, after each publish (cluster
        # mode reports it to etcd, for the routing page's "v12 applied by ...").
        self.on_applied: Callable[[int], None] | None = None
        # Standalone mode: the control state lives in the same SQLite database as the states.
        self.control: ControlState = control if control is not None else store
        self.notifier = notifier  # told of every change once it is committed
        # The routing file and the configured routers; their outcomes go to this instance's store.
        self.publishers = list(publishers) if publishers is not None else publishers_for(settings)
        # Whether this process lapses expired overrides: any process standalone; in cluster mode only
        # the leader's poll loop, which sets this to its leadership (reads elsewhere leave them to it).
        self.lapses_here: Callable[[], bool] = lapses_standalone(settings)

    def regions_in_maintenance(self, now: float | None = None) -> set[str]:
        """The regions a maintenance window covers now, as the control state has them."""
        now = time.time() if now is None else now
        return set(current_windows(self.control.maintenance_windows(open_only=True), now))

    def _notify(self, kind: str, region: str, actor: str, reason: str, details: dict[str, Any], at: float) -> None:
        if self.notifier is not None:
            self.notifier.routing_changed(kind, region, actor, reason, details, at=at)

    def set_override(self, change: Change, *, actor: str, expected_version: int | None = None,
                     now: float | None = None) -> dict[str, Any]:
        """Fail a region over; returns the new routing table or raises RoutingError."""
        now = time.time() if now is None else now
        settings = self.settings
        region = _known(settings, change.region, "region")
        target = _known(settings, change.target_region or settings.deployment.primary_region, "target_region")
        reason = check_reason(change.reason)
        until = None
        if change.expires_in_minutes is not None:
            minutes = change.expires_in_minutes
            if (not isinstance(minutes, (int, float)) or isinstance(minutes, bool)
                    or not 1 <= minutes <= MAX_EXPIRY_MINUTES):
                raise BadRequest("bad_expiry", f"expires_in_minutes must be between 1 and {MAX_EXPIRY_MINUTES}")
            until = now + minutes * 60
        change = Change(region, target, bool(change.read_only), reason, change.expires_in_minutes,
                        bool(change.confirm_healthy), bool(change.force))

        def prepare(snap: RoutingSnapshot) -> _Commit:
            before = snap.overrides
            if self.cluster_states is not None:
                states, disputed = self.cluster_states(now)
            else:
                states, disputed = effective_states(settings, self.store, now), frozenset()
            broken = check_rules(settings, states, before, change, self.regions_in_maintenance(now), disputed)
            structural = [b for b in broken if b[0] not in HEALTH_RULES]
            if structural or (broken and not change.force):
                rule, message = (structural or broken)[0]
                if rule in ("target_unhealthy", "target_in_maintenance"):
                    message += " (break-glass: force skips this rule, and is recorded as forced)"
                raise RoutingError(rule, message)
            forced = bool(broken)  # force recorded only when it actually overrode a rule
            override = Override(region=region, target_region=target, read_only=change.read_only, reason=reason,
                                actor=actor, since=now, until=until, forced=forced)
            after = sorted([o for o in before if o["region"] != region] + [override], key=lambda o: o["region"])
            details = {"target_region": target, "read_only": change.read_only, "forced": forced,
                       "skipped_rules": [b[0] for b in broken], "until": iso(until) if until else None,
                       "version": snap.version + 1, "before": _compact(before), "after": _compact(after)}
            event = NewEvent(at=now, region=region, kind="failover", actor=actor, reason=reason, details=details)
            return _Commit(event, after, put=override)

        done = self._commit(expected_version, now, prepare)
        details = done.event.details or {}
        self._notify("failover", region, actor, reason, details, now)
        log.warning("event=failover region=%s target=%s read_only=%s forced=%s actor=%r version=%d",
                    region, target, change.read_only, details["forced"], actor, details["version"])
        return self.publish(now, committed=done.table())

    def clear_override(self, region: str, *, reason: Any, actor: str, expected_version: int | None = None,
                       now: float | None = None) -> dict[str, Any]:
        """Fail a region back: its new traffic returns to it."""
        now = time.time() if now is None else now
        region = _known(self.settings, region, "region")
        reason = check_reason(reason)

        def prepare(snap: RoutingSnapshot) -> _Commit:
            before = snap.overrides
            if not any(o["region"] == region for o in before):
                raise RoutingError("no_override", f"{region} has no routing override to clear")
            after = [o for o in before if o["region"] != region]
            details = {"version": snap.version + 1, "before": _compact(before), "after": _compact(after)}
            event = NewEvent(at=now, region=region, kind="failback", actor=actor, reason=reason, details=details)
            return _Commit(event, after, delete=region)

        done = self._commit(expected_version, now, prepare)
        self._notify("failback", region, actor, reason, done.event.details or {}, now)
        log.warning("event=failback region=%s actor=%r version=%d", region, actor, done.version)
        return self.publish(now, committed=done.table())

    def _commit(self, expected_version: int | None, now: float,
                prepare: Callable[[RoutingSnapshot], _Commit]) -> _Commit:
        """Read a snapshot, let `prepare` check the rules on it and say what to write, and commit
        with a compare-and-set on the version read. Someone committing in between: a caller who
        named the version they saw gets a conflict; otherwise the change is prepared again on the
        new snapshot (its rules checked again), a few times at most."""
        for _ in range(MAX_COMMIT_ATTEMPTS):
            snap = self.control.routing()
            self._check_version(expected_version, snap.version)
            commit = prepare(snap)
            try:
                version = self.control.commit_routing(snap.version, event=commit.event, now=now, put=commit.put,
                                                      delete=commit.delete)
            except ControlUnavailable as exc:
                log.error("event=routing_change_refused reason=cluster_unavailable error=%r", str(exc))
                raise ClusterUnavailable("cluster_unavailable", CLUSTER_UNAVAILABLE_MESSAGE) from None
            if version is not None:
                return replace(commit, version=version)
            self._lost_race(expected_version)
        raise Conflict("conflict", "the routing table kept changing while this change was made; try again")

    def lapse_expired(self, now: float | None = None) -> list[str]:
        """Clear overrides whose expiry has passed, each with a 'lapse' event; safe in any process
        (where `lapses_here` allows: in cluster mode, the leader)."""
        if not self.lapses_here():
            return []
        now = time.time() if now is None else now
        lapsed: list[tuple[str, dict[str, Any]]] = []
        for _ in range(MAX_COMMIT_ATTEMPTS * 4):
            snap = self.control.routing()
            expired = [o for o in snap.overrides if o["until"] is not None and o["until"] <= now]
            if not expired:
                break
            region = expired[0]["region"]
            version = snap.version + 1
            details = {"version": version, "before": _compact(snap.overrides),
                       "after": _compact([o for o in snap.overrides if o["region"] != region])}
            event = NewEvent(at=now, region=region, kind="lapse", actor="expiry", reason="override expired",
                             details=details)
            # Another process lapsing the same override at once loses the compare-and-set and
            # reads again: each lapse is recorded exactly once.
            try:
                committed = self.control.commit_routing(snap.version, event=event, now=now, delete=region)
            except ControlUnavailable as exc:  # lapsed once the cluster is back
                log.warning("event=lapse_deferred region=%s error=%r", region, str(exc))
                break
            if committed is not None:
                lapsed.append((region, details))
        for region, details in lapsed:
            self._notify("lapse", region, "expiry", "override expired", details, now)
        if lapsed:
            log.warning("event=override_lapsed regions=%s", ",".join(region for region, _ in lapsed))
            self.publish(now)
        return [region for region, _ in lapsed]

    def _check_version(self, expected_version: int | None, current: int) -> None:
        if expected_version is not None and expected_version != current:
            raise Conflict("conflict", f"the routing table changed since you looked (version {expected_version}, "
                                       f"now {current}): review the current routing and try again")

    def _lost_race(self, expected_version: int | None) -> None:
        """Someone committed between our read and our write: the caller's view is stale, or we retry."""
        if expected_version is not None:
            current = self.control.routing().version
            self._check_version(expected_version, current)

    def current_table(self, now: float | None = None) -> dict[str, Any]:
        return current_table(self.settings, self.control, now)

    def publish(self, now: float | None = None, committed: RoutingSnapshot | None = None) -> dict[str, Any]:
        """Apply the current table with every publisher (each on its own; failures are recorded, never
        raised: the change is already committed); returns the table. `committed`: the table a change
        of ours just committed, published as it is (no read back: the compare-and-set on the version
        makes it exactly the table at that version; a newer one follows through retry_publishers)."""
        if committed is None:
            table = self.current_table(now)
        else:
            table = routing_table(self.settings, committed.overrides, committed.version, now)
        self._publish(table, self.publishers)
        return table

    def retry_publishers(self, now: float | None = None, snapshot: RoutingSnapshot | None = None) -> list[Outcome]:
        """Apply the current table (or `snapshot`, just read) with each publisher that is behind it or
        failed last time, once its back-off has passed; the scheduler calls this every second.
        Returns what was tried."""
        now = time.time() if now is None else now
        # Read once: the version to compare and the table to apply.
        snap = self.control.routing() if snapshot is None else snapshot
        rows = self.store.publisher_rows()
        due = [p for p in self.publishers if needs_retry(rows.get(p.name), snap.version, now)]
        if not due:
            return []
        return self._publish(routing_table(self.settings, snap.overrides, snap.version, now), due)

    def published(self, version: int | None = None) -> list[dict[str, Any]]:
        """Every publisher's last outcome, and whether it is behind the table (at `version`, else now)."""
        version = self.control.routing().version if version is None else version
        return publisher_status(self.settings, self.store.publisher_rows(), version)

    def _publish(self, table: dict[str, Any], publishers: Sequence[Publisher]) -> list[Outcome]:
        outcomes = publish_all(publishers, table)
        at = time.time()
        for outcome in outcomes:
            try:
                if outcome.applied:
                    self.store.record_published(outcome.name, outcome.type, outcome.version, at)
                elif outcome.error is not None:
                    self.store.record_publish_failure(outcome.name, outcome.type, outcome.version, outcome.error, at,
                                                      retry_base_seconds=RETRY_BASE_SECONDS,
                                                      retry_max_seconds=RETRY_MAX_SECONDS)
            except sqlite3.Error as exc:  # the table is applied; only its record is missing
                log.error("event=publish_record_failed publisher=%s error=%r", outcome.name, str(exc))
        if self.on_applied is not None and outcomes:
            try:
                rows = self.store.publisher_rows()
                applied = min((rows[p.name]["version"] or 0) if p.name in rows else 0 for p in self.publishers)
                self.on_applied(applied)
            except Exception:  # the report is for people; the table is applied either way
                log.exception("event=applied_report_failed")
        return outcomes
