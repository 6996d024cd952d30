"""The report's summary box: its sentences follow the numbers (a material drop at the other site, calibration,
a subgroup gap whose interval excludes zero) and the team's own threshold, not fixed wording.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from report_factory import full_context

from medvision.evaluation.document import Subgroups
from medvision.evaluation.predict import Predictions
from medvision.evaluation.tables import fit_detectors, ood_tables, subgroup_table
from medvision.report import (
    Finding,
    OODSection,
    ReportContext,
    SubgroupSection,
    SummaryOptions,
    render_report,
    summarize,
)


def test_summary_follows_the_numbers() -> None:
    dropped = summarize(full_context(id_auroc=0.91, ood_auroc=0.78))
    kept = summarize(full_context(id_auroc=0.91, ood_auroc=0.89))
    assert dropped.finding("site_ood").concern and "drops to 0.78" in dropped.finding("site_ood").text
    assert "0.13 lower" in dropped.finding("site_ood").text
    assert not kept.finding("site_ood").concern and "drops" not in kept.finding("site_ood").text
    assert "carried over" in kept.finding("site_ood").text

    # the threshold is the team's: with a 0.15 tolerance the same 0.13 drop is not called material
    ctx = full_context(ood_auroc=0.78)
    assert (
        not summarize(ctx.model_copy(update={"summary": SummaryOptions(material_drop=0.15)}))
        .finding("site_ood")
        .concern
    )

    assert "well calibrated" in summarize(full_context(ece=0.02)).finding("calibration").text
    assert "poorly calibrated" in summarize(full_context(ece=0.2)).finding("calibration").text

    clear = summarize(full_context(worst_gap=-0.08, gap_high=-0.02)).finding("subgroups")
    unclear = summarize(full_context(worst_gap=-0.08, gap_high=0.03)).finding("subgroups")
    assert clear.concern and "excludes zero" in clear.text and "0.08 below overall" in clear.text
    assert not unclear.concern and "may be chance" in unclear.text
    assert (
        "No subgroup scores below" in summarize(full_context(worst_gap=0.01, gap_high=0.05)).finding("subgroups").text
    )


def test_a_group_with_one_positive_is_named_with_its_reason_and_no_chance_claim(tmp_path) -> None:
    """Issue 21: the headline called a one-positive subgroup's gap 'unlikely to be chance'. From the evaluate
    stage's table through metrics.json's typed rows to the rendered report: the group is named with its reason in
    words, gets no interval, and the summary claims nothing about it."""
    rng = np.random.default_rng(3)
    pid = np.repeat(np.arange(60), 2)
    label = np.isin(pid, [0, *range(30, 45)]).astype(int)  # one positive woman (patients < 30), 15 positive men
    p1 = np.clip(0.25 + 0.5 * label + rng.normal(scale=0.1, size=len(pid)), 0.01, 0.99)
    p1[pid == 0] = 0.001  # the one positive woman is ranked below every negative
    frame = pd.DataFrame(
        {"patient_id": [f"P{i}" for i in pid], "label_idx": label, "sex": np.where(pid < 30, "F", "M")}
    )
    probs = np.c_[1 - p1, p1]
    pred = Predictions(frame, np.log(probs), probs, np.zeros((len(pid), 2)), None)
    rows, diffs, overall = subgroup_table(
        pred, ["sex"], positive=1, min_patients=20, n_resamples=200, seed=0, min_positives=5, min_negatives=5
    )
    doc = Subgroups.model_validate(
        {"set": "test", "metric": "AUROC", "overall": overall, "table": rows, "differences": diffs}
    )
    table = pd.DataFrame([r.model_dump() for r in doc.table]).fillna({"flag": ""}).fillna(np.nan)
    assert doc.table[0].n_positive == 1 and doc.table[0].flag == "few_positives"
    ctx = ReportContext(
        title="one positive",
        subgroups=SubgroupSection(metric="auroc", overall=overall["value"], table=table),
    )
    summary = summarize(ctx)
    said = " ".join([f.text for f in summary.findings] + summary.caveats)
    assert (
        "unlikely to be chance" not in said and "sex = F" not in (summary.finding("subgroups") or Finding("", "")).text
    )
    assert "sex = F (only 1 patient with a positive case: no estimate or interval)" in said
    html = render_report(ctx, tmp_path / "report.html").read_text()
    assert "only 1 patient with a positive case: no estimate or interval" in html
    assert "unlikely to be chance" not in html


def _inverted_screening() -> OODSection:
    """Real detector rows from the evaluate stage's table: inliers are unsure (MSP low), the outliers sit far away
    in feature space but the classifier is sure of them, so MSP ranks inliers as the more unusual ones."""
    rng = np.random.default_rng(5)

    def preds(n: int, sure: float, shift: int, tag: str) -> Predictions:
        logits = rng.normal(scale=0.3, size=(n, 2)) + np.c_[np.full(n, sure), np.zeros(n)]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        frame = pd.DataFrame(
            {"patient_id": [f"{tag}{i}" for i in range(n)], "label": "0", "label_idx": np.zeros(n, int)}
        )
        return Predictions(frame, logits, probs, rng.normal(size=(n, 4)) + 10.0 * np.eye(4)[shift], None)

    train, inliers, outliers = preds(80, 0.2, 0, "T"), preds(60, 0.2, 0, "I"), preds(40, 4.0, 1, "O")
    rows, _, _ = ood_tables(inliers, outliers, fit_detectors(train, 2), n_resamples=50, seed=0)
    return OODSection(detectors=pd.DataFrame(rows), primary="msp", outlier_sets=["condition_ood"])


def test_an_inverted_deployed_detector_is_said_plainly_with_the_best_other_one(tmp_path) -> None:
    """Issue 21: the report marked MSP as the deployed detector at AUROC 0.34 without saying that below 0.5 the score
    is inverted, nor that another detector reached 0.74 on the same outliers."""
    ood = _inverted_screening()
    aurocs = dict(zip(ood.detectors["detector"], ood.detectors["auroc"]))
    assert aurocs["msp"] < 0.5 and max(aurocs.values()) > 0.9  # what the study saw: deployed inverted, another good
    best = max((d for d in aurocs if d != "msp"), key=aurocs.get)
    ctx = ReportContext(title="inverted", ood=ood)
    text = summarize(ctx).finding("ood").text
    assert f"The deployed detector's score (msp) is inverted: its AUROC of {aurocs['msp']:.2f} is below 0.5" in text
    assert "ranks inliers as more unusual than the outliers" in text
    assert f"The best other detector on the same outliers is {best}, AUROC {aurocs[best]:.2f}" in text
    html = render_report(ctx, tmp_path / "report.html").read_text()
    assert "msp (deployed; inverted: AUROC below 0.5)" in html
    assert html.count("ranks inliers as more unusual than the outliers") == 2  # the summary and the OOD section

    # a detector that works is not called inverted
    fine = ReportContext(title="fine", ood=ood.model_copy(update={"primary": best}))
    assert "inverted" not in summarize(fine).finding("ood").text
    assert "inverted" not in render_report(fine, tmp_path / "fine.html").read_text()
