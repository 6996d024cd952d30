"""Every setting of a self-supervised pretraining run (SimCLR / REMEDIS, MICLe), defaults in one place.

A run is one YAML file (``medvision pretrain run.yaml --set ssl.temperature=0.2``) validated into
:class:`PretrainConfig` before any work starts; unknown keys fail naming the key. The trainer, monitor and
tracking sections are fine-tuning's own (:mod:`medvision.training.config`), so both stages run on the same
trainer factory, checkpoints, ``resume: auto`` and MLflow callback.

Example:
    >>> cfg = PretrainConfig.model_validate({"data": {"cohort_dir": "cohorts/derm"},
    ...                                      "backbone": {"name": "bit-m-r50x1", "weights": "hub"}})
    >>> cfg.ssl.mode, cfg.optim.name, cfg.data.pool
    ('micle', 'lars', 'train+unlabelled')
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from medvision.config import StrictModel
from medvision.engine.config import MonitorConfig, OptimConfig, StageConfig, TrackingConfig
from medvision.ssl.augment import AugmentConfig

__all__ = ["PretrainConfig", "PretrainDataConfig", "PretrainOptimConfig", "SSLConfig"]

_DEFAULT_BASE_LR = {"lars": 0.3, "adamw": 1e-3}


class PretrainDataConfig(StrictModel):
    """Which cohort images form the unlabelled pool, and how they are batched."""

    #: A cohort folder made by ``medvision cohort build``.
    cohort_dir: Path
    #: ``unlabelled``: images without a label (the ``unlabelled`` split and unlabelled training images);
    #: ``train``: every training image, labels ignored; ``train+unlabelled``: both. Validation and test
    #: images are never in the pool.
    pool: Literal["unlabelled", "train", "train+unlabelled"] = "train+unlabelled"
    #: Also pretrain on held-out sites (``site_ood``) and held-out conditions (``condition_ood``). Off by
    #: default: those images exist to measure out-of-distribution behaviour and must stay unseen.
    include_heldout: bool = False
    #: Pairs per device per step (the global batch is this x devices x nodes).
    batch_size: int = Field(default=256, ge=2)
    #: DataLoader worker processes (0: exact resume, see :mod:`medvision.engine.seeding`).
    num_workers: int = Field(default=0, ge=0)
    #: kNN monitor: at most this many labelled training (reference) and validation (query) images.
    knn_max_images: int = Field(default=2048, ge=2)


class SSLConfig(StrictModel):
    """The contrastive objective (see the method spec §2, §3)."""

    #: ``micle``: two different images of a patient when it has >= 2; ``simclr``: two views of one image.
    mode: Literal["simclr", "micle"] = "micle"
    #: NT-Xent temperature tau.
    temperature: float = Field(default=0.1, gt=0.0)
    #: Linear layers of the projection head (SimCLR v2 uses 3, v1 2).
    projection_layers: int = Field(default=2, ge=1, le=4)
    #: Hidden width of the projection head; ``None`` uses the backbone's embedding size.
    projection_hidden_dim: int | None = Field(default=None, ge=1)
    projection_dim: int = Field(default=128, ge=1)


class PretrainOptimConfig(OptimConfig):
    """SimCLR's optimiser and schedule: LARS, ``lr = 0.3 x global batch / 256``, 10 warm-up epochs, cosine
    decay, weight decay 1e-6 (biases and norms excluded)."""

    # Both overrides narrow nothing the engine reads: it uses only the shared schedule fields (epochs, warm-up,
    # clipping, accumulation); the optimiser and its learning rate are built by this stage's module alone.
    name: Literal["lars", "adamw"] = "lars"  # type: ignore[assignment]
    #: Peak learning rate; ``None`` applies the linear scaling rule ``base_lr x global batch / 256``.
    lr: float | None = Field(default=None, gt=0.0)  # type: ignore[assignment]
    #: Base learning rate of the scaling rule; ``None``: 0.3 for LARS (SimCLR), 1e-3 for AdamW.
    base_lr: float | None = Field(default=None, gt=0.0)
    weight_decay: float = Field(default=1e-6, ge=0.0)
    epochs: int = Field(default=100, ge=1)
    warmup_epochs: float = Field(default=10.0, ge=0.0)
    #: LARS trust coefficient eta.
    trust_coefficient: float = Field(default=0.001, gt=0.0)
    #: Contrastive training with LARS needs no clipping.
    grad_clip: float | None = Field(default=None, gt=0.0)

    def peak_lr(self, global_batch: int) -> float:
        """The learning rate at the end of the warm-up for a global batch of ``global_batch`` pairs."""
        if self.lr is not None:
            return self.lr
        base = self.base_lr if self.base_lr is not None else _DEFAULT_BASE_LR[self.name]
        return base * global_batch / 256


class PretrainConfig(StageConfig):
    """A whole pretraining stage: SimCLR or MICLe on in-domain images, starting from any backbone source
    (REMEDIS: ``bit-m-r50x1`` hub weights). The result is logged as ``mlflow:runs:/RUN_ID/backbone``,
    which a fine-tuning config takes as ``backbone.weights``."""

    data: PretrainDataConfig
    ssl: SSLConfig = Field(default_factory=SSLConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: PretrainOptimConfig = Field(default_factory=PretrainOptimConfig)
    #: Which epoch's backbone is kept and logged: by default the best kNN accuracy.
    monitor: MonitorConfig = Field(default_factory=lambda: MonitorConfig(metric="val/knn_acc", mode="max"))
    output_dir: Path = Path("runs/pretrain")
    tracking: TrackingConfig = Field(default_factory=lambda: TrackingConfig(experiment="medvision-pretrain"))
