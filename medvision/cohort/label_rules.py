"""What a study does to a raw labels CSV before the join: row filters, a label map, and the join-key check.

Real metadata files mix modalities and carry placeholder or compound labels; these rules, declared in
:class:`~medvision.cohort.spec.LabelsSpec`, make the study's labels explicit and recorded in the card instead of
a hand-written derived CSV. The join check exists because a CSV keyed another way than the spec says (file name
with extension instead of stem, a path instead of a name) matches no image and would otherwise build a cohort
without a single label.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medvision.cohort.spec import LabelsSpec, SpecError
from medvision.config import did_you_mean

__all__ = [
    "JOIN_KEYS",
    "apply_label_map",
    "check_columns",
    "check_join",
    "check_unique_keys",
    "filter_rows",
    "join_keys",
]

#: How each ``labels.join`` choice derives an image's key from its indexed row.
JOIN_KEYS = ("sop_instance_uid", "relpath", "filename", "stem", "series_instance_uid", "study_instance_uid")


def join_keys(rows: pd.DataFrame, join: str) -> pd.Series:
    """Each image's key under one ``join`` choice."""
    if join == "sop_instance_uid":
        return rows["sop_uid"]
    if join == "series_instance_uid":
        return rows["series_uid"]
    if join == "study_instance_uid":
        return rows["study_uid"]
    if join == "relpath":
        return rows["relpath"]
    if join == "filename":
        return rows["relpath"].map(lambda p: Path(p).name)
    return rows["relpath"].map(lambda p: Path(p).stem)


def filter_rows(table: pd.DataFrame, spec: LabelsSpec) -> tuple[pd.DataFrame, pd.Series, dict[str, int]]:
    """Apply ``include``/``exclude``: the kept rows, the reason each dropped row was dropped (by key), counts.

    Values are compared as stripped strings, so ``DX`` matches ``" DX"`` as the CSV may write it.
    """
    missing = [c for c in [*spec.include, *spec.exclude] if c not in table.columns]
    if missing:
        raise SpecError(
            f"labels CSV {spec.csv}: labels.include/exclude name column(s) {missing} it does not have; "
            f"it has {list(table.columns)}"
        )
    reason = pd.Series(None, index=table.index, dtype=object)
    for column, values in spec.include.items():
        wanted = {str(v).strip() for v in values}
        out = ~table[column].fillna("").astype(str).str.strip().isin(wanted) & reason.isna()
        reason[out] = f"excluded by labels.include ({column} not in {sorted(wanted)})"
    for column, values in spec.exclude.items():
        unwanted = {str(v).strip() for v in values}
        out = table[column].fillna("").astype(str).str.strip().isin(unwanted) & reason.isna()
        reason[out] = f"excluded by labels.exclude ({column} in {sorted(unwanted)})"
    dropped = reason.notna()
    stats = {"csv_rows_excluded": int(dropped.sum())} if spec.include or spec.exclude else {}
    return table[~dropped], reason[dropped], stats


def check_unique_keys(kept: pd.DataFrame, spec: LabelsSpec) -> None:
    """One CSV row per image among the rows the filters keep: two would give an image two labels.

    Checked after ``include``/``exclude``, so a filter that drops the extra rows (a second row marked ``todo``)
    resolves the duplicates, as it would by hand.

    Raises:
        SpecError: naming the CSV, the key column, how many duplicates and the CSV line of the first.
    """
    dup = kept[spec.key_column].duplicated(keep="first") & kept[spec.key_column].notna()
    if dup.any():
        first = int(dup.idxmax()) + 2  # the table keeps the CSV's row numbers: + header line, + 1-based
        filters = " kept by labels.include/exclude" if spec.include or spec.exclude else ""
        raise SpecError(
            f"labels CSV {spec.csv}: {int(dup.sum())} duplicate value(s) in key column '{spec.key_column}' among "
            f"the rows{filters} (first at CSV line {first}): an image would get two labels. Keep one row per image, "
            "or drop the others with labels.exclude / labels.include"
        )


def apply_label_map(label: pd.Series, spec: LabelsSpec) -> tuple[pd.Series, dict[str, int]]:
    """Rename or drop label values per ``labels.map``; the number of images each rule touched."""
    stripped = label.map(lambda v: v.strip() if isinstance(v, str) else v)
    if not spec.map:
        return stripped, {}
    counts = {str(k): int((stripped == k.strip()).sum()) for k in spec.map}
    mapping = {k.strip(): v for k, v in spec.map.items()}
    mapped = stripped.map(lambda v: mapping.get(v, v) if isinstance(v, str) else v)
    return mapped.astype(object).where(mapped.notna(), None), counts


def check_join(rows: pd.DataFrame, keys: pd.Index, spec: LabelsSpec) -> None:
    """Fail when no CSV key matches any image under ``spec.join``, naming the choice that would match.

    Raises:
        SpecError: with one example key from each side and the ``join`` choice(s) that match some rows.
    """
    if rows.empty or not len(keys):
        return
    wanted = set(keys.astype(str))
    if join_keys(rows, spec.join).isin(wanted).any():
        return
    # ties go to the simplest key (a folder-less relpath equals the file name)
    order = ("filename", "stem", "relpath", "sop_instance_uid", "series_instance_uid", "study_instance_uid")
    matches = {j: int(join_keys(rows, j).isin(wanted).sum()) for j in order if j != spec.join}
    better = sorted((j for j in matches if matches[j]), key=lambda j: -matches[j])
    example = join_keys(rows, spec.join).dropna()
    example_image = str(example.iloc[0]) if len(example) else "(none)"
    if better:
        best, others = better[0], ", ".join(f"{j}: {matches[j]}" for j in better[1:])
        hint = (
            f"Joining on {best!r} matches {matches[best]} image(s)"
            + (f" (also {others})" if others else "")
            + f": set labels.join: {best} (--join {best})"
        )
    else:
        hint = f"No join choice ({', '.join(JOIN_KEYS)}) matches either: check labels.key_column"
    raise SpecError(
        f"labels CSV {spec.csv}: no row's key (column {spec.key_column!r}) matches any image when joining on "
        f"{spec.join!r}; e.g. CSV key {str(keys[0])!r} vs image key {example_image!r}. {hint}"
    )


def check_columns(lab: LabelsSpec, header: list[str]) -> None:
    """Every column the spec names must be in the CSV: a misspelt one is a typo to report before anything runs,
    with the closest real name, not a "values checked at build time" that fails later."""
    named: list[tuple[str, str | None]] = [
        ("labels.key_column", lab.key_column),
        *(("labels.label_columns", c) for c in lab.label_columns),
        ("labels.patient_column", lab.patient_column),
        ("labels.site_column", lab.site_column),
        ("labels.sex_column", lab.sex_column),
        ("labels.age_column", lab.age_column),
        ("labels.split_column", lab.split_column),
        *((f"labels.subgroup_columns.{k}", c) for k, c in lab.subgroup_columns.items()),
        *((f"labels.include.{c}", c) for c in lab.include),
        *((f"labels.exclude.{c}", c) for c in lab.exclude),
    ]
    for key, column in named:
        if column is not None and column not in header:
            raise SpecError(
                f"{key}: labels CSV {lab.csv} has no column {column!r}.{did_you_mean(column, header)} "
                f"Its columns: {', '.join(header)}"
            )
