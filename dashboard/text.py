"""Text for people: remote text made safe and short enough to show, durations and times."""
from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

# Terminal control sequences, removed whole so no part of one reaches a terminal: CSI (ESC [ ... or
# 0x9b ...), OSC (ESC ] ... up to BEL or ST, e.g. a window title or a hyperlink), the DCS, SOS, PM
# and APC strings (up to ST), and any other ESC plus one character.
_TERMINAL_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -~]?"
)
_LINE_BREAKS = "\t\n\r\v\f\x85\u2028\u2029"


def clip(text: Any, limit: int = 80) -> str:
    """Whitespace collapsed to single spaces, cut to `limit` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: Any) -> str:
    """Remote text made safe to show on one line, in a terminal or a page: terminal escape
    sequences removed, line breaks and other spaces as a space, and every other character that
    does not print (control characters, bidi overrides and isolates, other format characters) made
    visible as its escape, e.g. `\\u202e`, so it can neither forge lines, drive a terminal nor
    reorder the text around it."""
    text = _TERMINAL_SEQUENCES.sub("", str(text))
    return "".join(ch if ch.isprintable() else _visible(ch) for ch in text)


def _visible(ch: str) -> str:
    if ch in _LINE_BREAKS or unicodedata.category(ch) == "Zs":
        return " "
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


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
