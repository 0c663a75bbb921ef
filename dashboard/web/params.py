"""Query parameters shared by pages and the API, each refused with a message naming it."""
from __future__ import annotations

from collections.abc import Mapping

from .. import charts
from ..config import Settings

MAX_EVENTS_PAGE = 500
# The largest id SQLite stores: a bigger number is a bad parameter, not an overflow in the database.
MAX_ID = 2**63 - 1
DEFAULT_EVENTS_PAGE = 50


class BadParameter(ValueError):
    """A query parameter that cannot be used; the message names it."""


class UnknownRegion(LookupError):
    """A region that is not in the configuration."""


def known_region(settings: Settings, region: str) -> str:
    if region not in settings.regions:
        raise UnknownRegion(f"unknown region {region!r}; configured regions: {', '.join(settings.regions)}")
    return region


def series_query(args: Mapping[str, str]) -> tuple[str, str]:
    metric = args.get("metric")
    if metric not in charts.METRICS:
        got = "missing" if metric is None else f"got {metric!r}"
        raise BadParameter(f"metric: must be one of {', '.join(charts.METRICS)} ({got})")
    window = args.get("window", charts.DEFAULT_WINDOW)
    if window not in charts.WINDOWS:
        raise BadParameter(f"window: must be one of {', '.join(charts.WINDOWS)} (got {window!r})")
    return metric, window


def _int_param(args: Mapping[str, str], name: str, default: int | None, low: int, high: int | None) -> int | None:
    raw = args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(f"{name}: must be a whole number (got {raw!r})") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadParameter(f"{name}: must be {bound} (got {value})")
    return value


def event_query(args: Mapping[str, str], settings: Settings) -> tuple[str | None, int, int | None]:
    """(region or None, limit, before event id or None) from ?region=&limit=&before=."""
    region = args.get("region") or None
    if region is not None:
        known_region(settings, region)
    limit = _int_param(args, "limit", DEFAULT_EVENTS_PAGE, 1, MAX_EVENTS_PAGE) or DEFAULT_EVENTS_PAGE
    before = _int_param(args, "before", None, 1, MAX_ID)
    return region, limit, before
