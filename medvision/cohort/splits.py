"""Patient-level splits, held-out sites and conditions, and nested label fractions.

Everything is decided per *patient*, so no patient's images are ever on both sides of a split.
Allocation is systematic within strata (a running deficit), which keeps each stratum's split
proportions as close to the targets as integers allow even for tiny strata, where per-stratum
rounding would send every rare-class patient to train.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from medvision.cohort.spec import SPLITS, SplitSpec

__all__ = ["SPLITS", "assign_splits"]


def assign_splits(rows: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """Add ``split`` and ``label_fraction`` to ``rows``.

    ``rows`` needs ``patient_id``, ``site`` and ``label`` (None for unlabelled images).
    ``label_fraction`` is the smallest declared fraction whose subset contains the image's
    patient (train rows only, NaN elsewhere); training on fraction f means ``label_fraction <= f``,
    so the subsets are nested by construction.
    """
    rng = np.random.default_rng(spec.seed)
    out = rows.copy()
    split = pd.Series("", index=out.index, dtype=object)

    held_cond = out["label"].isin(spec.heldout_conditions)
    cond_patients = set(out.loc[held_cond, "patient_id"])
    split[out["patient_id"].isin(cond_patients)] = "condition_ood"

    site_patients = set(out.loc[out["site"].isin(spec.heldout_sites), "patient_id"]) - cond_patients
    split[out["patient_id"].isin(site_patients)] = "site_ood"

    rest = out[split == ""]
    labelled = rest.dropna(subset=["label"]).groupby("patient_id", sort=True)
    patients = pd.DataFrame(
        {
            "label": labelled["label"].agg(lambda s: s.value_counts().index[0]),
            "site": labelled["site"].agg(lambda s: s.value_counts().index[0]),
        }
    )
    unlabelled = set(rest["patient_id"]) - set(patients.index)
    split[out["patient_id"].isin(unlabelled)] = "unlabelled"

    given = (
        rest.dropna(subset=["label"])
        .groupby("patient_id", sort=True)["given_split"]
        .agg(lambda s: s.dropna().iloc[0] if s.notna().any() else None)
        if "given_split" in rest
        else None
    )
    if given is not None and given.notna().any():
        patient_split = {str(p): str(s) for p, s in given.items() if s is not None}
        missing = patients.index.difference(list(patient_split))
        if len(missing):  # images with a label but no given split: drawn like any other
            drawn = _allocate(
                _strata(patients.loc[missing], spec.stratify),
                {"train": spec.train, "val": spec.val, "test": spec.test},
                rng,
            )
            patient_split.update(drawn)
    else:
        strata = _strata(patients, spec.stratify)
        targets = {"train": spec.train, "val": spec.val, "test": spec.test}
        patient_split = _allocate(strata, targets, rng)
    split[split == ""] = out.loc[split == "", "patient_id"].map(patient_split)
    out["split"] = split.astype(str)

    train_patients = patients.loc[[p for p, s in patient_split.items() if s == "train"]]
    fraction = _nested_fractions(train_patients, sorted(set(spec.label_fractions) | {1.0}), rng)
    out["label_fraction"] = out["patient_id"].map(fraction).where(out["split"] == "train")
    return out


def _strata(patients: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    if not keys:
        return pd.Series("all", index=patients.index)
    # Column-wise concatenation (not ``agg(axis=1)``, which returns a DataFrame for zero rows).
    cols = patients[list(keys)].astype(str)
    strata = cols.iloc[:, 0]
    for col in cols.columns[1:]:
        strata = strata + "|" + cols[col]
    return strata


def _allocate(strata: pd.Series, targets: dict[str, float], rng: np.random.Generator) -> dict[str, str]:
    """Deal patients of each stratum (in random order) to the split furthest below its target share."""
    names = list(targets)
    share = np.array([targets[n] for n in names])
    result: dict[str, str] = {}
    counts = np.zeros(len(names))
    # Strata in random order and a carried-over deficit: tiny strata then fill val/test in turn
    # instead of all landing in train.
    for stratum in rng.permutation(sorted(strata.unique())):
        members = strata.index[strata == stratum].to_numpy()
        for patient in rng.permutation(members):
            deficit = share * (counts.sum() + 1) - counts
            choice = int(np.argmax(deficit))
            counts[choice] += 1
            result[str(patient)] = names[choice]
    return result


def _nested_fractions(train: pd.DataFrame, fractions: list[float], rng: np.random.Generator) -> dict[str, float]:
    """Spread each label stratum's patients evenly over (0, 1]; the smallest fraction >= that rank.

    The first patient of every class gets the smallest rank, so even the 1% subset holds every class.
    """
    ranks: dict[str, float] = {}
    for _, group in train.groupby("label", sort=True):
        members = rng.permutation(group.index.to_numpy())
        n = len(members)
        offset = rng.uniform(0.0, 1.0)
        for j, patient in enumerate(members):
            ranks[str(patient)] = 0.0 if j == 0 else (j + offset) / n
    out = {}
    for patient, r in ranks.items():
        out[patient] = next(f for f in fractions if r <= f)
    return out
