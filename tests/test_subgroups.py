"""SubgroupFrame: point values equal fairlearn's MetricFrame; small and single-class groups are flagged, give NaN
and stay out of gap summaries; missing values become 'unknown'; intervals are paired with the overall ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame
from sklearn.metrics import roc_auc_score

from medvision.evaluation.bootstrap import Bootstrap
from medvision.evaluation.subgroups import SubgroupFrame


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(0)
    n_pat = 240
    sex = rng.choice(["F", "M"], n_pat)
    site = np.where(np.arange(n_pat) < 3, "C", rng.choice(["A", "B"], n_pat))  # site C: 3 patients
    skin = rng.choice(["I-II", "III-IV"], n_pat).astype(object)
    skin[3:33] = "V-VI"  # 30 patients, all negative below -> single class
    skin[33:45] = None  # missing -> "unknown"
    label = rng.integers(0, 2, n_pat)
    label[3:33] = 0
    pid = np.repeat(np.arange(n_pat), 2)
    y = label[pid]
    score = y * 1.2 + rng.normal(size=len(pid)) + (sex[pid] == "M") * 0.3 * y
    sf = pd.DataFrame({"sex": sex[pid], "site": site[pid], "skin": skin[pid]})
    frame = SubgroupFrame(
        metrics={"auroc": "auroc"},
        y_true=y,
        y_pred=score,
        sensitive_features=sf,
        groups=pid,
        intersections=[("sex", "site")],
        min_patients=20,
        n_resamples=300,
    )
    return frame, y, score, sf, pid


def test_point_values_equal_fairlearn(cohort):
    frame, y, score, sf, _ = cohort
    mf = MetricFrame(metrics=roc_auc_score, y_true=y, y_pred=score, sensitive_features=sf["sex"])
    ours = frame.by_group.loc["sex", "auroc"]
    np.testing.assert_allclose(ours.to_numpy(float), mf.by_group.loc[ours.index].to_numpy(float), atol=1e-12)
    assert frame.overall.loc["auroc", "value"] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert frame.overall.loc["auroc", "low"] < frame.overall.loc["auroc", "value"] < frame.overall.loc["auroc", "high"]


def test_flags_nan_and_unknown(cohort):
    frame, *_ = cohort
    bg = frame.by_group
    assert bg.loc[("site", "C"), "flag"] == "few_patients" and bg.loc[("site", "C"), "n_patients"] == 3
    assert bg.loc[("site", "C"), "n_images"] == 6
    assert bg.loc[("skin", "V-VI"), "flag"] == "single_class"
    assert np.isnan(bg.loc[("site", "C"), "auroc"]) and np.isnan(bg.loc[("skin", "V-VI"), "auroc"])
    assert bg.loc[("skin", "unknown"), "n_patients"] == 12
    assert bg.loc[("skin", "unknown"), "flag"] == "few_patients"
    assert not bg.loc[("sex", "F"), "flag"]
    # every attribute's counts add up to the cohort
    assert (bg.groupby(level="attribute")["n_images"].sum() == len(frame.y_true)).all()
    assert ("sex & site", "F & A") in bg.index


def test_flagged_groups_are_excluded_from_gaps(cohort):
    frame, *_ = cohort
    diff = frame.difference()
    site = diff.loc[("site", "auroc")]
    assert site["n_groups"] == 2 and {site["max_group"], site["min_group"]} == {"A", "B"}
    skin = diff.loc[("skin", "auroc")]
    assert skin["n_groups"] == 2 and {skin["max_group"], skin["min_group"]} == {"I-II", "III-IV"}
    bg = frame.by_group
    assert site["difference"] == pytest.approx(abs(bg.loc[("site", "A"), "auroc"] - bg.loc[("site", "B"), "auroc"]))
    assert site["low"] <= site["difference"] <= site["high"]
    table = frame.table()
    assert np.isnan(table.loc[("site", "C", "auroc"), "gap"])
    row = table.loc[("sex", "M", "auroc")]
    assert row["gap"] == pytest.approx(row["value"] - frame.overall.loc["auroc", "value"])
    assert row["gap_low"] <= row["gap"] <= row["gap_high"]


def test_gap_interval_is_paired_with_overall(cohort):
    frame, y, score, sf, pid = cohort
    boot = frame.bootstrap
    mask = sf["sex"].to_numpy() == "M"
    group = boot.ci("auroc", y, score, mask=mask)
    paired = group - boot.ci("auroc", y, score)
    row = frame.table().loc[("sex", "M", "auroc")]
    assert row["gap_low"] == pytest.approx(paired.low) and row["gap_high"] == pytest.approx(paired.high)


def test_shared_bootstrap_and_bad_inputs():
    pid = np.repeat(np.arange(30), 2)
    y = np.tile([0, 1], 30)
    sf = pd.Series(np.where(pid < 15, "a", "b"), name="site")
    boot = Bootstrap(pid, n_resamples=50)
    frame = SubgroupFrame(
        metrics={"acc": "accuracy"},
        y_true=y,
        y_pred=y,
        sensitive_features=sf,
        groups=pid,
        min_patients=10,
        bootstrap=boot,
    )
    assert frame.bootstrap is boot and (frame.by_group["acc"] == 1.0).all()
    with pytest.raises(ValueError, match="intersection"):
        SubgroupFrame(
            metrics={"acc": "accuracy"},
            y_true=y,
            y_pred=y,
            sensitive_features=sf,
            groups=pid,
            intersections=[("site", "sex")],
            n_resamples=10,
        )


def _one_positive_group(min_positives: int = 5, min_negatives: int = 5) -> SubgroupFrame:
    """60 patients: women hold a single positive patient, scored below every negative; men 15 well-ranked ones."""
    rng = np.random.default_rng(1)
    pid = np.repeat(np.arange(60), 2)
    sex = np.where(pid < 30, "F", "M")
    label = np.zeros(60, int)
    label[0] = 1  # the one positive woman
    label[30:45] = 1
    y = label[pid]
    score = y * 2.0 + rng.normal(scale=0.5, size=len(pid))
    score[pid == 0] = -10.0  # ranked below every negative: her group's AUROC is 0
    return SubgroupFrame(
        metrics={"auroc": "auroc"},
        y_true=y,
        y_pred=score,
        sensitive_features=pd.DataFrame({"sex": sex}),
        groups=pid,
        min_patients=20,
        min_positives=min_positives,
        min_negatives=min_negatives,
        n_resamples=300,
    )


def test_a_group_with_a_single_positive_gets_no_interval_and_no_gap():
    """Issue 21: a subgroup holding one positive case got an interval (the resamples that drew her all say 0) and
    a gap whose interval excluded zero, so the report called it 'unlikely to be chance'."""
    frame = _one_positive_group()
    row = frame.table().loc[("sex", "F", "auroc")]
    assert row["flag"] == "few_positives" and row["n_positive"] == 1 and row["n_negative"] == 29
    assert np.isnan(row[["value", "low", "high", "gap", "gap_low", "gap_high"]].to_numpy(float)).all()
    usable = frame.table().loc[("sex", "M", "auroc")]
    assert not usable["flag"] and usable["n_positive"] == 15 and usable["low"] <= usable["value"] <= usable["high"]
    assert frame.difference().loc[("sex", "auroc"), "n_groups"] == 1  # nothing to compare the men with
    # the same cohort with the minimum at 1 (the old behaviour) shows what was claimed: a tight interval at 0
    # and a gap interval below zero
    old = _one_positive_group(min_positives=1).table().loc[("sex", "F", "auroc")]
    assert not old["flag"] and old["high"] == 0.0 and old["gap_high"] < 0


def test_few_negatives_are_flagged_too_and_the_minimum_is_inclusive():
    frame = _one_positive_group(min_positives=1, min_negatives=16)
    assert frame.by_group.loc[("sex", "M"), "flag"] == "few_negatives"  # 15 negative men < 16
    assert frame.by_group.loc[("sex", "F"), "flag"] == ""  # 29 negative women, 1 positive >= 1
    assert _one_positive_group(min_positives=1, min_negatives=15).by_group.loc[("sex", "M"), "flag"] == ""
