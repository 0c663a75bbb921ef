"""What the command line prints: tables of regions and routes, and changes of state as they happen.

Every string a region (or another user) supplied goes through `text.one_line` before it is
printed, so no escape sequence or control character reaches the operator's terminal."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from .model import UP, RegionReport, Transition
from .text import one_line


def print_transitions(transitions: Sequence[Transition]) -> None:
    for t in transitions:
        stamp = time.strftime("%H:%M:%S", time.localtime(t.at))
        print(f"{stamp}  {t.region:<16} {t.old_state:>8} -> {t.new_state:<8}  {one_line(t.reason)}", flush=True)


def print_regions(regions: list[RegionReport], as_json: bool, note: str = "") -> None:
    if as_json:
        payload: dict[str, Any] = {"regions": [r.as_dict() for r in regions]}
        if note:
            payload["note"] = note
        print(json.dumps(payload, indent=2))
        return
    print(format_table(regions))
    if note:
        print(f"note: {note}", file=sys.stderr)


def format_table(regions: list[RegionReport]) -> str:
    """A fixed-width table: region, state, latency, error rate, version, reason (with markers)."""
    rows = [("REGION", "STATE", "LATENCY", "ERR RATE", "VERSION", "REASON")]
    for r in regions:
        reason = r.reason
        if r.markers:
            reason += " [" + ", ".join(sorted(r.markers)) + "]"
        rows.append((
            r.region,
            r.state.upper() if r.state != UP else r.state,
            "-" if r.latency_ms is None else f"{r.latency_ms:.0f} ms",
            "-" if r.error_rate is None else f"{r.error_rate:.1%}",
            one_line(r.version or "-"),
            one_line(reason),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)) + "  " + row[5]
        for row in rows
    )


def print_routing(table: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(table, indent=2))
        return
    rows = [("REGION", "SERVED BY", "SESSIONS", "OVERRIDE")]
    for region, entry in table["regions"].items():
        o = entry["override"]
        until = f" until {o['until']}" if o is not None and o["until"] else ""
        note = "-" if o is None else (f"by {one_line(o['actor'])} since {o['since']}" + until
                                      + (" FORCED" if o["forced"] else "") + f": {one_line(o['reason'])}")
        rows.append((region, entry["serving_region"], "read-only" if entry["read_only"] else "writable", note))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"routing table version {table['version']}, generated {table['generated_at']}")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3])
