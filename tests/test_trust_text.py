"""The report's plain-language sentences: exact wording from known tables, and from real tables the numbers they
quote are the tables' numbers, the held-out site is named as where the promise does not hold."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from medvision.evaluation.conformal import conformal_table, fit_conformal
from medvision.evaluation.risk_control import RiskControlledAbstention, abstention_table
from medvision.evaluation.trust_text import abstention_sentence, coverage_sentence


def _row(set_name, **kw):
    base = {"set": set_name, "attribute": "all", "group": "all", "flag": "", "on": "error", "alpha": 0.05}
    return {**base, **kw}


def test_abstention_sentences_say_what_is_referred_what_was_promised_and_where_it_missed():
    table = pd.DataFrame(
        [
            _row("test", threshold=0.87, referral_rate=0.22, risk=0.031, risk_low=0.019, risk_high=0.046,
                 guarantee="holds"),
            _row("site_ood", threshold=0.87, referral_rate=0.36, risk=0.12, risk_low=0.08, risk_high=0.16,
                 guarantee="does_not_carry_over"),
            _row("condition_ood", threshold=0.87, referral_rate=0.6, risk=1.0, risk_low=1.0, risk_high=1.0,
                 guarantee="does_not_carry_over"),
        ]
    )  # fmt: skip
    assert abstention_sentence(table, ood="HOD p_out") == (
        "Referring cases with confidence below 0.87 or flagged by HOD p_out, the model answered 78% of test "
        "patients' images; its answers were wrong for 3% (2–5%) of the patients it answered, within the promised "
        "5%; at the held-out site it answered 64% and was wrong for 12%: the promise does not carry over there "
        "(7 points over); at the held-out conditions it answered 40% and every answered patient got a wrong "
        "answer: the promise does not carry over there (95 points over)."
    )
    miss = table.iloc[:1].assign(on="miss", risk=0.04, risk_low=0.02, risk_high=0.07)
    assert "it missed melanoma in 4% (2–7%) of patients with melanoma, within the promised 5%" in (
        abstention_sentence(miss, positive="melanoma")
    )
    refer_all = table.iloc[:1].assign(threshold=math.inf)
    assert abstention_sentence(refer_all) == (
        "No referral threshold could be certified from the validation patients for at most 5% errors among "
        "answered cases: every case is referred."
    )


def test_sentences_from_real_tables_quote_their_numbers_and_name_the_held_out_site():
    rng = np.random.default_rng(0)

    def draw(n, noise):
        patient = np.repeat(np.arange(n), 2)
        logits = 3 * rng.normal(size=(2 * n, 3))
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        y = (p.cumsum(1) > rng.random(2 * n)[:, None]).argmax(1)
        flip = rng.random(2 * n) < noise
        y[flip] = rng.integers(0, 3, flip.sum())
        sex = np.where(rng.random(n) < 0.5, "F", "M")[patient]
        return p, pd.DataFrame({"label_idx": y, "patient_id": patient, "sex": sex})

    (p_val, val), (p_test, test), (p_site, site) = draw(500, 0), draw(400, 0), draw(300, 0.5)
    kw = {"attributes": ["sex"], "n_resamples": 200}
    sets = fit_conformal(p_val, val)
    evaluated = [("test", p_test, test), ("site_ood", p_site, site)]
    table = pd.concat([conformal_table(sets, p, f, set_name=s, **kw) for s, p, f in evaluated])
    text = coverage_sentence(table)
    ref = table[(table["set"] == "test") & (table["attribute"] == "all")].iloc[0]
    women = table[(table["set"] == "test") & (table["group"] == "F")].iloc[0]
    held = table[(table["set"] == "site_ood") & (table["attribute"] == "all")].iloc[0]
    assert text.startswith(f"At a 90% target, the sets covered {100 * ref['coverage']:.0f}% (")
    assert f"women {100 * women['coverage']:.0f}%" in text
    assert f"at the held-out site {100 * held['coverage']:.0f}%: the guarantee does not hold there" in text

    rule = RiskControlledAbstention(alpha=0.05).fit(p_val, val["label_idx"], val["patient_id"])
    rows = pd.concat([abstention_table(rule, p, f, set_name=s, **kw) for s, p, f in evaluated])
    text = abstention_sentence(rows)
    assert f"confidence below {rule.threshold_:.2f}" in text and "within the promised 5%" in text
    assert "at the held-out site" in text and "the promise does not carry over there" in text


def test_a_point_estimate_past_the_promise_is_not_called_within_it():
    row = _row("test", threshold=0.9, referral_rate=0.5, risk=0.07, risk_low=0.04, risk_high=0.1, guarantee="holds")
    assert "above the promised 5%, but within sampling error of it" in abstention_sentence(pd.DataFrame([row]))
    worse = {**row, "risk_low": 0.06, "guarantee": "above_alpha"}
    assert "above the promised 5% beyond sampling error" in abstention_sentence(pd.DataFrame([worse]))
    cov = {"method": "marginal", "set": "test", "attribute": "all", "group": "all", "flag": "", "target": 0.9}
    cov.update(coverage=0.88, coverage_low=0.85, coverage_high=0.91, mean_set_size=1.2, guarantee="holds")
    assert "of test patients, with 1.2 classes per set on average, below the target but within sampling error" in (
        coverage_sentence(pd.DataFrame([cov]))
    )


def test_the_trust_section_draws_one_reliability_diagram_per_subgroup_only_when_a_bin_has_an_accuracy():
    from medvision.evaluation.calibration import calibration_by_group
    from medvision.report.trust import TrustSection, trust_blocks

    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "label_idx": rng.integers(0, 2, n),
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "sex": rng.choice(["F", "M"], n),
        }
    )
    probs = rng.dirichlet([1, 1], n)
    cal = calibration_by_group(probs, frame, attributes=["sex"], min_patients=20, n_resamples=50)
    drawn = trust_blocks(TrustSection(reference="test", reliability=cal.reliability))
    (fig,) = [b for b in drawn if b["kind"] == "figure"]
    assert fig["uri"].startswith("data:image/png;base64,") and "Reliability per subgroup and site on test" in fig["alt"]
    assert set(cal.reliability["group"]) == {"all", "F", "M"}  # one panel each
    empty = cal.reliability.assign(accuracy=np.nan)
    assert not [b for b in trust_blocks(TrustSection(reference="test", reliability=empty)) if b["kind"] == "figure"]
