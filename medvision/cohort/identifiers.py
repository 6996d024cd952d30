"""Patient identifiers inside the cohort layer: the tokens we know of, the paths that spell them, the scrubber.

Identifiers are used here to *check* outputs (paths, quarantine reasons) and never written anywhere.
"""

from __future__ import annotations

import pandas as pd

from medvision.cohort.spec import CohortSpec

__all__ = ["CohortBuildError", "check_paths", "identifier_set", "scrub"]


class CohortBuildError(RuntimeError):
    """The cohort cannot be built as specified; the message says what to change."""


def _identifier_tokens(row: pd.Series) -> list[str]:
    toks = [row.get("patient_id"), row.get("csv_patient"), row.get("accession_number")]
    name = row.get("patient_name") or ""
    toks += [part for part in str(name).replace(" ", "^").split("^")]
    return [str(t).lower() for t in toks if t is not None and len(str(t)) >= 3]


def check_paths(rows: pd.DataFrame, spec: CohortSpec) -> None:
    """Refuse to write relative paths that spell out a patient's identifiers."""
    if not spec.record_paths or rows.empty:
        return
    leaks = _count_leaks(rows)
    if leaks:
        raise CohortBuildError(
            f"{leaks} image path(s) contain a patient identifier (PatientID, PatientName or the labels CSV's "
            "patient column) in a folder or file name. The manifest records relative paths, so it would carry "
            "them. Set `record_paths: false` in the cohort spec (`--no-record-paths` on the command line; "
            "paths are then kept out of every output), "
            "or rename the folders."
        )


def _count_leaks(rows: pd.DataFrame) -> int:
    n = 0
    for _, row in rows.iterrows():
        path = row["relpath"].lower()
        if any(t in path for t in _identifier_tokens(row)):
            n += 1
    return n


def identifier_set(rows: pd.DataFrame) -> set[str]:
    toks: set[str] = set()
    for _, row in rows.iterrows():
        toks.update(_identifier_tokens(row))
        toks.update(str(v).lower() for v in (row.get("birth_date"), row.get("sop_uid"), row.get("study_uid")) if v)
    return toks


def scrub(text: str, identifiers: set[str]) -> str:
    """Library messages can quote header values; no identifier we know of survives into a reason."""
    low = text.lower()
    for tok in identifiers:
        while tok in low:
            i = low.index(tok)
            text, low = text[:i] + "[redacted]" + text[i + len(tok) :], low[:i] + "[redacted]" + low[i + len(tok) :]
    return text
