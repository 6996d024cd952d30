"""From an evaluation folder (``metrics.json`` + saliency arrays) and its cohort card to a rendered report.

The evaluate stage writes everything a report needs, so a report can be re-rendered offline, without
MLflow or the models, by ``medvision report EVALUATION_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medvision.cohort.fingerprints import IdentifierFingerprints
from medvision.report.context import (
    CalibrationSection,
    CohortSection,
    DataEfficiencySection,
    OODSection,
    PerformanceSection,
    ReportContext,
    Reproducibility,
    SaliencyCase,
    SaliencySection,
    SubgroupSection,
    SummaryOptions,
    TrainingSection,
    TrainingStage,
)
from medvision.report.guard import check_fingerprints
from medvision.report.render import render_report
from medvision.report.study import StudySection

__all__ = ["context_from_evaluation", "evaluation_key", "report_from_evaluation"]

log = logging.getLogger("medvision.report")


def report_from_evaluation(
    evaluation_dir: Path,
    out_path: Path,
    *,
    title: str,
    pipeline_yaml: str | None = None,
    forbidden: list[str] | None = None,
) -> Path:
    """Render the report of ``evaluation_dir`` to ``out_path`` (self-contained HTML).

    A report made from another evaluation (other settings, models or cohort) already at ``out_path`` is kept,
    renamed by its evaluation's key (``report-<key>.html``), never silently overwritten; the key of the
    evaluation a report shows is written beside it (``<name>.evaluation``).
    """
    ctx = context_from_evaluation(evaluation_dir, title=title, pipeline_yaml=pipeline_yaml)
    cohort = json.loads((Path(evaluation_dir) / "metrics.json").read_text()).get("cohort") or {}
    if cohort.get("dir"):
        fingerprints, why_not = IdentifierFingerprints.for_cohort(Path(cohort["dir"]))
    else:
        fingerprints, why_not = None, "the evaluation records no cohort folder"
    if fingerprints is None:
        log.warning("identifier check of the report is limited: %s", why_not)
    else:
        check_fingerprints(ctx, fingerprints)
    out_path, key = Path(out_path), evaluation_key(evaluation_dir)
    _keep_previous(out_path, key)
    path = render_report(ctx, out_path, forbidden=forbidden or [])
    _key_file(out_path).write_text(key + "\n")
    return path


def evaluation_key(evaluation_dir: Path) -> str:
    """A short content hash of an evaluation's ``metrics.json``: two evaluations with other settings differ."""
    return hashlib.sha256((Path(evaluation_dir) / "metrics.json").read_bytes()).hexdigest()[:12]


def _key_file(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".evaluation")


def _keep_previous(out_path: Path, key: str) -> None:
    if not out_path.exists():
        return
    marker = _key_file(out_path)
    previous = marker.read_text().strip() if marker.exists() else "previous"
    if previous == key:
        return  # the same evaluation rendered again
    kept = out_path.with_name(f"{out_path.stem}-{previous}{out_path.suffix}")
    out_path.replace(kept)
    if marker.exists():
        marker.replace(_key_file(kept))
    log.warning("%s showed another evaluation (%s); kept it as %s", out_path.name, previous, kept.name)


def context_from_evaluation(evaluation_dir: Path, *, title: str, pipeline_yaml: str | None = None) -> ReportContext:
    """The report context of an evaluation: the primary model's sections plus the data-efficiency sweep."""
    evaluation_dir = Path(evaluation_dir)
    doc = json.loads((evaluation_dir / "metrics.json").read_text())
    models = doc["models"]
    primary = next((m for m in models if m["name"] == doc["primary_model"]), models[0])
    card = json.loads((Path(doc["cohort"]["dir"]) / "cohort.json").read_text())
    sets = doc["settings"]["sets"]
    return ReportContext(
        title=title,
        model_name=f"{primary.get('stage') or 'model'} ({primary.get('backbone')}, {primary.get('head')} head, "
        f"{_pct(primary['label_fraction'])} of labels)",
        summary=SummaryOptions(
            site_ood_set="site_ood" if "site_ood" in primary["sets"] else None,
            referral_rate=doc["settings"]["referral_rate"],
        ),
        cohort=CohortSection.from_card(card),
        training=_training(models),
        performance=_performance(primary, doc),
        calibration=_calibration(primary),
        ood=_ood(primary),
        subgroups=_subgroups(primary),
        data_efficiency=_data_efficiency(models, sets),
        saliency=_saliency(doc, evaluation_dir),
        study=_study(primary, doc, card),
        reproducibility=Reproducibility(
            config_yaml=pipeline_yaml,
            manifest_sha256=doc["cohort"]["manifest_sha256"],
            code_version=(doc.get("code_version") or {}).get("label"),
            seeds={
                "evaluation": int(doc["settings"]["seed"]),
                **{f"model {m['name']}": int(m.get("seed") or 0) for m in models},
            },
        ),
    )


def _pct(x: float) -> str:
    return f"{100 * float(x):g}%"


def _training(models: list[dict[str, Any]]) -> TrainingSection:
    stages, curves = [], []
    for m in models:
        hist = pd.DataFrame(m.get("history") or [], columns=["metric", "epoch", "value"])
        best_metric, best_value, epochs = None, None, 0
        if len(hist):
            epochs = int(hist["epoch"].max()) + 1
            auroc = hist[hist["metric"] == "val/auroc"]
            if len(auroc):
                best_metric, best_value = "val/auroc", float(auroc["value"].max())
            curves += [{"stage": m["name"], **r} for r in hist.to_dict("records")]
        weights = str(m.get("weights") or "")
        source = (
            "self-supervised stage " + weights.split("/")[-2][:8] if weights.startswith("mlflow:") else weights or "hub"
        )
        source = f"{source} ({_start_kind(weights)})"
        stages.append(
            TrainingStage(
                name=m["name"],
                backbone=str(m.get("backbone")),
                weights_source=source,
                head=str(m.get("head")),
                label_fraction=float(m["label_fraction"]),
                epochs=epochs,
                best_val_metric=best_metric,
                best_val_value=best_value,
                mlflow_run_id=m["run_id"],
            )
        )
    return TrainingSection(stages=stages, curves=pd.DataFrame(curves) if curves else None)


def _performance(model: dict[str, Any], doc: dict[str, Any]) -> PerformanceSection | None:
    rows = []
    for set_name, metrics in model["sets"].items():
        for metric in ("auroc", "accuracy", "sensitivity", "specificity"):
            if metric in metrics:
                rows.append({"eval_set": set_name, "metric": metric, **_nan(metrics[metric])})
    if not rows:
        return None
    op = model.get("operating_point")
    where = (
        f"Youden's J on validation ({model['positive_class']} vs rest), threshold {op['threshold']:.3f}" if op else None
    )
    return PerformanceSection(table=pd.DataFrame(rows), operating_point=where)


def _nan(ci: dict[str, Any]) -> dict[str, float]:
    return {k: (np.nan if ci.get(k) is None else float(ci[k])) for k in ("value", "low", "high")}


def _calibration(model: dict[str, Any]) -> CalibrationSection | None:
    cal = model.get("calibration") or {}
    if not cal.get("metrics"):
        return None
    metrics = pd.DataFrame(cal["metrics"])
    return CalibrationSection(
        metrics=metrics,
        reliability=pd.DataFrame(cal["reliability"]) if cal["reliability"] else None,
        temperature=model.get("temperature"),
        eval_set=cal["set"],
        deployed=str(metrics["method"].iloc[-1]),
    )


def _ood(model: dict[str, Any]) -> OODSection | None:
    ood = model.get("ood") or {}
    if not ood.get("detectors"):
        return None
    return OODSection(
        detectors=pd.DataFrame(ood["detectors"]).fillna(np.nan),
        primary=ood.get("primary"),
        scores=pd.DataFrame(ood["scores"]),
        deferral=pd.DataFrame(ood["deferral"]).fillna(np.nan),
        outlier_sets=list(ood["outliers"]),
    )


def _subgroups(model: dict[str, Any]) -> SubgroupSection | None:
    sub = model.get("subgroups") or {}
    if not sub.get("table"):
        return None
    table = pd.DataFrame(sub["table"])
    table["flag"] = table["flag"].fillna("").astype(str)
    for col in ("value", "low", "high", "gap", "gap_low", "gap_high"):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    overall = sub["overall"]
    if overall.get("value") is None:
        return None  # no overall metric (e.g. one outcome only in the set): nothing to compare groups with
    return SubgroupSection(
        metric=sub["metric"],
        eval_set=sub["set"],
        overall=float(overall["value"]),
        overall_low=overall.get("low"),
        overall_high=overall.get("high"),
        table=table,
    )


def _start_kind(weights: str) -> str:
    """What a backbone started from, in words: the transfer comparison the report exists to show."""
    if weights.startswith("mlflow:"):
        return "self-supervised"
    if weights == "none":
        return "random-init"
    if weights.startswith("file:"):
        return "pretrained (file)"
    return "pretrained"  # hub, hub:TAG, package: upstream weights (effnet-lite0: ImageNet from its package)


def _data_efficiency(models: list[dict[str, Any]], sets: list[str]) -> DataEfficiencySection | None:
    rows = []
    for m in models:
        metrics = (m["sets"] or {}).get("test")
        if metrics and "auroc" in metrics:
            start = f"{m.get('stage')}: {m.get('backbone')}, {_start_kind(str(m.get('weights') or ''))} start"
            rows.append({"start": start, "label_fraction": float(m["label_fraction"]), **_nan(metrics["auroc"])})
    if len({r["label_fraction"] for r in rows}) < 2:
        return None  # one fraction is a point, not a curve
    return DataEfficiencySection(curve=pd.DataFrame(rows))


def _study(model: dict[str, Any], doc: dict[str, Any], card: dict[str, Any]) -> StudySection:
    """What was held out and what each number is, per set, from metrics.json and the card."""
    classes = list(model["classes"])
    per_set, prevalence, calibration, reliability = [], [], [], []
    for set_name, m in model["sets"].items():
        counts = m.get("class_counts") or []
        total = sum(counts)
        prevalence += [{"eval_set": set_name, "class": c, "share": n / total} for c, n in zip(classes, counts) if total]
        pos = m.get("auroc_positive") or {}
        per_set.append(
            {
                "eval_set": set_name,
                "auroc_kind": m.get("auroc_kind") or ("binary" if len(classes) == 2 else "macro one-vs-rest"),
                "auroc": (m.get("auroc") or {}).get("value"),
                "positive_auroc": pos.get("value"),
                "positive_low": pos.get("low"),
                "positive_high": pos.get("high"),
                "sensitivity": (m.get("sensitivity") or {}).get("value"),
                "specificity": (m.get("specificity") or {}).get("value"),
                "classes_absent": ", ".join(classes[i] for i in m.get("classes_absent") or []),
                "abstention_excluded": int(m.get("abstention_images_excluded") or 0),
            }
        )
    for set_name, cal in (model.get("calibration_by_set") or {}).items():
        calibration += [{"eval_set": set_name, "method": r["method"], "ece": r["ece"]} for r in cal["metrics"]]
        reliability += [{"eval_set": set_name, **r} for r in cal.get("reliability") or []]
    shift = model.get("label_shift") or {}
    ood = model.get("ood") or {}
    costs = (doc.get("settings") or {}).get("costs")
    return StudySection(
        heldout_sites=list(card.get("heldout_sites") or []),
        heldout_conditions=list(card.get("heldout_conditions") or []),
        abstention_classes=list(card.get("outlier_conditions") or []),
        outlier_sets=list(ood.get("outliers") or doc["settings"].get("outlier_sets") or []),
        rules=list(card.get("rules") or []),
        classes=classes,
        positive_class=model.get("positive_class"),
        calibration_chosen=(model.get("calibration") or {}).get("chosen"),
        label_shift_set="site_ood" if shift.get("comparison") else None,
        per_set=pd.DataFrame(per_set),
        prevalence=pd.DataFrame(prevalence),
        calibration=pd.DataFrame(calibration),
        reliability=pd.DataFrame(reliability),
        label_shift=pd.DataFrame(shift.get("comparison") or []),
        ood_by_group=pd.DataFrame(ood.get("by_group") or []),
        costs=_cost_rows(costs) if costs else None,
    )


def _cost_rows(costs: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for outcome, cost in costs.items():
        if isinstance(cost, dict):
            rows += [{"outcome": f"{outcome.replace('_', ' ')} ({level} risk)", "cost": v} for level, v in cost.items()]
        else:
            rows.append({"outcome": outcome.replace("_", " "), "cost": cost})
    return pd.DataFrame(rows)


def _saliency(doc: dict[str, Any], evaluation_dir: Path) -> SaliencySection | None:
    cases = []
    for rec in doc.get("saliency") or []:
        arrays = np.load(evaluation_dir / rec["file"])
        image = np.clip(arrays["image"], 0, 1)
        image = (np.repeat(image, 3, 0) if image.shape[0] == 1 else image).transpose(1, 2, 0)
        cases.append(
            SaliencyCase(
                case_id=rec["case_id"],
                category=rec["category"],
                true_label=rec["true_label"],
                predicted_label=rec["predicted_label"],
                confidence=rec["confidence"],
                ood_score=rec["ood_score"],
                image=(image * 255).round().astype(np.uint8),
                integrated_gradients=arrays["integrated_gradients"],
                gradcam=arrays["gradcam"],
                **{k: rec.get(k) for k in ("instance_rank", "instance_weight", "instance_position", "n_instances")},
            )
        )
    return SaliencySection(cases=cases) if cases else None
