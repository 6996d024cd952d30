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

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medvision.config import StrictModel

__all__ = [
    "BackboneConfig",
    "DataConfig",
    "FinetuneConfig",
    "HeadConfig",
    "MonitorConfig",
    "OptimConfig",
    "TrackingConfig",
    "TrainerConfig",
    "resolve_tracking_uri",
]

#: Head options the engine fills in from the cohort, so a YAML need not repeat them.
COHORT_FILLED_HEAD_OPTIONS = frozenset({"num_outlier_classes"})


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
    #: DataLoader worker processes; 0 loads in the training process (exactly resumable, see the
    #: trainer module).
    num_workers: int = Field(0, ge=0)


class BackboneConfig(StrictModel):
    """The pretrained image tower (see :func:`medvision.models.create_backbone`)."""

    #: A registered backbone name (``medvision.models``), e.g. ``bit-s-r50x1``.
    name: str
    #: ``hub`` (pretrained upstream weights), ``none`` (random init), ``file:PATH`` or
    #: ``mlflow:runs:/RUN_ID/backbone`` (the output of an earlier stage).
    weights: str = "hub"
    #: Input channels; ``None`` takes the cohort's (1 for grey radiographs, 3 for photos).
    in_chans: int | None = Field(None, ge=1)
    #: Architecture options passed to timm (``img_size``, ``drop_path_rate``, ``moe``, ...).
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v in ("hub", "none") or v.startswith(("file:", "mlflow:")):
            return v
        raise ValueError("weights must be 'hub', 'none', 'file:PATH' or 'mlflow:runs:/RUN_ID/backbone'")


class HeadConfig(StrictModel):
    """The classification head, chosen by registry name; ``options`` are validated by that head."""

    #: One of ``medvision.heads.list_heads()``: linear, multilabel, hod, het, hetxl.
    name: str = "linear"
    #: The head's own options (e.g. ``label_smoothing`` for linear, ``coarse_weight`` for hod).
    #: ``num_outlier_classes`` (hod) is taken from the cohort when left out.
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _validate_with_head(self) -> HeadConfig:
        from pydantic import ValidationError

        from medvision.heads import get_head_class

        cls = get_head_class(self.name)  # unknown name: HeadConfigError (a ValueError) naming it
        try:
            cls.Options.model_validate(self.options)
        except ValidationError as err:
            problems = []
            for e in err.errors():
                key = ".".join(str(p) for p in e["loc"])
                if e["type"] == "missing" and key in COHORT_FILLED_HEAD_OPTIONS:
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


class OptimConfig(StrictModel):
    """Optimiser and schedule. BiT fine-tunes with SGD + momentum, a short warm-up and a decaying
    schedule (see the method spec §1); AdamW is the usual choice for ViT / SigLIP towers."""

    name: Literal["sgd", "adamw"] = "sgd"
    #: Peak learning rate, reached at the end of the warm-up.
    lr: float = Field(0.003, gt=0.0)
    #: SGD momentum (ignored by AdamW).
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    #: Decoupled (AdamW) or L2 (SGD) weight decay; applied to weight matrices and kernels only,
    #: never to biases and normalisation scales (shrinking those toward 0 only hurts).
    weight_decay: float = Field(0.0, ge=0.0)
    epochs: int = Field(10, ge=1)
    #: Linear warm-up from 0, in epochs (fractions allowed), then a per-step cosine decay to 0.
    warmup_epochs: float = Field(1.0, ge=0.0)
    #: Clip the global gradient norm to this value; ``None`` turns clipping off.
    grad_clip: float | None = Field(1.0, gt=0.0)
    #: Sum gradients of this many batches per optimiser step (a larger effective batch).
    accumulate_grad_batches: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _warmup_fits(self) -> OptimConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be shorter than epochs ({self.epochs})")
        return self


class TrainerConfig(StrictModel):
    """Where and how the steps run (devices, precision, distribution)."""

    #: ``auto`` picks a GPU when one is visible.
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    #: Devices per node (an int, or ``auto`` for all visible).
    devices: int | Literal["auto"] = 1
    #: Nodes; under torchrun or SLURM the ranks are read from their environment variables, and
    #: ``auto`` reads the node count from there too.
    num_nodes: int | Literal["auto"] = 1
    #: ``auto`` (single device unless several are asked for), ``ddp`` (one process per device,
    #: gloo on CPU) or ``fsdp`` (sharded parameters, GPU).
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    #: DDP must be told when some parameters get no gradient in a step (sparse MoE experts).
    find_unused_parameters: bool = False
    #: ``32`` everywhere; ``bf16-mixed`` on GPUs with bfloat16 (A100/H100) roughly halves memory.
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    #: Deterministic kernels; ``None`` means on for CPU (bit-exact resume), off on GPU (speed).
    deterministic: bool | None = None
    progress_bar: bool = True

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("devices", "num_nodes")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1 (or 'auto')")
        return v


class MonitorConfig(StrictModel):
    """The validation metric that picks the best checkpoint and, with ``patience``, stops early."""

    metric: str = "val/auroc"
    mode: Literal["max", "min"] = "max"
    #: Stop after this many epochs without improvement; ``None`` trains all epochs.
    patience: int | None = Field(None, ge=1)


class TrackingConfig(StrictModel):
    """Where the run is recorded (one MLflow run per stage)."""

    #: ``None``: $MLFLOW_TRACKING_URI if set, else ``sqlite:///mlflow.db`` in the working directory.
    tracking_uri: str | None = None
    experiment: str = "medvision-finetune"
    #: MLflow run name; ``None`` lets MLflow pick one.
    run_name: str | None = None


class FinetuneConfig(StrictModel):
    """A whole fine-tuning stage: BiT-style transfer of a pretrained backbone (method spec §1),
    with any registered head (HOD §4, HET / HET-XL §6)."""

    data: DataConfig
    backbone: BackboneConfig
    head: HeadConfig = Field(default_factory=HeadConfig)
    #: ``full``: train everything. ``linear``: frozen backbone, train the head (linear probe).
    #: ``locked``: frozen backbone, train the head and an optional residual adapter MLP.
    mode: Literal["full", "linear", "locked"] = "full"
    #: Hidden width of the locked-mode adapter; 0 means no adapter.
    adapter_hidden: int = Field(0, ge=0)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    #: ``auto``: continue from ``<output_dir>/checkpoints/last.ckpt`` when it exists; ``never``:
    #: start afresh; or the path of a checkpoint to continue from.
    resume: str = "auto"
    #: Checkpoints and the resolved config go here.
    output_dir: Path = Path("runs/finetune")
    seed: int = 0
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        if self.adapter_hidden and self.mode != "locked":
            raise ValueError(f"adapter_hidden is only used with mode: locked (mode is {self.mode!r}); set it to 0")
        return self


def resolve_tracking_uri(tracking: TrackingConfig) -> str:
    """The MLflow tracking URI a run uses: the config's, else $MLFLOW_TRACKING_URI, else a SQLite
    file ``mlflow.db`` in the current working directory (absolute, so DDP workers agree)."""
    if tracking.tracking_uri:
        return tracking.tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"
