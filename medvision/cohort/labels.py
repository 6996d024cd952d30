"""The labels join: a CSV's rows matched to image instances by SOP Instance UID, relative path, file name or stem.

What comes back is still identifying (the CSV's patient column): only :mod:`medvision.cohort.build` turns it into
pseudonyms.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from medvision.cohort.csvfile import read_csv_table
from medvision.cohort.label_rules import apply_label_map, check_columns, check_join, filter_rows, join_keys
from medvision.cohort.spec import LabelsSpec, SpecError

__all__ = ["join_labels"]

log = logging.getLogger("medvision.cohort")


def join_labels(rows: pd.DataFrame, spec: LabelsSpec | None) -> tuple[pd.DataFrame, dict]:
    """The labels and CSV facts of each instance, plus ``csv_excluded`` (the filter that dropped its CSV row)."""
    cols = ["label", "csv_patient", "csv_sex", "csv_age", "csv_site", "csv_split", "csv_excluded"]
    if spec is None:
        return pd.DataFrame({c: pd.Series([None] * len(rows), dtype=object) for c in cols}, index=rows.index), {}
    table = read_csv_table(spec.csv)
    check_columns(spec, [str(c) for c in table.columns])
    table = table.replace({"": None, "NaN": None, "nan": None, "NA": None})
    dup = table[spec.key_column].duplicated()
    if dup.any():
        raise SpecError(
            f"labels CSV {spec.csv}: {int(dup.sum())} duplicate value(s) in key column "
            f"'{spec.key_column}' (first at CSV line {int(np.argmax(dup.to_numpy())) + 2})"
        )
    check_join(rows, pd.Index(table[spec.key_column].dropna()), spec)
    kept, dropped, filter_stats = filter_rows(table, spec)
    dropped_by_key = pd.Series(dropped.to_numpy(), index=table.loc[dropped.index, spec.key_column].to_numpy())
    table = kept.set_index(spec.key_column)
    keys = join_keys(rows, spec.join)
    matched = table.reindex(keys.to_numpy())
    matched.index = rows.index
    if len(spec.label_columns) == 1:
        label, map_stats = apply_label_map(matched[spec.label_columns[0]], spec)
    else:  # multi-label: the positive label names joined, for stratification and the card
        flags = matched[spec.label_columns].apply(pd.to_numeric, errors="coerce")
        label = flags.apply(
            lambda r: None if r.isna().all() else "|".join(c for c in spec.label_columns if r[c] == 1) or "none", axis=1
        )
    out = pd.DataFrame(
        {
            "label": label.astype(object).where(label.notna(), None),
            "csv_patient": matched[spec.patient_column] if spec.patient_column else None,
            "csv_sex": matched[spec.sex_column] if spec.sex_column else None,
            "csv_age": matched[spec.age_column] if spec.age_column else None,
            "csv_site": matched[spec.site_column] if spec.site_column else None,
            "csv_split": matched[spec.split_column] if spec.split_column else None,
            "csv_excluded": keys.map(dropped_by_key).to_numpy() if len(dropped_by_key) else None,
        },
        index=rows.index,
    )
    if spec.split_column:
        bad = set(out["csv_split"].dropna()) - {"train", "val", "test"}
        if bad:
            raise SpecError(
                f"labels CSV {spec.csv}: column '{spec.split_column}' (labels.split_column) may only "
                f"hold train/val/test, found {sorted(bad)[:5]}"
            )
    for name, col in spec.subgroup_columns.items():
        out[f"sub__{name}"] = matched[col]
    if len(spec.label_columns) > 1:
        for c in spec.label_columns:
            out[f"label__{c}"] = pd.to_numeric(matched[c], errors="coerce")
    out["csv_excluded"] = out["csv_excluded"].astype(object).where(out["csv_excluded"].notna(), None)
    used = set(keys.dropna())
    stats = {
        **filter_stats,
        **({"label_map": map_stats} if len(spec.label_columns) == 1 and spec.map else {}),
        "csv_rows": len(table) + len(dropped),
        "csv_rows_without_image": int(len(set(table.index) - used)),
        "images_without_label": int((out["label"].isna() & out["csv_excluded"].isna()).sum()),
    }
    if stats["csv_rows_without_image"]:
        log.warning("%d labels CSV rows match no image (join on %s)", stats["csv_rows_without_image"], spec.join)
    return out, stats
