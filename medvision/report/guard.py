"""A last line of defence against identifiers in a report.

The cohort build already replaces identifiers with pseudonyms, so a report context should never hold a patient name,
ID or birth date. Reports leave the hospital, though, so before rendering we check anyway: the caller passes the
identifiers it knows (or planted canaries) and every text value in the context - strings, dict keys and values,
DataFrame column names and text cells - is searched for them, case-insensitively. A hit stops the render and names
the field, never the value (the error message itself must not leak it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from medvision.report.context import ReportError

__all__ = ["ForbiddenValueError", "check_fingerprints", "check_forbidden"]


class ForbiddenValueError(ReportError):
    """A context value contains a forbidden string (e.g. a patient name). The message names the field only."""


def _texts(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Yield (field path, text) for every piece of text reachable from ``value``."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _texts(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _texts(k, f"{path} (key)")
            yield from _texts(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _texts(v, f"{path}[{i}]")
    elif isinstance(value, pd.DataFrame):
        yield from _frame_texts(value, path)
    # numbers, arrays and image bytes carry no text


def _frame_texts(df: pd.DataFrame, path: str) -> Iterator[tuple[str, str]]:
    for col in df.columns:
        yield f"{path} (column names)", str(col)
    if not isinstance(df.index, pd.RangeIndex):
        for i, v in enumerate(df.index):
            yield f"{path}.index[{i}]", str(v)
    for col in df.columns:
        s = df[col]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            continue
        for row, v in zip(range(len(s)), s.to_numpy()):
            if isinstance(v, (str, np.str_)) or (v is not None and not isinstance(v, (float, int, np.generic))):
                yield f"{path}[row {row}, column {col!r}]", str(v)


def check_forbidden(context: BaseModel, forbidden: Iterable[str]) -> None:
    """Raise if any text in ``context`` contains one of ``forbidden`` (case-insensitive substring match).

    Args:
        context: a report context (any pydantic model tree holding strings, dicts, lists and DataFrames).
        forbidden: identifiers that must never appear (patient names, IDs, birth dates, planted canaries).

    Raises:
        ForbiddenValueError: naming the first field that holds one; the value itself is not repeated.
        ReportError: a forbidden string shorter than 3 characters (it would match ordinary text).
    """
    needles: list[str] = []
    for f in forbidden:
        f = str(f).strip()
        if len(f) < 3:
            raise ReportError(
                f"forbidden string #{len(needles) + 1} is shorter than 3 characters; such a "
                "string matches ordinary text, so pass full identifiers"
            )
        needles.append(f.casefold())
    if not needles:
        return
    for path, text in _texts(context, ""):
        folded = text.casefold()
        for i, needle in enumerate(needles):
            if needle in folded:
                raise ForbiddenValueError(
                    f"refusing to render: field {path} contains forbidden string #{i + 1} (an identifier); "
                    "remove it from the context - reports must carry pseudonymous ids only"
                )


def check_fingerprints(context: BaseModel, fingerprints: Any) -> None:
    """Raise if any text in ``context`` holds one of the cohort's identifiers, recognised by its keyed fingerprint.

    The report layer never holds the identifiers themselves; the cohort build leaves their fingerprints
    (:class:`medvision.cohort.fingerprints.IdentifierFingerprints`), which match whole tokens and pairs of
    adjacent name parts.

    Raises:
        ForbiddenValueError: naming the first field that holds one; the value itself is not repeated.
    """
    for path, text in _texts(context, ""):
        if fingerprints.find_identifier(text):
            raise ForbiddenValueError(
                f"refusing to render: field {path} contains an identifier of the cohort's patients (recognised by "
                "its fingerprint); remove it (titles, class names, paths in the pipeline) - reports must carry "
                "pseudonymous ids only"
            )
