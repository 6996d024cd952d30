"""Properties of patient-level splits, held-out sets and nested label fractions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from medvision.cohort.spec import SplitSpec
from medvision.cohort.splits import assign_splits

LABELS = ["a", "b", "c", "rare1", "rare2", None]
SITES = ["s1", "s2", "s3"]


@st.composite
def cohorts(draw):
    n_patients = draw(st.integers(5, 80))
    rows = []
    for p in range(n_patients):
        site = draw(st.sampled_from(SITES))
        label = draw(st.sampled_from(LABELS))
        for _ in range(draw(st.integers(1, 4))):
            # mostly one label per patient, sometimes a second one (a patient with two findings)
            lab = label if draw(st.integers(0, 9)) else draw(st.sampled_from(LABELS))
            rows.append({"patient_id": f"P{p}", "site": site, "label": lab})
    return pd.DataFrame(rows)


SPEC = SplitSpec(
    heldout_sites=["s3"],
    heldout_conditions=["rare2"],
    outlier_conditions=["rare1"],
    label_fractions=[0.05, 0.25, 1.0],
    seed=3,
)


@given(cohorts())
@settings(max_examples=60, deadline=None)
def test_split_invariants(df):
    out = assign_splits(df, SPEC)
    # every image gets exactly one split; no patient sits in two
    assert out["split"].isin(["train", "val", "test", "site_ood", "condition_ood", "unlabelled"]).all()
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()
    training = out[out["split"].isin(["train", "val", "test"])]
    # held-out conditions never reach training (nor the site-OOD set); held-out sites never reach training
    assert not training["label"].isin(["rare2"]).any()
    assert not out[out["split"] == "site_ood"]["label"].isin(["rare2"]).any()
    assert not training["site"].isin(["s3"]).any()
    assert (out.loc[out["label"] == "rare2", "split"] == "condition_ood").all()
    # training outliers stay in the ordinary splits unless their patient also has a held-out condition
    moved = out[(out["label"] == "rare1") & (out["split"] == "condition_ood")]
    assert moved["patient_id"].isin(out.loc[out["label"] == "rare2", "patient_id"]).all()
    # fractions: only train rows carry one; subsets are nested; 1.0 is the whole train split
    assert out.loc[out["split"] != "train", "label_fraction"].isna().all()
    train = out[out["split"] == "train"]
    assert train["label_fraction"].notna().all()
    subsets = [set(train.loc[train["label_fraction"] <= f, "patient_id"]) for f in (0.05, 0.25, 1.0)]
    assert subsets[0] <= subsets[1] <= subsets[2] == set(train["patient_id"])
    # a fraction is a property of the patient
    assert (train.groupby("patient_id")["label_fraction"].nunique() == 1).all()


@given(cohorts())
@settings(max_examples=30, deadline=None)
def test_smallest_fraction_holds_every_training_class(df):
    out = assign_splits(df, SPEC)
    train = out[(out["split"] == "train") & out["label"].notna()]
    per_patient = train.groupby("patient_id").agg(
        label=("label", lambda s: s.value_counts().index[0]), frac=("label_fraction", "first")
    )
    for label, g in per_patient.groupby("label"):
        assert (g["frac"] <= 0.05).any(), f"class {label} missing from the smallest fraction"


def test_proportions_and_stratification_on_a_large_cohort():
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(n)],
            "site": rng.choice(["s1", "s2"], n, p=[0.7, 0.3]),
            "label": rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1]),
        }
    )
    out = assign_splits(df, SplitSpec(seed=1, label_fractions=[0.1, 0.5, 1.0]))
    share = out["split"].value_counts(normalize=True)
    assert abs(share["train"] - 0.7) < 0.01 and abs(share["val"] - 0.1) < 0.01 and abs(share["test"] - 0.2) < 0.01
    # stratified: each split's label mix matches the whole cohort's
    overall = out["label"].value_counts(normalize=True)
    for split in ("train", "val", "test"):
        mix = out.loc[out["split"] == split, "label"].value_counts(normalize=True)
        assert (mix - overall).abs().max() < 0.02, (split, mix.to_dict())
    # nested fractions are stratified by label and about the right size
    train = out[out["split"] == "train"]
    for f in (0.1, 0.5):
        sub = train[train["label_fraction"] <= f]
        assert abs(len(sub) / len(train) - f) < 0.02
        mix = sub["label"].value_counts(normalize=True)
        assert (mix - train["label"].value_counts(normalize=True)).abs().max() < 0.03


def test_given_split_column_is_kept():
    df = pd.DataFrame(
        {
            "patient_id": ["A", "B", "C", "D"],
            "site": "s",
            "label": ["x", "y", "x", "y"],
            "given_split": ["test", "val", "train", "train"],
        }
    )
    out = assign_splits(df, SplitSpec())
    assert out["split"].tolist() == ["test", "val", "train", "train"]


def test_same_seed_same_split_other_seed_differs():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"patient_id": [f"P{i}" for i in range(200)], "site": "s", "label": rng.choice(["a", "b"], 200)})
    a = assign_splits(df, SplitSpec(seed=5))["split"]
    b = assign_splits(df, SplitSpec(seed=5))["split"]
    c = assign_splits(df, SplitSpec(seed=6))["split"]
    assert a.equals(b) and not a.equals(c)


def test_strata_of_no_patients_is_an_empty_series():
    """Regression (found by hypothesis): ``agg(axis=1)`` turned zero rows into a DataFrame."""
    from medvision.cohort.splits import _strata

    empty = pd.DataFrame({"label": pd.Series([], dtype="string"), "site": pd.Series([], dtype="string")})
    strata = _strata(empty, ["label", "site"])
    assert isinstance(strata, pd.Series) and strata.empty
    two = pd.DataFrame({"label": ["a", "b"], "site": ["s1", "s2"]})
    assert _strata(two, ["label", "site"]).tolist() == ["a|s1", "b|s2"]
