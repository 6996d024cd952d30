"""What each report section says, as display blocks for the template.

A builder reads one part of the :class:`ReportContext` and returns paragraphs, tables of pre-formatted strings,
figures as data URIs, a saliency gallery or preformatted text; an empty list means the section was not run, and the
renderer shows its note instead. Every number is formatted here, so the template only lays out strings it escapes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medvision.report import figures
from medvision.report._blocks import DASH as _DASH
from medvision.report._blocks import estimate as _est
from medvision.report._blocks import figure as _figure
from medvision.report._blocks import num as _f
from medvision.report._blocks import para as _para
from medvision.report._blocks import table as _table
from medvision.report._blocks import text as _text
from medvision.report.context import SALIENCY_CATEGORIES, OODSection, PerformanceSection, ReportContext
from medvision.report.detectors import detector_choice_blocks
from medvision.report.study import StudySection
from medvision.report.summary import (
    Summary,
    inverted_detector,
    label_shift_hurts,
    metric_label,
    subgroup_flag,
    summarize,
)
from medvision.report.trust import trust_blocks

__all__ = ["section_blocks"]

# -- sections -------------------------------------------------------------------------------------


def _cohort(ctx: ReportContext) -> list[dict]:
    c = ctx.cohort
    if c is None or c.splits.empty:
        return []
    classes = list(dict.fromkeys([*c.classes, *c.counts["label"].astype(str)]))
    by = c.counts.assign(label=c.counts["label"].astype(str), split=c.counts["split"].astype(str))
    by = by.pivot_table(index="split", columns="label", values="images", aggfunc="sum", fill_value=0)
    rows = []
    for _, r in c.splits.iterrows():
        s = str(r["split"])
        rows.append(
            [
                s,
                _f(r["patients"], 0),
                _f(r["images"], 0),
                *[_f(by.at[s, k], 0) if s in by.index and k in by.columns else "0" for k in classes],
            ]
        )
    blocks = [
        _para(
            f"Cohort {c.name}: {len(c.classes)} classes. Manifest SHA-256 {c.manifest_sha256} identifies "
            f"exactly which images were used."
        ),
        _table("Patients and images per split, and images per class", ["split", "patients", "images", *classes], rows),
        _figure(
            figures.cohort_counts(c.counts, [r[0] for r in rows], classes),
            "Stacked bar chart of images per split, by class",
            "Images per split; each band is one class.",
        ),
    ]
    if c.subgroups is not None and not c.subgroups.empty:
        sg = c.subgroups.astype({"attribute": str, "value": str, "split": str})
        splits = list(dict.fromkeys(c.splits["split"].astype(str)))
        wide = sg.pivot_table(
            index=["attribute", "value"], columns="split", values="images", aggfunc="sum", fill_value=0
        )
        blocks.append(
            _table(
                "Images per subgroup and split",
                ["attribute", "value", *splits],
                (
                    [a, v, *[_f(wide.at[(a, v), s], 0) if s in wide.columns else "0" for s in splits]]
                    for a, v in wide.index
                ),
                numeric_from=2,
            )
        )
    q = f"{c.quarantined} file(s) were quarantined (not ingested) during the cohort build"
    blocks.append(_para(q + (":" if c.quarantine_reasons else ".")))
    if c.quarantine_reasons:
        blocks.append(
            _table(
                "Quarantined files by reason",
                ["reason", "files"],
                ([k, str(v)] for k, v in sorted(c.quarantine_reasons.items(), key=lambda kv: -kv[1])),
            )
        )
    return blocks


def _training(ctx: ReportContext) -> list[dict]:
    t = ctx.training
    if t is None or not t.stages:
        return []
    rows = [
        [
            s.name,
            s.backbone,
            s.weights_source,
            s.head,
            f"{s.label_fraction:.0%}",
            str(s.epochs),
            _DASH if s.best_val_value is None else f"{s.best_val_metric or 'metric'} {_f(s.best_val_value)}",
            _text(s.mlflow_run_id),
        ]
        for s in t.stages
    ]
    blocks = [
        _table(
            "Training stages, in order",
            [
                "stage",
                "backbone",
                "weights source",
                "head",
                "label fraction",
                "epochs",
                "best validation",
                "MLflow run",
            ],
            rows,
            numeric_from=4,
        )
    ]
    if t.curves is not None and not t.curves.empty:
        blocks.append(
            _figure(
                figures.learning_curves(t.curves),
                "Learning curves: logged metrics per epoch",
                "Per-epoch metrics for each stage.",
            )
        )
    return blocks


_METRIC_ORDER = ["auroc", "accuracy", "sensitivity", "specificity"]


def _threshold_sentence(p: PerformanceSection) -> str:
    """What sensitivity and specificity rest on: the validation threshold, or, when none was chosen, that none was
    and why (the table then has no such columns, and a reader must not look for a threshold that does not exist)."""
    measured = p.table["metric"].astype(str).isin(["sensitivity", "specificity"]).any()
    if p.no_operating_point is not None or (p.operating_point is None and not measured):
        why = p.no_operating_point or "the evaluation records no reason"
        return (
            f"No operating point was chosen on validation ({why}), so no sensitivity or specificity was measured "
            "on any set."
        )
    op = f" Operating point: {p.operating_point}." if p.operating_point else ""
    return "Sensitivity and specificity are at a threshold chosen on validation data." + op


def _performance(ctx: ReportContext) -> list[dict]:
    p = ctx.performance
    if p is None or p.table.empty:
        return []
    t = p.table.assign(metric=p.table["metric"].astype(str), eval_set=p.table["eval_set"].astype(str))
    present = list(dict.fromkeys(t["metric"]))
    metrics = [m for m in _METRIC_ORDER if m in present] + [m for m in present if m not in _METRIC_ORDER]
    rows = []
    for s in dict.fromkeys(t["eval_set"]):
        cells = []
        for m in metrics:
            r = t[(t["eval_set"] == s) & (t["metric"] == m)]
            cells.append(_DASH if r.empty else _est(r["value"].iloc[0], r["low"].iloc[0], r["high"].iloc[0]))
        rows.append([s, *cells])
    labels = {m: metric_label(m) for m in metrics}
    return [
        _para(
            "Each evaluation set is scored by the same model, with no retraining for other sites or "
            "scanners. " + _threshold_sentence(p)
        ),
        _table(
            "Point estimate (95% bootstrap CI over patients) per evaluation set",
            ["evaluation set", *[f"{labels[m]} (95% CI)" for m in metrics]],
            rows,
        ),
        _figure(
            figures.performance_forest(t, labels),
            "Forest plot of each metric per evaluation set with 95% confidence intervals",
            "Point estimates with 95% CIs; sets in table order.",
        ),
    ]


def _calibration(ctx: ReportContext) -> list[dict]:
    c = ctx.calibration
    if c is None or c.metrics.empty:
        return []
    temp = f" The fitted temperature is {c.temperature:.2f}." if c.temperature is not None else ""
    blocks = [
        _para(
            f"Measured on '{c.eval_set}'. ECE uses {c.bins} equal-width confidence bins: the average gap "
            f"between predicted confidence and observed accuracy (lower is better; so are NLL and Brier)." + temp
        ),
        _table(
            "Calibration metrics before and after temperature scaling",
            ["method", "NLL", "Brier", "ECE"],
            ([str(r["method"]), _f(r["nll"]), _f(r["brier"]), _f(r["ece"])] for _, r in c.metrics.iterrows()),
        ),
    ]
    if c.reliability is not None and not c.reliability.empty:
        blocks.append(
            _figure(
                figures.calibration_reliability(c.reliability),
                "Reliability diagram: observed accuracy against mean confidence per bin",
                "Points on the diagonal are perfectly calibrated; larger markers are bins holding more images.",
            )
        )
    if ctx.study is not None:
        blocks += _calibration_by_set(ctx.study, c.eval_set) + _label_shift_table(ctx.study)
    return blocks


def _calibration_by_set(st: StudySection, shown: str) -> list[dict]:
    """ECE on every evaluation set and their reliability diagrams: a model calibrated on test can be badly off at
    a held-out site, and the table above covers one set only."""
    cal, blocks = st.frame("calibration"), []
    if not cal.empty and cal["eval_set"].nunique() > 1:
        methods = list(dict.fromkeys(cal["method"].astype(str)))
        ece = {(str(r.eval_set), str(r.method)): r.ece for r in cal.itertuples()}
        sets = list(dict.fromkeys(cal["eval_set"].astype(str)))
        blocks.append(
            _table(
                "ECE on every evaluation set",
                ["evaluation set", *(f"ECE, {m}" for m in methods)],
                ([s, *(_f(ece.get((s, m))) for m in methods)] for s in sets),
            )
        )
    rel = st.frame("reliability")
    for set_name, group in rel.groupby("eval_set", sort=False) if not rel.empty else ():
        if str(set_name) == shown:
            continue
        blocks.append(
            _figure(
                figures.calibration_reliability(group.drop(columns="eval_set")),
                f"Reliability diagram on '{set_name}': observed accuracy against mean confidence per bin",
                f"On '{set_name}'. Points on the diagonal are perfectly calibrated; larger markers hold more images.",
            )
        )
    return blocks


def _label_shift_table(st: StudySection) -> list[dict]:
    """The label-shift comparison from ``metrics.json``; when the adjustment hurts, the caption says its adjusted
    numbers are evidence that its assumption fails, not numbers to use."""
    table = st.frame("label_shift")
    if table.empty:
        return []
    where = f"'{st.label_shift_set}'"
    caption = (
        f"Label-shift adjustment at {where} makes things worse: its assumption (p(x|y) fixed) fails there, so the "
        "adjusted column shows the failure and is not to be used"
        if label_shift_hurts(table)
        else f"Label-shift adjustment at {where} (EM estimate of its class prior)"
    )
    return [
        _table(
            caption,
            ["metric", "without adjustment", "with adjustment"],
            ([str(r["metric"]), _f(r["before"]), _f(r["after"])] for _, r in table.iterrows()),
        )
    ]


def _outliers_named(ctx: ReportContext) -> str:
    """The outlier sets by what they hold: "held-out conditions 'df', 'vasc' (condition_ood)", not the set's id."""
    st, parts = ctx.study, []
    for s in ctx.ood.outlier_sets if ctx.ood else []:
        if s == "condition_ood" and st and st.heldout_conditions:
            parts.append(f"held-out conditions {', '.join(repr(c) for c in st.heldout_conditions)} ({s})")
        elif s == "site_ood" and st and st.heldout_sites:
            parts.append(f"images of the held-out site(s) {', '.join(repr(c) for c in st.heldout_sites)} ({s})")
        else:
            parts.append(s)
    if st and st.abstention_classes:
        parts.append(f"(abstention classes {', '.join(repr(c) for c in st.abstention_classes)} are not inliers here)")
    return "; ".join(parts)


def _ood(ctx: ReportContext) -> list[dict]:
    o = ctx.ood
    if o is None or o.detectors.empty:
        return []
    primary = o.primary_detector
    sets = f" Outliers here: {_outliers_named(ctx)}." if o.outlier_sets else ""
    blocks = [
        _para(
            "Each detector gives every image a score; higher means more unusual. Outliers are the positive "
            "class unless a column says otherwise." + sets
        ),
        _ood_table(o, primary),
        *detector_choice_blocks(o),
    ]
    inverted = inverted_detector(o)
    if inverted:
        blocks.append(_para(inverted))
    if o.scores is not None and not o.scores.empty:
        present = list(dict.fromkeys(o.scores["detector"].astype(str)))
        shown = ([primary] if primary in present else []) + [d for d in present if d != primary]
        blocks.append(
            _figure(
                figures.ood_histograms(o.scores, shown),
                "Histograms of OOD scores for inliers and outliers per detector",
                "Score distributions; the less they overlap, the better outliers are separated.",
            )
        )
    if o.deferral is not None and not o.deferral.empty:
        blocks += _deferral(o.deferral, primary, ctx.summary.referral_rate)
    return blocks


def _ood_table(o: OODSection, primary: str | None) -> dict:
    """One row per detector, the deployed one marked; AUROC with its interval when the frame has one."""
    ci = "auroc_low" in o.detectors.columns and "auroc_high" in o.detectors.columns
    rows = [
        [
            str(r["detector"]) + (_deployed(r["auroc"]) if str(r["detector"]) == primary else ""),
            _est(r["auroc"], r["auroc_low"], r["auroc_high"]) if ci else _f(r["auroc"]),
            _f(r["aupr_in"]),
            _f(r["aupr_out"]),
            _f(r["fpr_at_95_tpr"]),
        ]
        for _, r in o.detectors.iterrows()
    ]
    return _table(
        "Outlier detection per detector",
        [
            "detector",
            "AUROC (outlier = positive)",
            "AUPR-IN (inlier = positive)",
            "AUPR-OUT (outlier = positive)",
            "FPR at 95% TPR (outlier = positive; lower is better)",
        ],
        rows,
    )


def _deployed(auroc: Any) -> str:
    a = pd.to_numeric(auroc, errors="coerce")
    return " (deployed; inverted: AUROC below 0.5)" if pd.notna(a) and a < 0.5 else " (deployed)"


def _deferral(deferral: pd.DataFrame, primary: str | None, rate: float) -> list[dict]:
    """The deferral curves, and the deployed detector's mean cost at the quoted referral rate."""
    blocks = [
        _figure(
            figures.deferral_curve(deferral, rate),
            "Deferral curves: outliers caught and mean cost against the share of cases referred",
            f"Dotted line: {rate:.0%} of cases referred.",
        )
    ]
    d = deferral[deferral["detector"].astype(str) == primary].sort_values("referral_rate")
    if len(d) and d["referral_rate"].min() <= rate <= d["referral_rate"].max():
        cost = float(np.interp(rate, d["referral_rate"].to_numpy(float), d["mean_cost"].to_numpy(float)))
        blocks.append(
            _para(
                f"With {primary}, referring {rate:.0%} of cases gives a mean cost of {cost:.3f} per "
                "case under the configured cost table."
            )
        )
    return blocks


def _subgroups(ctx: ReportContext) -> list[dict]:
    s = ctx.subgroups
    if s is None or s.table.empty:
        return []
    m = metric_label(s.metric)
    rows = [
        [
            str(r["attribute"]),
            str(r["group"]),
            _f(r["n_patients"], 0),
            _f(r["n_images"], 0),
            _est(r["value"], r["low"], r["high"]),
            _est(r["gap"], r["gap_low"], r["gap_high"]),
            subgroup_flag(r),
        ]
        for _, r in s.table.iterrows()
    ]
    overall = _est(s.overall, s.overall_low, s.overall_high)
    return [
        _para(
            f"{m} on '{s.eval_set}' per subgroup; overall {overall}. Gap = subgroup minus overall (negative: "
            "worse), with a CI from the same patient resamples. Groups with too few patients, or too few positive or "
            "negative cases, are shown with the reason but get no estimate, no interval and no gap, and are left "
            "out of gap summaries."
        ),
        _table(
            f"{m} per subgroup (95% CI) and gap to overall",
            [
                "attribute",
                "group",
                "patients",
                "images",
                f"{m} (95% CI)",
                "gap to overall (95% CI)",
                "why not estimated",
            ],
            rows,
            numeric_from=2,
        ),
        _figure(
            figures.subgroup_forest(s.table, s.overall, m),
            f"Forest plot of {m} per subgroup with 95% confidence intervals",
            "Dashed line: overall value. Flagged groups (too few patients, positive or negative cases) have no "
            "estimate, so their rows carry no marker.",
        ),
    ]


def _data_efficiency(ctx: ReportContext) -> list[dict]:
    d = ctx.data_efficiency
    if d is None or d.curve.empty:
        return []
    m = metric_label(d.metric)
    c = d.curve.sort_values(["start", "label_fraction"], kind="stable")
    rows = [
        [str(r["start"]), f"{float(r['label_fraction']):.0%}", _est(r["value"], r["low"], r["high"])]
        for _, r in c.iterrows()
    ]
    return [
        _para(f"{m} on '{d.eval_set}' after fine-tuning on nested subsets of the labelled training patients."),
        _figure(
            figures.data_efficiency_curve(d.curve, m),
            f"{m} against labelled fraction, one line per starting point, with 95% confidence bands",
            "Bands: 95% CIs.",
        ),
        _table(f"{m} per labelled fraction", ["start", "label fraction", f"{m} (95% CI)"], rows),
    ]


_CATEGORY_TITLES = {"correct": "Correct predictions", "wrong": "Wrong predictions", "most-ood": "Most unusual cases"}


def _saliency(ctx: ReportContext) -> list[dict]:
    s = ctx.saliency
    if s is None or not s.cases:
        return []
    groups = []
    for cat in SALIENCY_CATEGORIES:
        cases = []
        for c in (c for c in s.cases if c.category == cat):
            panels = [{"uri": figures.image_uri(c.image), "alt": f"Image {c.case_id}", "label": "image"}]
            for name, label in (("integrated_gradients", "Integrated Gradients"), ("gradcam", "Grad-CAM")):
                if getattr(c, name) is not None:
                    panels.append(
                        {
                            "uri": figures.overlay_uri(c.image, getattr(c, name)),
                            "alt": f"{label} attribution for {c.case_id}",
                            "label": label,
                        }
                    )
            facts = [f"true: {_text(c.true_label)}", f"predicted: {c.predicted_label}"]
            if c.instance_rank is not None:  # a case cohort: one of the case's top instances
                facts.insert(
                    0,
                    f"top instance {c.instance_rank}: #{(c.instance_position or 0) + 1} of {c.n_instances} in the "
                    f"case's order, pooling weight {c.instance_weight or 0:.2f}",
                )
            if c.confidence is not None:
                facts.append(f"confidence {c.confidence:.2f}")
            if c.ood_score is not None:
                facts.append(f"OOD score {c.ood_score:.3f}")
            cases.append({"id": c.case_id, "panels": panels, "facts": "; ".join(facts)})
        if cases:
            groups.append({"title": _CATEGORY_TITLES[cat], "cases": cases})
    bags = any(c.instance_rank is not None for c in s.cases)
    return [
        _para(
            "Brighter overlay = the pixels that moved the prediction most. Attributions show where the model "
            "looked, not why; use them to spot shortcuts (markers, rulers, text), not to justify a diagnosis."
            + (
                " Each case is a bag of instances (slices, views): shown are the instances its pooling weighed most "
                "(attention weights for an attention head), each attributed as if it were the case alone."
                if bags
                else ""
            )
        ),
        {"kind": "gallery", "groups": groups},
    ]


def _reproducibility(ctx: ReportContext) -> list[dict]:
    r = ctx.reproducibility
    items = [
        ("manifest SHA-256", r.manifest_sha256 or (ctx.cohort.manifest_sha256 if ctx.cohort else None)),
        ("code version", r.code_version),
        ("seeds", ", ".join(f"{k}={v}" for k, v in r.seeds.items()) or None),
        ("versions", ", ".join(f"{k} {v}" for k, v in r.versions.items()) or None),
    ]
    blocks: list[dict] = [{"kind": "dl", "entries": [(k, _text(v)) for k, v in items]}]
    if r.config_yaml:
        blocks.append({"kind": "pre", "caption": "Resolved configuration (YAML)", "text": r.config_yaml})
    else:
        blocks.append(_para("No resolved configuration was given; pass the run's config YAML to make it rerunnable."))
    return blocks


def _summary(summary: Summary) -> list[dict]:
    findings = [{"text": f.text, "concern": f.concern, "topic": f.topic} for f in summary.findings]
    return [{"kind": "summary", "findings": findings, "caveats": summary.caveats}]


_BUILDERS = {
    "cohort": _cohort,
    "training": _training,
    "performance": _performance,
    "calibration": _calibration,
    "ood": _ood,
    "subgroups": _subgroups,
    "trust": lambda ctx: trust_blocks(ctx.trust),
    "data-efficiency": _data_efficiency,
    "saliency": _saliency,
    "reproducibility": _reproducibility,
}


def section_blocks(sid: str, ctx: ReportContext) -> list[dict]:
    """The display blocks of section ``sid`` (an id in :data:`~medvision.report.render.SECTIONS`); the summary is
    drawn from the whole context, every other section from its own part of it."""
    return _summary(summarize(ctx)) if sid == "summary" else _BUILDERS[sid](ctx)
