"""Patient identifiers inside the cohort layer: the tokens we know of, the paths that spell them, the scrubber.

Identifiers are used here to *check* outputs (paths, quarantine reasons, log lines) and never written anywhere.

An identifier matches only as a whole token: the characters either side must not be letters or digits. So patient
``364`` is found in ``364/ct/1.dcm`` and ``scan_364.dcm`` but not in ``3d4364c0.jpeg``, and the surname ``Doe`` is
found in ``DOE^JANE`` but not in "does". Matching substrings instead refuses harmless hashed file names and mangles
ordinary words in messages.

How short an identifier may be depends on what a match does. A log line or quarantine reason that loses a word is
still readable, so scrubbing removes name parts from two characters up (``LI^WU``, ``NG``) and a whole name in its
usual spellings (``DOE^J``, ``J DOE``), initials included. A path check that matches refuses the build, so paths
are checked for identifiers of three characters and more, as before (a folder ``ct`` must not stop a study because a
patient is called Ct).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

import pandas as pd

from medvision.cohort.spec import CohortSpec
from medvision.errors import MedvisionError

__all__ = [
    "CohortBuildError",
    "IdentifyingPathsError",
    "TokenSet",
    "check_copied_values",
    "check_paths",
    "identifier_set",
    "name_tokens",
    "redact_path",
    "scrub",
    "token_pattern",
]

#: Shorter values (initials, "1", "42") would match ordinary text: identifiers that short refuse no path.
MIN_TOKEN = 3
#: Name parts this long are scrubbed from text on their own (shorter ones, initials, only inside a whole name).
MIN_NAME_PART = 2
#: Redacted paths quoted in an error: enough to find the folder, never a full listing.
_EXAMPLES = 5


class CohortBuildError(MedvisionError, RuntimeError):
    """The cohort cannot be built as specified; the message says what to change."""


class IdentifyingPathsError(CohortBuildError):
    """Image paths spell a patient identifier; ``offending`` holds them redacted, so a caller that cannot offer
    ``record_paths: false`` (``predict``, whose DICOM results find their sources by path) can give its own fix."""

    def __init__(self, message: str, offending: str) -> None:
        super().__init__(message)
        self.offending = offending


class TokenSet:
    """Identifiers matched as whole tokens in any text, in time linear in the text, however many are known.

    Text is cut into runs of letters and digits; a match is one run or a sequence of runs joined by the text's
    own separators (``MV-SYNTH-0001``, a UID's dots) that equals a known identifier, case-insensitively. A regex
    alternation of every identifier in a 100 000-image cohort would take seconds to compile and to apply to each
    log line; a set lookup per run does not.
    """

    _RUN = re.compile(r"[^\W_]+")  # letters and digits, accented ones too (MÜLLER is one run, not M + LLER)

    def __init__(self, tokens: Iterable[str] = (), min_length: int = MIN_TOKEN) -> None:
        self._tokens: set[str] = set()
        self._parts = 1
        self.min_length = min_length
        self.update(tokens)

    def update(self, tokens: Iterable[str]) -> None:
        for t in tokens:
            t = _EDGES.sub("", str(t)).lower() if t else ""
            if len(t) >= self.min_length and t not in self._tokens:
                self._tokens.add(t)
                self._parts = max(self._parts, len(self._RUN.findall(t)))

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Non-overlapping ``(start, end)`` of every identifier in ``text``, longest match first at each start."""
        runs = [(m.start(), m.end()) for m in self._RUN.finditer(text)]
        out: list[tuple[int, int]] = []
        i = 0
        while i < len(runs):
            for j in range(min(len(runs), i + self._parts) - 1, i - 1, -1):
                if text[runs[i][0] : runs[j][1]].lower() in self._tokens:  # (lower() may change a length)
                    out.append((runs[i][0], runs[j][1]))
                    i = j
                    break
            i += 1
        return out

    def search(self, text: str) -> bool:
        return bool(self.spans(text))

    def sub(self, replacement: str, text: str) -> str:
        for start, end in reversed(self.spans(text)):
            text = text[:start] + replacement + text[end:]
        return text


_EDGES = re.compile(r"^[\W_]+|[\W_]+$")


def token_pattern(tokens: Iterable[str], min_length: int = MIN_TOKEN) -> TokenSet | None:
    """A :class:`TokenSet` of ``tokens`` (``None`` when none is long enough to check)."""
    found = TokenSet(tokens, min_length)
    return found or None


def _identifier_tokens(row: pd.Series) -> list[str]:
    """IDs (three characters and more), each name part (two and more) and the whole name as people write it."""
    ids = [row.get("patient_id"), row.get("csv_patient"), row.get("accession_number")]
    toks = [str(t).lower() for t in ids if t is not None and t == t and len(str(t)) >= MIN_TOKEN]
    name = row.get("patient_name")
    if name is not None and name == name:
        toks += name_tokens(str(name))
    return toks


def name_tokens(name: str) -> list[str]:
    """A DICOM person name (``FAMILY^GIVEN^MIDDLE``) as tokens: each part of two characters and more, and the whole
    name as DICOM, "given family", "family given" and "family, given" write it, so ``DOE^J`` and ``J. Doe`` are
    matched although ``J`` alone is not."""
    parts = [p for p in re.split(r"[\^ ,.]+", name.strip().lower()) if p]
    toks = [p for p in parts if len(p) >= MIN_NAME_PART]
    if len(parts) > 1:
        given = " ".join(parts[1:])
        toks += [name.strip().lower(), f"{given} {parts[0]}", f"{parts[0]} {given}", f"{parts[0]}, {given}"]
    return toks


def redact_path(path: str, pattern: TokenSet) -> str:
    """``site0/MRN0042/axial/file-7.dcm`` -> ``…/<patient>/…/file-7.dcm``: the identifying parts replaced, the
    folders between them elided, the file name kept (with any identifier in it replaced too)."""
    parts = PurePosixPath(path).parts
    out: list[str] = []
    for i, part in enumerate(parts):
        redacted = pattern.sub("<patient>", part)
        if redacted != part or i == len(parts) - 1:
            out.append(redacted)
        elif not out or out[-1] != "…":
            out.append("…")
    return "/".join(out)


def check_paths(rows: pd.DataFrame, spec: CohortSpec, root: str | None = None) -> None:
    """Refuse a cohort name, or relative paths and an images root to be written, that spell a patient identifier.

    The name is checked always (it names the output folder and every run); paths only when they are recorded
    (``record_paths``). Of the root, the last two folder names are checked: the default cohort name comes from them.

    Raises:
        CohortBuildError: naming the number of such paths and a few of them in redacted form.
    """
    if rows.empty:
        return
    everyone = token_pattern(identifier_set(rows, uids=False))
    if everyone is not None and everyone.search(spec.name):
        raise CohortBuildError(
            f"the cohort name {redact_path(spec.name, everyone)!r} spells a patient identifier (it is taken from the "
            "images folder's name unless given); name the cohort with `name:` in the spec or `--name`"
        )
    if not spec.record_paths:
        return
    offending: list[str] = []
    tail = "/".join(PurePosixPath(root).parts[-2:]) if root else ""
    if tail and everyone is not None and everyone.search(tail):
        offending.append("the images folder " + redact_path(tail, everyone))
    for path, toks in zip(rows["relpath"], [_identifier_tokens(r) for _, r in rows.iterrows()]):
        pattern = _row_pattern(toks)
        if pattern is not None and pattern.search(path):
            offending.append(redact_path(path, pattern))
    if offending:
        shown = "; ".join(offending[:_EXAMPLES])
        more = f" and {len(offending) - _EXAMPLES} more" if len(offending) > _EXAMPLES else ""
        found = (
            f"{len(offending)} image path(s) contain a patient identifier (PatientID, PatientName, AccessionNumber "
            f"or the labels CSV's patient column) in a folder or file name: {shown}{more}"
        )
        raise IdentifyingPathsError(
            f"{found}. The manifest and card record paths, so they would carry them. Set `record_paths: false` in "
            "the cohort spec (`medvision cohort build --no-record-paths`; paths are then kept out of every output), "
            "or rename the folders.",
            found,
        )


_ROW_PATTERNS: dict[tuple[str, ...], TokenSet | None] = {}


def _row_pattern(toks: list[str]) -> TokenSet | None:
    """Patterns per identifier tuple, cached: the images of one patient share them."""
    key = tuple(sorted(toks))
    if key not in _ROW_PATTERNS:
        if len(_ROW_PATTERNS) > 10_000:
            _ROW_PATTERNS.clear()
        _ROW_PATTERNS[key] = token_pattern(toks)
    return _ROW_PATTERNS[key]


def identifier_set(rows: pd.DataFrame, uids: bool = True) -> set[str]:
    """Every identifier token of ``rows`` (ids, name parts, accession numbers; birth dates and UIDs with ``uids``)."""
    toks: set[str] = set()
    for _, row in rows.iterrows():
        toks.update(_identifier_tokens(row))
        if uids:
            extra = (row.get("birth_date"), row.get("sop_uid"), row.get("study_uid"), row.get("series_uid"))
            toks.update(str(v).lower() for v in extra if v and v == v)
    return toks


def _copied_columns(rows: pd.DataFrame, spec: CohortSpec) -> dict[str, str]:
    """The columns the build copies verbatim from the labels CSV into the manifest and card -> the spec key."""
    lab = spec.labels
    if lab is None:
        return {}
    copied = {
        f"sub__{name}": f"labels.subgroup_columns.{name} (CSV column {col!r})"
        for name, col in lab.subgroup_columns.items()
    }
    if lab.site_column:
        copied["csv_site"] = f"labels.site_column (CSV column {lab.site_column!r})"
    if len(lab.label_columns) == 1:
        copied["label"] = f"labels.label_columns (CSV column {lab.label_columns[0]!r})"
    return {c: key for c, key in copied.items() if c in rows}


def check_copied_values(rows: pd.DataFrame, spec: CohortSpec) -> None:
    """Refuse CSV values that the build copies verbatim (subgroups, the site column, labels) when they are patient
    identifiers of this cohort.

    Why: a column's *name* can say it holds identifiers (``patient_id``), which the spec refuses; a neutral name
    (``code``) cannot, yet a subgroup copies every value into ``manifest.parquet``, ``cohort.json`` and the printed
    card. The build knows the identifiers (it pseudonymises them), so the values are matched against them: patient
    IDs (the headers' and the CSV's patient column), accession numbers, birth dates and UIDs as whole tokens, and
    names as two adjacent parts of one patient's name ("Jane Doe", ``DOE^JANE``). A single name part is not
    matched: a subgroup value "White" must not stop a study because a patient is called White.

    Raises:
        CohortBuildError: naming the spec key and CSV column and how many values match, never the values.
    """
    copied = _copied_columns(rows, spec)
    if not copied or rows.empty:
        return
    ids = [
        rows.get(c)
        for c in ("patient_id", "csv_patient", "accession_number", "birth_date", "sop_uid", "study_uid", "series_uid")
    ]
    known = TokenSet(str(v) for col in ids if col is not None for v in col.dropna())
    pairs = {
        _name_pair(a, b)
        for name in rows.get("patient_name", pd.Series(dtype=object)).dropna()
        for a, b in _adjacent(str(name))
    }
    for column, key in copied.items():
        values = {str(v) for v in rows[column].dropna()}
        hits = sum(known.search(v) or any(_name_pair(a, b) in pairs for a, b in _adjacent(v)) for v in values)
        if hits:
            raise CohortBuildError(
                f"{key} holds patient identifiers: {hits} of its {len(values)} distinct value(s) equal or contain a "
                "patient ID, accession number, birth date, UID or patient name of this cohort (values not shown). "
                "The build copies this column verbatim into manifest.parquet, cohort.json and the card, and "
                "identifiers never leave the cohort layer. If the column identifies patients, give it as "
                "labels.patient_column (--patient-column; it is pseudonymised) and drop it here; otherwise "
                "correct its values"
            )


def _adjacent(text: str) -> list[tuple[str, str]]:
    words = TokenSet._RUN.findall(text.lower())
    return list(zip(words, words[1:]))


def _name_pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def scrub(text: str, identifiers: set[str] | TokenSet | None) -> str:
    """Library messages can quote header values; no identifier we know of survives into a reason or a log line.

    Whole tokens only: "DOE" goes, "does" and "misplaced" stay. Tokens from two characters up are scrubbed.
    """
    if isinstance(identifiers, TokenSet) or identifiers is None:
        pattern = identifiers
    else:
        pattern = token_pattern(identifiers, MIN_NAME_PART)
    return text if pattern is None else pattern.sub("[redacted]", text)
