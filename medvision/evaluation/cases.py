"""Case-level predictions of a bag model: one row per case, and the instances its pooling weighed most.

Where the clinic scores a series, a study or a patient, so must the evaluation: every metric, interval,
subgroup table, calibration curve and OOD score is computed from these rows, one per case, exactly as
:func:`~medvision.evaluation.predict.predict_rows` rows are for image cohorts (the patient-level bootstrap then
clusters the cases of one patient). Evaluation reads *every* instance of a case (no cap). A frozen backbone's
instance embeddings come from the feature cache, so each slice is embedded once for every set and model.

Beside the class probabilities each row names the case's top instances by pooling weight (``top_instances``: image
ids, ``top_weights``, ``top_positions``: their places in the case's order): what a reader opens first, and what the
report's saliency gallery shows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from medvision.cohort.cohort import Cohort
from medvision.data.bags import BagDataset
from medvision.engine.bags import bag_features
from medvision.evaluation.predict import SUBGROUP_EXCLUDE, Predictions

__all__ = ["predict_cases"]

#: The identity columns of a case-level predictions table, first (then subgroups, ``n_instances``, ``p:<class>``).
_IDENTITY = ("case_id", "patient_id", "split", "label", "label_idx")


@torch.inference_mode()
def predict_cases(classifier, cohort: Cohort, rows: pd.DataFrame, batch_size: int = 16, top_k: int = 3) -> Predictions:
    """The bag classifier's outputs on the cases of ``rows`` (instance rows of one or more splits), one per case.

    Args:
        classifier: a :class:`~medvision.classifier.Classifier` whose head reads bags (``takes_bags``).
        cohort: the cohort ``rows`` come from.
        rows: manifest rows; every instance of each case should be present (evaluation never caps).
        batch_size: cases per head pass.
        top_k: instances named per case.

    Returns:
        :class:`Predictions` whose frame has ``case_id``, ``patient_id``, ``split``, ``label``, ``label_idx``, the
        subgroup columns, ``n_instances``, ``p:<class>`` and the ``top_*`` columns; ``embeddings`` are the pooled
        case embeddings (what feature-space detectors score).
    """
    head = classifier.head
    if not getattr(head, "takes_bags", False):
        raise ValueError(f"head {head.name!r} does not read bags; case cohorts need a bag head (head: mil)")
    classifier.eval()
    bags = BagDataset(cohort, rows)
    feats = _instance_embeddings(classifier, bags, batch_size)
    pooled, logits, probs, top = [], [], [], []
    for start in range(0, len(bags), batch_size):
        chunk = range(start, min(start + batch_size, len(bags)))
        h, mask = _pad([feats[bags.index.positions(i)] for i in chunk])
        z, w = head.pool(h, mask)
        out = head.classify(z)
        pooled.append(z.float().numpy())
        logits.append(out.logits.float().numpy())
        probs.append(out.probs.float().numpy())
        top += [_top(bags, i, w[j, : mask[j].sum()].float().numpy(), top_k) for j, i in enumerate(chunk)]
    return _predictions(classifier, bags, pooled, logits, probs, top)


def _instance_embeddings(classifier, bags: BagDataset, batch_size: int) -> Tensor:
    """Every instance's embedding as the head reads it (after the adapter), in the bags' row order."""
    if getattr(classifier, "freeze_backbone", False):
        feats = torch.from_numpy(bag_features(bags, classifier.backbone, max(64, batch_size))[0])
        return feats if classifier.adapter is None else classifier.adapter(feats)
    keys = bags.index.rows["cache_key"].tolist()
    parts = []
    for start in range(0, len(keys), 64):
        batch = np.stack([bags.cache.to_float(bags.cache.get(k)) for k in keys[start : start + 64]])
        parts.append(classifier.embed(torch.from_numpy(batch)).float())
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def _pad(bags: list[Tensor]) -> tuple[Tensor, Tensor]:
    longest = max(len(b) for b in bags)
    h = bags[0].new_zeros((len(bags), longest, bags[0].shape[-1]))
    mask = torch.zeros(len(bags), longest, dtype=torch.bool)
    for j, b in enumerate(bags):
        h[j, : len(b)], mask[j, : len(b)] = b, True
    return h, mask


def _top(bags: BagDataset, i: int, weights: np.ndarray, k: int) -> dict[str, list]:
    order = np.argsort(-weights, kind="stable")[:k]
    rows = bags.index.rows.iloc[bags.index.positions(i)[order]]
    return {
        "top_instances": rows["image_id"].tolist(),
        "top_weights": [float(weights[j]) for j in order],
        "top_positions": [int(j) for j in order],
    }


def _predictions(classifier, bags: BagDataset, pooled, logits, probs, top) -> Predictions:
    cases = bags.rows
    subgroups = [c for c in cases.columns if c not in SUBGROUP_EXCLUDE]
    frame = cases[[*(c for c in _IDENTITY if c in cases), *subgroups, "n_instances"]].copy()
    k = len(classifier.classes)
    p = np.concatenate(probs) if probs else np.zeros((0, k), np.float32)
    for j, name in enumerate(classifier.classes):
        frame[f"p:{name}"] = p[:, j].astype(np.float64)
    for column in ("top_instances", "top_weights", "top_positions"):
        frame[column] = [t[column] for t in top]
    empty = np.zeros((len(frame), 0), np.float32)
    return Predictions(
        frame.reset_index(drop=True),
        np.concatenate(logits) if logits else empty,
        p,
        np.concatenate(pooled) if pooled else empty,
        None,
    )
