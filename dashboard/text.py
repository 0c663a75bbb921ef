"""Text for people: remote text made safe and short enough to show, durations and times."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def clip(text: Any, limit: int = 80) -> str:
    """Whitespace collapsed to single spaces, cut to `limit` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str) -> str:
    """Unprintable characters as spaces: remote text must not forge lines or terminal escapes."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def format_duration(seconds: float) -> str:
    """A duration as people say it: '45 s', '12 min', '3 h 5 min', '4 d'."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d"


def iso(ts: float) -> str:
    """A unix time as ISO 8601 in UTC, to the second: '2026-12-01T20:30:00Z'."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
