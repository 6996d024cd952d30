"""From an evaluation folder (``metrics.json`` + saliency arrays) and its cohort card to a rendered report.

The evaluate stage writes everything a report needs, so a report can be re-rendered offline, without
MLflow or the models, by ``medvision report EVALUATION_DIR``. Both documents are read as typed models
(:class:`~medvision.evaluation.document.Evaluation`, :class:`~medvision.cohort.card.CohortCard`), never as dicts.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medvision._atomic import atomic_write_text
from medvision.cohort.card import CARD_FILE, CohortCard
from medvision.cohort.fingerprints import IdentifierFingerprints
from medvision.evaluation.document import (
    METRICS_FILE,
    DeferralPoint,
    Estimate,
    Evaluation,
    MetricsDocument,
    ModelMetrics,
)
from medvision.evaluation.overlay import display_image
from medvision.evaluation.settings import DeferralCosts
from medvision.evaluation.trust_document import ConformalRecord
from medvision.evaluation.trust_text import coverage_sentence
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
from medvision.report.detectors import detector_choice_fields
from medvision.report.guard import check_fingerprints
from medvision.report.render import render_report
from medvision.report.study import StudySection
from medvision.report.trust import TrustSection

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
    evaluation = Evaluation.open(evaluation_dir)
    ctx = context_from_evaluation(evaluation_dir, title=title, pipeline_yaml=pipeline_yaml, evaluation=evaluation)
    fingerprints, why_not = IdentifierFingerprints.for_cohort(Path(evaluation.metrics.cohort.dir))
    if fingerprints is None:
        log.warning("identifier check of the report is limited: %s", why_not)
    else:
        check_fingerprints(ctx, fingerprints)
    out_path, key = Path(out_path), evaluation_key(evaluation_dir)
    _keep_previous(out_path, key)
    path = render_report(ctx, out_path, forbidden=forbidden or [])
    atomic_write_text(_key_file(out_path), key + "\n")
    return path


def evaluation_key(evaluation_dir: Path) -> str:
    """A short content hash of an evaluation's ``metrics.json``: two evaluations with other settings differ."""
    return hashlib.sha256((Path(evaluation_dir) / METRICS_FILE).read_bytes()).hexdigest()[:12]


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


def context_from_evaluation(
    evaluation_dir: Path, *, title: str, pipeline_yaml: str | None = None, evaluation: Evaluation | None = None
) -> ReportContext:
    """The report context of an evaluation: the primary model's sections plus the data-efficiency sweep."""
    ev = evaluation or Evaluation.open(evaluation_dir)
    doc = ev.metrics
    models, primary = doc.models, doc.primary
    card = CohortCard.read(Path(doc.cohort.dir) / CARD_FILE)
    return ReportContext(
        title=title,
        model_name=f"{primary.stage or 'model'} ({primary.backbone}, {primary.head} head, "
        f"{_pct(primary.label_fraction)} of labels)",
        summary=SummaryOptions(
            site_ood_set="site_ood" if "site_ood" in primary.sets else None,
            referral_rate=doc.settings.referral_rate,
        ),
        cohort=CohortSection.from_card(card),
        training=_training(models),
        performance=_performance(primary),
        calibration=_calibration(primary),
        ood=_ood(primary, ev),
        subgroups=_subgroups(primary),
        trust=_trust(primary),
        data_efficiency=_data_efficiency(models),
        saliency=_saliency(ev),
        study=_study(primary, doc, card),
        reproducibility=Reproducibility(
            config_yaml=pipeline_yaml,
            manifest_sha256=doc.cohort.manifest_sha256,
            code_version=doc.code_version.label,
            seeds={
                "evaluation": int(doc.settings.seed),
                **{f"model {m.name}": int(m.seed or 0) for m in models},
            },
        ),
    )


def _pct(x: float) -> str:
    return f"{100 * float(x):g}%"


def _records(rows: list) -> list[dict]:
    return [r.model_dump() for r in rows]


def _training(models: list[ModelMetrics]) -> TrainingSection:
    stages, curves = [], []
    for m in models:
        hist = pd.DataFrame(_records(m.history), columns=["metric", "epoch", "value"])
        best_metric, best_value, epochs = None, None, 0
        if len(hist):
            epochs = int(hist["epoch"].max()) + 1
            auroc = hist[hist["metric"] == "val/auroc"]
            if len(auroc):
                best_metric, best_value = "val/auroc", float(auroc["value"].max())
            curves += [{"stage": m.name, **r} for r in hist.to_dict("records")]
        weights = str(m.weights or "")
        source = (
            "self-supervised stage " + weights.split("/")[-2][:8] if weights.startswith("mlflow:") else weights or "hub"
        )
        source = f"{source} ({_start_kind(weights)})"
        stages.append(
            TrainingStage(
                name=m.name,
                backbone=str(m.backbone),
                weights_source=source,
                head=str(m.head),
                label_fraction=float(m.label_fraction),
                epochs=epochs,
                best_val_metric=best_metric,
                best_val_value=best_value,
                mlflow_run_id=m.run_id,
            )
        )
    return TrainingSection(stages=stages, curves=pd.DataFrame(curves) if curves else None)


def _performance(model: ModelMetrics) -> PerformanceSection | None:
    rows = []
    for set_name, metrics in model.sets.items():
        for metric in ("auroc", "accuracy", "sensitivity", "specificity"):
            estimate = getattr(metrics, metric)
            if estimate is not None:
                rows.append({"eval_set": set_name, "metric": metric, **_nan(estimate)})
    if not rows:
        return None
    op = model.operating_point
    if op is None:
        why = model.no_operating_point or "the evaluation records no reason"
        return PerformanceSection(table=pd.DataFrame(rows), no_operating_point=why)
    where = f"Youden's J on validation ({model.positive_class} vs rest), threshold {op.threshold:.3f}"
    return PerformanceSection(table=pd.DataFrame(rows), operating_point=where)


def _nan(ci: Estimate) -> dict[str, float]:
    values = {"value": ci.value, "low": ci.low, "high": ci.high}
    return {k: (np.nan if v is None else float(v)) for k, v in values.items()}


def _calibration(model: ModelMetrics) -> CalibrationSection | None:
    cal = model.calibration
    if cal is None or not cal.metrics:
        return None
    metrics = pd.DataFrame(_records(cal.metrics))
    return CalibrationSection(
        metrics=metrics,
        reliability=pd.DataFrame(_records(cal.reliability)) if cal.reliability else None,
        temperature=model.temperature,
        eval_set=cal.set,
        deployed=str(metrics["method"].iloc[-1]),
    )


def _ood(model: ModelMetrics, ev: Evaluation) -> OODSection | None:
    ood = model.ood
    if ood is None or not ood.detectors:
        return None
    return OODSection(
        detectors=pd.DataFrame(_records(ood.detectors)).fillna(np.nan),
        primary=ood.primary,
        scores=ev.ood_scores(model),
        deferral=pd.DataFrame(_records(ood.deferral), columns=list(DeferralPoint.model_fields)).fillna(np.nan),
        outlier_sets=list(ood.outliers),
        **detector_choice_fields(ood),
    )


def _subgroups(model: ModelMetrics) -> SubgroupSection | None:
    sub = model.subgroups
    if sub is None or not sub.table:
        return None
    table = pd.DataFrame(_records(sub.table))
    table["flag"] = table["flag"].fillna("").astype(str)
    for col in ("value", "low", "high", "gap", "gap_low", "gap_high"):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    if sub.overall.value is None:
        return None  # no overall metric (e.g. one outcome only in the set): nothing to compare groups with
    return SubgroupSection(
        metric=sub.metric,
        eval_set=sub.set,
        overall=float(sub.overall.value),
        overall_low=sub.overall.low,
        overall_high=sub.overall.high,
        table=table,
    )


def _trust(model: ModelMetrics) -> TrustSection | None:
    """The "When to trust this model" section from the model's trust record (``None``: evaluated without one)."""
    t = model.trust
    if t is None:
        return None
    conformal, abstain = t.conformal, t.abstain
    calibration = [{"set": s, **r.model_dump()} for s, cal in t.calibration_by_group.items() for r in cal.ece]
    site = t.site_recalibration
    reference = t.calibration_by_group.get(t.reference) if t.reference else None
    reliability = _frame(reference.reliability) if reference is not None and reference.reliability else None
    coverage = _coverage(conformal) if conformal else None
    said = t.sentences.coverage
    if said and coverage is not None and t.reference and _vacuous_reference(coverage, t.reference):
        said = coverage_sentence(coverage, reference=t.reference)  # an older document's "covered 100%"
    return TrustSection(
        reference=t.reference,
        sentences=[s for s in (said, t.sentences.abstention) if s],
        target=conformal.target if conformal else None,
        alpha=abstain.alpha if abstain else None,
        on=abstain.on if abstain else "error",
        positive_class=abstain.positive_class if abstain else None,
        coverage=coverage,
        abstention=_frame(abstain.sets) if abstain else None,
        calibration=_frame(calibration) if calibration else None,
        site=site.site if site else None,
        site_temperature=site.temperature if site else None,
        site_recalibration=_frame([{"set": s, **r.model_dump()} for s, rows in site.ece_by_set.items() for r in rows])
        if site
        else None,
        reliability=reliability,
        skipped=dict(t.skipped),
    )


def _coverage(conformal: ConformalRecord) -> pd.DataFrame:
    """The coverage rows, with every unflagged row of a taxonomy that has no finite threshold read as ``vacuous``:
    its sets hold every class, so a coverage of 100% proves nothing. Documents written before the evaluation said
    so themselves called those rows ``holds``."""
    uncalibrated = {t.method for t in conformal.thresholds} - {
        t.method for t in conformal.thresholds if t.threshold is not None
    }
    frame = _frame(conformal.coverage)
    if uncalibrated and len(frame):
        rows = frame["method"].isin(uncalibrated) & (frame["flag"].fillna("") == "")
        frame.loc[rows, "guarantee"] = "vacuous"
    return frame


def _vacuous_reference(coverage: pd.DataFrame, reference: str) -> bool:
    """Whether the marginal sets' row on the whole reference set (the one the coverage sentence quotes) is vacuous."""
    row = (coverage["method"] == "marginal") & (coverage["set"] == reference) & (coverage["attribute"] == "all")
    return bool((coverage.loc[row, "guarantee"] == "vacuous").any())


def _frame(rows: list) -> pd.DataFrame:
    """Records (typed rows or dicts) as a frame with ``None`` as NaN, for the section's formatting."""
    frame = pd.DataFrame([r if isinstance(r, dict) else r.model_dump() for r in rows])
    return frame.fillna(np.nan) if len(frame) else frame


def _start_kind(weights: str) -> str:
    """What a backbone started from, in words: the transfer comparison the report exists to show."""
    if weights.startswith("mlflow:"):
        return "self-supervised"
    if weights == "none":
        return "random-init"
    if weights.startswith("file:"):
        return "pretrained (file)"
    return "pretrained"  # hub, hub:TAG, package: upstream weights (effnet-lite0: ImageNet from its package)


def _data_efficiency(models: list[ModelMetrics]) -> DataEfficiencySection | None:
    rows = []
    for m in models:
        metrics = m.sets.get("test")
        if metrics is not None:
            start = f"{m.stage}: {m.backbone}, {_start_kind(str(m.weights or ''))} start"
            rows.append({"start": start, "label_fraction": float(m.label_fraction), **_nan(metrics.auroc)})
    if len({r["label_fraction"] for r in rows}) < 2:
        return None  # one fraction is a point, not a curve
    return DataEfficiencySection(curve=pd.DataFrame(rows))


def _study(model: ModelMetrics, doc: MetricsDocument, card: CohortCard) -> StudySection:
    """What was held out and what each number is, per set, from metrics.json and the card."""
    classes = list(model.classes)
    per_set, prevalence, calibration, reliability = [], [], [], []
    for set_name, m in model.sets.items():
        total = sum(m.class_counts)
        prevalence += [
            {"eval_set": set_name, "class": c, "share": n / total} for c, n in zip(classes, m.class_counts) if total
        ]
        pos = m.auroc_positive or Estimate()
        per_set.append(
            {
                "eval_set": set_name,
                "auroc_kind": m.auroc_kind or ("binary" if len(classes) == 2 else "macro one-vs-rest"),
                "auroc": m.auroc.value,
                "positive_auroc": pos.value,
                "positive_low": pos.low,
                "positive_high": pos.high,
                "sensitivity": m.sensitivity.value if m.sensitivity else None,
                "specificity": m.specificity.value if m.specificity else None,
                "classes_absent": ", ".join(classes[i] for i in m.classes_absent),
                "abstention_excluded": int(m.abstention_images_excluded or 0),
            }
        )
    for set_name, cal in model.calibration_by_set.items():
        calibration += [{"eval_set": set_name, "method": r.method, "ece": r.ece} for r in cal.metrics]
        reliability += [{"eval_set": set_name, **r.model_dump()} for r in cal.reliability]
    shift, ood = model.label_shift, model.ood
    return StudySection(
        heldout_sites=list(card.heldout_sites),
        heldout_conditions=list(card.heldout_conditions),
        abstention_classes=list(card.outlier_conditions),
        outlier_sets=list((ood.outliers if ood else None) or doc.settings.outlier_sets),
        rules=list(card.rules),
        classes=classes,
        positive_class=model.positive_class,
        calibration_chosen=model.calibration.chosen if model.calibration else None,
        label_shift_set="site_ood" if shift is not None and shift.comparison else None,
        per_set=pd.DataFrame(per_set),
        prevalence=pd.DataFrame(prevalence),
        calibration=pd.DataFrame(calibration),
        reliability=pd.DataFrame(reliability),
        label_shift=pd.DataFrame(_records(shift.comparison) if shift else []),
        ood_by_group=pd.DataFrame(_records(ood.by_group) if ood else []),
        costs=_cost_rows(doc.settings.costs),
    )


def _cost_rows(costs: DeferralCosts) -> pd.DataFrame:
    rows = []
    for outcome, cost in costs.model_dump().items():
        if isinstance(cost, dict):
            rows += [{"outcome": f"{outcome.replace('_', ' ')} ({level} risk)", "cost": v} for level, v in cost.items()]
        else:
            rows.append({"outcome": outcome.replace("_", " "), "cost": cost})
    return pd.DataFrame(rows)


def _saliency(ev: Evaluation) -> SaliencySection | None:
    cases = []
    for rec in ev.metrics.saliency:
        arrays = np.load(ev.path(rec.file))
        cases.append(
            SaliencyCase(
                case_id=rec.case_id,
                category=rec.category,
                true_label=rec.true_label,
                predicted_label=rec.predicted_label,
                confidence=rec.confidence,
                ood_score=rec.ood_score,
                image=display_image(arrays["image"]),
                integrated_gradients=arrays["integrated_gradients"],
                gradcam=arrays["gradcam"],
                instance_rank=rec.instance_rank,
                instance_weight=rec.instance_weight,
                instance_position=rec.instance_position,
                n_instances=rec.n_instances,
            )
        )
    return SaliencySection(cases=cases) if cases else None
