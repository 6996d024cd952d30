"""The facts a publication checklist is answered from, each read from one record of the run and citing it.

A fact is a function of :class:`RunRecords` (``metrics.json``, the cohort card and, when the evaluation belongs to
runs in a reachable store, the primary model's classifier card and training parameters) that returns a sentence and
its sources, or ``None`` when the records cannot answer it: the checklist then leaves the item TODO, never guesses.
Checklist YAMLs name facts by their key in :data:`FACTS`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medvision.classifier import CARD_FILE as CLASSIFIER_CARD
from medvision.classifier import ClassifierCard
from medvision.cohort.card import CARD_FILE, CohortCard
from medvision.evaluation.document import Estimate, Evaluation, MetricsDocument, ModelMetrics

__all__ = ["FACTS", "Fact", "RunRecords", "records_of"]


@dataclass(frozen=True)
class RunRecords:
    """What a checklist is filled from: the evaluation (``metrics.json``), its cohort card, and when the evaluation
    belongs to runs in a reachable store, the primary model's classifier card and training parameters."""

    doc: MetricsDocument
    card: CohortCard
    classifier: ClassifierCard | None = None
    params: dict[str, str] | None = None

    @property
    def model(self) -> ModelMetrics:
        return self.doc.primary

    @property
    def where(self) -> str:
        return f"metrics.json: models[{self.model.name}]"


@dataclass(frozen=True)
class Fact:
    text: str
    sources: list[str]


def _ci(e: Estimate | None) -> str:
    if e is None or e.value is None:
        return "undefined"
    ci = f" (95% CI {e.low:.3f}-{e.high:.3f})" if e.low is not None and e.high is not None else ""
    return f"{e.value:.3f}{ci}"


def _cohort_data(r: RunRecords) -> Fact:
    c = r.card
    kinds = c.spec.get("kinds") or "every supported kind"
    return Fact(
        f"Cohort {c.name}: {c.images} images of {c.patients} patients (image kinds: {kinds}); manifest "
        f"{c.manifest_sha256[:12]}.",
        ["cohort.json: name, images, patients, manifest_sha256"],
    )


def _sites(r: RunRecords) -> Fact | None:
    sites: dict[str, int] = {}
    for counts in r.card.counts.values():
        for site, by_label in counts.by_subgroup.get("site", {}).items():
            sites[site] = sites.get(site, 0) + sum(by_label.values())
    if not sites:
        return None
    listed = ", ".join(f"{s} ({n} images)" for s, n in sorted(sites.items()))
    return Fact(f"{len(sites)} site(s): {listed}.", ["cohort.json: counts.*.by_subgroup.site"])


def _eligibility(r: RunRecords) -> Fact:
    c = r.card
    reasons = "; ".join(f"{why}: {n}" for why, n in sorted(c.quarantine_reasons.items())) or "none"
    rules = " ".join(c.rules)
    return Fact(
        f"{c.quarantined} file(s) excluded at the build (reasons: {reasons}). {rules}".strip(),
        ["cohort.json: quarantined, quarantine_reasons, rules"],
    )


def _missing_data(r: RunRecords) -> Fact | None:
    s = r.card.labels
    if s.images_without_label is None and s.csv_rows_without_image is None:
        return None
    return Fact(
        f"Images without a label: {s.images_without_label or 0} (kept as unlabelled, left out of every metric); "
        f"label rows without an image: {s.csv_rows_without_image or 0}; rows excluded by filters: "
        f"{s.csv_rows_excluded or 0}. No imputation.",
        ["cohort.json: labels"],
    )


def _preprocessing(r: RunRecords) -> Fact:
    p = r.card.recipe
    source = ["cohort.json: spec.preprocess, spec.frames (the preprocessing recipe)"]
    if r.classifier is not None and r.classifier.preprocessing == p:
        source.append(f"{CLASSIFIER_CARD}: preprocessing (identical)")
    return Fact(
        f"Display pipeline (Modality LUT, VOI LUT/window, MONOCHROME1 inverted) to [0, 1]; {p.frames} frame of "
        f"multi-frame objects; {p.channels} channel(s) ({p.colour_to_grey} for colour); {p.fit} to {p.size}x{p.size} "
        f"px ({p.interpolation}); stored as {p.storage}. Normalisation by the backbone's mean/std inside the network.",
        source,
    )


def _outcome(r: RunRecords) -> Fact:
    c = r.card
    labels = c.spec.get("labels") or {}
    column = ", ".join(labels.get("label_columns") or []) or "(no labels CSV)"
    counts = ", ".join(f"{k}: {n}" for k, n in c.class_counts.items())
    return Fact(
        f"Classes {', '.join(c.inlier_classes)} from labels column {column} (images per class: {counts}).",
        ["cohort.json: classes, class_counts, spec.labels.label_columns"],
    )


def _predictors(r: RunRecords) -> Fact:
    return Fact(
        "The image pixels only (no clinical variables): every input is one preprocessed image.",
        ["cohort.json: spec.preprocess", f"{r.where}.backbone"],
    )


def _splits(r: RunRecords) -> Fact:
    s = r.card.spec.get("splits", {})
    held = s.get("heldout_sites") or []
    return Fact(
        f"Patient-level split (no patient in two partitions), seed {s.get('seed')}: train {s.get('train')}, "
        f"validation {s.get('val')}, test {s.get('test')}, stratified by {', '.join(s.get('stratify') or [])}"
        + (f"; sites {', '.join(held)} held out as an external test set (site_ood)" if held else "")
        + f"; nested label fractions {s.get('label_fractions')}.",
        ["cohort.json: spec.splits"],
    )


def _split_counts(r: RunRecords) -> Fact:
    parts = []
    for split, c in r.card.counts.items():
        labels = ", ".join(f"{k} {n}" for k, n in c.by_label.items())
        parts.append(f"{split}: {c.images} images, {c.patients} patients ({labels})")
    return Fact("; ".join(parts) + ".", ["cohort.json: counts"])


def _characteristics(r: RunRecords) -> Fact | None:
    parts = []
    for split, c in r.card.counts.items():
        for attr in ("sex", "age_band"):
            if attr in c.by_subgroup:
                groups = ", ".join(f"{g} {sum(n.values())}" for g, n in c.by_subgroup[attr].items())
                parts.append(f"{split} {attr}: {groups}")
    return Fact("; ".join(parts) + ".", ["cohort.json: counts.*.by_subgroup"]) if parts else None


def _deidentification(r: RunRecords) -> Fact:
    c = r.card
    paths = "recorded" if c.spec.get("record_paths", True) else "withheld"
    return Fact(
        "Patient, study, series and image identifiers replaced by keyed HMAC pseudonyms at the cohort build (key "
        f"fingerprint {c.pseudonym_key_fingerprint or 'not recorded'}); names, IDs and birth dates are dropped from "
        f"the manifest; file paths {paths}.",
        ["cohort.json: pseudonym_key_fingerprint, spec.record_paths"],
    )


def _model(r: RunRecords) -> Fact:
    m = r.model
    text = f"Deep learning image classifier: backbone {m.backbone}, head {m.head}, classes {', '.join(m.classes)}."
    sources = [f"{r.where}.backbone, .head, .classes"]
    if r.classifier is not None:
        k = r.classifier
        text += (
            f" Input {k.input_shape}; adapter width {k.adapter_hidden or 'none'}; backbone "
            f"{'frozen' if k.freeze_backbone else 'fine-tuned'}."
        )
        sources.append(f"{CLASSIFIER_CARD}: input_shape, adapter_hidden, freeze_backbone")
    return Fact(text, sources)


def _initialisation(r: RunRecords) -> Fact | None:
    w = r.model.weights
    return None if w is None else Fact(f"Backbone weights: {w}.", [f"{r.where}.weights"])


def _training(r: RunRecords) -> Fact | None:
    if not r.params:
        return None
    keys = [k for k in sorted(r.params) if k.startswith(("optim.", "data.batch_size", "augment", "data.augment"))]
    keys += [k for k in ("seed", "data.label_fraction") if k in r.params]
    listed = "; ".join(f"{k} = {r.params[k]}" for k in keys)
    return Fact(f"Training parameters: {listed}.", [f"MLflow run {r.model.run_id}: params"])


def _selection(r: RunRecords) -> Fact | None:
    auroc = [h for h in r.model.history if h.metric == "val/auroc" and h.value is not None]
    if not auroc:
        return None
    best = max(auroc, key=lambda h: h.value or 0.0)
    return Fact(
        f"Validation AUROC per epoch recorded; best {best.value:.3f} at epoch {best.epoch}.",
        [f"{r.where}.history"],
    )


def _ensemble(r: RunRecords) -> Fact | None:
    e = r.doc.ensemble
    if e is None:
        return None
    return Fact(f"Greedy ensemble on validation NLL of {', '.join(e.members)}.", ["metrics.json: ensemble.members"])


def _measures(r: RunRecords) -> Fact:
    m = r.model
    kinds = sorted({s.auroc_kind for s in m.sets.values()})
    return Fact(
        f"AUROC ({'; '.join(kinds)}), accuracy, sensitivity and specificity ({m.positive_class} vs rest), "
        "calibration (NLL, Brier, ECE, reliability), OOD detection (AUROC, AUPR, FPR at 95% TPR), subgroup gaps.",
        [f"{r.where}.sets.*.auroc_kind, .positive_class"],
    )


def _uncertainty(r: RunRecords) -> Fact:
    s = r.doc.settings
    return Fact(
        f"95% confidence intervals from {s.bootstrap} patient-level bootstrap resamples (seed {s.seed}).",
        ["metrics.json: settings.bootstrap, settings.seed"],
    )


def _performance(r: RunRecords) -> Fact:
    parts = [
        f"{name}: AUROC {_ci(s.auroc)}, accuracy {_ci(s.accuracy)} ({s.n_images} images, {s.n_patients} patients)"
        for name, s in r.model.sets.items()
    ]
    return Fact("; ".join(parts) + ".", [f"{r.where}.sets.<set>.auroc, .accuracy"])


def _external(r: RunRecords) -> Fact | None:
    s = r.model.sets.get("site_ood")
    if s is None:
        return None
    return Fact(f"Held-out sites (site_ood): AUROC {_ci(s.auroc)}.", [f"{r.where}.sets.site_ood.auroc"])


def _heldout_sites(r: RunRecords) -> Fact | None:
    c = r.card
    if not (c.heldout_sites or c.heldout_conditions):
        return None
    return Fact(
        f"Held-out sites: {', '.join(c.heldout_sites) or 'none'}; held-out conditions: "
        f"{', '.join(c.heldout_conditions) or 'none'} (never seen in training).",
        ["cohort.json: heldout_sites, heldout_conditions"],
    )


def _calibration(r: RunRecords) -> Fact | None:
    cal = r.model.calibration
    if cal is None or not cal.metrics:
        return None
    eces = ", ".join(f"{row.method} ECE {row.ece:.3f}" for row in cal.metrics if row.ece is not None)
    return Fact(
        f"Temperature {r.model.temperature:.3f} fitted on validation; chosen: {cal.chosen}; on {cal.set}: {eces}.",
        [f"{r.where}.temperature, .calibration"],
    )


def _subgroup_method(r: RunRecords) -> Fact:
    s = r.doc.settings
    return Fact(
        f"Performance audited by subgroup ({', '.join(s.subgroups)}); groups under {s.min_patients} patients flagged.",
        ["metrics.json: settings.subgroups, settings.min_patients"],
    )


def _subgroups(r: RunRecords) -> Fact | None:
    sub = r.model.subgroups
    if sub is None or not sub.table:
        return None
    rows = "; ".join(
        f"{t.attribute}={t.group}: {t.value:.3f}" if t.value is not None else f"{t.attribute}={t.group}: {t.flag}"
        for t in sub.table
    )
    return Fact(f"{sub.metric} on {sub.set} by subgroup: {rows}.", [f"{r.where}.subgroups.table"])


def _ood(r: RunRecords) -> Fact | None:
    ood = r.model.ood
    if ood is None or not ood.detectors:
        return None
    primary = next((d for d in ood.detectors if d.detector == ood.primary), ood.detectors[0])
    auroc = "undefined" if primary.auroc is None else f"{primary.auroc:.3f}"
    return Fact(
        f"Out-of-distribution screening ({', '.join(ood.outliers)} vs {ood.inliers}): {primary.detector} "
        f"AUROC {auroc}.",
        [f"{r.where}.ood.detectors"],
    )


def _output(r: RunRecords) -> Fact:
    ood = f"; OOD score {r.model.ood.primary}" if r.model.ood else ""
    return Fact(f"Class probabilities p:<class> for {', '.join(r.model.classes)}{ood}.", [f"{r.where}.classes, .ood"])


def _operating_point(r: RunRecords) -> Fact | None:
    op = r.model.operating_point
    if op is None:
        return None
    return Fact(
        f"Operating point: {op.rule} on validation, threshold {op.threshold:.3f} for {r.model.positive_class}.",
        [f"{r.where}.operating_point"],
    )


def _prediction_method(r: RunRecords) -> Fact:
    return Fact(
        f"Predictions by medvision {r.doc.code_version.label} from the logged model of MLflow run {r.model.run_id}, "
        "on the cached preprocessed images.",
        ["metrics.json: code_version, models[].run_id"],
    )


def _code_version(r: RunRecords) -> Fact:
    v = r.doc.code_version
    return Fact(f"medvision {v.label} (commit {v.commit or 'unknown'}).", ["metrics.json: code_version"])


def _saliency(r: RunRecords) -> Fact | None:
    cases = r.doc.saliency
    if not cases:
        return None
    wrong = sum(c.category == "wrong" for c in cases)
    return Fact(
        f"Integrated Gradients and Grad-CAM on {len(cases)} cases ({wrong} misclassified).",
        ["metrics.json: saliency"],
    )


def _input_handling(r: RunRecords) -> Fact:
    return Fact(
        "Files no reader accepts, of another kind or over the size cap are quarantined with a reason, never "
        "predicted; the same recipe prepares new images (medvision predict).",
        ["cohort.json: quarantine_reasons, spec (the recipe)"],
    )


FACTS: dict[str, Callable[[RunRecords], Fact | None]] = {
    "cohort_data": _cohort_data, "sites": _sites, "eligibility": _eligibility, "missing_data": _missing_data,
    "preprocessing": _preprocessing, "outcome": _outcome, "predictors": _predictors, "splits": _splits,
    "split_counts": _split_counts, "characteristics": _characteristics, "deidentification": _deidentification,
    "model": _model, "initialisation": _initialisation, "training": _training, "selection": _selection,
    "ensemble": _ensemble, "measures": _measures, "uncertainty": _uncertainty, "performance": _performance,
    "external": _external, "heldout_sites": _heldout_sites, "calibration": _calibration,
    "subgroup_method": _subgroup_method, "subgroups": _subgroups, "ood": _ood, "output": _output,
    "operating_point": _operating_point, "prediction_method": _prediction_method, "code_version": _code_version,
    "saliency": _saliency, "input_handling": _input_handling,
}  # fmt: skip


def records_of(evaluation_dir: Path, tracking_uri: str | None) -> RunRecords:
    """The records of an evaluation: ``metrics.json``, its cohort card and, when ``tracking_uri`` holds the primary
    model's run, its classifier card and parameters (otherwise the items they answer stay TODO)."""
    doc = Evaluation.open(evaluation_dir).metrics
    card = CohortCard.read(Path(doc.cohort.dir) / CARD_FILE)
    classifier, params = _run_records(doc.primary.run_id, tracking_uri) if tracking_uri else (None, None)
    return RunRecords(doc, card, classifier, params)


def _run_records(run_id: str, uri: str) -> tuple[ClassifierCard | None, dict[str, str] | None]:
    import mlflow
    from mlflow import MlflowClient

    try:
        params = dict(MlflowClient(uri).get_run(run_id).data.params)
    except Exception:  # noqa: BLE001 - not a run of this store: the evaluation's own records still answer
        return None, None
    with tempfile.TemporaryDirectory(prefix="medvision-card-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"model/artifacts/classifier/{CLASSIFIER_CARD}", dst_path=tmp,
                tracking_uri=uri,
            )  # fmt: skip
            return ClassifierCard.read(path), params
        except Exception:  # noqa: BLE001 - a run without a logged model: its parameters still answer
            return None, params
