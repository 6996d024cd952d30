"""``pretrain(config)``: the Python API of the self-supervised stage (SimCLR / REMEDIS, MICLe).

It wires the pieces and nothing else: the pool's data module, the backbone (from any weight source:
REMEDIS starts from ``bit-m-r50x1`` hub weights), the projection head, the LightningModule, fine-tuning's
trainer factory (checkpoints, ``resume: auto``, per-epoch seeding) and the MLflow callback, which at the end
logs the kept backbone as ``mlflow:runs:/RUN_ID/backbone`` for a fine-tuning config to start from.

Example (needs real files, a run or the network, so it is shown, not run)::

        from medvision.config import load_config
        cfg = load_config("ssl.yaml", PretrainConfig, ["optim.epochs=2"])
        result = pretrain(cfg)
        result.backbone_uri
        # -> 'mlflow:runs:/0123abcd.../backbone'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from medvision.config import flatten, to_yaml
from medvision.engine.config import resolve_tracking_uri
from medvision.engine.trainer import fit_stage, resume_checkpoint, run_identity
from medvision.errors import InputError
from medvision.models import create_backbone
from medvision.ssl.config import PretrainConfig
from medvision.ssl.data import PretrainDataModule
from medvision.ssl.module import PretrainModule
from medvision.ssl.ntxent import ProjectionHead
from medvision.tracking import MLflowTracking
from medvision.tracking.store import using_tracking_uri

__all__ = ["PretrainResult", "build_pretrain_module", "pretrain"]


@dataclass(frozen=True)
class PretrainResult:
    """What a pretraining run produced.

    Attributes:
        run_id: the MLflow run.
        backbone_uri: ``mlflow:runs:/RUN_ID/backbone``, a ``backbone.weights`` value for fine-tuning.
        best_checkpoint: the checkpoint of the kept epoch (by ``monitor.metric``); its backbone is logged.
        last_checkpoint: ``last.ckpt`` (what ``resume: auto`` continues from).
        metrics: every metric of the last epoch.
        output_dir: the run's folder.
    """

    run_id: str | None
    backbone_uri: str | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: Path = Path(".")


def build_pretrain_module(config: PretrainConfig, in_chans: int) -> PretrainModule:
    """Backbone (from ``config.backbone``) + projection head + loss settings as a :class:`PretrainModule`."""

    bb = config.backbone
    backbone = create_backbone(bb.name, bb.weights, bb.in_chans or in_chans, **bb.options)
    s = config.ssl
    head = ProjectionHead(
        backbone.num_features, s.projection_hidden_dim or backbone.num_features, s.projection_dim, s.projection_layers
    )
    return PretrainModule(backbone, head, config.optim, s.temperature, config.data.batch_size)


def pretrain(config: PretrainConfig, *, callbacks: Sequence[Callback] = ()) -> PretrainResult:
    """Pretrain a backbone contrastively on a cohort's unlabelled pool; one MLflow run.

    Args:
        config: the validated stage config.
        callbacks: extra Lightning callbacks.

    Returns:
        A :class:`PretrainResult` (under DDP, on every rank).

    Raises:
        FileNotFoundError: the cohort or the ``resume`` checkpoint does not exist.
        ValueError: empty pool, pool smaller than one global batch, no labelled images for the default
            ``val/knn_acc`` monitor, or bad backbone weights.
    """
    L.seed_everything(config.seed, workers=True, verbose=False)
    ckpt = resume_checkpoint(config)
    datamodule = _datamodule(config)
    tracking_uri = resolve_tracking_uri(config.tracking)
    d = config.data
    resolved = config.model_copy(
        update={
            "data": d.model_copy(update={"cohort_dir": Path(d.cohort_dir).resolve()}),
            "output_dir": Path(config.output_dir).resolve(),
            "tracking": config.tracking.model_copy(update={"tracking_uri": tracking_uri}),
        }
    )
    with using_tracking_uri(tracking_uri):  # weights "mlflow:runs:/..." come from the store this run records to
        module = build_pretrain_module(resolved, datamodule.in_chans)
    sha = datamodule.manifest_sha256
    tracker = MLflowTracking(
        tracking_uri,
        resolved.tracking.experiment,
        run_name=resolved.tracking.run_name,
        params=_params(resolved, datamodule, module),
        tags={"medvision.stage": "pretrain", "medvision.ssl_mode": resolved.ssl.mode, "cohort.manifest_sha256": sha},
        texts={"config.yaml": to_yaml(resolved), "cohort/manifest_sha256.txt": sha + "\n"},
    )
    identity = run_identity(resolved, manifest_sha256=sha)
    fitted = fit_stage(resolved, module, datamodule, [tracker, *callbacks], ckpt, to_yaml(resolved), identity)
    best, last = fitted.best_checkpoint, fitted.last_checkpoint
    metrics = {k: v for k, v in tracker.last_metrics.items() if not (isinstance(v, float) and math.isnan(v))}
    return PretrainResult(
        run_id=tracker.run_id,
        backbone_uri=f"mlflow:runs:/{tracker.run_id}/backbone" if tracker.run_id else None,
        best_checkpoint=best,
        last_checkpoint=last,
        metrics=metrics,
        output_dir=Path(resolved.output_dir),
    )


def _datamodule(config: PretrainConfig) -> PretrainDataModule:
    """The pool's data module; refused before anything trains when the default kNN monitor has nothing to score."""
    d = config.data
    datamodule = PretrainDataModule(
        d.cohort_dir,
        pool=d.pool,
        include_heldout=d.include_heldout,
        mode=config.ssl.mode,
        batch_size=d.batch_size,
        augment=config.augment,
        seed=config.seed,
        num_workers=d.num_workers,
        knn_max_images=d.knn_max_images,
    )
    if config.monitor.metric == "val/knn_acc" and not datamodule.knn_sets:
        raise InputError(
            f"cohort {d.cohort_dir} has no labelled train or val images, so the kNN monitor (monitor.metric: "
            "val/knn_acc) cannot run; set monitor.metric=train/loss and monitor.mode=min"
        )
    return datamodule


def _params(resolved: PretrainConfig, datamodule: PretrainDataModule, module: PretrainModule) -> dict[str, object]:
    """The run's MLflow parameters: the resolved config, the pool and where the starting weights came from."""
    record = module.backbone.weights_record
    return {
        **flatten(resolved),
        "data.manifest_sha256": datamodule.manifest_sha256,
        "data.pool_images": len(datamodule.pool_rows),
        "data.pool_patients": int(datamodule.pool_rows["patient_id"].nunique()),
        "data.multi_instance_patient_share": round(datamodule.multi_instance_patient_share(), 4),
        "augment.resolved_preset": datamodule.augment_preset,
        "backbone.source": record.source,
        "backbone.sha256": record.sha256,
        "backbone.licence": record.licence,
    }
