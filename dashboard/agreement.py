"""Agreement between vantage points: the cluster's state of a region from every instance's verdict.

Pure: verdicts in, one state out. A region is `down` only when at least `down_quorum` of the live
vantage points (instances whose verdicts have not lapsed) see it down. When some do but fewer, it is
`degraded` and `disputed`, with a reason that says who sees what: that is the shape of a partition
between one vantage point and the region, and no one should fail a healthy region over because of
it. With no live vantage point at all the region is `stale`: nobody is watching it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .model import DEGRADED, DOWN, STALE, UNKNOWN, UP

# The order of severity when no quorum decides: the worst live view that is not a lone `down` wins.
_SEVERITY = {UP: 1, DEGRADED: 3, DOWN: 4}


@dataclass(frozen=True)
class Verdict:
    """One instance's latest view of one region."""

    instance: str
    state: str
    reason: str
    at: float | None  # when that instance last polled the region

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "at": self.at}


@dataclass(frozen=True)
class Agreed:
    """The cluster's state of a region, and the views it was agreed from."""

    state: str
    reason: str
    disputed: bool
    vantage: dict[str, Verdict]


def quorum(down_quorum: str | int, live: int) -> int:
    """How many live vantage points must see a region down: a majority of them, or a fixed count."""
    if down_quorum == "majority":
        return live // 2 + 1
    return int(down_quorum)


def _names(verdicts: list[Verdict]) -> str:
    return ", ".join(sorted(v.instance for v in verdicts))


def agree(vantage: Mapping[str, Verdict], down_quorum: str | int) -> Agreed:
    """The cluster's state of one region from the live vantage points' verdicts (instance -> verdict)."""
    views = dict(sorted(vantage.items()))
    # A stale view is a vantage point that stopped polling: it has no verdict to count.
    live = [v for v in views.values() if v.state not in (UNKNOWN, STALE)]
    if not views or (not live and any(v.state == STALE for v in views.values())):
        return Agreed(STALE, "no vantage point has a fresh verdict on this region", False, views)
    if not live:
        return Agreed(UNKNOWN, "not polled yet by any vantage point", False, views)
    down = [v for v in live if v.state == DOWN]
    need = quorum(down_quorum, len(live))
    if down and len(down) >= need:
        where = "every vantage point" if len(down) == len(live) else _names(down)
        return Agreed(DOWN, f"down from {where}: {down[0].reason}", False, views)
    if down:
        others: dict[str, list[Verdict]] = {}
        for v in live:
            if v.state != DOWN:
                others.setdefault(v.state, []).append(v)
        seen = "; ".join(f"{state} from {_names(vs)}" for state, vs in sorted(others.items()))
        reason = (f"down from {_names(down)} only; {seen} ({len(down)} of {len(live)} live vantage points see it "
                  f"down, {need} needed): a partition between them and the region?")
        return Agreed(DEGRADED, reason, True, views)
    worst = max(live, key=lambda v: _SEVERITY.get(v.state, 0))
    if worst.state == UP:
        return Agreed(UP, worst.reason, False, views)
    same = [v for v in live if v.state == worst.state]
    where = "every vantage point" if len(same) == len(live) else _names(same)
    return Agreed(worst.state, f"{worst.reason} (from {where})", False, views)
