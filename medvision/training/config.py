"""Every setting of a fine-tuning run, with every default in this one file.

A run is one YAML file (``medvision finetune run.yaml --set optim.lr=0.01``) validated into
:class:`FinetuneConfig`; unknown keys fail at load time naming the key (see :mod:`medvision.config`).
The sections follow the split of the engine: *what* is trained (``backbone``, ``head``, ``mode``,
``optim``), on *which* data (``data``), *how* it runs (``trainer``), when it stops and which epoch
is kept (``monitor``), and where it is recorded (``tracking``).

The ``recipe`` says how the pretrained backbone is transferred (:mod:`medvision.training.recipe`):
``linear-probe`` (logistic regression on frozen embeddings, ``probe``), ``lp-ft`` (that probe, then the whole
network at a small layer-wise decayed rate, ``lpft``), ``finetune`` (the whole network from a fresh head, as
``mode``, ``schedule`` and ``optim`` say) or ``auto`` (a cohort fingerprint picks candidates, validation picks the
winner; run by :func:`medvision.recipes.fit`). The Python default is ``finetune`` (what this config did before
recipes existed); ``medvision finetune``, the demo and the transfer pipelines run ``auto``.

Example:
    >>> cfg = FinetuneConfig.model_validate(
    ...     {"data": {"cohort_dir": "cohorts/derm"}, "backbone": {"name": "bit-s-r50x1", "weights": "hub"}})
    >>> cfg.mode, cfg.optim.name, cfg.head.name, cfg.recipe
    ('full', 'sgd', 'linear', 'finetune')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from medvision.config import StrictModel
from medvision.data.augment import FinetuneAugmentConfig
from medvision.engine.config import OptimConfig, StageConfig
from medvision.heads import get_head_class
from medvision.training.probe import DEFAULT_C_GRID, DEFAULT_PATIENCE, probe_supports
from medvision.training.recipe import Recipe

__all__ = ["DataConfig", "FinetuneConfig", "FinetuneOptimConfig", "HeadConfig", "LpFtConfig", "ProbeConfig"]


class DataConfig(StrictModel):
    """Which built cohort, and how it is batched."""

    #: A cohort folder made by ``medvision cohort build`` (manifest.parquet + cache).
    cohort_dir: Path
    #: Images per device per step (the effective batch is this x devices x nodes x accumulation).
    batch_size: int = Field(32, ge=1)
    #: Train on this nested share of the training patients (must be declared by the cohort).
    label_fraction: float = Field(1.0, gt=0.0, le=1.0)
    #: Draw training images with probability inverse to their class frequency.
    balanced: bool = False
    #: DataLoader worker processes; ``auto``: from the core count (all but two, at most 8; none on two
    #: cores); 0 loads in the training process. Items are seeded by position, so any count resumes exactly.
    num_workers: int | Literal["auto"] = Field("auto")

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("must be 0 or more (or 'auto')")
        return v

    #: Case cohorts (``unit: series | study | patient``): at most this many instances of a bag per training step,
    #: drawn without replacement from the step's seed (reproducible, resumable) and kept in the case's order;
    #: it bounds a fine-tuning step's memory. Evaluation reads every instance. ``null``: never capped.
    max_instances: int | None = Field(32, ge=1)

    #: With a frozen backbone (``mode: linear`` / ``locked``) and no augmentation, embed each image once and
    #: train the head on features cached beside the cohort cache (see :mod:`medvision.engine.features`).
    feature_cache: bool = True


class HeadConfig(StrictModel):
    """The classification head, chosen by registry name; ``options`` are validated by that head."""

    #: One of ``medvision.heads.list_heads()``: linear, multilabel, hod, het, hetxl.
    name: str = "linear"
    #: The head's own options (e.g. ``label_smoothing`` for linear, ``coarse_weight`` for hod). Options the
    #: head takes from the cohort (``Head.cohort_options``: hod's ``num_outlier_classes``) may be left out.
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _validate_with_head(self) -> HeadConfig:
        cls = get_head_class(self.name)  # unknown name: HeadConfigError (a ValueError) naming it
        try:
            cls.Options.model_validate(self.options)
        except ValidationError as err:
            problems = []
            for e in err.errors():
                key = ".".join(str(p) for p in e["loc"])
                if e["type"] == "missing" and key in cls.cohort_options:
                    continue
                if e["type"] == "extra_forbidden":
                    problems.append(f"unknown option {key!r}")
                else:
                    problems.append(f"option {key!r}: {e['msg']}")
            if problems:
                allowed = ", ".join(cls.Options.model_fields) or "(none)"
                raise ValueError(
                    f"head {self.name!r}: {'; '.join(problems)}. Options of this head: {allowed}"
                ) from None
        return self


class FinetuneOptimConfig(OptimConfig):
    """The fine-tuning optimiser: the shared settings plus layer-wise learning-rate decay."""

    #: Layer-wise LR decay (BEiT, MAE): the backbone's top layer trains at ``lr x layer_decay``, the one below at
    #: ``lr x layer_decay**2``, ..., the head at ``lr``; layers are timm's (see
    #: :func:`medvision.engine.layer_decay_groups`). ViTs fine-tune with 0.65-0.75; ``None`` (default): one rate.
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)


class ProbeConfig(StrictModel):
    """The logistic linear probe (``recipe: linear-probe``, and the first stage of ``lp-ft``), see
    :class:`medvision.training.probe.LogisticProbe`."""

    #: Inverse L2 strengths tried; the patient-grouped cross-validation on the training split picks one.
    c_grid: list[float] = Field(default_factory=lambda: list(DEFAULT_C_GRID), min_length=1)
    #: At most this many folds (fewer when the rarest class has fewer training patients).
    folds: int = Field(5, ge=2)
    #: L-BFGS iterations per fit.
    max_iter: int = Field(1000, ge=10)
    #: ``global``: one scale for every feature, keeping the pretrained embedding's geometry (the default);
    #: ``per-feature``: standardise each feature (amplifies features the backbone left nearly constant).
    scaling: Literal["global", "per-feature"] = "global"
    #: Stop walking the (ascending) C grid after this many points without a lower mean held-out loss; ``null``
    #: walks it all. The weakly regularised end is the slow one, and past a rise of the loss it cannot win.
    patience: int | None = Field(DEFAULT_PATIENCE, ge=1)

    @field_validator("c_grid")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(c <= 0 for c in v):
            raise ValueError("every C must be positive (it is the inverse of the L2 strength)")
        return v


class LpFtConfig(StrictModel):
    """The fine-tuning stage of LP-FT (Kumar et al., ICLR 2022): from the probe's head, at a small rate."""

    #: The whole network trains at ``optim.lr x lr_scale``: the probe already fits, so large steps would only
    #: distort the features it reads (the paper fine-tunes from the probe with a rate about 10x smaller).
    lr_scale: float = Field(0.1, gt=0.0, le=1.0)
    #: Layer-wise decay used when ``optim.layer_decay`` is not set (BEiT/MAE range 0.65-0.75).
    layer_decay: float = Field(0.75, gt=0.0, le=1.0)
    #: Keep the backbone's batch-norm statistics as pretrained (its scales and shifts still train). The probe was
    #: fitted to features computed with those statistics; re-estimating them from small augmented batches moves
    #: every feature at once, before a single weight has changed (why BiT uses GroupNorm for transfer).
    freeze_batchnorm: bool = True


class FinetuneConfig(StageConfig):
    """A whole fine-tuning stage: BiT-style transfer of a pretrained backbone (method spec §1),
    with any registered head (HOD §4, HET / HET-XL §6)."""

    data: DataConfig
    #: How the backbone is transferred: ``auto``, ``linear-probe``, ``lp-ft`` or ``finetune`` (module docstring).
    recipe: Recipe = "finetune"
    head: HeadConfig = Field(default_factory=HeadConfig)
    optim: FinetuneOptimConfig = Field(default_factory=FinetuneOptimConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    lpft: LpFtConfig = Field(default_factory=LpFtConfig)
    #: Training-split augmentation (``preset``: auto, photo, radiograph, none; default none); evaluation is
    #: never augmented. A frozen backbone with augmentation runs the backbone every step (no feature cache).
    augment: FinetuneAugmentConfig = Field(default_factory=FinetuneAugmentConfig)
    #: ``full``: train everything. ``linear``: frozen backbone, train the head (linear probe).
    #: ``locked``: frozen backbone, train the head and an optional residual adapter MLP.
    mode: Literal["full", "linear", "locked"] = "full"
    #: ``fixed``: ``optim.epochs`` / ``warmup_epochs`` as written. ``bit-hyperrule``: set them from the number of
    #: labelled training images by the BiT-HyperRule (:mod:`medvision.engine.hyperrule`), recorded in the run.
    #: ``steps``: the HyperRule's *optimiser steps* (500 below 20,000 labelled images) at this run's batch, so a
    #: label fraction keeps its step count; pair it with ``budget_minutes`` where CPU time is short.
    schedule: Literal["fixed", "bit-hyperrule", "steps"] = "fixed"
    #: Wall-clock budget of the training loop, in minutes; the epochs and the cosine schedule shrink to fit it
    #: once an epoch is timed, or in steps within the first epoch when it is most of the budget
    #: (:class:`medvision.engine.TimeBudget`). ``None``: no budget.
    budget_minutes: float | None = Field(None, gt=0.0)
    #: What the budget counts: ``wall`` (elapsed time) or ``cpu`` (this process's CPU time, all threads: two busy
    #: cores spend two CPU-minutes a minute). ``cpu`` trains the same epochs on a busy shared machine as on a
    #: quiet one, so a benchmark stays comparable.
    budget_clock: Literal["wall", "cpu"] = "wall"
    #: Hidden width of the locked-mode adapter; 0 means no adapter.
    adapter_hidden: int = Field(0, ge=0)
    output_dir: Path = Path("runs/finetune")

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        if self.adapter_hidden and self.mode != "locked":
            raise ValueError(f"adapter_hidden is only used with mode: locked (mode is {self.mode!r}); set it to 0")
        allowed_modes = {"linear-probe": ("full", "linear"), "lp-ft": ("full",), "auto": ("full",)}
        if self.recipe in allowed_modes and self.mode not in allowed_modes[self.recipe]:
            raise ValueError(
                f"recipe {self.recipe!r} decides which weights train, so mode must stay 'full' (it is {self.mode!r}); "
                f"set recipe: finetune to train with mode: {self.mode}"
            )
        if self.recipe in ("linear-probe", "lp-ft") and not probe_supports(self.head.name):
            raise ValueError(
                f"recipe {self.recipe!r} fits a logistic probe into the head's linear layer, and head "
                f"{self.head.name!r} has none; use head linear or hod, or recipe: finetune"
            )
        return self
