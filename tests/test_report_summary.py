"""The report's summary box: its sentences follow the numbers (a material drop at the other site, calibration,
a subgroup gap whose interval excludes zero) and the team's own threshold, not fixed wording.
"""

from __future__ import annotations

from report_factory import full_context

from medvision.report import SummaryOptions, summarize


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
