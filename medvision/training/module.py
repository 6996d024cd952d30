"""The *what* of fine-tuning: network, loss, metrics, optimiser and schedule, as a LightningModule.

Devices, precision, distribution, checkpoints and tracking are the trainer factory's and the
callbacks' business (:mod:`medvision.engine.trainer`, :mod:`medvision.tracking`), so the same
module runs on a laptop CPU and on a GPU cluster unchanged.

Labels follow the cohort contract: ``0..K-1`` inlier classes, ``K..K+M-1`` training outlier
conditions, ``-1`` unknown / unseen condition. A head learns from the labels it has a logit for
(HOD: all K + M; the others: the K inliers), the rest only enter the OOD metric.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from medvision.auroc import macro_auroc
from medvision.classifier import Classifier
from medvision.engine.config import OptimConfig
from medvision.engine.schedule import decay_groups, layer_decay_groups, warmup_cosine
from medvision.training.config import FinetuneOptimConfig

__all__ = ["FinetuneModule"]


class FinetuneModule(L.LightningModule):
    """Fine-tunes a :class:`Classifier` (BiT-style transfer, see the method spec §1).

    Logged per epoch: ``train/loss``, ``val/loss``, ``val/acc`` (top-1 over inlier
    images), ``val/auroc`` (binary, or macro one-vs-rest over the K inlier classes) and, for heads
    with an OOD score when the validation set holds outliers, ``val/ood_auroc`` (inliers vs
    outlier conditions, higher score = more out of distribution).

    Args:
        classifier: the network (its ``freeze_backbone`` decides the trainable parameters).
        optim: optimiser and schedule settings.
        freeze_batchnorm: keep the backbone's batch-norm layers in eval mode while training (their running
            statistics stay the pretrained ones; their affine parameters still train), as LP-FT does.
    """

    def __init__(self, classifier: Classifier, optim: OptimConfig, freeze_batchnorm: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        self.optim = optim
        self.freeze_batchnorm = freeze_batchnorm
        self._val: list[tuple[Tensor, ...]] = []

    def _log(self, name: str, value, **kwargs) -> None:
        # Metrics reach MLflow through the tracking callback (trainer.callback_metrics), not a
        # Lightning logger, hence logger=False.
        self.log(name, value, logger=False, **kwargs)

    def on_train_epoch_start(self) -> None:
        # Lightning has put the model in train mode for the epoch; batch-norm statistics stay as pretrained
        if self.freeze_batchnorm:
            for m in self.classifier.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # -- steps -----------------------------------------------------------------------------------

    def forward(self, x: Tensor):
        return self.classifier(x)

    def _outputs(self, batch: dict):
        """Images through the whole network, or (frozen-feature batches) cached features through the head; bag
        batches (case cohorts) carry the ``mask`` of their real instances."""
        mask = batch.get("mask")
        if "features" in batch:
            return self.classifier.from_features(batch["features"], mask)
        return self.classifier(batch["image"], mask)

    def _trainable_rows(self, y: Tensor) -> Tensor:
        """Rows whose label the head has a logit for (multi-label rows always count)."""
        if self.classifier.head.multilabel:
            return torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
        return (y >= 0) & (y < self.classifier.head.num_outputs)

    def _loss(self, out, y: Tensor) -> tuple[Tensor, int]:
        keep = self._trainable_rows(y)
        n = int(keep.sum())
        if n == 0:  # keep the graph connected (DDP expects every rank to produce gradients)
            return out.logits.sum() * 0.0, 0
        if n == len(y):
            return self.classifier.head.loss(out, y), n
        sub = type(out)(
            logits=out.logits[keep],
            probs=out.probs[keep],
            ood_score=None if out.ood_score is None else out.ood_score[keep],
        )
        return self.classifier.head.loss(sub, y[keep]), n

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        y = batch["label"]
        out = self._outputs(batch)
        loss, _ = self._loss(out, y)
        aux = self.classifier.aux_loss()
        if isinstance(aux, Tensor) and aux.requires_grad:
            loss = loss + aux
            self._log("train/aux_loss", aux.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=len(y))
        self._log(
            "train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y)
        )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        y = batch["label"]
        out = self._outputs(batch)
        loss, n = self._loss(out, y)
        if n:
            self._log("val/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        ood = out.ood_score if out.ood_score is not None else out.probs.new_full((len(y),), float("nan"))
        self._val.append((out.probs.detach().float(), ood.detach().float(), y.detach()))

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs, ood, y = (self._gather(torch.cat(parts)) for parts in zip(*self._val))
        self._val = []
        for name, value in self.epoch_metrics(probs, ood, y).items():
            # identical on every rank after the gather; the (exact) mean over ranks only tells
            # Lightning that the value is already global
            self._log(name, value, on_step=False, on_epoch=True, sync_dist=True, prog_bar=name == "val/auroc")

    def epoch_metrics(self, probs: Tensor, ood: Tensor, y: Tensor) -> dict[str, float]:
        """``val/acc``, ``val/auroc`` and (when defined) ``val/ood_auroc`` of one validation pass."""
        head = self.classifier.head
        p, s, t = probs.cpu().numpy(), ood.cpu().numpy(), y.cpu().numpy()
        if head.multilabel:
            return {
                "val/auroc": macro_auroc(t, p, multilabel=True),
                "val/acc": float(((p > 0.5) == t.astype(bool)).mean()) if len(t) else float("nan"),
            }
        k = head.num_classes
        inlier = (t >= 0) & (t < k)
        metrics = {
            "val/acc": float((p[inlier].argmax(1) == t[inlier]).mean()) if inlier.any() else float("nan"),
            "val/auroc": macro_auroc(t[inlier], p[inlier]),
        }
        outlier = ~inlier
        if not np.isnan(s).any() and inlier.any() and outlier.any():
            from sklearn.metrics import roc_auc_score  # here: the training step needs no scikit-learn (device kit)

            metrics["val/ood_auroc"] = float(roc_auc_score(outlier, s))
        return metrics

    def _gather(self, t: Tensor) -> Tensor:
        """Concatenate a per-rank tensor over all ranks (ranks may hold different row counts)."""
        if self.trainer.world_size == 1:
            return t
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = self._all_gather_tensor(n).view(-1)
        pad = int(sizes.max()) - t.shape[0]
        if pad:
            t = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))])
        gathered = self._all_gather_tensor(t)  # (world, max_n, ...)
        return torch.cat([gathered[r, : int(sizes[r])] for r in range(gathered.shape[0])])

    def _all_gather_tensor(self, t: Tensor) -> Tensor:
        """``all_gather`` of one tensor (Lightning types the result as any collection it could gather)."""
        gathered = self.all_gather(t)
        if not isinstance(gathered, Tensor):
            raise TypeError(f"all_gather of a tensor returned a {type(gathered).__name__}, not a tensor")
        return gathered

    # -- optimiser -------------------------------------------------------------------------------

    def param_groups(self) -> list[dict]:
        """Optimiser groups, each with its own ``lr``: one rate, or with ``optim.layer_decay`` a rate per backbone
        layer (the head and adapter at ``optim.lr``; a frozen backbone has nothing to decay)."""
        cfg = self.optim
        clf = self.classifier
        decay = cfg.layer_decay if isinstance(cfg, FinetuneOptimConfig) else None
        if decay is None or clf.freeze_backbone:
            return [{**g, "lr": cfg.lr} for g in decay_groups(clf.parameters(), cfg.weight_decay)]
        others = [p for name, p in clf.named_parameters() if not name.startswith("backbone.")]
        timm_model = getattr(clf.backbone, "model", clf.backbone)  # the timm module inside medvision's Backbone
        groups = layer_decay_groups(timm_model, others, cfg.weight_decay, decay)
        return [{**g, "lr": cfg.lr * g["lr_scale"]} for g in groups]

    def configure_optimizers(self):
        cfg = self.optim
        groups = self.param_groups()
        # Fused kernels (one launch updates every parameter) when the parameters are on a GPU; ``None`` keeps
        # torch's default elsewhere, so CPU runs (and their bit-exact resume) are unchanged.
        fused = True if groups and all(p.is_cuda for g in groups for p in g["params"]) else None
        opt: torch.optim.Optimizer
        if cfg.name == "sgd":
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
        else:
            opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)
        return warmup_cosine(opt, self.trainer, cfg.warmup_epochs, cfg.epochs)
