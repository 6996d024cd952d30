"""``finetune(config)``: the Python API of the fine-tuning stage.

It puts the pieces together and nothing else: the cohort's data module, the classifier
(backbone + head sized from the cohort), the LightningModule (*what*), the trainer (*how*), the
MLflow callback (one run), then ``trainer.fit`` — resuming from ``last.ckpt`` when asked. Under
DDP every process runs this function; only rank 0 writes files outside the checkpoint folder and
talks to MLflow.

Example (needs real files, a run or the network, so it is shown, not run)::

        from medvision.config import load_config
        cfg = load_config("run.yaml", FinetuneConfig, ["optim.epochs=2"])
        result = finetune(cfg)
        result.metrics["val/auroc"]
        # -> 0.93
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from medvision._atomic import atomic_write_text
from medvision.classifier import Classifier
from medvision.cohort.recipe import PreprocessRecipe
from medvision.config import flatten, to_yaml
from medvision.data.bags import BagDataModule
from medvision.data.dataset import CohortDataModule
from medvision.engine.bags import BagFeatureDataModule
from medvision.engine.budget import TimeBudget
from medvision.engine.config import resolve_tracking_uri
from medvision.engine.features import FeatureDataModule
from medvision.engine.hyperrule import hyperrule_epochs, hyperrule_steps
from medvision.engine.trainer import fit_stage, resume_checkpoint, run_identity
from medvision.errors import InputError
from medvision.heads import create_head, get_head_class
from medvision.models import create_backbone
from medvision.tracking import MLflowTracking
from medvision.tracking.store import using_tracking_uri
from medvision.training.config import FinetuneConfig, FinetuneOptimConfig
from medvision.training.linear_probe import fit_head_probe, probe_metrics, run_linear_probe
from medvision.training.module import FinetuneModule

__all__ = ["FinetuneResult", "build_classifier", "finetune"]

#: What the engine reads from a data module besides its loaders (the cohort contract).
DATAMODULE_FACTS = ("classes", "num_inlier_classes", "num_outlier_classes", "in_chans", "manifest_sha256")


@runtime_checkable
class CohortFactsLike(Protocol):
    """The cohort facts (:data:`DATAMODULE_FACTS`) a data module must answer; ``isinstance`` checks they exist."""

    @property
    def classes(self) -> Sequence[str]: ...

    @property
    def num_inlier_classes(self) -> int: ...

    @property
    def num_outlier_classes(self) -> int: ...

    @property
    def in_chans(self) -> int: ...

    @property
    def manifest_sha256(self) -> str: ...


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning run produced.

    Attributes:
        run_id: the MLflow run (``runs:/RUN_ID/model`` is the pyfunc model,
            ``mlflow:runs:/RUN_ID/backbone`` the backbone for a later stage).
        best_checkpoint: the checkpoint of the best epoch by ``monitor.metric``.
        last_checkpoint: ``last.ckpt`` (what ``resume: auto`` continues from).
        best_score: the monitored metric at the best epoch.
        metrics: every metric of the last epoch (``train/loss``, ``val/auroc``, ...).
        output_dir: the run's output folder.
    """

    run_id: str | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_score: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: Path = Path(".")


def build_classifier(config: FinetuneConfig, datamodule: CohortFactsLike) -> Classifier:
    """The network for ``config`` sized from the cohort: ``in_chans``, K classes, and whatever the head takes from
    the cohort (:meth:`~medvision.heads.Head.options_for_cohort`: HOD's M outlier logits).

    Raises:
        HeadConfigError: the head does not fit the cohort (HOD without training outlier conditions, or
            ``num_outlier_classes`` different from the cohort's).
    """

    k = int(datamodule.num_inlier_classes)
    options = get_head_class(config.head.name).options_for_cohort(config.head.options, datamodule)
    in_chans = config.backbone.in_chans or int(datamodule.in_chans)
    backbone = create_backbone(config.backbone.name, config.backbone.weights, in_chans, **config.backbone.options)
    head = create_head(config.head.name, backbone.num_features, k, **options)
    return Classifier(
        backbone,
        head,
        classes=list(datamodule.classes)[:k],
        adapter_hidden=config.adapter_hidden,
        freeze_backbone=config.mode != "full" or config.recipe == "linear-probe",
    )


def finetune(
    config: FinetuneConfig,
    *,
    datamodule: L.LightningDataModule | None = None,
    callbacks: Sequence[Callback] = (),
) -> FinetuneResult:
    """Fine-tune a pretrained backbone on a cohort and record it as one MLflow run.

    Args:
        config: the validated stage config.
        datamodule: the data; by default the :class:`~medvision.data.dataset.CohortDataModule`
            of ``config.data``. Any data module works if it has the cohort facts
            ``classes, num_inlier_classes, num_outlier_classes, in_chans, manifest_sha256`` and
            yields ``{"image", "label"}`` batches.
        callbacks: extra Lightning callbacks (reports, custom stopping rules).

    Returns:
        A :class:`FinetuneResult`. Under DDP every rank returns one; all carry the run id.

    The fixed recipes run here (``linear-probe``: a logistic probe on cached embeddings, recorded as a run;
    ``lp-ft``: that probe as the head, then the Lightning loop at ``optim.lr x lpft.lr_scale`` with layer-wise
    decay; ``finetune``: the Lightning loop as configured). ``auto`` trains several of them:
    :func:`medvision.recipes.fit`.

    Raises:
        FileNotFoundError: the cohort or the ``resume`` checkpoint does not exist.
        ValueError: the head or backbone does not fit the cohort, bad backbone weights, or ``recipe: auto``.
    """
    if config.recipe == "auto":
        raise InputError(
            "recipe: auto trains several candidates and picks one on validation; run it with "
            "medvision.recipes.fit(config) (what `medvision finetune` and pipelines do), or set a fixed recipe"
        )
    L.seed_everything(config.seed, workers=True, verbose=False)
    ckpt = resume_checkpoint(config)  # fail on a bad resume path before anything is built
    if datamodule is None:
        datamodule = _cohort_datamodule(config)
    if not isinstance(datamodule, CohortFactsLike):
        missing = [a for a in DATAMODULE_FACTS if not hasattr(datamodule, a)]
        raise TypeError(f"{type(datamodule).__name__} lacks the cohort facts {missing}; see finetune()'s docstring")

    if config.schedule == "bit-hyperrule":
        config = _with_hyperrule(config, datamodule)
    elif config.schedule == "steps" and config.recipe != "linear-probe":
        config = _with_steps(config, datamodule)
    tracking_uri = resolve_tracking_uri(config.tracking)
    resolved = _resolved(config, tracking_uri)
    with using_tracking_uri(tracking_uri):  # weights "mlflow:runs:/..." come from the store this run records to
        classifier = build_classifier(resolved, datamodule)
    if resolved.trainer.channels_last:
        classifier.to(memory_format=torch.channels_last)  # conv outputs follow the weights' format
    probe_facts: dict[str, float] = {}
    if resolved.recipe == "lp-ft" and ckpt is None:  # LP-FT's first stage (a resumed run has its head already)
        probe_facts = probe_metrics(fit_head_probe(classifier, datamodule, resolved))  # type: ignore[arg-type]
    optim = _effective_optim(resolved)
    frozen_stats = resolved.recipe == "lp-ft" and resolved.lpft.freeze_batchnorm
    module = FinetuneModule(classifier, optim, freeze_batchnorm=frozen_stats)
    data: L.LightningDataModule = datamodule
    if isinstance(datamodule, CohortDataModule) and _takes_feature_path(resolved, datamodule):
        # both answer the same cohort facts; bags of cached instance features for case cohorts
        features = BagFeatureDataModule if isinstance(datamodule, BagDataModule) else FeatureDataModule
        data = features(datamodule, classifier.backbone)

    sha = str(datamodule.manifest_sha256)
    params = {**_params(resolved, datamodule, data, classifier), **_recipe_params(optim, probe_facts)}
    tracker = _tracker(resolved, tracking_uri, params, sha, _preprocessing(datamodule))
    if resolved.recipe == "linear-probe":
        return _linear_probe(resolved, classifier, datamodule, tracker)
    # the budget runs before the tracker, so the epoch count it settles on is logged in the same epoch
    clock = time.process_time if resolved.budget_clock == "cpu" else time.monotonic
    budget = [TimeBudget(resolved.budget_minutes * 60, clock)] if resolved.budget_minutes is not None else []
    identity = run_identity(resolved, manifest_sha256=sha)
    with _frozen_backbone_is_meant(classifier):
        fitted = fit_stage(resolved, module, data, [*budget, tracker, *callbacks], ckpt, to_yaml(resolved), identity)
    return FinetuneResult(
        run_id=tracker.run_id,
        best_checkpoint=fitted.best_checkpoint,
        last_checkpoint=fitted.last_checkpoint,
        best_score=fitted.best_score,
        metrics=dict(tracker.last_metrics),
        output_dir=Path(resolved.output_dir),
    )


def _cohort_datamodule(config: FinetuneConfig) -> CohortDataModule:
    """The data module of ``config.data``: images, or bags of a case cohort's instances (``unit`` other than
    ``image``), which need a head that reads bags.

    Raises:
        InputError: a case cohort with a head that reads single embeddings, naming the head to use.
    """
    d = config.data
    kwargs = {
        "batch_size": d.batch_size,
        "label_fraction": d.label_fraction,
        "num_workers": d.num_workers,
        "balanced": d.balanced,
        "seed": config.seed,
        "augment": config.augment,
    }
    images = CohortDataModule(d.cohort_dir, **kwargs)  # type: ignore[arg-type]
    if images.cohort.unit == "image":
        return images
    if not get_head_class(config.head.name).takes_bags:
        raise InputError(
            f"cohort {d.cohort_dir} is a {images.cohort.unit}-level cohort (unit: {images.cohort.unit}): its labels "
            f"belong to whole cases, but head {config.head.name!r} reads one image at a time. Use head: {{name: mil}} "
            "(pooling: gated_attention, attention, mean, max or middle), or rebuild the cohort with unit: image"
        )
    return BagDataModule(d.cohort_dir, max_instances=d.max_instances, **kwargs)


def _params(
    resolved: FinetuneConfig, datamodule: CohortFactsLike, data: L.LightningDataModule, classifier: Classifier
) -> dict[str, object]:
    """The run's MLflow parameters: the resolved config, the cohort, the starting weights, what the data path did."""
    record = classifier.backbone.weights_record
    return {
        **flatten(resolved),
        "data.manifest_sha256": str(datamodule.manifest_sha256),
        "data.classes": list(datamodule.classes),
        "backbone.source": record.source,
        "backbone.sha256": record.sha256,
        "backbone.licence": record.licence,
        "augment.resolved_preset": getattr(data, "augment_preset", "none"),
        "data.feature_path": isinstance(data, FeatureDataModule | BagFeatureDataModule),
    }


def _recipe_params(optim: FinetuneOptimConfig, probe_facts: dict[str, float]) -> dict[str, object]:
    """What the training recipe changed: the optimiser as used (LP-FT scales and decays it) and the LP-FT probe."""
    return {
        "optim.effective_lr": optim.lr,
        "optim.effective_layer_decay": optim.layer_decay,
        **{f"lpft.{k.replace('/', '_')}": v for k, v in probe_facts.items()},
    }


def _linear_probe(
    resolved: FinetuneConfig, classifier: Classifier, datamodule: CohortFactsLike, tracker: MLflowTracking
) -> FinetuneResult:
    """The ``linear-probe`` recipe: a logistic probe on cached embeddings, recorded as an ordinary run."""
    if not isinstance(datamodule, CohortDataModule):
        raise ValueError("recipe: linear-probe embeds a cohort's cached images; give finetune() no data module")
    Path(resolved.output_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(resolved.output_dir) / "config.yaml", to_yaml(resolved))
    probe = run_linear_probe(resolved, classifier, datamodule, tracker)
    best = probe.metrics.get(resolved.monitor.metric)
    return FinetuneResult(probe.run_id, None, None, best, probe.metrics, Path(resolved.output_dir))


def _with_hyperrule(config: FinetuneConfig, datamodule: L.LightningDataModule) -> FinetuneConfig:
    """``optim.epochs`` and ``warmup_epochs`` from the BiT-HyperRule for this run's training images."""
    if not isinstance(datamodule, CohortDataModule):
        raise ValueError("schedule: bit-hyperrule needs the cohort data module (it counts the training images)")
    n = len(datamodule.dataset("train"))
    epochs, warmup = hyperrule_epochs(n, int(datamodule.cohort.cache.params.size))
    return config.model_copy(
        update={"optim": config.optim.model_copy(update={"epochs": epochs, "warmup_epochs": warmup})}
    )


def _with_steps(config: FinetuneConfig, datamodule: L.LightningDataModule) -> FinetuneConfig:
    """``optim.epochs`` and ``warmup_epochs`` from the HyperRule's step count at this run's batch."""
    if not isinstance(datamodule, CohortDataModule):
        raise ValueError("schedule: steps needs the cohort data module (it counts the training images)")
    plan = hyperrule_steps(
        len(datamodule.dataset("train")),
        config.data.batch_size,
        int(datamodule.cohort.cache.params.size),
        config.optim.accumulate_grad_batches,
    )
    update = {"epochs": plan.epochs, "warmup_epochs": plan.warmup_epochs}
    return config.model_copy(update={"optim": config.optim.model_copy(update=update)})


def _effective_optim(config: FinetuneConfig) -> FinetuneOptimConfig:
    """The optimiser the module uses: LP-FT's smaller, layer-wise decayed rate; the config's otherwise."""
    if config.recipe != "lp-ft":
        return config.optim
    return config.optim.model_copy(
        update={
            "lr": config.optim.lr * config.lpft.lr_scale,
            "layer_decay": config.optim.layer_decay or config.lpft.layer_decay,
        }
    )


def _takes_feature_path(config: FinetuneConfig, datamodule: CohortDataModule) -> bool:
    """Frozen backbone, un-augmented images from a cohort: the head can learn from cached features."""
    return (
        config.data.feature_cache
        and config.mode != "full"
        and datamodule.augment_preset == "none"
        and datamodule.train_transform is None
    )


def _resolved(config: FinetuneConfig, tracking_uri: str) -> FinetuneConfig:
    """The config as the run used it: absolute paths and the tracking URI filled in."""
    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"cohort_dir": Path(config.data.cohort_dir).resolve()}),
            "output_dir": Path(config.output_dir).resolve(),
            "tracking": config.tracking.model_copy(update={"tracking_uri": tracking_uri}),
        }
    )


def _preprocessing(datamodule: L.LightningDataModule) -> PreprocessRecipe | None:
    """How the data module's images were made from their files (a cohort's data module knows; others do not)."""
    recipe = getattr(datamodule, "preprocessing", None)
    return recipe if isinstance(recipe, PreprocessRecipe) else None


def _tracker(
    config: FinetuneConfig, tracking_uri: str, params: dict, manifest_sha256: str, recipe: PreprocessRecipe | None
) -> MLflowTracking:
    return MLflowTracking(
        tracking_uri,
        config.tracking.experiment,
        run_name=config.tracking.run_name,
        params=params,
        tags={"medvision.stage": "finetune", "cohort.manifest_sha256": manifest_sha256},
        texts={"config.yaml": to_yaml(config), "cohort/manifest_sha256.txt": manifest_sha256 + "\n"},
        preprocessing=recipe,
    )


@contextmanager
def _frozen_backbone_is_meant(classifier: Classifier) -> Iterator[None]:
    """Lightning warns when modules start training in eval mode. A frozen backbone (``linear`` / ``locked``) is
    kept in eval mode on purpose, so its batch-norm statistics stay the pretrained ones: for those runs the warning
    (one line per stage, counting hundreds of modules) has nothing for the user to do. It stays on when anything
    outside the backbone would start in eval mode, which would be a real mistake."""
    was_training = classifier.training
    classifier.train()  # the mode fit starts in: a frozen backbone stays in eval mode (Classifier.train)
    outside = [n for n, m in classifier.named_modules() if not m.training and not n.startswith("backbone")]
    classifier.train(was_training)
    if not classifier.freeze_backbone or outside:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        yield
