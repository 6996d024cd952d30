"""Every setting of a fine-tuning run, with every default in this one file.

A run is one YAML file (``medvision finetune run.yaml --set optim.lr=0.01``) validated into
:class:`FinetuneConfig`; unknown keys fail at load time naming the key (see :mod:`medvision.config`).
The sections follow the split of the engine: *what* is trained (``backbone``, ``head``, ``mode``,
``optim``), on *which* data (``data``), *how* it runs (``trainer``), when it stops and which epoch
is kept (``monitor``), and where it is recorded (``tracking``).

Example:
    >>> cfg = FinetuneConfig.model_validate(
    ...     {"data": {"cohort_dir": "cohorts/derm"}, "backbone": {"name": "bit-s-r50x1", "weights": "hub"}})
    >>> cfg.mode, cfg.optim.name, cfg.head.name
    ('full', 'sgd', 'linear')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from medvision.config import StrictModel
from medvision.data.augment import FinetuneAugmentConfig
from medvision.engine.config import StageConfig
from medvision.heads import get_head_class

__all__ = ["DataConfig", "FinetuneConfig", "HeadConfig"]


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


class FinetuneConfig(StageConfig):
    """A whole fine-tuning stage: BiT-style transfer of a pretrained backbone (method spec §1),
    with any registered head (HOD §4, HET / HET-XL §6)."""

    data: DataConfig
    head: HeadConfig = Field(default_factory=HeadConfig)
    #: Training-split augmentation (``preset``: auto, photo, radiograph, none; default none); evaluation is
    #: never augmented. A frozen backbone with augmentation runs the backbone every step (no feature cache).
    augment: FinetuneAugmentConfig = Field(default_factory=FinetuneAugmentConfig)
    #: ``full``: train everything. ``linear``: frozen backbone, train the head (linear probe).
    #: ``locked``: frozen backbone, train the head and an optional residual adapter MLP.
    mode: Literal["full", "linear", "locked"] = "full"
    #: ``fixed``: ``optim.epochs`` / ``warmup_epochs`` as written. ``bit-hyperrule``: set them from the number of
    #: labelled training images by the BiT-HyperRule (:mod:`medvision.engine.hyperrule`), recorded in the run.
    schedule: Literal["fixed", "bit-hyperrule"] = "fixed"
    #: Hidden width of the locked-mode adapter; 0 means no adapter.
    adapter_hidden: int = Field(0, ge=0)
    output_dir: Path = Path("runs/finetune")

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        if self.adapter_hidden and self.mode != "locked":
            raise ValueError(f"adapter_hidden is only used with mode: locked (mode is {self.mode!r}); set it to 0")
        return self
