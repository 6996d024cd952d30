"""The ``linear-probe`` recipe as a run, and the probe that starts ``lp-ft``: embeddings from the frozen-feature
cache, :class:`~medvision.training.probe.LogisticProbe` on the training rows, the result written into the
classifier's head.

A probe run has no epochs, so it records itself through :meth:`MLflowTracking.record_fitted`: the same params,
tags, artifacts and model layout as a Lightning fine-tune, with validation metrics computed by the fine-tuning
module's own :meth:`~medvision.training.module.FinetuneModule.epoch_metrics` (the one macro AUROC). Evaluation,
export and the report read it like any other run.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from medvision.classifier import Classifier
from medvision.data.dataset import CohortDataModule
from medvision.engine.config import single_process
from medvision.engine.features import FeatureCache
from medvision.errors import InputError
from medvision.tracking import MLflowTracking
from medvision.training.config import FinetuneConfig
from medvision.training.module import FinetuneModule
from medvision.training.probe import LogisticProbe, probe_layer

__all__ = ["ProbeRun", "fit_head_probe", "probe_metrics", "run_linear_probe"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeRun:
    """What a linear-probe run recorded."""

    run_id: str
    metrics: dict[str, float]
    probe: LogisticProbe


def _features(classifier: Classifier, datamodule: CohortDataModule, rows: pd.DataFrame) -> np.ndarray:
    cache = datamodule.cohort.cache
    store = FeatureCache.for_cohort(cache, classifier.backbone, batch_size=max(datamodule.batch_size, 64))
    return store.features(cache, rows["cache_key"].tolist())


def fit_head_probe(classifier: Classifier, datamodule: CohortDataModule, config: FinetuneConfig) -> LogisticProbe:
    """Fit the probe on the run's training rows (those the head has a logit for) and write it into the head.

    A probe this process already fitted on the same embeddings, labels, patients, probe settings and seed is reused
    (:func:`_remembered`): LP-FT starts from exactly the probe the linear-probe run of its config fitted, and a
    pipeline that runs both, or ``auto`` beside them, fits it once.

    Raises:
        ValueError: the head has no single linear layer, or the data module is not a cohort's.
    """
    layer = probe_layer(classifier.head)
    if layer is None:
        raise ValueError(f"head {classifier.head.name!r} has no single linear layer for a logistic probe")
    if not isinstance(datamodule, CohortDataModule):
        raise ValueError("a logistic probe embeds the cohort's cached images; give it the cohort's data module")
    rows = datamodule.dataset("train").rows
    y = rows["label_idx"].to_numpy()
    rows = rows[(y >= 0) & (y < classifier.head.num_outputs)].reset_index(drop=True)
    p = config.probe
    probe = LogisticProbe(
        p.c_grid,
        folds=p.folds,
        max_iter=p.max_iter,
        class_weight="balanced" if config.data.balanced else None,
        seed=config.seed,
        scaling=p.scaling,
        patience=p.patience,
    )
    x, y, groups = _features(classifier, datamodule, rows), rows["label_idx"].to_numpy(), rows["patient_id"].to_numpy()
    key = _probe_key(probe, x, y, groups, classifier.head.num_outputs)
    fitted = _remembered(key, lambda: probe.fit(x, y, groups, classifier.head.num_outputs))
    fitted.to_layer(layer)
    return fitted


#: Probes fitted in this process, newest last, by :func:`_probe_key` (at most :data:`_KEPT_PROBES`).
_FITTED: OrderedDict[str, LogisticProbe] = OrderedDict()
_KEPT_PROBES = 32


def _probe_key(probe: LogisticProbe, x: np.ndarray, y: np.ndarray, groups: np.ndarray, num_outputs: int) -> str:
    """Everything a probe's fit depends on: the embeddings themselves (so another backbone, image or checkpoint
    can never share one), the labels, the patients (the folds), the head's size and every setting of the fit."""
    h = hashlib.sha256()
    settings = (probe.c_grid, probe.folds, probe.max_iter, probe.class_weight, probe.seed, probe.scaling)
    h.update(repr((settings, probe.patience, num_outputs, x.shape, x.dtype.str)).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.asarray(y, dtype=np.int64).tobytes())
    h.update("\x1f".join(map(str, groups)).encode())
    return h.hexdigest()


def _remembered(key: str, fit: Callable[[], LogisticProbe]) -> LogisticProbe:
    """The probe fitted under ``key`` earlier in this process, else ``fit()``'s, remembered."""
    if key in _FITTED:
        _FITTED.move_to_end(key)
        log.info("linear probe: reusing the fit of the same embeddings, labels and settings made earlier")
        return _FITTED[key]
    probe = fit()
    _FITTED[key] = probe
    while len(_FITTED) > _KEPT_PROBES:
        _FITTED.popitem(last=False)
    return probe


def probe_metrics(probe: LogisticProbe) -> dict[str, float]:
    """What the probe's fit is worth recording: the chosen C, its cross-validated log-loss, the folds."""
    mean = probe.cv_loss_.mean(axis=0)
    return {
        "probe/C": float(probe.C_),
        "probe/cv_log_loss": float(np.nanmin(mean)),
        "probe/folds": float(len(probe.folds_)),
        "probe/grid_points": float(np.isfinite(mean).sum()),  # the C values the (early-stopped) path tried
    }


@torch.no_grad()
def _validation_metrics(classifier: Classifier, datamodule: CohortDataModule, config: FinetuneConfig):
    rows = datamodule.dataset("val").rows
    if rows.empty:
        return {}
    out = classifier.eval().from_features(torch.from_numpy(_features(classifier, datamodule, rows)))
    y = torch.tensor(rows["label_idx"].to_numpy(), dtype=torch.long)
    ood = out.ood_score if out.ood_score is not None else out.probs.new_full((len(y),), float("nan"))
    metrics = FinetuneModule(classifier, config.optim).epoch_metrics(out.probs, ood, y)
    trainable = (y >= 0) & (y < classifier.head.num_outputs)
    if trainable.any():
        kept = type(out)(logits=out.logits[trainable], probs=out.probs[trainable], ood_score=None)
        metrics["val/loss"] = float(classifier.head.loss(kept, y[trainable]))
    return metrics


def run_linear_probe(
    config: FinetuneConfig, classifier: Classifier, datamodule: CohortDataModule, tracker: MLflowTracking
) -> ProbeRun:
    """Fit the probe, compute validation metrics, record the run (see the module docstring).

    Returns:
        The run id, its metrics (``val/auroc`` also as ``best/val/auroc``: a probe has one "epoch") and the probe.
    """
    if not single_process(config.trainer):
        raise InputError(
            "recipe: linear-probe is one process (a convex fit of seconds, recorded once); set trainer.devices to 1 "
            "and start it without torchrun/SLURM"
        )
    probe = fit_head_probe(classifier, datamodule, config)
    metrics = {**probe_metrics(probe), **_validation_metrics(classifier, datamodule, config)}
    if config.monitor.metric in metrics:
        metrics[f"best/{config.monitor.metric}"] = metrics[config.monitor.metric]
    first = datamodule.dataset("train").rows["cache_key"].iloc[0]
    shape = tuple(int(s) for s in datamodule.cohort.cache.get(first).shape)
    finite = {k: v for k, v in metrics.items() if np.isfinite(v)}
    run_id = tracker.record_fitted(classifier, shape, finite)
    return ProbeRun(run_id, metrics, probe)
