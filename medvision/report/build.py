"""From an evaluation folder (``metrics.json`` + saliency arrays) and its cohort card to a rendered report.

The evaluate stage writes everything a report needs, so a report can be re-rendered offline, without
MLflow or the models, by ``medvision report EVALUATION_DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
from medvision.report.render import render_report

__all__ = ["context_from_evaluation", "report_from_evaluation"]


def report_from_evaluation(
    evaluation_dir: Path,
    out_path: Path,
    *,
    title: str,
    pipeline_yaml: str | None = None,
    tracking_uri: str | None = None,
    forbidden: list[str] | None = None,
) -> Path:
    """Render the report of ``evaluation_dir`` to ``out_path`` (self-contained HTML)."""
    ctx = context_from_evaluation(evaluation_dir, title=title, pipeline_yaml=pipeline_yaml)
    return render_report(ctx, Path(out_path), forbidden=forbidden or [])


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
            )
        )
    return SaliencySection(cases=cases) if cases else None
