"""What the commands print: aligned plain-text tables, ages, rates, and JSON."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, TextIO

#: ANSI colours of a table cell, used only on a terminal (and not under $NO_COLOR).
COLOURS = {"red": "31", "green": "32", "yellow": "33", "dim": "2"}


def use_colour(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (stdout by default) is a terminal that takes colours."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    colours: Optional[Dict[int, Dict[str, str]]] = None,
    indent: str = "",
) -> str:
    """The rows under their headers, columns aligned (two spaces apart), as one string.

    Args:
        headers: The column names.
        rows: The cells of each row (any value; shown with ``str()``).
        colours: For column ``n``, a colour name (see :data:`COLOURS`) per
            cell text; applied only on a terminal.
    """
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[n]) for row in cells) for n in range(len(headers))]
    paint = colours if colours and use_colour() else {}
    lines = []
    for index, row in enumerate(cells):
        parts = []
        for n, text in enumerate(row):
            padded = text if n == len(row) - 1 else text.ljust(widths[n])
            colour = paint.get(n, {}).get(text) if index else None
            if colour is not None:
                padded = f"\033[{COLOURS[colour]}m{text}\033[0m" + padded[len(text):]
            parts.append(padded)
        lines.append(indent + "  ".join(parts).rstrip())
    return "\n".join(lines)


def pairs(items: Sequence[Sequence[Any]], indent: str = "") -> str:
    """``name  value`` lines, the values aligned."""
    if not items:
        return ""
    width = max(len(str(name)) for name, _ in items)
    return "\n".join(f"{indent}{str(name).ljust(width)}  {_cell(value)}".rstrip()
                     for name, value in items)


def age(seconds: Optional[float]) -> str:
    """``1.2s ago``, ``3m ago``, ``2h ago``, ``4d ago``; ``gone`` for None."""
    if seconds is None:
        return "gone"
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def rate(value: Optional[float]) -> str:
    """Messages per second with one decimal, ``-`` when unknown."""
    return "-" if value is None else f"{value:.1f}"


def dumps(value: Any, pretty: bool = False) -> str:
    """``value`` as JSON text (non-ASCII kept); indented when ``pretty``."""
    if pretty:
        return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def print_json(value: Any) -> None:
    """Print ``value`` as JSON on stdout, indented on a terminal."""
    isatty = getattr(sys.stdout, "isatty", None)
    print(dumps(value, pretty=bool(isatty and isatty())))


def one_line(text: str, limit: int = 0) -> str:
    """``text`` with its line breaks and tabs made spaces, cut to ``limit`` characters (0: not cut)."""
    flat = " ".join(str(text).split())
    if limit and len(flat) > limit:
        return flat[:limit - 3] + "..."
    return flat


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return one_line(str(value))


def lines(items: List[str]) -> None:
    """Print each item on its own line."""
    for item in items:
        print(item)
