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

from medvision.evaluation.subgroups import flag_words
from medvision.report.context import OODSection, ReportContext
from medvision.report.trust import summary_sentence

__all__ = ["Finding", "Summary", "inverted_detector", "label_shift_hurts", "subgroup_flag", "summarize"]

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


def _per_set(ctx: ReportContext, set_name: str) -> pd.Series | None:
    per = ctx.study.frame("per_set") if ctx.study else pd.DataFrame()
    return None if per.empty else _row(per, eval_set=set_name)


def _names(values: list[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _study_design(ctx: ReportContext, out: Summary) -> None:
    """What was held out, by name, and what was left out of the metrics."""
    st = ctx.study
    if st is None:
        return
    parts = []
    if st.heldout_sites:
        parts.append(f"held-out site(s) {_names(st.heldout_sites)} form the set 'site_ood' (never trained on)")
    if st.heldout_conditions:
        parts.append(
            f"held-out condition(s) {_names(st.heldout_conditions)} form 'condition_ood' (never trained on; "
            "screened as outliers)"
        )
    if st.abstention_classes:
        per = st.frame("per_set")
        left = int(per["abstention_excluded"].sum()) if "abstention_excluded" in per else 0
        parts.append(
            f"abstention class(es) {_names(st.abstention_classes)} are trained on as outliers and left out of every "
            f"discrimination metric and of the outlier-screening inliers ({left} evaluation image(s) left out)"
        )
    others = [s for s in st.outlier_sets if s != "condition_ood"]
    if others:
        parts.append(f"the set(s) {_names(others)} are also screened as out-of-distribution")
    if parts:
        out.findings.append(Finding("study", "What was tested: " + "; ".join(parts) + "."))
    out.caveats.extend(f"Cohort rule: {r}." for r in st.rules)
    per = st.frame("per_set")
    for _, r in per.iterrows() if "classes_absent" in per else []:
        if r["classes_absent"]:
            out.caveats.append(
                f"Class(es) {r['classes_absent']} are absent from '{r['eval_set']}': their AUROC is left out of that "
                f"set's average ({r['auroc_kind']})."
            )


def _discrimination(ctx: ReportContext, out: Summary) -> None:
    """The headline metric on in-distribution test patients, then how it carried over to the held-out site."""
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
    near_chance = opt.metric == "auroc" and v < opt.chance_auroc
    text = _headline_text(ctx, id_row)
    if near_chance:
        text += f" This is near chance (below {opt.chance_auroc:.2f}): the model has learnt little that generalises."
    out.findings.append(Finding("discrimination", text, concern=near_chance))
    lo, hi = _num(id_row["low"]), _num(id_row["high"])
    if lo is not None and hi is not None and hi - lo > opt.wide_ci:
        out.caveats.append(
            f"The test-set interval for {m} is wide ({hi - lo:.2f}); more test patients would narrow it."
        )
    if opt.site_ood_set is not None and perf is not None:
        _site_transfer(ctx, out, v, near_chance)


def _headline_text(ctx: ReportContext, id_row: pd.Series) -> str:
    """The in-distribution sentence: the value, its interval, and what the number means for this kind of AUROC."""
    opt = ctx.summary
    m, v = metric_label(opt.metric), float(id_row["value"])
    facts = _per_set(ctx, opt.id_set)
    kind = str(facts["auroc_kind"]) if facts is not None else "binary"
    text = f"On in-distribution test patients ('{opt.id_set}'), {m} is {v:.2f}{_ci(id_row['low'], id_row['high'])}"
    if opt.metric == "auroc" and kind.startswith("macro"):
        text += (
            f", {kind} (the mean of each class's AUROC against all other classes). For an average class, a randomly "
            f"chosen case of that class is ranked above a randomly chosen case of another class {v:.0%} of the time."
        )
        pos = None if facts is None else _num(facts["positive_auroc"])
        if facts is not None and pos is not None and ctx.study and ctx.study.positive_class:
            text += (
                f" For {ctx.study.positive_class} against the rest, AUROC is {pos:.2f}"
                f"{_ci(facts['positive_low'], facts['positive_high'])}."
            )
    elif opt.metric == "auroc":
        positive = (
            f" ({ctx.study.positive_class} against the other class)" if ctx.study and ctx.study.positive_class else ""
        )
        text += (
            f"{positive}. A randomly chosen positive case is ranked above a randomly chosen negative one {v:.0%} of "
            "the time."
        )
    else:
        text += "."
    return text


def _site_transfer(ctx: ReportContext, out: Summary, v: float, near_chance: bool) -> None:
    """The metric at the held-out site against the in-distribution value ``v``: carried over, or a material drop."""
    opt, perf = ctx.summary, ctx.performance
    if opt.site_ood_set is None or perf is None:
        return
    m = metric_label(opt.metric)
    ood_row = _row(perf.table, eval_set=opt.site_ood_set, metric=opt.metric)
    sites = ctx.study.heldout_sites if ctx.study and ctx.study.heldout_sites else []
    where = f"the held-out site(s) {_names(sites)} ('{opt.site_ood_set}')" if sites else f"'{opt.site_ood_set}'"
    if ood_row is None or _num(ood_row["value"]) is None:
        out.caveats.append(f"No results at {where}: how the model transfers to a new site is unknown.")
        return
    w = float(ood_row["value"])
    drop = v - w
    ci = _ci(ood_row["low"], ood_row["high"])
    if near_chance:
        text = (
            f"At {where}, {m} is {w:.2f}{ci}; with in-distribution {m} near chance, no conclusion about transfer to "
            "a new site can be drawn."
        )
        out.findings.append(Finding("site_ood", text, concern=True))
    elif drop >= opt.material_drop:
        text = (
            f"At {where}, {m} drops to {w:.2f}{ci}, {drop:.2f} lower than in distribution. Check performance on "
            "local data before relying on the model at a new site."
        )
        out.findings.append(Finding("site_ood", text, concern=True))
    else:
        text = (
            f"At {where}, {m} is {w:.2f}{ci}, within {opt.material_drop:.2f} of the in-distribution value: "
            "discrimination carried over without retraining."
        )
        out.findings.append(Finding("site_ood", text))
    _prevalence(ctx, out, opt.site_ood_set)


def _prevalence(ctx: ReportContext, out: Summary, site_set: str) -> None:
    """A site gap is only comparable when the class mix is: show it, and warn when it differs."""
    prev = ctx.study.frame("prevalence") if ctx.study else pd.DataFrame()
    if prev.empty:
        return
    a = prev[prev["eval_set"] == ctx.summary.id_set].set_index("class")["share"]
    b = prev[prev["eval_set"] == site_set].set_index("class")["share"]
    if a.empty or b.empty:
        return
    both = pd.concat([a, b], axis=1, keys=["test", "site"]).fillna(0.0)
    shown = "; ".join(f"{c}: {r['test']:.0%} vs {r['site']:.0%}" for c, r in both.iterrows())
    gap = float((both["test"] - both["site"]).abs().max())
    text = f"Class prevalence, '{ctx.summary.id_set}' vs '{site_set}': {shown}."
    if gap > ctx.summary.prevalence_gap:
        text += (
            f" The mix differs (up to {gap:.0%}): accuracy, sensitivity and specificity at a fixed threshold and "
            "calibration depend on it, so part of any site gap may be case mix rather than the images."
        )
    out.findings.append(Finding("prevalence", text, concern=gap > ctx.summary.prevalence_gap))


def _operating_point(ctx: ReportContext, out: Summary) -> None:
    """Sensitivity and specificity on every set at the validation threshold; a collapse is a concern."""
    if ctx.study is None:
        return
    per = ctx.study.frame("per_set")
    if per.empty or per[["sensitivity", "specificity"]].isna().all().all():
        return
    pos = ctx.study.positive_class or "the positive class"
    parts = [
        f"'{r['eval_set']}' sensitivity {r['sensitivity']:.2f}, specificity {r['specificity']:.2f}"
        for _, r in per.iterrows()
        if _num(r["sensitivity"]) is not None and _num(r["specificity"]) is not None
    ]
    text = f"At the operating point chosen on validation ({pos} against the rest): " + "; ".join(parts) + "."
    ref = _row(per, eval_set=ctx.summary.id_set)
    collapses = []
    if ref is not None:
        for _, r in per.iterrows():
            for metric in ("sensitivity", "specificity"):
                a, b = _num(ref[metric]), _num(r[metric])
                if a is not None and b is not None and a - b >= ctx.summary.collapse_drop:
                    collapses.append(
                        f"{metric} falls from {a:.2f} on '{ctx.summary.id_set}' to {b:.2f} on '{r['eval_set']}'"
                    )
    if collapses:
        text += (
            " The threshold does not transfer: " + "; ".join(collapses) + ". Choose the threshold again on local data."
        )
    out.findings.append(Finding("operating_point", text, concern=bool(collapses)))


def label_shift_hurts(table: pd.DataFrame) -> bool:
    """Whether the EM prior adjustment lowered accuracy or raised ECE by more than 0.01: then its assumption
    (p(x|y) the same at both places) fails, and the summary and the calibration section both say so."""
    rows = table.set_index("metric") if "metric" in table else pd.DataFrame()
    acc = rows.loc["accuracy"] if "accuracy" in rows.index else None
    ece = rows.loc["ece"] if "ece" in rows.index else None
    return bool(
        (acc is not None and acc["after"] < acc["before"] - 0.01)
        or (ece is not None and ece["after"] > ece["before"] + 0.01)
    )


def _label_shift(ctx: ReportContext, out: Summary) -> None:
    """The EM prior adjustment's effect; when it makes things worse, its assumption fails and the adjusted
    numbers are evidence of that, not numbers to use."""
    st = ctx.study
    if st is None:
        return
    table = st.frame("label_shift")
    if table.empty:
        return
    rows = table.set_index("metric")
    acc = rows.loc["accuracy"] if "accuracy" in rows.index else None
    ece = rows.loc["ece"] if "ece" in rows.index else None
    where = f"'{st.label_shift_set}'"
    parts = []
    if acc is not None:
        parts.append(f"accuracy {acc['before']:.2f} → {acc['after']:.2f}")
    if ece is not None:
        parts.append(f"ECE {ece['before']:.3f} → {ece['after']:.3f}")
    worse = label_shift_hurts(table)
    if worse:
        text = (
            f"Label-shift adjustment makes things worse at {where} ({', '.join(parts)}): its assumption — the "
            "images of each class look the same at both sites, p(x|y) fixed — fails here: do not use the "
            "adjusted numbers."
        )
    else:
        text = f"Adjusting for the class mix at {where} (EM estimate of its prior): {', '.join(parts)}."
    out.findings.append(Finding("label_shift", text, concern=worse))


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
    row = _row(ood.detectors, detector=det)  # never None: the context checks primary_detector names a row
    auroc = None if row is None else _num(row["auroc"])
    if row is None or auroc is None:
        return
    ci = _ci(row.get("auroc_low"), row.get("auroc_high"))
    what = "unusual images"
    if ctx.study and ctx.study.heldout_conditions and "condition_ood" in ood.outlier_sets:
        what = f"images of the held-out conditions {_names(ctx.study.heldout_conditions)}"
    extra = [s for s in ood.outlier_sets if s != "condition_ood"]
    if extra:
        what += f" and of the set(s) {_names(extra)}"
    text = f"Outlier screening tells {what} apart from usual ones with AUROC {auroc:.2f}{ci} (detector: {det})."
    rate = ctx.summary.referral_rate
    caught = None if ood.deferral is None else _caught_at(ood.deferral, det, rate)
    if caught is not None:
        text += f" Referring the {rate:.0%} most unusual cases for review would catch {caught:.0%} of the outliers."
    groups = ctx.study.frame("ood_by_group") if ctx.study else pd.DataFrame()
    mine = groups[groups["detector"] == det] if not groups.empty else groups
    if not mine.empty:
        text += (
            " By outlier group: "
            + ", ".join(
                f"{g} {a:.2f} ({n} images)"
                for g, a, n in zip(mine["group"], mine["auroc"], mine["n_images"])
                if _num(a) is not None
            )
            + "."
        )
    weak = [] if mine.empty else [g for g, a in zip(mine["group"], mine["auroc"]) if _num(a) is not None and a < 0.7]
    inverted = inverted_detector(ood)
    out.findings.append(Finding("ood", f"{text} {inverted}".strip(), concern=auroc < 0.8 or bool(weak)))
    costs = ctx.study.frame("costs") if ctx.study else pd.DataFrame()
    if not costs.empty:
        out.caveats.append(
            "Mean cost uses this cost table (agree it with clinicians): "
            + "; ".join(f"{o} {c:g}" for o, c in zip(costs["outcome"], costs["cost"]))
            + "."
        )


def inverted_detector(ood: OODSection) -> str:
    """Said plainly when the deployed detector's AUROC is below 0.5 (``""`` otherwise): its score runs the wrong way
    round, so referring the highest scores refers usual cases first; names the best other detector on the same
    outliers, the one a reader would deploy instead."""
    det = ood.primary_detector
    row = None if det is None else _row(ood.detectors, detector=det)
    auroc = None if row is None else _num(row["auroc"])
    if auroc is None or auroc >= 0.5:
        return ""
    text = (
        f"The deployed detector's score ({det}) is inverted: its AUROC of {auroc:.2f} is below 0.5, so it ranks "
        "inliers as more unusual than the outliers, and referring its highest scores refers usual cases first."
    )
    others = ood.detectors[ood.detectors["detector"].astype(str) != det]
    aurocs = pd.to_numeric(others["auroc"], errors="coerce")
    if aurocs.notna().any():
        best = others.loc[aurocs.idxmax()]
        text += (
            f" The best other detector on the same outliers is {best['detector']}, AUROC "
            f"{float(best['auroc']):.2f}{_ci(best.get('auroc_low'), best.get('auroc_high'))}."
        )
        if float(best["auroc"]) <= 0.5:
            text += " No detector here tells these outliers from usual images."
    return text


def _calibration(ctx: ReportContext, out: Summary) -> None:
    cal, opt = ctx.calibration, ctx.summary
    if cal is None or cal.metrics.empty:
        out.caveats.append("Calibration was not measured: treat predicted probabilities as scores, not risks.")
        return
    chosen = ctx.study.calibration_chosen if ctx.study and ctx.study.calibration_chosen else cal.deployed
    row = cal.metrics.iloc[-1] if chosen is None else _row(cal.metrics, method=chosen)
    ece = None if row is None else _num(row["ece"])
    if row is None or ece is None:
        return
    raw = _row(cal.metrics, method="uncalibrated")
    scaled = cal.metrics[cal.metrics["method"].astype(str) != "uncalibrated"]
    how = f"on '{cal.eval_set}', ECE {ece:.3f} {row['method']}"
    if raw is not None and len(scaled):
        how = (
            f"on '{cal.eval_set}', ECE {float(raw['ece']):.3f} raw and {float(scaled.iloc[0]['ece']):.3f} "
            f"{scaled.iloc[0]['method']}; the {row['method']} probabilities are used, chosen on validation"
        )
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
    per = ctx.study.frame("calibration") if ctx.study else pd.DataFrame()
    poor = []
    if not per.empty:
        mine = per[per["method"].astype(str) == str(row["method"])]
        if len(mine) > 1:
            text += (
                " ECE per evaluation set: "
                + ", ".join(f"'{s}' {e:.3f}" for s, e in zip(mine["eval_set"], mine["ece"]) if _num(e) is not None)
                + "."
            )
            poor = [
                s
                for s, e in zip(mine["eval_set"], mine["ece"])
                if s != cal.eval_set and _num(e) is not None and e > opt.ece_poor
            ]
            if poor:
                text += f" Probabilities are poorly calibrated on {_names(poor)}."
    out.findings.append(Finding("calibration", text, concern=ece > opt.ece_good or bool(poor)))


def subgroup_flag(row: pd.Series) -> str:
    """Why a subgroup row has no estimate, in words (``""`` for a usable row); counts are optional columns."""
    return flag_words(row["flag"], row["n_patients"], row.get("n_positive"), row.get("n_negative"))


def _subgroups(ctx: ReportContext, out: Summary) -> None:
    sg = ctx.subgroups
    if sg is None or sg.table.empty:
        out.caveats.append("Subgroup performance was not evaluated: differences between patient groups are unknown.")
        return
    t = sg.table
    flags = t["flag"].fillna("").astype(str).str.strip()
    flagged, usable = t[flags != ""], t[flags == ""]
    if len(flagged):
        why = "; ".join(f"{r['attribute']} = {r['group']} ({subgroup_flag(r)})" for _, r in flagged.iterrows())
        out.caveats.append(
            f"{len(flagged)} subgroup(s) are too small to judge, so no interval or gap is given and nothing is "
            f"claimed about them: {why}."
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
        Findings in a fixed order (study, discrimination, site_ood, prevalence, operating_point, ood, calibration,
        label_shift, subgroups, trust; absent data is skipped)
        and caveats (missing analyses, wide intervals, flagged groups, then the caller's own caveats).

    Example:
        >>> summarize(ReportContext(title="t")).findings
        []
    """
    out = Summary()
    _study_design(ctx, out)
    _discrimination(ctx, out)
    _operating_point(ctx, out)
    _ood(ctx, out)
    _calibration(ctx, out)
    _label_shift(ctx, out)
    _subgroups(ctx, out)
    trust = summary_sentence(ctx.trust)
    if trust is not None:
        out.findings.append(Finding("trust", trust[0], concern=trust[1]))
    out.caveats.extend(ctx.summary.caveats)
    return out
