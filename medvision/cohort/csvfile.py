"""Reading a labels CSV the way spreadsheets write them.

Excel's "CSV UTF-8" starts with a byte-order mark, which would otherwise become part of the first column's name;
in many European locales it separates columns with ``;``. Both are recognised here, once, for the spec builder
and the labels join alike, and an empty or undecodable file is named with what to do about it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from medvision.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LabelsFileError", "csv_header", "read_csv_table"]

log = logging.getLogger("medvision.cohort")

#: Column separators recognised, in order of preference when a header line holds several.
_SEPARATORS = (",", ";", "\t", "|")
_ENCODING = "utf-8-sig"  # UTF-8, with or without Excel's byte-order mark


class LabelsFileError(InputError):
    """A labels CSV that cannot be read; the message names the file and the fix (exit code 2)."""


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding=_ENCODING, newline="") as fh:
            text = fh.read(1 << 16)
    except FileNotFoundError:
        raise LabelsFileError(f"labels CSV {path} does not exist (key labels.csv / --labels)") from None
    except UnicodeDecodeError:
        raise LabelsFileError(
            f"labels CSV {path} is not UTF-8 text; save it as 'CSV UTF-8' (Excel) or convert it "
            "(`iconv -f latin1 -t utf-8`)"
        ) from None
    if not text.strip():
        size = path.stat().st_size
        raise LabelsFileError(
            f"labels CSV {path} is empty ({size} bytes): it needs a header row naming the columns, then one row "
            "per image"
        )
    return text.splitlines()[0]


def _separator(path: Path, line: str) -> str:
    counts = {sep: line.count(sep) for sep in _SEPARATORS}
    if counts[","] or not any(counts.values()):
        return ","
    sep = max(_SEPARATORS, key=lambda s: counts[s])
    log.info("labels CSV %s: columns are separated by %r (detected from the header line)", path.name, sep)
    return sep


def csv_header(path: str | Path) -> list[str]:
    """The column names of a labels CSV (byte-order mark removed, separator detected)."""
    return list(read_csv_table(path, nrows=0).columns)


def read_csv_table(path: str | Path, nrows: int | None = None) -> pd.DataFrame:
    """All cells as text (``""`` for empty ones), whatever the separator and byte-order mark.

    Raises:
        LabelsFileError: missing, empty, or not UTF-8.
    """
    import pandas as pd  # here: the CLI imports this module at start-up, and pandas costs 0.25 s there

    path = Path(path)
    line = _first_line(path)
    sep = _separator(path, line)
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding=_ENCODING, nrows=nrows)
    except pd.errors.ParserError as e:
        raise LabelsFileError(f"labels CSV {path} could not be parsed with separator {sep!r}: {e}") from None
