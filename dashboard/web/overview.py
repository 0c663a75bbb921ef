"""How the overview lays out a fleet of any size: the regions that need a look first, the rest after.

At 200 regions a card per region is a wall in which a down region hides. So each region falls in
the first attention class it matches, most urgent first, and is shown as a full card in that
order; a region in no class is fine and, in a large fleet, a compact tile. The classes are also the
overview's filters and its counts bar.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import health
from ..model import RegionStatus


@dataclass(frozen=True)
class AttentionClass:
    """A kind of region an on-call engineer must look at: its filter name, its words, who is in it."""

    name: str  # the filter's value and the tag the page filters on (also a CSS hook)
    label: str  # the words on its filter button
    matches: Callable[[RegionStatus], bool]


# Most urgent first: a region is listed under the first class it matches. Adding a class is one line.
ATTENTION_CLASSES: tuple[AttentionClass, ...] = (
    AttentionClass("down", "down", lambda r: r["state"] == health.DOWN),
    AttentionClass("stale", "stale", lambda r: r["state"] == health.STALE),
    AttentionClass("degraded", "degraded", lambda r: r["state"] == health.DEGRADED),
    AttentionClass("unknown", "not polled yet", lambda r: r["state"] == health.UNKNOWN),
    AttentionClass("overridden", "overridden", lambda r: r["override"] is not None),
    AttentionClass("maintenance", "in maintenance", lambda r: r.get("maintenance") is not None),
)
# With more regions than this, the fine ones are compact tiles: full cards no longer fit a screen,
# and a small fleet loses nothing by showing every card in full.
COMPACT_ABOVE = 12
ALL = "all"
ATTENTION = "attention"
FINE = health.UP  # the filter for regions in no class: a fine region is up, with nothing to say


@dataclass(frozen=True)
class ListedRegion:
    """A region as the overview lists it: its status, its class (None: fine), its filter tags."""

    status: RegionStatus
    attention: AttentionClass | None
    tags: str  # space-separated filter names it answers to: its state, each class it matches, "attention"


@dataclass(frozen=True)
class FilterChoice:
    """One button of the counts bar: what it shows, and how many regions that is now."""

    name: str
    label: str
    count: int


@dataclass(frozen=True)
class FleetLayout:
    """The overview's regions: those needing attention (most urgent first), then the fine ones."""

    attention: list[ListedRegion]
    fine: list[ListedRegion]
    compact: bool  # the fine ones as tiles
    filters: list[FilterChoice]


def attention_class(region: RegionStatus) -> AttentionClass | None:
    """The first (most urgent) class a region falls in, or None when it is fine."""
    return next((c for c in ATTENTION_CLASSES if c.matches(region)), None)


def lay_out(regions: list[RegionStatus]) -> FleetLayout:
    """Order the fleet for the overview: by attention class, then in config order; count each filter."""
    rank = {c.name: i for i, c in enumerate(ATTENTION_CLASSES)}
    attention: list[ListedRegion] = []
    fine: list[ListedRegion] = []
    counts = dict.fromkeys([c.name for c in ATTENTION_CLASSES] + [FINE], 0)
    for r in regions:
        matched = [c.name for c in ATTENTION_CLASSES if c.matches(r)]
        tags = list(dict.fromkeys([r["state"], *matched, *([ATTENTION] if matched else [])]))
        for tag in tags:
            if tag in counts:
                counts[tag] += 1
        first = attention_class(r)
        (attention if first else fine).append(ListedRegion(r, first, " ".join(tags)))
    attention.sort(key=lambda item: rank[item.attention.name] if item.attention else len(rank))
    filters = [FilterChoice(ALL, "all", len(regions)), FilterChoice(ATTENTION, "need attention", len(attention))]
    filters += [FilterChoice(c.name, c.label, counts[c.name]) for c in ATTENTION_CLASSES]
    filters.append(FilterChoice(FINE, "up", counts[FINE]))
    return FleetLayout(attention, fine, len(regions) > COMPACT_ABOVE, filters)
