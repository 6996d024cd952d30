"""The one-page summary: the report's numbers turned into sentences a clinician can act on.

Every sentence is computed from the context - nothing is claimed that the numbers do not show - and the thresholds
that turn numbers into words ("material drop", "well calibrated") come from :class:`SummaryOptions`, so the team
that owns the model owns the wording. A finding whose numbers are missing is left out and listed as a caveat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medvision.report.context import ReportContext

__all__ = ["Finding", "Summary", "summarize"]

_METRIC_NAMES = {
    "auroc": "AUROC",
    "accuracy": "accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "auprc": "AUPRC",
    "balanced_accuracy": "balanced accuracy",
}


def metric_label(name: str) -> str:
    """Display name of a metric (``auroc`` -> ``AUROC``); unknown names are shown as given."""
    return _METRIC_NAMES.get(name, name.replace("_", " "))


@dataclass(frozen=True)
class Finding:
    """One summary sentence. ``topic`` is a stable key (tests and callers find findings by it); ``concern`` marks a
    finding the reader should act on (it is highlighted)."""

    topic: str
    text: str
    concern: bool = False


@dataclass(frozen=True)
class Summary:
    findings: list[Finding] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)

    def finding(self, topic: str) -> Finding | None:
        return next((f for f in self.findings if f.topic == topic), None)


def _num(x: object) -> float | None:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _ci(lo: object, hi: object) -> str:
    lo_, hi_ = _num(lo), _num(hi)
    if lo_ is None or hi_ is None:
        return ""
    return f" (95% CI {lo_:.2f}{'–' if lo_ >= 0 else ' to '}{hi_:.2f})"


def _row(df: pd.DataFrame, **match: str) -> pd.Series | None:
    mask = np.ones(len(df), dtype=bool)
    for col, val in match.items():
        mask &= (df[col].astype(str) == val).to_numpy()
    return None if not mask.any() else df[mask].iloc[0]


def _discrimination(ctx: ReportContext, out: Summary) -> None:
    opt, perf = ctx.summary, ctx.performance
    m = metric_label(opt.metric)
    id_row = None if perf is None else _row(perf.table, eval_set=opt.id_set, metric=opt.metric)
    if id_row is None or _num(id_row["value"]) is None:
        out.caveats.append(
            f"No {m} on the in-distribution test set ('{opt.id_set}') was given, so the headline "
            "discrimination is missing."
        )
        return
    v = float(id_row["value"])
    ci = _ci(id_row["low"], id_row["high"])
    text = f"On in-distribution test patients ('{opt.id_set}'), {m} is {v:.2f}{ci}."
    if opt.metric == "auroc":
        text += f" A randomly chosen positive case is ranked above a randomly chosen negative one {v:.0%} of the time."
    out.findings.append(Finding("discrimination", text))
    lo, hi = _num(id_row["low"]), _num(id_row["high"])
    if lo is not None and hi is not None and hi - lo > opt.wide_ci:
        out.caveats.append(
            f"The test-set interval for {m} is wide ({hi - lo:.2f}); more test patients would narrow it."
        )
    if opt.site_ood_set is None or perf is None:
        return
    ood_row = _row(perf.table, eval_set=opt.site_ood_set, metric=opt.metric)
    if ood_row is None or _num(ood_row["value"]) is None:
        out.caveats.append(
            f"No results on another site ('{opt.site_ood_set}'): how the model transfers to a new site is unknown."
        )
        return
    w = float(ood_row["value"])
    drop = v - w
    ci = _ci(ood_row["low"], ood_row["high"])
    if drop >= opt.material_drop:
        out.findings.append(
            Finding(
                "site_ood",
                (
                    f"At the other site ('{opt.site_ood_set}'), {m} drops to {w:.2f}{ci}, {drop:.2f} lower than in "
                    f"distribution. Check performance on local data before relying on the model at a new site."
                ),
                concern=True,
            )
        )
    else:
        out.findings.append(
            Finding(
                "site_ood",
                (
                    f"At the other site ('{opt.site_ood_set}'), {m} is {w:.2f}{ci}, "
                    f"within {opt.material_drop:.2f} of the "
                    "in-distribution value: performance carried over without retraining."
                ),
            )
        )


def _caught_at(deferral: pd.DataFrame, detector: str, rate: float) -> float | None:
    d = deferral[deferral["detector"].astype(str) == detector].sort_values("referral_rate")
    x, y = d["referral_rate"].to_numpy(float), 1 - d["outliers_missed"].to_numpy(float)
    if len(x) == 0 or rate < x.min() or rate > x.max():
        return None
    return float(np.interp(rate, x, y))


def _ood(ctx: ReportContext, out: Summary) -> None:
    ood = ctx.ood
    det = None if ood is None else ood.primary_detector
    if ood is None or det is None:
        out.caveats.append(
            "Outlier screening was not evaluated: the model's behaviour on unusual images "
            "(unseen conditions, other scanners) is unknown."
        )
        return
    row = _row(ood.detectors, detector=det)
    auroc = _num(row["auroc"])
    if auroc is None:
        return
    ci = _ci(row.get("auroc_low"), row.get("auroc_high"))
    text = f"Unusual images are told apart from usual ones with AUROC {auroc:.2f}{ci} (detector: {det})."
    rate = ctx.summary.referral_rate
    caught = None if ood.deferral is None else _caught_at(ood.deferral, det, rate)
    if caught is not None:
        text += f" Referring the {rate:.0%} most unusual cases for review would catch {caught:.0%} of the outliers."
    out.findings.append(Finding("ood", text, concern=auroc < 0.8))


def _calibration(ctx: ReportContext, out: Summary) -> None:
    cal, opt = ctx.calibration, ctx.summary
    if cal is None or cal.metrics.empty:
        out.caveats.append("Calibration was not measured: treat predicted probabilities as scores, not risks.")
        return
    row = cal.metrics.iloc[-1] if cal.deployed is None else _row(cal.metrics, method=cal.deployed)
    ece = _num(row["ece"])
    if ece is None:
        return
    how = f"ECE {ece:.3f}, {row['method']}"
    if ece <= opt.ece_good:
        text = (
            f"Predicted probabilities are well calibrated: on average they differ from observed frequencies by "
            f"{ece * 100:.1f} percentage points ({how})."
        )
    elif ece <= opt.ece_poor:
        text = (
            f"Predicted probabilities are moderately calibrated: on average they are off by {ece * 100:.1f} "
            f"percentage points ({how}); read them as approximate risks."
        )
    else:
        text = (
            f"Predicted probabilities are poorly calibrated: on average they are off by {ece * 100:.1f} "
            f"percentage points ({how}); use them to rank cases, not as risks."
        )
    out.findings.append(Finding("calibration", text, concern=ece > opt.ece_good))


def _subgroups(ctx: ReportContext, out: Summary) -> None:
    sg = ctx.subgroups
    if sg is None or sg.table.empty:
        out.caveats.append("Subgroup performance was not evaluated: differences between patient groups are unknown.")
        return
    t = sg.table
    flags = t["flag"].fillna("").astype(str).str.strip()
    flagged, usable = t[flags != ""], t[flags == ""]
    if len(flagged):
        names = ", ".join(f"{a} = {g}" for a, g in zip(flagged["attribute"], flagged["group"]))
        out.caveats.append(
            f"{len(flagged)} subgroup(s) ({names}) have too few patients or no positives; they are "
            "shown but left out of the gap summary."
        )
    gaps = pd.to_numeric(usable["gap"], errors="coerce")
    m = metric_label(sg.metric)
    if gaps.isna().all():
        return
    worst = usable.loc[gaps.idxmin()]
    g = float(worst["gap"])
    if g >= 0:
        out.findings.append(Finding("subgroups", f"No subgroup scores below the overall {m} ({sg.overall:.2f})."))
        return
    lo, hi = _num(worst["gap_low"]), _num(worst["gap_high"])
    text = (
        f"The weakest subgroup is {worst['attribute']} = {worst['group']}: {m} {float(worst['value']):.2f}"
        f"{_ci(worst['low'], worst['high'])}, {-g:.2f} below overall"
    )
    if lo is not None and hi is not None:
        clear = hi < 0
        text += f" (gap 95% CI {lo:.2f} to {hi:.2f}). " + (
            "The interval excludes zero, so this gap is unlikely to be chance."
            if clear
            else "The interval includes zero, so this gap may be chance."
        )
    else:
        text += ". No interval was given for this gap."
        clear = True
    out.findings.append(Finding("subgroups", text, concern=clear))


def summarize(ctx: ReportContext) -> Summary:
    """Turn the context's numbers into the summary box (method spec §1, §4, §10).

    Args:
        ctx: the report context.

    Returns:
        Findings in a fixed order (discrimination, site_ood, ood, calibration, subgroups; absent data is skipped)
        and caveats (missing analyses, wide intervals, flagged groups, then the caller's own caveats).

    Example:
        >>> summarize(ReportContext(title="t")).findings
        []
    """
    out = Summary()
    _discrimination(ctx, out)
    _ood(ctx, out)
    _calibration(ctx, out)
    _subgroups(ctx, out)
    out.caveats.extend(ctx.summary.caveats)
    return out
