"""The evaluate stage: trained runs × evaluation sets → predictions tables and ``metrics.json``.

For each model it predicts on the training rows (only to fit the feature-space OOD detectors), the
validation rows (operating point, temperature, label-shift prior) and each requested set, then derives
every table from those predictions (:mod:`medvision.evaluation.tables`). Outputs, in one folder:

* ``predictions/<model>/<set>.parquet`` — one row per image, pseudonymous ids only;
* ``metrics.json`` — everything the report shows, machine-readable (schema: ``docs/metrics.md``);
* ``saliency/`` — image and attribution arrays of a few correct, wrong and most-OOD cases.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient

from medvision._atomic import atomic_path, atomic_write_text
from medvision._version import code_provenance
from medvision.cohort.cohort import open_cohort
from medvision.cohort.named_values import facts_from_card
from medvision.data.dataset import CohortDataset
from medvision.evaluation.calibration import TemperatureScaler
from medvision.evaluation.cases import predict_cases
from medvision.evaluation.ensemble import greedy_ensemble, knn_rank_backbones
from medvision.evaluation.metrics import OperatingPoint, choose_operating_point
from medvision.evaluation.ood import msp_score, ood_metrics
from medvision.evaluation.predict import Predictions, predict_rows
from medvision.evaluation.saliency import pick_cases, saliency_maps
from medvision.evaluation.settings import DeferralCosts, EvaluationSettings
from medvision.evaluation.tables import (
    calibration_tables,
    discrimination,
    fit_detectors,
    label_shift_table,
    ood_by_group,
    ood_tables,
    subgroup_table,
)
from medvision.tracking import load_run_classifier

__all__ = ["METRICS_SCHEMA", "EvaluationRequest", "evaluate_models"]

METRICS_SCHEMA = 1


class EvaluationRequest(EvaluationSettings):
    """What to evaluate and how; ``models`` are dicts with at least ``run_id`` (plus stage/member facts)."""

    cohort_dir: Path
    models: list[dict[str, Any]]
    #: The MLflow store the models' runs live in; ``None``: the current tracking URI.
    tracking_uri: str | None = None


def evaluate_models(request: EvaluationRequest, folder: Path) -> dict[str, float]:
    """Evaluate every model of ``request`` into ``folder``; return headline metrics (for the stage's run)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cohort = open_cohort(request.cohort_dir)
    request.check_against(facts_from_card(cohort.card))  # a misspelt subgroup or class fails before predicting
    results, headline, primary, member_preds = [], {}, None, {}
    for model in request.models:
        name = f"{model.get('stage', 'model')}-{model.get('member')}" if len(request.models) > 1 else "model"
        classifier, _ = load_run_classifier(model["run_id"], request.tracking_uri)
        entry, preds = _evaluate_one(classifier, cohort, request, model, name, folder)
        entry["history"] = _history(model["run_id"], request.tracking_uri)
        results.append(entry)
        member_preds[name] = preds
        is_primary = primary is None or model.get("label_fraction", 1.0) > primary[0].get("label_fraction", 1.0)
        if is_primary:
            primary = (model, classifier, preds, entry)
        for set_name, metrics in entry["sets"].items():
            if "auroc" in metrics and metrics["auroc"]["value"] is not None:
                headline[re.sub(r"[^A-Za-z0-9_./ -]", "_", f"{name}/{set_name}/auroc")] = metrics["auroc"]["value"]
    ensemble = _ensemble(member_preds, results, request) if request.ensemble and len(member_preds) > 1 else None
    ranking = _rank_backbones(member_preds, results) if len(member_preds) > 1 else []
    saliency = []
    if request.saliency and primary is not None:
        saliency = _saliency(primary, cohort, request, folder)
    doc = {
        "schema": METRICS_SCHEMA,
        # the code that computed these numbers: the report shows this, not the version that renders it later
        "code_version": code_provenance(),
        "cohort": {
            "name": cohort.card["name"],
            "manifest_sha256": cohort.manifest_sha256,
            "classes": list(cohort.card["classes"])[: int(cohort.card["num_inlier_classes"])],
            "dir": str(Path(request.cohort_dir).resolve()),
            # what one row of every table is: an image, or a series / study / patient case
            "unit": cohort.unit,
        },
        "settings": {
            "sets": request.sets,
            "subgroups": request.subgroups,
            "bootstrap": request.bootstrap,
            "min_patients": request.min_patients,
            "referral_rate": request.referral_rate,
            "seed": request.seed,
            "outlier_sets": request.outlier_sets,
            "costs": DeferralCosts(**(request.costs or {})).model_dump(),
            "risk": request.risk,
            "positive_class": results[0]["positive_class"] if results else None,
        },
        "primary_model": primary[3]["name"] if primary else None,
        "models": results,
        "saliency": saliency,
        "ensemble": ensemble,
        "backbone_ranking": ranking,
    }
    atomic_write_text(folder / "metrics.json", json.dumps(_clean(doc), indent=1))  # whole or absent
    return headline


@dataclass
class _Fitted:
    """What an evaluation learns from training/validation data before it looks at any evaluation set."""

    positive: int
    operating_point: OperatingPoint | None
    scaler: TemperatureScaler
    detectors: Any


def _evaluate_one(
    classifier, cohort, request: EvaluationRequest, model: dict[str, Any], name: str, folder: Path
) -> tuple[dict[str, Any], dict[str, Predictions]]:
    """One model on every requested set, in the order the method spec §10 requires: predict, fit everything that
    needs fitting (operating point, temperature, OOD detectors) on train/validation only, then score the sets."""
    classes = _checked_classes(classifier, cohort, request, model)
    preds = _predict(classifier, cohort, request, model, folder / "predictions" / name)
    k = len(classes)
    inlier = {
        s: p.subset(((p.frame["label_idx"] >= 0) & (p.frame["label_idx"] < k)).to_numpy()) for s, p in preds.items()
    }
    fitted = _fit_on_validation(classes, request, preds, inlier["val"])
    entry: dict[str, Any] = {
        "name": name,
        "run_id": model["run_id"],
        "stage": model.get("stage"),
        "member": model.get("member"),
        "backbone": model.get("backbone"),
        "weights": model.get("weights"),
        "head": model.get("head"),
        "label_fraction": model.get("label_fraction") or 1.0,
        "seed": model.get("seed"),
        "classes": classes,
        "positive_class": classes[fitted.positive],
        "operating_point": None
        if fitted.operating_point is None
        else {"rule": "Youden's J on validation", "threshold": fitted.operating_point.threshold},
        "temperature": float(fitted.scaler.temperature_),
        "sets": {},
        "calibration": {},
        "ood": {},
        "subgroups": {},
    }
    entry.update(_score_sets(classes, request, preds, inlier, fitted))
    return entry, preds


def _checked_classes(classifier, cohort, request: EvaluationRequest, model: dict[str, Any]) -> list[str]:
    classes = list(classifier.classes)
    expected = list(cohort.card["classes"])[: int(cohort.card["num_inlier_classes"])]
    if classes != expected:
        raise ValueError(
            f"model {model['run_id']} predicts classes {classes} but cohort {cohort.card['name']} has "
            f"{expected}; evaluate a model on the cohort it was trained on"
        )
    if request.positive_class is not None and request.positive_class not in classes:
        raise ValueError(f"positive_class {request.positive_class!r} is not a class of this model: {classes}")
    return classes


def _predict(
    classifier, cohort, request: EvaluationRequest, model: dict[str, Any], out_dir: Path
) -> dict[str, Predictions]:
    """Predictions on the model's own training rows (for detectors), validation and every requested set; all but
    train are written as parquet."""
    heldout = set(cohort.card.get("heldout_conditions") or [])
    lf = model.get("label_fraction") or 1.0
    train_rows = cohort.rows("train", label_fraction=lf if lf < 1 else None)
    # a case cohort is scored per case (series, study, patient): one row per case, every metric from those rows
    predict = predict_rows if cohort.unit == "image" else predict_cases
    preds = {
        "train": predict(classifier, cohort, train_rows),
        "val": predict(classifier, cohort, cohort.rows("val")),
    }
    for s in request.sets:
        rows = cohort.rows(s, labelled=False)
        if s == "condition_ood" and s in request.outlier_sets:
            # a held-out patient's other images (inlier or training-outlier labels) are not unseen conditions
            rows = rows[rows["label"].isin(heldout)].reset_index(drop=True)
        if len(rows):
            preds[s] = predict(classifier, cohort, rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    for s, p in preds.items():
        if s != "train":
            with atomic_path(out_dir / f"{s}.parquet") as tmp:
                p.frame.to_parquet(tmp, index=False)
    return preds


def _fit_on_validation(
    classes: list[str], request: EvaluationRequest, preds: dict[str, Predictions], val: Predictions
) -> _Fitted:
    k = len(classes)
    positive = classes.index(request.positive_class) if request.positive_class else (1 if k == 2 else 0)
    y_val = val.frame["label_idx"].to_numpy()
    has_both = bool((y_val == positive).any() and (y_val != positive).any())
    # No operating point without both outcomes on validation: the test set may never choose it (spec §10).
    op = choose_operating_point(y_val == positive, val.probs[:, positive], rule="youden") if has_both else None
    scaler = TemperatureScaler().fit(np.log(np.clip(val.probs, 1e-12, None)), y_val)
    return _Fitted(positive, op, scaler, fit_detectors(preds["train"], k))


def _score_sets(
    classes: list[str],
    request: EvaluationRequest,
    preds: dict[str, Predictions],
    inlier: dict[str, Predictions],
    fitted: _Fitted,
) -> dict[str, Any]:
    """Discrimination per set; calibration, subgroups and OOD screening on the in-distribution set; label shift
    towards the held-out site."""
    k, positive = len(classes), fitted.positive
    out: dict[str, Any] = {"sets": {}, "calibration_by_set": {}}
    for s in request.sets:
        if s not in inlier or s in request.outlier_sets or not len(inlier[s].frame):
            continue
        out["sets"][s] = discrimination(inlier[s], positive, fitted.operating_point, request.bootstrap, request.seed)
        # abstention-class images are not scored: say how many were left out
        out["sets"][s]["abstention_images_excluded"] = int((preds[s].frame["label_idx"] >= k).sum())
        metrics, reliability = calibration_tables(inlier[s], fitted.scaler)
        out["calibration_by_set"][s] = {"metrics": metrics, "reliability": reliability}
    chosen = _chosen_calibration(inlier["val"], fitted.scaler) if len(inlier["val"].frame) else None
    id_set = "test" if "test" in inlier else next(iter(out["sets"]), None)
    if id_set:
        metrics, reliability = calibration_tables(inlier[id_set], fitted.scaler)
        out["calibration"] = {"set": id_set, "metrics": metrics, "reliability": reliability, "chosen": chosen}
        rows, diffs, overall = subgroup_table(
            inlier[id_set], request.subgroups, positive, request.min_patients, request.bootstrap, request.seed
        )
        out["subgroups"] = {
            "set": id_set,
            "metric": f"AUROC ({classes[positive]} vs rest)" if k > 2 else "AUROC",
            "overall": overall,
            "table": rows,
            "differences": diffs,
        }
        outlier_sets = [s for s in request.sets if s in request.outlier_sets and s in preds and len(preds[s].frame)]
        if outlier_sets:
            outliers = Predictions.concat([preds[s] for s in outlier_sets])
            # condition_ood: one group per held-out condition; any other outlier set is one group
            groups = [
                str(lab) if s == "condition_ood" else s
                for s in outlier_sets
                for lab in preds[s].frame["label"].fillna("(unlabelled)")
            ]
            det, scores, deferral = ood_tables(
                inlier[id_set],
                outliers,
                fitted.detectors,
                request.bootstrap,
                request.seed,
                costs=DeferralCosts(**(request.costs or {})),
                risk=request.risk,
            )
            out["ood"] = {
                "inliers": id_set,
                "outliers": outlier_sets,
                "detectors": det,
                "scores": scores,
                "deferral": deferral,
                "by_group": ood_by_group(inlier[id_set], outliers, groups, fitted.detectors),
                "inliers_exclude_abstention_images": int((preds[id_set].frame["label_idx"] >= k).sum()),
                "primary": "hod" if any(d["detector"] == "hod" for d in det) else "msp",
            }
    if "site_ood" in inlier and "site_ood" not in request.outlier_sets and len(inlier["site_ood"].frame):
        out["label_shift"] = label_shift_table(inlier["val"], inlier["site_ood"], fitted.scaler)
    return out


def _chosen_calibration(val: Predictions, scaler: TemperatureScaler) -> str:
    """Raw or temperature-scaled probabilities, whichever has the lower ECE on validation (never on test)."""
    metrics, _ = calibration_tables(val, scaler)
    return min(metrics, key=lambda m: (m["ece"], m["method"] != "uncalibrated"))["method"]


def _ensemble(
    member_preds: dict[str, dict[str, Predictions]], results: list[dict[str, Any]], request: EvaluationRequest
) -> dict[str, Any]:
    """Greedy selection (with replacement) on validation NLL, then the ensemble scored like a model (spec §4).

    The ensemble's probabilities are the selection-weighted average of its members'; its OOD scores are MSP
    of that average and, when every member has one, the average of the members' OOD scores (for HOD heads
    this is exactly ``p_out`` of the averaged full distribution, ``p_out`` being linear in it).
    """

    k = len(results[0]["classes"])
    positive = results[0]["classes"].index(results[0]["positive_class"])

    def inliers(p: Predictions) -> Predictions:
        return p.subset(((p.frame["label_idx"] >= 0) & (p.frame["label_idx"] < k)).to_numpy())

    def combine(parts: dict[str, Predictions]) -> Predictions:
        base = next(iter(parts.values()))
        probs = selection.predict_proba({n: p.probs for n, p in parts.items()})
        scores = {n: p.ood_score for n, p in parts.items() if p.ood_score is not None}
        has_ood = len(scores) == len(parts)
        ood = selection.predict_proba({n: s[:, None] for n, s in scores.items()})[:, 0] if has_ood else None
        return Predictions(base.frame, base.logits, probs, base.embeddings, ood)

    val = {name: inliers(preds["val"]) for name, preds in member_preds.items()}
    first = next(iter(val.values()))
    y_val = first.frame["label_idx"].to_numpy()
    selection = greedy_ensemble({n: v.probs for n, v in val.items()}, y_val)
    ens_val = combine(val)
    op = None
    if (y_val == positive).any() and (y_val != positive).any():
        op = choose_operating_point(y_val == positive, ens_val.probs[:, positive], rule="youden")
    sets: dict[str, Any] = {}
    for s in request.sets:
        if s in request.outlier_sets or any(s not in preds for preds in member_preds.values()):
            continue
        combined = combine({n: inliers(preds[s]) for n, preds in member_preds.items()})
        if len(combined.frame):
            sets[s] = discrimination(combined, positive, op, request.bootstrap, request.seed)
    ood: list[dict[str, Any]] = []
    outlier_sets = [s for s in request.sets if s in request.outlier_sets]
    if "test" in sets and outlier_sets and all(s in p for p in member_preds.values() for s in outlier_sets):
        test = combine({n: inliers(p["test"]) for n, p in member_preds.items()})
        out = Predictions.concat([combine({n: p[s] for n, p in member_preds.items()}) for s in outlier_sets])
        both = Predictions.concat([test, out])
        is_ood = np.r_[np.zeros(len(test.frame), bool), np.ones(len(out.frame), bool)]
        scores = {"ensemble_msp": msp_score(both.probs)}
        if both.ood_score is not None:
            scores["ensemble_hod"] = both.ood_score
        for name, score in scores.items():
            m = ood_metrics(score, is_ood)
            ood.append(
                {
                    "detector": name,
                    "auroc": float(m["ood_auroc"]),
                    "aupr_in": float(m["aupr_in"]),
                    "aupr_out": float(m["aupr_out"]),
                    "fpr_at_95_tpr": float(m["fpr_at_95_tpr"]),
                }
            )
    return {
        "members": selection.members,
        "val_nll": selection.history,
        "sets": sets,
        "ood": ood,
        "operating_point": None if op is None else {"rule": "Youden's J on validation", "threshold": op.threshold},
    }


def _rank_backbones(
    member_preds: dict[str, dict[str, Predictions]], results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Leave-one-out 1-NN accuracy (cosine) of each model's embeddings on validation (method spec §5)."""

    k = len(results[0]["classes"])
    feats, labels = {}, None
    for name, preds in member_preds.items():
        val = preds["val"]
        keep = ((val.frame["label_idx"] >= 0) & (val.frame["label_idx"] < k)).to_numpy()
        feats[name], labels = val.embeddings[keep], val.frame["label_idx"].to_numpy()[keep]
    if labels is None or len(labels) < 2:
        return []
    ranking = knn_rank_backbones(feats, labels)
    return ranking.rename_axis("model").reset_index().to_dict("records")


def _history(run_id: str, tracking_uri: str | None) -> list[dict[str, Any]]:
    """Per-epoch metrics of the training run (learning curves for the report)."""

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    rows = []
    for key in run.data.metrics:
        if key.startswith(("train/loss", "val/")):
            rows += [
                {"metric": key, "epoch": int(m.step), "value": float(m.value)}
                for m in client.get_metric_history(run_id, key)
            ]
    return rows


def _saliency(primary, cohort, request: EvaluationRequest, folder: Path) -> list[dict[str, Any]]:
    """Integrated Gradients and Grad-CAM for the most confident correct and wrong test cases and the most OOD."""

    _, classifier, preds, entry = primary
    k = len(entry["classes"])
    parts = []
    if "test" in preds:
        test = preds["test"]
        parts.append(test.subset(((test.frame["label_idx"] >= 0) & (test.frame["label_idx"] < k)).to_numpy()))
    parts += [preds[s] for s in request.sets if s in request.outlier_sets and s in preds]
    parts = [p for p in parts if len(p.frame)]
    if not parts:
        return []
    both = Predictions.concat(parts)
    y = both.frame["label_idx"].to_numpy()
    inlier = (y >= 0) & (y < k)
    y_pred, conf = both.probs.argmax(1), both.probs.max(1)
    ood = both.ood_score if both.ood_score is not None else 1.0 - conf
    # correct/wrong among inliers; "most OOD" among every case (outliers included) by the deployed score
    cases = [
        (int(np.flatnonzero(inlier)[i]), c)
        for i, c in pick_cases(
            y[inlier], y_pred[inlier], conf[inlier], None, n_per_category=request.saliency, seed=request.seed
        )
    ]
    taken = {i for i, _ in cases}
    cases += [(int(i), "most-ood") for i in np.argsort(-ood, kind="stable") if int(i) not in taken][: request.saliency]
    shown = _shown_instances(both.frame, cases)
    rows = cohort.manifest.set_index("image_id").loc[[image_id for _, _, image_id, _ in shown]].reset_index()
    ds = CohortDataset(cohort, rows)
    images = torch.stack([ds[j]["image"] for j in range(len(ds))])
    targets = [int(y_pred[i]) for i, _, _, _ in shown]
    ig = saliency_maps(classifier, images, targets, method="integrated_gradients")
    cam = saliency_maps(classifier, images, targets, method="gradcam")
    out = folder / "saliency"
    out.mkdir(exist_ok=True)
    records = []
    for j, (i, category, image_id, instance) in enumerate(shown):
        fname = f"case-{j:02d}.npz"
        np.savez_compressed(out / fname, image=images[j].numpy(), integrated_gradients=ig[j], gradcam=cam[j])
        label = both.frame["label"][i]
        records.append(
            {
                "case_id": both.frame["case_id"][i] if "case_id" in both.frame else image_id,
                "category": category,
                "file": f"saliency/{fname}",
                "true_label": None if pd.isna(label) else str(label),
                "predicted_label": entry["classes"][int(y_pred[i])],
                "confidence": float(conf[i]),
                "ood_score": None if both.ood_score is None else float(both.ood_score[i]),
                **instance,
            }
        )
    return records


#: Instances shown per case of a case cohort: its top ones by the bag head's pooling weight.
_INSTANCES_PER_CASE = 2


def _shown_instances(frame: pd.DataFrame, cases: list[tuple[int, str]]) -> list[tuple[int, str, str, dict]]:
    """``(row, category, image id, instance facts)`` of every image the gallery shows: the row's image, or for a case
    cohort the case's top instances (their rank, pooling weight and place in the case's order)."""
    if "case_id" not in frame:
        return [(i, category, str(frame["image_id"][i]), {}) for i, category in cases]
    shown = []
    for i, category in cases:
        top = zip(frame["top_instances"][i], frame["top_weights"][i], frame["top_positions"][i])
        for rank, (image_id, weight, position) in enumerate(list(top)[:_INSTANCES_PER_CASE]):
            facts = {
                "instance_id": str(image_id),
                "instance_rank": rank + 1,
                "instance_weight": float(weight),
                "instance_position": int(position),
                "n_instances": int(frame["n_instances"][i]),
            }
            shown.append((i, category, str(image_id), facts))
    return shown


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
