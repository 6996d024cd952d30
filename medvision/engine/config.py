"""Settings every training stage shares (fine-tuning and self-supervised pretraining), declared once.

A stage config is a :class:`StageConfig`: which backbone, how it is optimised, where the steps run, which epoch is
kept, where checkpoints and the MLflow run go. The stage kinds add their own sections (``data``, ``head``, ``ssl``) and
narrow ``optim`` (LARS for SimCLR), so :func:`medvision.engine.fit_stage` can run any of them without knowing which.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from medvision.config import StrictModel
from medvision.tracking.uri import check_no_credentials

__all__ = [
    "BackboneConfig",
    "MonitorConfig",
    "OptimConfig",
    "StageConfig",
    "TrackingConfig",
    "TrainerConfig",
    "resolve_tracking_uri",
]


class BackboneConfig(StrictModel):
    """The pretrained image tower (see :func:`medvision.models.create_backbone`)."""

    #: A registered backbone name (``medvision.models``), e.g. ``bit-s-r50x1``.
    name: str
    #: ``hub`` (the name's pretrained weights: from its installed pip package for names that ship in one,
    #: like ``effnet-lite0``, else timm's hub), ``none`` (random init), ``package`` (only the package),
    #: ``file:PATH`` or ``mlflow:runs:/RUN_ID/backbone`` (the output of an earlier stage).
    weights: str = "hub"
    #: Input channels; ``None`` takes the cohort's (1 for grey radiographs, 3 for photos).
    in_chans: int | None = Field(None, ge=1)
    #: Architecture options passed to timm (``img_size``, ``drop_path_rate``, ``moe``, ...).
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v in ("hub", "none", "package") or v.startswith(("hub:", "package:", "file:", "mlflow:")):
            return v
        raise ValueError("weights must be 'hub', 'none', 'package', 'file:PATH' or 'mlflow:runs:/RUN_ID/backbone'")


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
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be shorter than epochs ({self.epochs}); "
                "lower optim.warmup_epochs (0 for none) or raise optim.epochs"
            )
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
    #: ``auto``: Lightning's rich progress bar (and model summary) when stderr is a terminal; in logs and CI,
    #: where a redrawn bar becomes thousands of lines, one plain line per epoch instead; ``true`` / ``false``
    #: force the bar on / off (off: the epoch lines).
    progress_bar: bool | Literal["auto"] = "auto"
    #: Keep conv weights and activations in channels-last (NHWC) memory format, which GPUs with tensor cores
    #: prefer for CNNs; on 2 CPU cores it made an EfficientNet-Lite0 step at 224 px 1.27x faster
    #: (``benchmarks/input_pipeline.py --channels-last``). Off by default so existing runs keep their exact numbers.
    channels_last: bool = False

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

    # A refused URI holds a password: pydantic must not echo it back in its error text.
    model_config = ConfigDict(hide_input_in_errors=True)

    #: ``None``: $MLFLOW_TRACKING_URI if set, else ``sqlite:///mlflow.db`` in the working directory. Never with
    #: credentials (``http://user:PASSWORD@...`` is refused): they come from MLFLOW_TRACKING_USERNAME / _PASSWORD.
    tracking_uri: str | None = None
    experiment: str = "medvision-finetune"
    #: MLflow run name; ``None`` lets MLflow pick one.
    run_name: str | None = None

    @model_validator(mode="after")
    def _no_credentials(self) -> TrackingConfig:
        # A model-level check, so the error carries the section, not the URI, as its input (never echoed).
        if self.tracking_uri:
            check_no_credentials(self.tracking_uri, "tracking.tracking_uri")
        return self


class StageConfig(StrictModel):
    """What the engine needs of any training stage; stage kinds subclass it and add their own sections."""

    backbone: BackboneConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    #: ``auto``: continue from ``<output_dir>/checkpoints/last.ckpt`` when it exists; ``never``:
    #: start afresh; or the path of a checkpoint to continue from.
    resume: str = "auto"
    #: Checkpoints and the resolved config go here.
    output_dir: Path = Path("runs/stage")
    seed: int = 0
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def resolve_tracking_uri(tracking: TrackingConfig) -> str:
    """The MLflow tracking URI a run uses: the config's, else $MLFLOW_TRACKING_URI, else a SQLite
    file ``mlflow.db`` in the current working directory (absolute, so DDP workers agree).

    Raises:
        TrackingURIError: $MLFLOW_TRACKING_URI holds a password (``medvision.tracking.uri``).
    """
    if tracking.tracking_uri:
        return tracking.tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return check_no_credentials(env, "$MLFLOW_TRACKING_URI")
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"
