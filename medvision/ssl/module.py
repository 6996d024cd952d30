"""The *what* of contrastive pretraining: backbone, projection head, NT-Xent, kNN monitor, LARS/AdamW.

Devices, precision, checkpoints, seeding and tracking come from fine-tuning's trainer factory and
callbacks (:func:`medvision.training.build_trainer`, :class:`medvision.tracking.MLflowTracking`), so the
module runs unchanged on a CPU and under DDP on many GPUs.
"""

from __future__ import annotations

from typing import cast

import lightning as L
import torch
from torch import Tensor

from medvision.engine.schedule import decay_groups, warmup_cosine
from medvision.knn import knn_accuracy
from medvision.models import Backbone
from medvision.ssl.config import PretrainOptimConfig
from medvision.ssl.lars import LARS
from medvision.ssl.ntxent import ProjectionHead, nt_xent_loss

__all__ = ["PretrainModule"]


class PretrainModule(L.LightningModule):
    """SimCLR / MICLe pretraining of a :class:`~medvision.models.Backbone` (see the method spec §2, §3).

    Logged per epoch: ``train/loss`` (NT-Xent), ``train/micle_multi_instance_share`` (share of pairs made of
    two different images of a patient) and, when labelled images exist, ``val/knn_acc`` (1-NN cosine
    accuracy of validation embeddings against training embeddings, or leave-one-out).

    Args:
        backbone: the encoder f; after training it is what is kept (``self.backbone``).
        projection: the head g (discarded after pretraining).
        optim: optimiser and schedule.
        temperature: NT-Xent tau.
        batch_size: pairs per device per step (for the learning-rate scaling rule).
    """

    def __init__(
        self,
        backbone: Backbone,
        projection: ProjectionHead,
        optim: PretrainOptimConfig,
        temperature: float = 0.1,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.optim = optim
        self.temperature = temperature
        self.batch_size = batch_size
        self._val: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}

    def _log(self, name: str, value, **kwargs) -> None:
        self.log(name, value, logger=False, **kwargs)  # MLflow reads trainer.callback_metrics

    def forward(self, x: Tensor) -> Tensor:
        """Projection ``z = g(f(x))`` of images in [0, 1]."""
        return self.projection(self.backbone(x))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        v1, v2 = batch["view1"], batch["view2"]
        n = v1.shape[0]
        z = self(torch.cat([v1, v2]))
        loss = nt_xent_loss(z[:n], z[n:], self.temperature, gather=True)
        aux = self.backbone.aux_loss()
        if aux.requires_grad:
            loss = loss + aux
        self._log(
            "train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n
        )
        self._log(
            "train/micle_multi_instance_share",
            batch["multi_instance"].float().mean(),
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=n,
        )
        return loss

    # -- kNN monitor -------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        emb = self.backbone(batch["image"]).detach().float()
        self._val.setdefault(dataloader_idx, []).append((emb, batch["label"].detach(), batch["index"].detach()))

    def on_validation_epoch_end(self) -> None:
        sets = [self._gather(parts) for _, parts in sorted(self._val.items())]
        self._val = {}
        if not sets:
            return
        if len(sets) == 1:
            acc = knn_accuracy(*sets[0])
        else:
            (ref, ref_y), (query, query_y) = sets[0], sets[1]
            acc = knn_accuracy(query, query_y, ref, ref_y)
        # identical on every rank after the gather (the sync only averages equal values)
        self._log("val/knn_acc", acc, on_step=False, on_epoch=True, sync_dist=True, prog_bar=True)

    def _gather(self, parts: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        emb, y, idx = (torch.cat(p) for p in zip(*parts))
        if self.trainer.world_size > 1:  # the distributed sampler pads: drop repeated rows
            # a tensor in gives a tensor out (Lightning's return type also covers collections)
            emb, y, idx = (cast(Tensor, self.all_gather(t)).flatten(0, 1) for t in (emb, y, idx))
            order = torch.argsort(idx, stable=True)
            emb, y, idx = emb[order], y[order], idx[order]
            first = torch.ones_like(idx, dtype=torch.bool)
            first[1:] = idx[1:] != idx[:-1]
            emb, y = emb[first], y[first]
        return emb, y

    # -- optimiser -------------------------------------------------------------------------------

    def configure_optimizers(self):
        cfg = self.optim
        # SimCLR: biases and normalisation scales get neither weight decay nor LARS adaptation.
        groups = decay_groups(self.parameters(), cfg.weight_decay, lars=True)
        lr = cfg.peak_lr(self.batch_size * self.trainer.world_size * cfg.accumulate_grad_batches)
        opt: torch.optim.Optimizer
        if cfg.name == "lars":
            opt = LARS(groups, lr=lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
        else:
            for g in groups:
                g.pop("lars")
            opt = torch.optim.AdamW(groups, lr=lr)
        return warmup_cosine(opt, self.trainer, cfg.warmup_epochs, cfg.epochs)
