"""Making text that came from elsewhere safe and short enough to show."""
from __future__ import annotations

from typing import Any


def clip(text: Any, limit: int = 80) -> str:
    """Whitespace collapsed to single spaces, cut to `limit` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str) -> str:
    """Unprintable characters as spaces: remote text must not forge lines or terminal escapes."""
    return "".join(ch if ch.isprintable() else " " for ch in text)
