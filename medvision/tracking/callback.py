"""MLflow tracking of a Lightning stage as a Callback: one run per stage, written by rank 0 only.

Why a callback rather than Lightning's ``MLFlowLogger``: the logger records metrics at every
logging call against the global step and knows nothing of the model, while a stage here needs
(1) per-epoch metrics with ``step = epoch``, (2) artifacts that describe the inputs (resolved
config, cohort manifest hash) and the best model as a servable pyfunc at the end, and (3) the
*same* MLflow run continued when training resumes from a checkpoint (the run id is stored in the
checkpoint through the callback's state). One object does all three and keeps the run's life
cycle (RUNNING / FINISHED / FAILED) in one place.

What is recorded (no patient data: only config values, metrics and pseudonymous cohort facts):

* params: the flat, dotted config (``optim.lr``, ``head.options.coarse_weight``, ...);
* metrics: everything the module logged for the epoch (``train/loss``, ``val/auroc``, ...) plus
  ``train/lr``, with ``step`` = epoch;
* artifacts: the text files given as ``texts`` (e.g. ``config.yaml``, ``cohort/manifest_sha256.txt``);
  at the end the best checkpoint's network: ``model`` (pyfunc) and ``backbone``
  (``save_backbone`` layout, so ``mlflow:runs:/RUN_ID/backbone`` starts a later stage).
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.seed import isolate_rng
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from medvision.classifier import Classifier
from medvision.cohort.recipe import PreprocessRecipe
from medvision.models import save_backbone
from medvision.tracking.pyfunc import log_classifier
from medvision.tracking.store import get_or_create_experiment, open_client

__all__ = ["MLflowTracking"]

log = logging.getLogger(__name__)
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


class MLflowTracking(Callback):
    """Records a stage to MLflow (see the module docstring).

    Args:
        tracking_uri: where the run goes (``sqlite:///...``, ``http://...``).
        experiment: experiment name (created when missing).
        run_name: optional run name.
        params: flat ``{dotted.key: value}`` parameters logged when the run is created.
        tags: extra run tags.
        texts: ``{artifact path: text}`` written as artifacts when the run is created.
        log_model: at the end, log the best checkpoint's network (modules that expose a
            ``classifier``: pyfunc model + backbone; modules that expose only a ``backbone``:
            the backbone).
        preprocessing: the recipe of the cohort trained on, recorded in the logged classifier's card (export and
            serving prepare images with it); ``None`` for data that does not come from a cohort.

    Attributes:
        run_id: the MLflow run id (on every rank once training has started).
        last_metrics: the metrics of the last epoch recorded.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        texts: Mapping[str, str] | None = None,
        log_model: bool = True,
        preprocessing: PreprocessRecipe | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.params = {k: _param_text(v) for k, v in (params or {}).items()}
        self.tags = dict(tags or {})
        self.texts = dict(texts or {})
        self.log_model = log_model
        self.preprocessing = preprocessing
        self.run_id: str | None = None
        self.last_metrics: dict[str, float] = {}
        self._input_shape: tuple[int, ...] | None = None
        self._client: MlflowClient | None = None

    # -- run life cycle --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.run_id = state_dict.get("run_id")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, not in setup/on_fit_start: the checkpoint (and the run id in it) is restored by now
        # for every strategy. MLflow's own randomness must not shift the training random stream.
        if trainer.is_global_zero:
            with isolate_rng():
                self._open_run()
        self.run_id = trainer.strategy.broadcast(self.run_id, src=0)

    def _open_run(self) -> None:
        client = self._client = open_client(self.tracking_uri)
        if self.run_id is not None:
            try:
                existing = client.get_run(self.run_id)
            except Exception:  # the store was moved or wiped: record afresh
                existing = None
                log.warning(
                    "MLflow run %s of the checkpoint is not in %s; starting a new run", self.run_id, self.tracking_uri
                )
            if existing is not None:
                client.update_run(self.run_id, status="RUNNING")
                known = existing.data.params
                changed = sorted(k for k, v in self.params.items() if k in known and known[k] != v)
                if changed:
                    log.warning("resumed run %s keeps its original params; these differ now: %s", self.run_id, changed)
                self._log_params({k: v for k, v in self.params.items() if k not in known})
                return
        exp_id = get_or_create_experiment(client, self.experiment)
        run = client.create_run(exp_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        self._log_params(self.params)
        for path, text in self.texts.items():
            client.log_text(self.run_id, text, path)

    def _active(self) -> tuple[MlflowClient, str]:
        """The open run's client and id; raises when no run has been opened on this rank."""
        if self._client is None or self.run_id is None:
            raise RuntimeError("MLflowTracking: no MLflow run is open (only rank 0 records, after on_train_start)")
        return self._client, self.run_id

    def _log_params(self, params: Mapping[str, str]) -> None:
        client, run_id = self._active()
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), _BATCH):
            client.log_batch(run_id, params=items[start : start + _BATCH])

    # -- per epoch -------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._input_shape is None and isinstance(batch, Mapping) and "image" in batch:
            first = 2 if "mask" in batch else 1  # a batch of bags, (B, N, C, H, W): one instance's shape
            self._input_shape = tuple(int(s) for s in batch["image"].shape[first:])
        elif self._input_shape is None and isinstance(batch, Mapping) and "input_shape" in batch:
            self._input_shape = tuple(int(s) for s in batch["input_shape"][0])  # frozen-feature batches

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if _is_scalar(v)}
        if trainer.optimizers:
            metrics["train/lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.last_metrics = metrics
        if not trainer.is_global_zero or self.run_id is None:
            return
        client, run_id = self._active()
        now = int(time.time() * 1000)
        step = trainer.current_epoch
        with isolate_rng():
            client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    # -- end -------------------------------------------------------------------------------------

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.run_id is None:
            return
        with isolate_rng():
            if self._client is None:  # resumed a finished run: no epoch ran, so on_train_start never opened it
                self._open_run()
            client, run_id = self._active()
            # Lightning types the trainer's checkpoint callback as the base Checkpoint; only ModelCheckpoint
            # keeps a best model.
            checkpoint = trainer.checkpoint_callback
            ckpt = (checkpoint.best_model_path or "") if isinstance(checkpoint, ModelCheckpoint) else ""
            if self.log_model:
                self._log_network(pl_module, Path(ckpt) if ckpt else None)
            if ckpt and isinstance(checkpoint, ModelCheckpoint):
                best = checkpoint.best_model_score
                client.set_tag(run_id, "best_checkpoint", Path(ckpt).name)
                if best is not None and checkpoint.monitor is not None and math.isfinite(float(best)):
                    client.log_metric(run_id, "best/" + checkpoint.monitor, float(best))
            client.set_terminated(run_id, "FINISHED")

    def record_fitted(
        self,
        network: Classifier,
        input_shape: tuple[int, ...] | None,
        metrics: Mapping[str, float] | None = None,
        history: Sequence[Metric] = (),
    ) -> str:
        """Record a classifier fitted outside a Lightning loop (a convex linear probe, the model an ``auto`` recipe
        chose) as this stage's finished run: the same params, tags, texts and model layout as a trained one, so
        evaluation, export and the report cannot tell the difference.

        Args:
            network: the fitted classifier (copied to CPU for logging; the caller's object is untouched).
            input_shape: ``(C, H, W)`` of the training images, for the model signature.
            metrics: final metrics (logged at step 0).
            history: earlier metric histories to carry over (e.g. the chosen candidate's training curves).

        Returns:
            The run id.
        """
        with isolate_rng():
            self._open_run()
            client, run_id = self._active()
            try:
                now = int(time.time() * 1000)
                final = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
                logged = [*history, *final]
                for start in range(0, len(logged), 1000):  # MLflow's batch limit
                    client.log_batch(run_id, metrics=logged[start : start + 1000])
                log_classifier(
                    client, run_id, copy.deepcopy(network).cpu().eval(), input_shape, preprocessing=self.preprocessing
                )
            except BaseException:
                client.set_terminated(run_id, "FAILED")
                raise
            client.set_terminated(run_id, "FINISHED")
        self.last_metrics = {k: float(v) for k, v in (metrics or {}).items()}
        return run_id

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero and self.run_id is not None and self._client is not None:
            status = "KILLED" if isinstance(exception, KeyboardInterrupt) else "FAILED"
            self._client.set_terminated(self.run_id, status)

    def _log_network(self, pl_module: L.LightningModule, best: Path | None) -> None:
        net = getattr(pl_module, "classifier", None)
        if not isinstance(net, Classifier):
            net = getattr(pl_module, "backbone", None)
        if net is None:
            log.warning("module %s exposes no classifier or backbone; no model logged", type(pl_module).__name__)
            return
        prefix = _attribute_prefix(pl_module, net)
        net = copy.deepcopy(net).cpu().eval()
        if best is not None and best.exists():
            # weights_only: a checkpoint is data; unpickling arbitrary objects from it would run their code.
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            net.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        client, run_id = self._active()
        if isinstance(net, Classifier):
            log_classifier(client, run_id, net, self._input_shape, preprocessing=self.preprocessing)
        else:
            with tempfile.TemporaryDirectory(prefix="medvision-backbone-") as tmp:
                save_backbone(net, Path(tmp) / "backbone")
                client.log_artifacts(run_id, str(Path(tmp) / "backbone"), "backbone")


def _attribute_prefix(module: torch.nn.Module, child: torch.nn.Module) -> str:
    for name, sub in module.named_children():
        if sub is child:
            return name + "."
    return ""


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _param_text(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
