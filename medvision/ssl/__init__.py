"""Self-supervised in-domain pretraining: SimCLR (the REMEDIS recipe) and MICLe (see the method spec §2, §3).

* :func:`pretrain` / :class:`PretrainConfig` — the stage's API and its one config;
* :func:`nt_xent_loss`, :class:`ProjectionHead` — the contrastive objective, negatives from all devices;
* :class:`PairSampler`, :class:`PairDataset`, :func:`plan_pairs` — SimCLR / MICLe positive pairs;
* :func:`select_pool`, :class:`PretrainDataModule` — which images may be pretrained on;
* :class:`TwoViewAugment`, :class:`AugmentConfig` — the photo and radiograph two-view albumentations pipelines;
* :class:`LARS` — the SimCLR optimiser (the 1-NN monitor is :func:`medvision.knn.knn_accuracy`);
* :class:`PretrainModule` — the LightningModule.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it. Imported on first use, so that the light pieces (the loss
#: in DDP worker processes, the samplers) do not pay for Lightning and MLflow.
_EXPORTS = {
    "AugmentConfig": "augment",
    "TwoViewAugment": "augment",
    "build_pipeline": "augment",
    "resolve_preset": "augment",
    "PretrainConfig": "config",
    "PretrainDataConfig": "config",
    "PretrainOptimConfig": "config",
    "SSLConfig": "config",
    "PretrainDataModule": "data",
    "select_pool": "data",
    "LARS": "lars",
    "PairDataset": "micle",
    "PairSampler": "micle",
    "plan_pairs": "micle",
    "PretrainModule": "module",
    "ProjectionHead": "ntxent",
    "gather_with_grad": "ntxent",
    "nt_xent_loss": "ntxent",
    "PretrainResult": "stage",
    "build_pretrain_module": "stage",
    "pretrain": "stage",
}


#: Names that went away, and what replaced them (said when one is asked for).
_RENAMED = {"resolve_pipeline": "resolve_preset (one augmentation vocabulary: photo | radiograph | auto)"}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        raise AttributeError(f"medvision.ssl.{name} was renamed: use medvision.ssl.{_RENAMED[name]}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medvision.ssl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medvision.ssl.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "LARS",
    "AugmentConfig",
    "PairDataset",
    "PairSampler",
    "PretrainConfig",
    "PretrainDataConfig",
    "PretrainDataModule",
    "PretrainModule",
    "PretrainOptimConfig",
    "PretrainResult",
    "ProjectionHead",
    "SSLConfig",
    "TwoViewAugment",
    "build_pipeline",
    "build_pretrain_module",
    "gather_with_grad",
    "nt_xent_loss",
    "plan_pairs",
    "pretrain",
    "resolve_preset",
    "select_pool",
]
