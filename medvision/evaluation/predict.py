"""Run a trained classifier over cohort rows: the predictions table every metric is computed from.

A predictions table has one row per image with pseudonymous ids, the manifest's subgroup columns, the
label, one ``p:<class>`` column per inlier class, and the head's OOD score when it has one; logits and
embeddings travel next to it as arrays (the feature-space detectors need them). Nothing here computes a
metric: predictions are written once and every number in ``metrics.json`` is derived from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from medvision.cohort.cohort import CASE_COLUMNS, LEADING_COLUMNS, Cohort
from medvision.data.dataset import CohortDataset
from medvision.engine.features import FeatureCache
from medvision.evaluation.tta import View

__all__ = ["Predictions", "SUBGROUP_EXCLUDE", "predict_rows"]

#: Manifest columns that are not subgroup attributes (ids, paths, image facts, a case cohort's case columns).
SUBGROUP_EXCLUDE = frozenset(
    {
        *LEADING_COLUMNS,
        *CASE_COLUMNS,
        "n_instances",
        "kind",
        "modality",
        "view",
        "photometric",
        "transfer_syntax",
        "height",
        "width",
        "channels",
        "content_sha256",
        "cache_key",
    }
)


@dataclass
class Predictions:
    """One evaluation set's outputs: the table plus the arrays detectors need (row order shared)."""

    frame: pd.DataFrame
    logits: np.ndarray
    probs: np.ndarray
    embeddings: np.ndarray
    ood_score: np.ndarray | None
    #: What the head calls its built-in OOD score (``Head.ood_score_name``, e.g. ``hod``), when it has one.
    ood_score_name: str | None = None

    def subset(self, mask: np.ndarray) -> Predictions:
        return Predictions(
            self.frame[mask].reset_index(drop=True),
            self.logits[mask],
            self.probs[mask],
            self.embeddings[mask],
            None if self.ood_score is None else self.ood_score[mask],
            self.ood_score_name,
        )

    @staticmethod
    def concat(parts: list[Predictions]) -> Predictions:
        ood = None if any(p.ood_score is None for p in parts) else np.concatenate([p.ood_score for p in parts])
        names = {p.ood_score_name for p in parts}
        return Predictions(
            pd.concat([p.frame for p in parts], ignore_index=True),
            np.concatenate([p.logits for p in parts]),
            np.concatenate([p.probs for p in parts]),
            np.concatenate([p.embeddings for p in parts]),
            ood,
            names.pop() if ood is not None and len(names) == 1 else None,
        )


@torch.inference_mode()
def predict_rows(
    classifier, cohort: Cohort, rows: pd.DataFrame, batch_size: int = 64, views: Sequence[View] = ()
) -> Predictions:
    """The classifier's outputs on ``rows`` (manifest rows of one or more splits), in row order.

    A frozen backbone (linear probe, locked tuning) reads its features from the cohort's feature cache
    (:mod:`medvision.engine.features`): each image is embedded once for every set, detector and model that shares
    those weights, and not again when the same evaluation is re-run.

    With test-time augmentation (``views``, :mod:`medvision.evaluation.tta`; more than one) every output is the
    mean over the views: probabilities (the prediction), logits (energy and max-logit read them), embeddings (the
    feature-space detectors) and the head's OOD score, so everything downstream reads one consistent model. Views
    transform pixels, so a frozen backbone then embeds the images instead of reading the cache.
    """
    classifier.eval()
    if len(views) > 1 and len(rows):
        outputs = [_outputs(classifier, _image_batches(cohort, rows, batch_size, v)) for v in views]
        logits = np.mean([o[0] for o in outputs], axis=0)
        p = np.mean([o[1] for o in outputs], axis=0)
        feats = np.mean([o[2] for o in outputs], axis=0)
        view_scores = [o[3] for o in outputs if o[3] is not None]
        scores = np.mean(view_scores, axis=0) if len(view_scores) == len(outputs) else None
    else:
        # Frozen-feature batches ({"features"}) or the dataset's image batches ({"image", ...}).
        batches: Iterable[Mapping[str, Any]]
        if getattr(classifier, "freeze_backbone", False) and len(rows):
            store = FeatureCache.for_cohort(cohort.cache, classifier.backbone, batch_size)
            cached = torch.from_numpy(store.features(cohort.cache, rows["cache_key"].tolist()))
            batches = [{"features": cached[i : i + batch_size]} for i in range(0, len(rows), batch_size)]
        else:
            batches = _image_batches(cohort, rows, batch_size, None)
        logits, p, feats, scores = _outputs(classifier, batches, len(classifier.classes))
    return _assemble(classifier, rows, logits, p, feats, scores)


def _image_batches(cohort: Cohort, rows: pd.DataFrame, batch_size: int, view: View | None) -> DataLoader:
    """The rows' images in order, through ``view`` (a dataset index ``(i, seed)`` is what applies an augment)."""
    ds = CohortDataset(cohort, rows, augment=view)
    order = [(i, 0) for i in range(len(rows))] if view is not None else None
    return DataLoader(ds, batch_size=batch_size, shuffle=False, sampler=order, num_workers=0)


def _outputs(
    classifier, batches: Iterable[Mapping[str, Any]], k: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Logits, inlier probabilities, embeddings and the head's OOD score (``None``: it has none), stacked."""
    logits, probs, feats, scores = [], [], [], []
    for batch in batches:
        if "features" in batch:
            f = batch["features"]
            emb = f if classifier.adapter is None else classifier.adapter(f)
        else:
            emb = classifier.embed(batch["image"])
        out = classifier.head(emb)
        feats.append(emb.float().numpy())
        logits.append(out.logits.float().numpy())
        probs.append(out.probs.float().numpy())
        if out.ood_score is not None:
            scores.append(out.ood_score.float().numpy())
    k = len(classifier.classes) if k is None else k  # inlier classes (a HOD head's outlier logits are extra)
    p = np.concatenate(probs) if probs else np.zeros((0, k), np.float32)
    empty = np.zeros((len(p), 0), np.float32)
    return (
        np.concatenate(logits) if logits else empty,
        p,
        np.concatenate(feats) if feats else empty,
        np.concatenate(scores) if scores else None,
    )


def _assemble(
    classifier, rows: pd.DataFrame, logits: np.ndarray, p: np.ndarray, feats: np.ndarray, scores: np.ndarray | None
) -> Predictions:
    """The predictions table (pseudonymous ids, subgroup columns, ``p:<class>``, ``ood_score``) and its arrays."""
    frame = (
        rows[
            [
                c
                for c in rows.columns
                if c in ("image_id", "patient_id", "split", "label", "label_idx") or c not in SUBGROUP_EXCLUDE
            ]
        ]
        .reset_index(drop=True)
        .copy()
    )
    for j, name in enumerate(classifier.classes):
        frame[f"p:{name}"] = p[:, j].astype(np.float64)
    ood = None if scores is None else scores.astype(np.float64)
    if ood is not None:
        frame["ood_score"] = ood
    return Predictions(
        frame, logits, p, feats, ood, getattr(classifier.head, "ood_score_name", None) if ood is not None else None
    )
