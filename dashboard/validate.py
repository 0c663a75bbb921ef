"""Rollout validation: check one region end to end before (or after) it joins the fleet.

`dashboard validate REGION` and the region page's "Validate" button run the same checks, in order:
a base URL is configured, both endpoints answer at the HTTP level, the deployment endpoint answers
as REGION, its fleet view (regions and primary) matches ours, its health passes, and its version
matches the fleet's. A check that cannot run because an earlier one failed is skipped, and a
skipped check counts as not passed: a rollout is validated only when every check passed.

REGION need not be in `deployment.regions` yet: validating a region before adding it is the point,
so only `deployment.region_base_urls` must name it. Nothing here writes to the store.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from . import health
from .config import REGION_NAME, DeploymentConfig, Settings, mask_url
from .probes import DEPLOYMENT, HEALTH, Prober, ProbeResult
from .store import Store
from .text import clip, one_line

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

BASE_URL_CONFIGURED = "base_url_configured"
REACHABLE = "reachable"
ANSWERS_AS_REGION = "answers_as_region"
FLEET_VIEW_MATCHES = "fleet_view_matches"
HEALTH_PASSES = "health_passes"
VERSION_MATCHES_FLEET = "version_matches_fleet"
# In the order they run; the titles are for people (the region page lists them).
CHECK_TITLES = {
    BASE_URL_CONFIGURED: "A base URL is configured",
    REACHABLE: "Both endpoints answer",
    ANSWERS_AS_REGION: "Answers as this region",
    FLEET_VIEW_MATCHES: "Its fleet view matches ours",
    HEALTH_PASSES: "Health passes",
    VERSION_MATCHES_FLEET: "Its version matches the fleet's",
}


class InvalidRegionName(ValueError):
    """A REGION argument that cannot be a region name at all (a usage error, not a failed check)."""


@dataclass(frozen=True)
class Check:
    """One step of the rollout checklist: passed or not, and why, in words."""

    name: str
    ok: bool
    detail: str
    skipped: bool = False  # could not run because an earlier check failed (counts as not ok)

    @property
    def status(self) -> str:
        """'pass', 'fail' or 'skip': for templates and the text output."""
        return "skip" if self.skipped else "pass" if self.ok else "fail"

    @property
    def title(self) -> str:
        return CHECK_TITLES.get(self.name, self.name)


def _passed(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def _failed(name: str, detail: str) -> Check:
    return Check(name, False, detail)


def _skipped(name: str, why: str) -> Check:
    return Check(name, False, f"skipped: {why}", skipped=True)


def check_region_name(region: str) -> str:
    """Return the name, or raise InvalidRegionName saying what a region name may contain."""
    if not isinstance(region, str) or not REGION_NAME.match(region):
        raise InvalidRegionName(
            f"{clip(region, 70)!r} is not a region name (letters, digits, '.', '_', '-'; at most 63)"
        )
    return region


def validate_region(
    settings: Settings, region: str, *, store: Store | None = None, prober: Prober | None = None
) -> list[Check]:
    """Run the rollout checklist against REGION and return every check, in order.

    The fleet's version comes from `store` (what the poller last saw) when given, else from probing
    the other configured regions now, at the same time as REGION. A prober is made (and closed)
    when none is given. Raises InvalidRegionName for a name that cannot be a region's.
    """
    check_region_name(region)
    base_url = settings.deployment.region_base_urls.get(region)
    if base_url is None:
        # Config validation gives every listed region a base URL, so this is a region not listed yet.
        first = _failed(BASE_URL_CONFIGURED, f"no base URL for {region!r} in deployment.region_base_urls "
                                             "(add one there to validate the region before listing it)")
        return [first] + [_skipped(name, "no base URL to probe") for name in list(CHECK_TITLES)[1:]]

    others = [r for r in settings.regions if r != region]
    probe_others = store is None
    targets = [(region, base_url)] + ([(r, settings.base_url(r)) for r in others] if probe_others else [])
    own_prober = prober is None
    if prober is None:
        prober = Prober(timeout_seconds=settings.dashboard.timeout_seconds,
                        max_body_bytes=settings.dashboard.max_body_bytes,
                        max_connections=max(100, 2 * len(targets)))
    try:
        results = prober.probe_all(targets)
    finally:
        if own_prober:
            prober.close()
    by_key = {(r.region, r.endpoint): r for r in results}

    if probe_others:
        fleet_versions = _probed_versions(settings, others, by_key)
        source = "probed now"
    else:
        assert store is not None
        stored = store.stored_versions()
        fleet_versions = {r: version for r in others if (version := stored.get(r))}
        source = "as the poller last stored them"

    checks = [_passed(BASE_URL_CONFIGURED, mask_url(base_url))]
    health_result, deployment_result = by_key[(region, HEALTH)], by_key[(region, DEPLOYMENT)]
    checks.append(_reachable(health_result, deployment_result))

    expected = _expected_fleet(settings, region)
    if deployment_result.status_code is None:
        why = "the deployment endpoint did not answer (see reachable)"
        checks += [_skipped(ANSWERS_AS_REGION, why), _skipped(FLEET_VIEW_MATCHES, why)]
        reading = None
    else:
        reading = health.read_deployment(deployment_result, region, expected)
        checks.append(_answers_as(region, reading))
        checks.append(_fleet_view(settings, region, reading, expected))

    if health_result.status_code is None:
        checks.append(_skipped(HEALTH_PASSES, "the health endpoint did not answer (see reachable)"))
    else:
        checks.append(_health(settings, region, health_result))

    if reading is None:
        checks.append(_skipped(VERSION_MATCHES_FLEET, "the deployment endpoint did not answer (see reachable)"))
    elif not reading.ok:
        checks.append(_skipped(VERSION_MATCHES_FLEET, "no readable deployment answer (see answers_as_region)"))
    elif reading.misrouted:
        checks.append(_skipped(VERSION_MATCHES_FLEET,
                               f"the answer came from {clip(reading.region, 40)!r}, not {region!r}"))
    else:
        checks.append(_version(reading, fleet_versions, source))
    return checks


def _probed_versions(
    settings: Settings, others: list[str], by_key: dict[tuple[str, str], ProbeResult]
) -> dict[str, str]:
    """Versions the other configured regions report right now (misrouted or unreadable answers skipped)."""
    versions = {}
    for other in others:
        reading = health.read_deployment(by_key[(other, DEPLOYMENT)], other, settings.deployment)
        if reading.ok and not reading.misrouted and reading.version:
            versions[other] = reading.version
    return versions


def _expected_fleet(settings: Settings, region: str) -> DeploymentConfig:
    """Our view of the fleet as REGION should see it: with REGION added when it is not listed yet."""
    ours = settings.deployment
    if region in ours.regions:
        return ours
    return ours.model_copy(update={"regions": [*ours.regions, region]})


def _reachable(health_result: ProbeResult, deployment_result: ProbeResult) -> Check:
    parts, ok = [], True
    for result in (health_result, deployment_result):
        if result.status_code is not None:
            latency = "" if result.latency_ms is None else f" in {result.latency_ms:.0f} ms"
            parts.append(f"{result.endpoint} answered HTTP {result.status_code}{latency}")
        else:
            ok = False
            parts.append(f"{result.endpoint} did not answer: {result.reason}")
    return Check(REACHABLE, ok, "; ".join(parts))


def _answers_as(region: str, reading: health.DeploymentReading) -> Check:
    if not reading.ok:
        return _failed(ANSWERS_AS_REGION, reading.reason)
    if reading.misrouted:
        return _failed(ANSWERS_AS_REGION,
                       f"answers as {clip(reading.region, 40)!r}, not {region!r}: "
                       "its base URL reaches another region (misrouted)")
    return _passed(ANSWERS_AS_REGION, f"answers as {region!r}")


def _fleet_view(
    settings: Settings, region: str, reading: health.DeploymentReading, expected: DeploymentConfig
) -> Check:
    if not reading.ok:
        return _skipped(FLEET_VIEW_MATCHES, "no readable deployment answer (see answers_as_region)")
    if reading.misrouted:
        return _skipped(FLEET_VIEW_MATCHES,
                        f"the answer came from {clip(reading.region, 40)!r}, not {region!r}")
    payload = reading.payload
    problems = list(reading.drift)
    # read_deployment only compares what is present; a rollout check needs both to be said.
    if not isinstance(payload.get("regions"), list):
        problems.insert(0, "does not report its \"regions\" list")
    if not isinstance(payload.get("primary_region"), str):
        problems.append("does not report its \"primary_region\"")
    note = ""
    if region not in settings.regions:
        note = f" (ours plus {region!r}, which is not in deployment.regions yet)"
    if problems:
        return _failed(FLEET_VIEW_MATCHES, "; ".join(problems) + note)
    return _passed(FLEET_VIEW_MATCHES,
                   f"regions {', '.join(expected.regions)} and primary {expected.primary_region!r} "
                   f"match ours{note}")


def _health(settings: Settings, region: str, result: ProbeResult) -> Check:
    reading = health.read_health(result, settings.dashboard.health.rule_for(region))
    latency = "" if result.latency_ms is None else f", {result.latency_ms:.0f} ms"
    if reading.verdict == health.WARN:
        return _failed(HEALTH_PASSES, f"{reading.reason}: a warning is not a pass for a rollout")
    if reading.verdict != health.PASS:
        return _failed(HEALTH_PASSES, reading.reason)
    threshold = settings.dashboard.degraded_error_rate
    if reading.reported_error_rate is not None and reading.reported_error_rate > threshold:
        return _failed(HEALTH_PASSES, f"healthy, but reports error rate {reading.reported_error_rate:.1%} "
                                      f"over {threshold:.1%}")
    return _passed(HEALTH_PASSES, reading.reason + latency)


def _version(reading: health.DeploymentReading, fleet_versions: dict[str, str], source: str) -> Check:
    counts = Counter(fleet_versions.values())
    if not counts:
        said = f"reports version {reading.version}" if reading.version else "reports no version"
        return _passed(VERSION_MATCHES_FLEET, f"{said}; no fleet version known to compare")
    ranked = counts.most_common()
    summary = ", ".join(f"{v} on {n}" for v, n in ranked)
    top = [v for v, n in ranked if n == ranked[0][1]]
    fleet = f"the fleet's ({summary}, {source})"
    if not reading.version:
        return _failed(VERSION_MATCHES_FLEET, f"reports no version; cannot match {fleet}")
    if reading.version in top:
        # On a tie (mid-rollout), any of the most common versions is one the fleet runs, and this
        # region joining on it settles the majority: the dashboard would not mark it as skewed.
        tie = " (no single majority: the fleet is mid-rollout)" if len(top) > 1 else ""
        return _passed(VERSION_MATCHES_FLEET, f"version {reading.version} matches {fleet}{tie}")
    want = " or ".join(top)
    return _failed(VERSION_MATCHES_FLEET, f"version {reading.version} differs from {want}, {fleet}")


def all_passed(checks: list[Check]) -> bool:
    return bool(checks) and all(c.ok and not c.skipped for c in checks)


def format_checks(region: str, checks: list[Check]) -> str:
    """The CLI's text: one line per check (PASS/FAIL/SKIP, name, why), then a verdict line."""
    width = max((len(c.name) for c in checks), default=0)
    lines = [f"{c.status.upper():<4}  {c.name:<{width}}  {one_line(c.detail)}" for c in checks]
    failed = [c.name for c in checks if not c.ok and not c.skipped]
    skipped = sum(c.skipped for c in checks)
    if all_passed(checks):
        lines.append(f"{region}: PASSED all {len(checks)} checks")
    else:
        verdict = f"{region}: FAILED {len(failed)} of {len(checks)} checks ({', '.join(failed)})"
        if skipped:
            verdict += f"; {skipped} skipped"
        lines.append(verdict)
    return "\n".join(lines)


def checks_as_json(region: str, checks: list[Check]) -> dict[str, Any]:
    """{"region", "ok", "checks": [{name, ok, skipped, detail}]}: `--json` and any API use this."""
    return {
        "region": region,
        "ok": all_passed(checks),
        "checks": [{"name": c.name, "ok": c.ok, "skipped": c.skipped, "detail": c.detail} for c in checks],
    }


def cmd_validate(settings: Settings, args: argparse.Namespace) -> int:
    """`dashboard validate REGION [--json]`: 0 every check passed, 1 any did not, 2 not a region name.

    The fleet's version is probed now rather than read from the database: the CLI then needs no
    poller to have run, and never creates or locks a database.
    """
    try:
        checks = validate_region(settings, args.region)
    except InvalidRegionName as exc:
        print(f"dashboard validate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "json", False):
        print(json.dumps(checks_as_json(args.region, checks), indent=2))
    else:
        print(format_checks(args.region, checks))
    return EXIT_OK if all_passed(checks) else EXIT_FAILED
