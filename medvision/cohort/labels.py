"""The labels join: a CSV's rows matched to image instances by SOP Instance UID, relative path, file name or stem.

What comes back is still identifying (the CSV's patient column): only :mod:`medvision.cohort.build` turns it into
pseudonyms.
"""

from __future__ import annotations

import logging

import pandas as pd

from medvision.cohort.csvfile import LabelsFileError, read_csv_table
from medvision.cohort.label_rules import (
    apply_label_map,
    check_columns,
    check_join,
    check_unique_keys,
    filter_rows,
    join_keys,
)
from medvision.cohort.spec import LabelsSpec, SpecError

__all__ = ["LabelsTable", "check_label_keys", "join_labels", "read_labels"]

log = logging.getLogger("medvision.cohort")

_EMPTY = {"": None, "NaN": None, "nan": None, "NA": None}
_COLUMNS = ["label", "csv_patient", "csv_sex", "csv_age", "csv_site", "csv_split", "csv_excluded"]


class LabelsTable:
    """A labels CSV as the join uses it: every row (for the join check), the rows the filters keep (keyed, unique),
    why each other key was dropped, and the filters' counts."""

    def __init__(self, every: pd.DataFrame, kept: pd.DataFrame, dropped_by_key: pd.Series, stats: dict) -> None:
        self.every, self.kept, self.dropped_by_key, self.stats = every, kept, dropped_by_key, stats


def read_labels(spec: LabelsSpec) -> LabelsTable:
    """Read, check and filter a labels CSV.

    The key column must be unique among the rows the ``include``/``exclude`` filters keep: checked after the
    filters, so a filter that removes a duplicate (a second row marked ``todo``) makes the CSV usable.

    Raises:
        LabelsFileError: missing, empty or not UTF-8.
        SpecError: a column the spec names is missing, or duplicate keys remain after the filters.
    """
    table = read_csv_table(spec.csv)
    check_columns(spec, [str(c) for c in table.columns])
    table = table.replace(_EMPTY)
    kept, dropped, stats = filter_rows(table, spec)
    check_unique_keys(kept, spec)
    dropped_by_key = pd.Series(dropped.to_numpy(), index=table.loc[dropped.index, spec.key_column].to_numpy())
    # a key whose kept row exists is not excluded; two dropped rows of one key give the first reason
    dropped_by_key = dropped_by_key[~dropped_by_key.index.isin(kept[spec.key_column])]
    dropped_by_key = dropped_by_key[~dropped_by_key.index.duplicated()]
    return LabelsTable(table, kept.set_index(spec.key_column), dropped_by_key, stats)


def check_label_keys(spec: LabelsSpec | None) -> None:
    """``medvision run --check``: the labels CSV's keys are unique after the row filters, as the build requires.
    A CSV that cannot be read is left to the checks that say so (it may appear before the run).

    Raises:
        SpecError: duplicate keys remain after the filters (or a column the spec names is missing).
    """
    if spec is None or not spec.csv.is_file():
        return
    try:
        read_labels(spec)
    except (LabelsFileError, OSError):
        return


def join_labels(rows: pd.DataFrame, spec: LabelsSpec | None) -> tuple[pd.DataFrame, dict]:
    """The labels and CSV facts of each instance, plus ``csv_excluded`` (the filter that dropped its CSV row)."""
    if spec is None:
        return pd.DataFrame({c: pd.Series([None] * len(rows), dtype=object) for c in _COLUMNS}, index=rows.index), {}
    labels = read_labels(spec)
    check_join(rows, pd.Index(labels.every[spec.key_column].dropna()), spec)
    keys = join_keys(rows, spec.join)
    matched = labels.kept.reindex(keys.to_numpy())
    matched.index = rows.index
    label, map_stats = _label(matched, spec)
    out = pd.DataFrame(
        {
            "label": label.astype(object).where(label.notna(), None),
            **{name: matched[column] if column else None for name, column in _csv_facts(spec).items()},
            "csv_excluded": keys.map(labels.dropped_by_key).to_numpy() if len(labels.dropped_by_key) else None,
        },
        index=rows.index,
    )
    _check_given_splits(out, spec)
    for name, col in spec.subgroup_columns.items():
        out[f"sub__{name}"] = matched[col]
    if len(spec.label_columns) > 1:
        for c in spec.label_columns:
            out[f"label__{c}"] = pd.to_numeric(matched[c], errors="coerce")
    out["csv_excluded"] = out["csv_excluded"].astype(object).where(out["csv_excluded"].notna(), None)
    stats = _stats(labels, map_stats, keys, out, spec)
    if stats["csv_rows_without_image"]:
        log.warning("%d labels CSV rows match no image (join on %s)", stats["csv_rows_without_image"], spec.join)
    return out, stats


def _label(matched: pd.DataFrame, spec: LabelsSpec) -> tuple[pd.Series, dict[str, int]]:
    """One label column: the mapped value. Several: the positive label names joined (for stratification and the
    card)."""
    if len(spec.label_columns) == 1:
        return apply_label_map(matched[spec.label_columns[0]], spec)
    flags = matched[spec.label_columns].apply(pd.to_numeric, errors="coerce")
    label = flags.apply(
        lambda r: None if r.isna().all() else "|".join(c for c in spec.label_columns if r[c] == 1) or "none", axis=1
    )
    return label, {}


def _csv_facts(spec: LabelsSpec) -> dict[str, str | None]:
    return {
        "csv_patient": spec.patient_column,
        "csv_sex": spec.sex_column,
        "csv_age": spec.age_column,
        "csv_site": spec.site_column,
        "csv_split": spec.split_column,
    }


def _check_given_splits(out: pd.DataFrame, spec: LabelsSpec) -> None:
    if spec.split_column:
        bad = set(out["csv_split"].dropna()) - {"train", "val", "test"}
        if bad:
            raise SpecError(
                f"labels CSV {spec.csv}: column '{spec.split_column}' (labels.split_column) may only "
                f"hold train/val/test, found {sorted(bad)[:5]}"
            )


def _stats(labels: LabelsTable, map_stats: dict, keys: pd.Series, out: pd.DataFrame, spec: LabelsSpec) -> dict:
    used = set(keys.dropna())
    return {
        **labels.stats,
        **({"label_map": map_stats} if len(spec.label_columns) == 1 and spec.map else {}),
        "csv_rows": len(labels.every),
        "csv_rows_without_image": int(len(set(labels.kept.index) - used)),
        "images_without_label": int((out["label"].isna() & out["csv_excluded"].isna()).sum()),
    }
