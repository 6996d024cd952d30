"""Keyed fingerprints of a cohort's identifiers, so later layers can *recognise* an identifier without holding one.

Why: the report's PHI guard is the last check before a document leaves the hospital, but the identifiers never
leave the cohort layer, so the guard was always called with nothing to look for. The build therefore writes
``identifier_fingerprints.json``: HMAC-SHA256 (under the pseudonym key, truncated) of each identifier token -
patient IDs, the labels CSV's patient column, accession numbers, birth dates, study and instance UIDs, and
each pair of adjacent name parts (order-free: "DOE^JOHN" and "John Doe" match; one common word never does).
Without the key the file reveals nothing (a plain hash of an MRN could be reversed by hashing every MRN);
with it, :func:`find_identifier` fingerprints every token of a text the same way and looks it up.

This module is separate from :mod:`medvision.cohort.identifiers` on purpose: that one *holds* identifiers
during a build; this one writes and reads only their fingerprints.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from medvision._atomic import atomic_write_text
from medvision.cohort.pseudonym import KEY_ENV

__all__ = ["FINGERPRINTS_FILE", "IdentifierFingerprints", "write_fingerprints"]

FINGERPRINTS_FILE = "identifier_fingerprints.json"
_SINGLE = ("patient_id", "csv_patient", "accession_number", "birth_date", "sop_uid", "study_uid")
_TOKEN = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_WORD = re.compile(r"[a-z0-9]+")
_CHECK = "medvision identifier fingerprints v1"


def _digest(key: bytes, token: str) -> str:
    return hmac.new(key, f"id\x00{token}".encode(), hashlib.sha256).hexdigest()[:20]


def _distinctive(token: str) -> bool:
    """Long enough not to match ordinary report text: a short number (patient "101") would match a count."""
    return len(token) >= 6 if token.isdigit() else len(token) >= 3


def _pair(a: str, b: str) -> str:
    return " ".join(sorted((a, b)))


def _tokens_of_rows(rows: pd.DataFrame) -> set[str]:
    tokens: set[str] = set()
    for col in _SINGLE:
        if col in rows:
            tokens.update(t for t in (str(v).strip().lower() for v in rows[col].dropna()) if _distinctive(t))
    if "patient_name" in rows:
        for name in rows["patient_name"].dropna():
            parts = [p for p in _WORD.findall(str(name).lower()) if len(p) >= 2]
            tokens.update(_pair(a, b) for a, b in zip(parts, parts[1:]))
    return tokens


def write_fingerprints(out: Path, rows: pd.DataFrame, key: bytes) -> Path:
    """Write ``out/identifier_fingerprints.json`` for the identifier columns of ``rows`` (the build's private
    index, before pseudonymisation). Sorted, so the file says nothing about row order."""
    doc = {
        "check": _digest(key, _CHECK),
        "fingerprints": sorted({_digest(key, t) for t in _tokens_of_rows(rows)}),
    }
    return atomic_write_text(Path(out) / FINGERPRINTS_FILE, json.dumps(doc, indent=0), private=True)


class IdentifierFingerprints:
    """The fingerprints of one cohort and the key they were made with.

    Use :meth:`for_cohort` (which finds the key the way the build recorded it, without ever creating one).
    """

    def __init__(self, key: bytes, fingerprints: Iterable[str]) -> None:
        self._key = key
        self._set = frozenset(fingerprints)

    def __len__(self) -> int:
        return len(self._set)

    @classmethod
    def for_cohort(cls, cohort_dir: str | Path) -> tuple[IdentifierFingerprints | None, str]:
        """``(fingerprints, "")`` or ``(None, why not)`` when the cohort has none or its key is not here."""
        cohort_dir = Path(cohort_dir)
        path = cohort_dir / FINGERPRINTS_FILE
        if not path.exists():
            return None, f"{path} is missing (a cohort built before identifier fingerprints existed)"
        doc = json.loads(path.read_text())
        card = json.loads((cohort_dir / "cohort.json").read_text())
        key = _recorded_key(str(card.get("pseudonym_key") or ""))
        if key is None or not hmac.compare_digest(_digest(key, _CHECK), doc["check"]):
            return None, "the pseudonym key this cohort was built with is not available here"
        return cls(key, doc["fingerprints"]), ""

    def find_identifier(self, text: str) -> bool:
        """Whether ``text`` holds a fingerprinted token (a whole token, or two adjacent name parts)."""
        low = text.lower()
        candidates = set(_TOKEN.findall(low))
        words = _WORD.findall(low)
        candidates.update(words)
        candidates.update(_pair(a, b) for a, b in zip(words, words[1:]))
        return any(_digest(self._key, c) in self._set for c in candidates if _distinctive(c))


def _recorded_key(source: str) -> bytes | None:
    """The key from where the build recorded it came (``$MEDVISION_PSEUDONYM_KEY`` or a key file), or None."""
    try:
        if source == f"${KEY_ENV}":
            value = os.environ.get(KEY_ENV)
            return bytes.fromhex(value.strip()) if value else None
        path = Path(source)
        return bytes.fromhex(path.read_text().strip()) if source and path.is_file() else None
    except (ValueError, OSError):
        return None
