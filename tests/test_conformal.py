"""Conformal prediction sets: coverage, set sizes and thresholds equal a by-hand numpy computation; Mondrian sets equal
crepes' Mondrian conformal classifier; over 200 exchangeable repetitions coverage sits in the finite-sample band;
a held-out site where the model is worse is flagged."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from crepes import ConformalClassifier as CrepesClassifier

from medvision.evaluation.bootstrap import Bootstrap
from medvision.evaluation.conformal import (
    ConformalClassifier,
    conformal_scores,
    conformal_table,
    coverage_table,
    fit_conformal,
    hierarchical_quantile,
)
from medvision.evaluation.trust_text import coverage_sentence

K = 3


def _arrays(rng, n_patients, *, max_images=3, noise=0.0, n_sites=2):
    """Probabilities from random logits and labels drawn from them (a calibrated model), 1..max_images images per
    patient; ``noise`` replaces that share of labels by uniform ones (the model is overconfident there)."""
    images = rng.integers(1, max_images + 1, n_patients)
    patient = np.repeat(np.arange(n_patients), images)
    n = len(patient)
    logits = 2.5 * rng.normal(size=(n, K))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random(n)[:, None]).argmax(1)
    flip = rng.random(n) < noise
    y[flip] = rng.integers(0, K, flip.sum())
    site = rng.integers(0, n_sites, n_patients)[patient]
    return p, y, patient, site


def _cohort(rng, n_patients, *, max_images=3, noise=0.0, site_names=("A", "B")):
    """The same as a predictions table: pseudonymous patient ids, sex and site columns."""
    p, y, patient, site = _arrays(rng, n_patients, max_images=max_images, noise=noise, n_sites=len(site_names))
    sex = np.where(rng.random(n_patients) < 0.5, "F", "M")[patient]
    frame = pd.DataFrame(
        {"label_idx": y, "patient_id": [f"P{j}" for j in patient], "sex": sex, "site": np.asarray(site_names)[site]}
    )
    return p, frame


def _fast_patient_mean(values, patients):
    """Mean over patients of the mean over each patient's images (integer patient ids 0..n-1)."""
    counts = np.bincount(patients)
    seen = counts > 0
    return float(np.mean(np.bincount(patients, weights=values)[seen] / counts[seen]))


# -- (a) by hand ----------------------------------------------------------------------------------------------


def _hand_scores(p, u):
    """APS by its definition: mass of the strictly more probable labels plus u times the label's own."""
    n, k = p.shape
    s = np.zeros((n, k))
    for i in range(n):
        for y in range(k):
            s[i, y] = sum(p[i, j] for j in range(k) if p[i, j] > p[i, y]) + u[i] * p[i, y]
    return s


def _hand_threshold(scores, patients, target):
    """Smallest t whose patient-weighted count of scores <= t reaches target * (n + 1); inf when out of reach."""
    ids = sorted(set(patients))
    n = len(ids)
    if target * (n + 1) > n:
        return math.inf
    m = {j: list(patients).count(j) for j in ids}
    for t in sorted(scores):
        if sum(1 / m[j] for s, j in zip(scores, patients) if s <= t) >= target * (n + 1) - 1e-12:
            return t
    return math.inf


def _patient_mean(values, patients):
    """Mean over patients of the mean over each patient's images."""
    return float(np.mean([np.mean(values[patients == j]) for j in np.unique(patients)]))


def test_sets_coverage_and_sizes_equal_a_by_hand_computation():
    rng = np.random.default_rng(0)
    p_val, val = _cohort(rng, 70)
    p_test, test = _cohort(rng, 60)
    u_val, u_test = rng.random(len(val)), rng.random(len(test))
    target = 0.9

    s_val = _hand_scores(p_val, u_val)
    s_test = _hand_scores(p_test, u_test)
    y_val, g_val = val["label_idx"].to_numpy(), val["patient_id"].to_numpy()
    true_val = s_val[np.arange(len(val)), y_val]

    # marginal
    q = _hand_threshold(true_val, g_val, target)
    hand_sets = s_test <= q
    ours = ConformalClassifier(target).fit(p_val, y_val, g_val, u=u_val)
    np.testing.assert_allclose(ours.scores(p_val, u_val), s_val, atol=1e-12)
    assert abs(ours.thresholds_["threshold"].item() - q) < 1e-12
    np.testing.assert_array_equal(ours.predict_set(p_test, u=u_test), hand_sets)

    # Mondrian by site, and label-conditional
    by_site = ConformalClassifier(target).fit(p_val, y_val, g_val, val["site"], u=u_val)
    by_class = ConformalClassifier(target, class_conditional=True).fit(p_val, y_val, g_val, u=u_val)
    site_q = {c: _hand_threshold(true_val[val["site"] == c], g_val[val["site"] == c], target) for c in "AB"}
    class_q = [_hand_threshold(true_val[y_val == c], g_val[y_val == c], target) for c in range(K)]
    site_sets = s_test <= np.array([site_q[c] for c in test["site"]])[:, None]
    class_sets = s_test <= np.array(class_q)[None, :]
    np.testing.assert_array_equal(by_site.predict_set(p_test, test["site"], u=u_test), site_sets)
    np.testing.assert_array_equal(by_class.predict_set(p_test, u=u_test), class_sets)

    # the table: coverage, mean size, singleton rate, all patient-weighted, overall and per site
    y, g = test["label_idx"].to_numpy(), test["patient_id"].to_numpy()
    boot = Bootstrap(g, n_resamples=50, seed=1)
    table = coverage_table(
        site_sets, y, g, target=target, features=test[["site"]], promised=["site"], bootstrap=boot, min_patients=5
    ).set_index(["attribute", "group"])
    covered = site_sets[np.arange(len(y)), y].astype(float)
    size = site_sets.sum(1)
    groups = {("all", "all"): np.ones(len(y), bool), **{("site", c): (test["site"] == c).to_numpy() for c in "AB"}}
    for key, mask in groups.items():
        row = table.loc[key]
        assert abs(row["coverage"] - _patient_mean(covered[mask], g[mask])) < 1e-9
        assert abs(row["mean_set_size"] - _patient_mean(size[mask].astype(float), g[mask])) < 1e-9
        assert abs(row["singleton_rate"] - _patient_mean((size[mask] == 1).astype(float), g[mask])) < 1e-9
        assert abs(row["empty_rate"] - _patient_mean((size[mask] == 0).astype(float), g[mask])) < 1e-9

    # the interval: each resample's coverage is the mean, over the drawn patients (with repeats), of their coverage
    per_patient = {j: covered[g == j].mean() for j in np.unique(g)}
    reps = [np.mean([per_patient[boot.patient_ids[d]] for d in draws]) for draws in boot.patient_draws]
    low, high = np.percentile(reps, [2.5, 97.5])
    assert abs(table.loc[("all", "all"), "coverage_low"] - low) < 1e-9
    assert abs(table.loc[("all", "all"), "coverage_high"] - high) < 1e-9


def test_one_image_per_patient_thresholds_are_the_textbook_order_statistic():
    rng = np.random.default_rng(3)
    scores = rng.random(200)
    # ceil((n + 1)(1 - alpha)) = ceil(201 * 0.9) = 181st smallest
    assert hierarchical_quantile(scores, np.arange(200), 0.9) == np.sort(scores)[180]
    assert hierarchical_quantile(scores[:8], np.arange(8), 0.9) == math.inf  # 0.9 * 9 > 8 patients


def test_raps_adds_its_rank_penalty():
    p = np.array([[0.5, 0.3, 0.2]])
    aps = conformal_scores(p, [0.5])
    raps = conformal_scores(p, [0.5], score="raps", penalty=0.1, k_reg=1)
    np.testing.assert_allclose(aps, [[0.25, 0.65, 0.9]])
    np.testing.assert_allclose(raps - aps, [[0.0, 0.1, 0.2]])


# -- a well-kept library agrees --------------------------------------------------------------------------------


def test_mondrian_sets_equal_crepes_on_one_image_per_patient():
    """crepes' non-smoothed p-value (#{cal >= s} + 1) / (n + 1) >= 1 - target is the same rule as s <= q̂ when
    (n + 1)(1 - target) is not an integer; a category it never saw gets every label in both."""
    rng = np.random.default_rng(5)
    n_a, n_b = 83, 57
    p_val, val = _cohort(rng, n_a + n_b, max_images=1)
    val["site"] = ["A"] * n_a + ["B"] * n_b
    p_test, test = _cohort(rng, 300, max_images=1, site_names=("A", "B", "C"))
    ours = ConformalClassifier(0.9, randomized=False).fit(p_val, val["label_idx"], val["patient_id"], val["site"])
    cal_scores = ours.scores(p_val)[np.arange(len(val)), val["label_idx"]]
    crepes = CrepesClassifier().fit(cal_scores, bins=val["site"].to_numpy())
    theirs = crepes.predict_set(ours.scores(p_test), bins=test["site"].to_numpy(), confidence=0.9, smoothing=False)
    mine = ours.predict_set(p_test, test["site"])
    np.testing.assert_array_equal(mine, theirs.astype(bool))
    assert mine[test["site"] == "C"].all()  # nothing calibrated there: nothing ruled out
    marginal = ConformalClassifier(0.9, randomized=False).fit(p_val, val["label_idx"])
    theirs = CrepesClassifier().fit(cal_scores).predict_set(ours.scores(p_test), confidence=0.9, smoothing=False)
    np.testing.assert_array_equal(marginal.predict_set(p_test), theirs.astype(bool))


# -- (b) simulation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["aps", "raps"])
def test_marginal_coverage_over_200_exchangeable_repetitions_is_in_the_finite_sample_band(score):
    """n = 100 calibration patients, target 0.9: E[coverage] = ceil(0.9 * 101) / 101 = 91/101, inside
    [0.9, 0.9 + 1/101]. The mean of 200 repetitions must be within 3 standard errors of it."""
    rng = np.random.default_rng(11)
    n, target, coverages = 100, 0.9, []
    for r in range(200):
        p_cal, y_cal, _, _ = _arrays(rng, n, max_images=1)
        p_test, y_test, _, _ = _arrays(rng, 400, max_images=1)
        sets = ConformalClassifier(target, score=score, seed=r).fit(p_cal, y_cal).predict_set(p_test)
        coverages.append(sets[np.arange(len(y_test)), y_test].mean())
    mean, se = np.mean(coverages), np.std(coverages, ddof=1) / np.sqrt(200)
    expected = math.ceil(target * (n + 1)) / (n + 1)
    assert target <= expected <= target + 1 / (n + 1)
    assert abs(mean - expected) < 3 * se, (mean, expected, se)


def test_patients_with_several_correlated_images_still_get_the_target_and_mondrian_covers_each_site():
    """Site B is harder, and there through a patient-level effect: a noisy patient has all its images noisy.
    Calibrating with every patient weighing one keeps patient-weighted coverage at the target; marginal sets
    under-cover site B, Mondrian-by-site sets cover both sites."""
    rng = np.random.default_rng(12)
    overall, marginal_b, mondrian = [], [], {0: [], 1: []}

    def draw(n):
        p, y, patient, site = _arrays(rng, n, max_images=4)
        noisy_patient = rng.random(n) < 0.3
        flip = (site == 1) & noisy_patient[patient] & (rng.random(len(y)) < 0.7)
        y[flip] = rng.integers(0, K, flip.sum())
        return p, y, patient, site

    for r in range(200):
        p_cal, y_cal, g_cal, site_cal = draw(150)
        p_test, y, g, site = draw(150)
        marginal = ConformalClassifier(0.9, seed=r).fit(p_cal, y_cal, g_cal)
        by_site = ConformalClassifier(0.9, seed=r).fit(p_cal, y_cal, g_cal, site_cal)
        covered = marginal.predict_set(p_test)[np.arange(len(y)), y].astype(float)
        covered_site = by_site.predict_set(p_test, site)[np.arange(len(y)), y].astype(float)
        overall.append(_fast_patient_mean(covered, g))
        marginal_b.append(_fast_patient_mean(covered[site == 1], g[site == 1]))
        for s in (0, 1):
            mondrian[s].append(_fast_patient_mean(covered_site[site == s], g[site == s]))

    def upper(values):  # the mean plus 3 standard errors: below the target only if coverage truly falls short
        return np.mean(values) + 3 * np.std(values, ddof=1) / np.sqrt(len(values))

    assert upper(overall) >= 0.9
    assert upper(mondrian[0]) >= 0.9 and upper(mondrian[1]) >= 0.9
    assert upper(marginal_b) < 0.9  # the reason for Mondrian: marginal sets fall short at the hard site


# -- (c) a shifted, held-out site -------------------------------------------------------------------------------


def test_a_held_out_site_where_the_model_is_worse_is_flagged_and_the_miss_is_shown():
    rng = np.random.default_rng(21)
    p_val, val = _cohort(rng, 300, max_images=2)
    p_test, test = _cohort(rng, 300, max_images=2)
    p_site, site = _cohort(rng, 200, max_images=2, noise=0.5, site_names=("C",))
    fitted = fit_conformal(p_val, val, target=0.9, mondrian=["sex"])
    kw = {"attributes": ["sex"], "n_resamples": 300}
    ok = conformal_table(fitted, p_test, test, set_name="test", **kw).set_index(["method", "attribute", "group"])
    held = conformal_table(fitted, p_site, site, set_name="site_ood", **kw).set_index(["method", "attribute", "group"])

    assert ok.loc[("marginal", "all", "all"), "guarantee"] == "holds"
    assert ok.loc[("sex", "sex", "F"), "guarantee"] == "holds"  # Mondrian by sex promises each sex
    assert ok.loc[("marginal", "sex", "F"), "guarantee"] == "not_promised"  # marginal sets promise the average
    row = held.loc[("marginal", "all", "all")]
    assert row["guarantee"] == "does_not_carry_over"
    assert row["shortfall"] > 0.1 and row["coverage_high"] < 0.9  # how far it missed, beyond sampling noise
    assert (held["guarantee"].isin(["does_not_carry_over", ""])).all()

    # the same shifted patients presented as if exchangeable: the data alone flag it
    y, g = site["label_idx"].to_numpy(), site["patient_id"].to_numpy()
    sets = fitted["marginal"].predict_set(p_site)
    alone = coverage_table(sets, y, g, target=0.9, exchangeable=True, n_resamples=300)
    assert alone.loc[0, "guarantee"] == "below_target"


def test_small_groups_are_flagged_without_numbers_and_bad_input_is_named():
    rng = np.random.default_rng(4)
    p, frame = _cohort(rng, 40)
    frame.loc[frame["patient_id"] == "P0", "sex"] = "O"  # one patient: a group too small to report
    fitted = fit_conformal(p, frame)
    table = conformal_table(fitted, p, frame, set_name="val", attributes=["sex"], min_patients=5, n_resamples=20)
    small = table[(table["attribute"] == "sex") & (table["group"] == "O")].iloc[0]
    assert small["flag"] == "few_patients" and np.isnan(small["coverage"]) and small["guarantee"] == ""
    with pytest.raises(ValueError, match=r"\['skin'\] are not columns"):
        conformal_table(fitted, p, frame, set_name="val", attributes=["skin"])
    with pytest.raises(ValueError, match="Mondrian: pass `categories`"):
        ConformalClassifier().fit(p, frame["label_idx"], categories=frame["site"]).predict_set(p)
    with pytest.raises(ValueError, match="class indices 0..2"):
        ConformalClassifier().fit(p, np.full(len(p), -1))


def test_a_row_carries_the_promise_only_when_its_group_is_a_union_of_calibrated_categories():
    rng = np.random.default_rng(9)
    p, frame = _cohort(rng, 400)
    fitted = fit_conformal(p, frame, mondrian=["sex", "sex*site", "class"])
    table = conformal_table(
        fitted, p, frame, set_name="test", attributes=["sex", "sex*site"], classes=["a", "b", "c"], n_resamples=50
    )
    verdict = table.groupby(["method", "attribute"])["guarantee"].agg(lambda v: set(v))
    assert verdict[("sex", "sex")] == {"holds"}
    assert verdict[("sex", "sex*site")] == {"not_promised"}  # per sex is not per (sex, site)
    assert verdict[("sex*site", "sex")] == {"holds"}  # a sex is a union of (sex, site) cells
    assert verdict[("class", "class")] == {"holds"} and verdict[("marginal", "class")] == {"not_promised"}


def test_a_predictor_rebuilt_from_its_recorded_thresholds_gives_the_same_sets():
    """``predict --evaluation`` has only the thresholds metrics.json recorded, not the validation images."""
    rng = np.random.default_rng(11)
    p_val, val = _cohort(rng, 70)
    p_test, test = _cohort(rng, 40)
    y, g, u = val["label_idx"].to_numpy(), val["patient_id"].to_numpy(), rng.random(len(test))
    for kw, cats in [({}, None), ({"class_conditional": True}, None), ({}, val["site"])]:
        fitted = ConformalClassifier(0.9, score="raps", **kw).fit(p_val, y, g, cats)
        rebuilt = ConformalClassifier.from_thresholds(
            fitted.thresholds_, K, target=0.9, score="raps", randomized=True, seed=0
        )
        test_cats = None if cats is None else test["site"]
        np.testing.assert_array_equal(
            rebuilt.predict_set(p_test, test_cats, u=u), fitted.predict_set(p_test, test_cats, u=u)
        )


def test_too_few_calibration_patients_give_vacuous_sets_not_a_guarantee():
    rng = np.random.default_rng(7)
    p_val, val = _cohort(rng, 4)  # 0.9 * (4 + 1) > 4: no finite threshold
    p_test, test = _cohort(rng, 30)
    fitted = fit_conformal(p_val, val, target=0.9)
    assert not np.isfinite(fitted["marginal"].thresholds_["threshold"]).any()
    table = conformal_table(fitted, p_test, test, set_name="test", min_patients=1, n_resamples=20)
    whole = table[table["attribute"] == "all"].iloc[0]
    assert whole["mean_set_size"] == pytest.approx(K) and whole["coverage"] == pytest.approx(1.0)
    assert whole["guarantee"] == "vacuous"  # every set holds every class: nothing is guaranteed
    assert "carry no information" in coverage_sentence(table, reference="test")
    # enough patients: the verdict is as before
    p_big, big = _cohort(rng, 60)
    calibrated = conformal_table(fit_conformal(p_big, big), p_test, test, set_name="test", n_resamples=20)
    assert "vacuous" not in set(calibrated["guarantee"])
