"""Abstention with risk control: the certified threshold, referral rate, accepted error and miss rate equal a by-hand
computation; over 200 exchangeable repetitions the population risk at the chosen threshold exceeds α in at most
about δ of them (Learn then Test); a held-out site and held-out conditions are flagged with how far they missed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medvision.evaluation.risk_control import RiskControlledAbstention, abstention_table

K = 3


def _arrays(rng, n_patients, *, max_images=1, scale=3.0, noise=0.0):
    images = rng.integers(1, max_images + 1, n_patients)
    patient = np.repeat(np.arange(n_patients), images)
    n = len(patient)
    logits = scale * rng.normal(size=(n, K))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random(n)[:, None]).argmax(1)
    flip = rng.random(n) < noise
    y[flip] = rng.integers(0, K, flip.sum())
    return p, y, patient


def _frame(y, patient, rng):
    sex = np.where(rng.random(patient.max() + 1) < 0.5, "F", "M")[patient]
    return pd.DataFrame({"label_idx": y, "patient_id": [f"P{j}" for j in patient], "sex": sex})


# -- (a) by hand ----------------------------------------------------------------------------------------------


def _binomial_cdf(k, n, a):
    return sum(math.comb(n, i) * a**i * (1 - a) ** (n - i) for i in range(k + 1))


def _hand_threshold(conf, wrong, patient, alpha, delta):
    """Fixed-sequence testing from the highest validation confidence down; a patient is answered when one of its
    images is, and fails when an answered image is wrong; thresholds no zero-failure count could certify are
    skipped; the last certified threshold wins."""
    last = math.inf
    for lam in sorted(set(conf), reverse=True):
        answered = {j for c, j in zip(conf, patient) if c >= lam}
        failed = {j for c, w, j in zip(conf, wrong, patient) if c >= lam and w}
        n, k = len(answered), len(failed)
        if (1 - alpha) ** n > delta:
            continue
        if _binomial_cdf(k, n, alpha) > delta:
            break
        last = lam
    return last


def test_threshold_referral_rate_and_accepted_error_equal_a_by_hand_computation():
    rng = np.random.default_rng(0)
    p_val, y_val, g_val = _arrays(rng, 300, max_images=3)
    p_test, y_test, g_test = _arrays(rng, 200, max_images=3)
    rule = RiskControlledAbstention(alpha=0.1, delta=0.1).fit(p_val, y_val, g_val)
    hand = _hand_threshold(p_val.max(1), p_val.argmax(1) != y_val, g_val, 0.1, 0.1)
    assert rule.feasible_ and rule.threshold_ == hand

    table = abstention_table(rule, p_test, _frame(y_test, g_test, rng), set_name="test", n_resamples=50)
    row = table.iloc[0]
    referred = p_test.max(1) < hand
    wrong = p_test.argmax(1) != y_test
    patients = np.unique(g_test)
    referral = np.mean([referred[g_test == j].mean() for j in patients])
    answered = [j for j in patients if (~referred[g_test == j]).any()]
    failed = [j for j in answered if (~referred & wrong)[g_test == j].any()]
    assert abs(row["referral_rate"] - referral) < 1e-9
    assert abs(row["accepted_error"] - len(failed) / len(answered)) < 1e-9
    assert row["risk"] == row["accepted_error"] and abs(row["excess"] - (row["risk"] - 0.1)) < 1e-12
    assert row["referral_rate_low"] <= row["referral_rate"] <= row["referral_rate_high"]


def test_miss_rate_of_the_positive_class_equals_a_by_hand_computation():
    rng = np.random.default_rng(1)
    p_val, y_val, g_val = _arrays(rng, 400, max_images=2)
    p_test, y_test, g_test = _arrays(rng, 300, max_images=2)
    rule = RiskControlledAbstention(alpha=0.1, delta=0.1, on="miss", positive=2).fit(p_val, y_val, g_val)
    # by hand: every patient with a positive image is at risk; it is missed when an answered positive image is
    # called something else
    conf, missed_img = p_val.max(1), (y_val == 2) & (p_val.argmax(1) != 2)
    positives = set(g_val[y_val == 2])
    hand = math.inf
    for lam in sorted(set(conf), reverse=True):
        k = len({j for c, m, j in zip(conf, missed_img, g_val) if m and c >= lam})
        if (1 - 0.1) ** len(positives) > 0.1 or _binomial_cdf(k, len(positives), 0.1) > 0.1:
            break
        hand = lam
    assert rule.threshold_ == hand < 1

    row = abstention_table(rule, p_test, _frame(y_test, g_test, rng), set_name="test", n_resamples=50).iloc[0]
    answered = p_test.max(1) >= hand
    pos_patients = np.unique(g_test[y_test == 2])
    missed = [j for j in pos_patients if (answered & (y_test == 2) & (p_test.argmax(1) != 2))[g_test == j].any()]
    assert abs(row["miss_rate"] - len(missed) / len(pos_patients)) < 1e-9 and row["risk"] == row["miss_rate"]


# -- (b) simulation --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def population():
    """A large sample standing in for the population: risk of any threshold, read off sorted cumulative counts."""
    p, y, _ = _arrays(np.random.default_rng(99), 400_000)
    conf = p.max(1)
    order = np.argsort(-conf)
    wrong = (p.argmax(1) != y)[order]
    missed = ((y == 0) & (p.argmax(1) != 0))[order]
    return -conf[order], np.cumsum(wrong), np.cumsum(missed), (y == 0).sum()


def _population_risk(population, threshold, on):
    neg_conf, cum_wrong, cum_missed, n_pos = population
    answered = np.searchsorted(neg_conf, -threshold, side="right")  # images with conf >= threshold
    if answered == 0:
        return 0.0
    return cum_wrong[answered - 1] / answered if on == "error" else cum_missed[answered - 1] / n_pos


@pytest.mark.parametrize("on", ["error", "miss"])
def test_the_risk_at_the_certified_threshold_exceeds_alpha_in_at_most_delta_of_200_repetitions(population, on):
    """(α, δ) = (0.1, 0.1): P(R(λ̂) > α) <= δ. Over 200 validation draws the count of violations must stay within
    a binomial tolerance of 200 δ (3 standard deviations), and the rule must answer most cases (not refer all)."""
    rng = np.random.default_rng(5)
    violations, answered = 0, []
    for _ in range(200):
        p, y, g = _arrays(rng, 500)
        rule = RiskControlledAbstention(alpha=0.1, delta=0.1, on=on, positive=0).fit(p, y, g)
        violations += _population_risk(population, rule.threshold_, on) > 0.1
        answered.append(rule.feasible_)
    assert violations <= 200 * 0.1 + 3 * math.sqrt(200 * 0.1 * 0.9), violations
    assert np.mean(answered) > 0.9


def test_with_an_ood_score_the_guarantee_holds_and_inliers_are_rarely_referred_as_ood(population):
    rng = np.random.default_rng(6)
    violations, ood_referred = 0, []
    for _ in range(200):
        p, y, g = _arrays(rng, 600)
        ood = rng.normal(size=len(y))  # an in-distribution OOD score: flags inliers at random
        rule = RiskControlledAbstention(alpha=0.1, delta=0.1, ood_rate=0.05, seed=1).fit(p, y, g, ood_score=ood)
        violations += _population_risk(population, rule.threshold_, "error") > 0.1
        ood_referred.append((rng.normal(size=5000) > rule.ood_threshold_).mean())
    assert violations <= 200 * 0.1 + 3 * math.sqrt(200 * 0.1 * 0.9)
    assert np.mean(ood_referred) <= 0.05 + 3 * np.std(ood_referred, ddof=1) / math.sqrt(200)


# -- (c) held-out site and conditions ---------------------------------------------------------------------------


def test_a_held_out_site_and_held_out_conditions_are_flagged_with_how_far_they_missed():
    rng = np.random.default_rng(7)
    p_val, y_val, g_val = _arrays(rng, 600, max_images=2)
    rule = RiskControlledAbstention(alpha=0.05, delta=0.1).fit(p_val, y_val, g_val)
    p_test, y_test, g_test = _arrays(rng, 400, max_images=2)
    p_site, y_site, g_site = _arrays(rng, 300, max_images=2, noise=0.4)
    kw = {"attributes": ["sex"], "n_resamples": 200, "min_patients": 10}
    test = abstention_table(rule, p_test, _frame(y_test, g_test, rng), set_name="test", **kw)
    site = abstention_table(rule, p_site, _frame(y_site, g_site, rng), set_name="site_ood", **kw)
    assert test.iloc[0]["guarantee"] == "holds"
    assert set(test.loc[test["attribute"] == "sex", "guarantee"]) == {"not_promised"}
    held = site.iloc[0]
    assert held["guarantee"] == "does_not_carry_over" and held["excess"] > 0.05 and held["accepted_error_low"] > 0.05

    # images of a condition the model has no class for (label -1): every answered one is wrong
    frame = _frame(np.full(len(g_site), -1), g_site, rng)
    cond = abstention_table(rule, p_site, frame, set_name="condition_ood", n_resamples=50).iloc[0]
    assert cond["accepted_error"] == 1.0 and cond["guarantee"] == "does_not_carry_over"

    # the same shifted patients presented as exchangeable: the data alone flag it
    alone = abstention_table(rule, p_site, _frame(y_site, g_site, rng), set_name="x", exchangeable=True)
    assert alone.iloc[0]["guarantee"] == "above_alpha"


def test_too_few_validation_patients_to_certify_anything_refers_every_case():
    rng = np.random.default_rng(8)
    p, y, g = _arrays(rng, 30)  # (1 - 0.05)^30 = 0.21 > δ: not even a perfect record could be certified
    rule = RiskControlledAbstention(alpha=0.05, delta=0.1).fit(p, y, g)
    assert not rule.feasible_ and rule.threshold_ == math.inf and rule.refer(p).all()
    row = abstention_table(rule, p, _frame(y, g, rng), set_name="test", n_resamples=20).iloc[0]
    assert row["referral_rate"] == 1.0 and row["flag"] == "nothing_answered" and row["guarantee"] == ""
    with pytest.raises(ValueError, match="`on` must be one of error, miss"):
        RiskControlledAbstention(on="misses").fit(p, y, g)
    with pytest.raises(ValueError, match="pass `ood_score` to refer"):
        RiskControlledAbstention().fit(p, y, g, ood_score=np.zeros(len(y))).refer(p)


def test_a_rule_rebuilt_from_its_recorded_thresholds_refers_the_same_cases():
    """``predict --evaluation`` has only λ̂ and τ̂ from metrics.json; nothing certified (``None``) refers every case."""
    rng = np.random.default_rng(12)
    p, y, g = _arrays(rng, 600)
    ood = rng.normal(size=len(y))
    fitted = RiskControlledAbstention(alpha=0.1, delta=0.1, ood_rate=0.05, seed=1).fit(p, y, g, ood_score=ood)
    rebuilt = RiskControlledAbstention.from_thresholds(fitted.threshold_, fitted.ood_threshold_)
    p_new, _, _ = _arrays(rng, 200)
    ood_new = rng.normal(size=len(p_new))
    np.testing.assert_array_equal(rebuilt.refer(p_new, ood_new), fitted.refer(p_new, ood_new))
    assert RiskControlledAbstention.from_thresholds(None, None).refer(p_new).all()
