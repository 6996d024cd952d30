"""The display blocks every report section is made of (paragraphs, tables of pre-formatted strings, figures) and
the number formatting they share: every number is formatted here, so the template only lays out strings."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["DASH", "estimate", "figure", "num", "para", "table", "text"]

DASH = "—"


# -- formatting -----------------------------------------------------------------------------------


def num(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return DASH if x is None else str(x)
    return DASH if math.isnan(v) else f"{v:.{digits}f}"


def estimate(v: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    s = num(v, digits)
    if s == DASH or num(lo) == DASH or num(hi) == DASH:
        return s
    sep = "–" if float(lo) >= 0 else " to "  # an en dash between negative numbers reads as a minus sign
    return f"{s} ({num(lo, digits)}{sep}{num(hi, digits)})"


def text(x: Any) -> str:
    return DASH if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def table(caption: str, headers: list[str], rows: Iterable[list[str]], numeric_from: int = 1) -> dict:
    return {
        "kind": "table",
        "caption": caption,
        "headers": headers,
        "rows": [list(r) for r in rows],
        "numeric_from": numeric_from,
    }


def para(content: str) -> dict:
    return {"kind": "p", "text": content}


def figure(uri: str, alt: str, caption: str) -> dict:
    return {"kind": "figure", "uri": uri, "alt": alt, "caption": caption}
