"""Subgroup values as the manifest stores them: one spelling per meaning, ``unknown`` for anything missing.

Sex, age band, site and CSV subgroup columns are what fairness tables group by, so a value must read the same
whether it came from a DICOM header or a CSV: two spellings of one meaning would split one group in two.

The rules, applied to every value from either source (and to the values a spec names, so a named site or
class is compared with what the build stores):

* surrounding white space is removed;
* a missing value, an empty string or a placeholder for "not known" (:data:`MISSING`: ``unknown``, ``unk``,
  ``n/a``, ``na``, ``none``, ``null``, ``nan``, ``?``, ``-``, in any case) becomes ``unknown``;
* sex is ``M``, ``F`` or ``O`` (``male``/``female``/``other`` in any case map to these; DICOM's ``U`` and
  any other value are ``unknown``);
* a whole number written as a float (``3.0``) is written as an integer (``3``), so a CSV column read by
  pandas and a header value agree;
* every other value keeps its spelling and case (``Vienna`` and ``vienna`` stay different sites: the
  spec's name must match, and a check suggests the close spelling when it does not).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

__all__ = ["MISSING", "UNKNOWN", "age_band", "category", "given", "sex", "site"]

UNKNOWN = "unknown"
#: Spellings of "not known", compared in lower case: all become :data:`UNKNOWN`.
MISSING = frozenset({"", "unknown", "unk", "n/a", "na", "none", "null", "nan", "?", "-"})
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}


def sex(value: object) -> str:
    """``M``, ``F``, ``O`` or ``unknown``: DICOM's PatientSex vocabulary, whichever source the value came from."""
    v = category(value)
    return UNKNOWN if v == UNKNOWN else _SEX.get(v.upper(), UNKNOWN)


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
    """A subgroup, site or class value as the manifest stores it (the module's rules)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    s = str(value).strip()
    if s.lower() in MISSING:
        return UNKNOWN
    try:
        f = float(s)
        if f.is_integer():
            return str(int(f))
    except ValueError:
        pass
    return s


def site(row: pd.Series, how: str, pseudonym: Callable[[str, str], str] | None = None) -> str:
    """The site a row belongs to: the CSV's site column when given, else from the header as ``how`` says;
    ``institution_pseudonym`` needs ``pseudonym`` (the cohort's keyed pseudonymiser) so no hospital is named."""
    if row.get("csv_site") is not None:
        return category(row["csv_site"])
    if how == "institution_pseudonym":
        if pseudonym is None:
            raise ValueError("site_from: institution_pseudonym needs the cohort's pseudonymiser")
        institution = given(row["institution"])
        return pseudonym("site", institution) if institution else UNKNOWN
    parts = {
        "institution": [row["institution"]],
        "manufacturer": [row["manufacturer"]],
        "institution+manufacturer": [row["institution"], row["manufacturer"]],
    }[how]
    parts = [category(p) for p in parts if p]
    parts = [p for p in parts if p != UNKNOWN]
    return "/".join(parts) if parts else UNKNOWN


def given(value: object) -> str:
    """A header value, or "" when absent: photos have no UIDs, and pandas turns missing ones into NaN (truthy)."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)
