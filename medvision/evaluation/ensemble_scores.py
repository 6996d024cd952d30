"""The greedy ensemble of an evaluation's models (method spec §4) and the ranking of their backbones (§5).

Why apart from the stage: both read every model's predictions at once, after each model is scored alone; the
ensemble is selected on validation NLL and then scored like a model, the ranking is a leave-one-out 1-NN on the
validation embeddings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medvision.evaluation.bootstrap import Bootstrap
from medvision.evaluation.document import EnsembleMetrics, EnsembleOOD, ModelMetrics, RankRow, SetMetrics
from medvision.evaluation.ensemble import greedy_ensemble, knn_rank_backbones
from medvision.evaluation.metrics import choose_operating_point
from medvision.evaluation.ood import msp_score
from medvision.evaluation.predict import Predictions
from medvision.evaluation.scoring import inliers, operating_point_record
from medvision.evaluation.settings import EvaluationSettings
from medvision.evaluation.tables import detector_row, discrimination

__all__ = ["ensemble_metrics", "rank_backbones"]


def ensemble_metrics(
    member_preds: dict[str, dict[str, Predictions]], results: list[ModelMetrics], request: EvaluationSettings
) -> EnsembleMetrics:
    """Greedy selection (with replacement) on validation NLL, then the ensemble scored like a model (spec §4)."""
    k = len(results[0].classes)
    positive = results[0].classes.index(results[0].positive_class)
    val = {name: inliers(preds["val"], k) for name, preds in member_preds.items()}
    y_val = next(iter(val.values())).frame["label_idx"].to_numpy()
    ensemble = _Ensemble(greedy_ensemble({n: v.probs for n, v in val.items()}, y_val))
    ens_val = ensemble.combine(val)
    op = None
    if (y_val == positive).any() and (y_val != positive).any():
        op = choose_operating_point(y_val == positive, ens_val.probs[:, positive], rule="youden")
    sets: dict[str, SetMetrics] = {}
    for s in request.sets:
        if s in request.outlier_sets or any(s not in preds for preds in member_preds.values()):
            continue
        combined = ensemble.combine({n: inliers(preds[s], k) for n, preds in member_preds.items()})
        if len(combined.frame):
            sets[s] = SetMetrics.model_validate(discrimination(combined, positive, op, request.bootstrap, request.seed))
    outlier_sets = [s for s in request.sets if s in request.outlier_sets]
    ood: list[EnsembleOOD] = []
    if "test" in sets and outlier_sets and all(s in p for p in member_preds.values() for s in outlier_sets):
        ood = _ensemble_ood(ensemble, member_preds, outlier_sets, k, request)
    return EnsembleMetrics(
        members=ensemble.selection.members,
        val_nll=ensemble.selection.history,
        sets=sets,
        ood=ood,
        operating_point=operating_point_record(op),
    )


class _Ensemble:
    """The members' predictions combined by a greedy selection.

    The ensemble's probabilities are the selection-weighted average of its members'; its OOD scores are MSP of that
    average and, when every member has one, the average of the members' OOD scores (for HOD heads this is exactly
    ``p_out`` of the averaged full distribution, ``p_out`` being linear in it).
    """

    def __init__(self, selection: Any) -> None:
        self.selection = selection

    def combine(self, parts: dict[str, Predictions]) -> Predictions:
        base = next(iter(parts.values()))
        probs = self.selection.predict_proba({n: p.probs for n, p in parts.items()})
        scores = {n: p.ood_score for n, p in parts.items() if p.ood_score is not None}
        has_ood = len(scores) == len(parts)
        ood = self.selection.predict_proba({n: s[:, None] for n, s in scores.items()})[:, 0] if has_ood else None
        return Predictions(base.frame, base.logits, probs, base.embeddings, ood)


def _ensemble_ood(
    ensemble: _Ensemble,
    member_preds: dict[str, dict[str, Predictions]],
    outlier_sets: list[str],
    k: int,
    request: EvaluationSettings,
) -> list[EnsembleOOD]:
    """The ensemble's MSP (and averaged HOD score) on test inliers against the outlier sets, AUROC with its
    patient-level interval."""
    test = ensemble.combine({n: inliers(p["test"], k) for n, p in member_preds.items()})
    out = Predictions.concat([ensemble.combine({n: p[s] for n, p in member_preds.items()}) for s in outlier_sets])
    both = Predictions.concat([test, out])
    is_ood = np.r_[np.zeros(len(test.frame), bool), np.ones(len(out.frame), bool)]
    scores = {"ensemble_msp": msp_score(both.probs)}
    if both.ood_score is not None:
        scores["ensemble_hod"] = both.ood_score
    bs = Bootstrap(both.frame["patient_id"].to_numpy(), n_resamples=max(request.bootstrap, 1), seed=request.seed)
    return [EnsembleOOD.model_validate(detector_row(name, score, is_ood, bs)) for name, score in scores.items()]


def rank_backbones(member_preds: dict[str, dict[str, Predictions]], results: list[ModelMetrics]) -> list[RankRow]:
    """Leave-one-out 1-NN accuracy (cosine) of each model's embeddings on validation (method spec §5)."""

    k = len(results[0].classes)
    feats, labels = {}, None
    for name, preds in member_preds.items():
        val = preds["val"]
        keep = ((val.frame["label_idx"] >= 0) & (val.frame["label_idx"] < k)).to_numpy()
        feats[name], labels = val.embeddings[keep], val.frame["label_idx"].to_numpy()[keep]
    if labels is None or len(labels) < 2:
        return []
    ranking = knn_rank_backbones(feats, labels)
    return [RankRow.model_validate(r) for r in ranking.rename_axis("model").reset_index().to_dict("records")]
