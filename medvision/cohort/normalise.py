"""Subgroup values as the manifest stores them: one spelling per meaning, ``unknown`` for anything missing.

Sex, age band, site and CSV subgroup columns are what fairness tables group by, so a value must read the same
whether it came from a DICOM header or a CSV.
"""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["UNKNOWN", "age_band", "category", "given", "sex", "site"]

UNKNOWN = "unknown"


def sex(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    v = str(value).strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}.get(v, v or UNKNOWN)


def age_band(value: object, edges: list[int]) -> str:
    try:
        age = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return UNKNOWN
    if math.isnan(age) or age < 0:
        return UNKNOWN
    if age < edges[0]:
        return f"<{edges[0]}"
    for lo, hi in zip(edges, edges[1:]):
        if lo <= age < hi:
            return f"{lo}-{hi - 1}"
    return f"{edges[-1]}+"


def category(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    s = str(value).strip()
    if not s:
        return UNKNOWN
    try:
        f = float(s)
        if f.is_integer():
            return str(int(f))
    except ValueError:
        pass
    return s


def site(row: pd.Series, how: str) -> str:
    if row.get("csv_site") is not None:
        return category(row["csv_site"])
    parts = {
        "institution": [row["institution"]],
        "manufacturer": [row["manufacturer"]],
        "institution+manufacturer": [row["institution"], row["manufacturer"]],
    }[how]
    parts = [str(p) for p in parts if p]
    return "/".join(parts) if parts else UNKNOWN


def given(value: object) -> str:
    """A header value, or "" when absent: photos have no UIDs, and pandas turns missing ones into NaN (truthy)."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)
