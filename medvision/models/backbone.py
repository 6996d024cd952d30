"""The one backbone contract every head, SSL stage and trainer codes against.

A :class:`Backbone` wraps a timm model built without a classifier. It takes images in ``[0, 1]`` and applies
the normalisation its weights were trained with *inside* ``forward``: that is the single place preprocessing
statistics are used, so no dataset, transform or pipeline can pair weights with the wrong mean/std.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from medvision.models.moe import MoELayer
from medvision.models.record import WeightsRecord

__all__ = ["Backbone"]


class _TimmModel(Protocol):
    """The part of timm's model API the wrapper calls: every timm model has it, ``nn.Module`` does not declare it."""

    num_features: int

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor: ...


class Backbone(nn.Module):
    """A pretrained (or random) image encoder with its weights record.

    Attributes:
        model: the timm module (``num_classes=0``); its state dict is what weight files hold.
        num_features: size D of the pooled embedding returned by :meth:`forward`.
        weights_record: the frozen record of the weights (source, SHA-256, input size, mean/std, licence).
        build_spec: ``{"name": ..., "model_kwargs": {...}}``, what :func:`create_backbone` needs to rebuild this
            exact architecture (saved beside the weights by ``save_backbone``).

    Example:
        >>> from medvision.models import create_backbone
        >>> bb = create_backbone("vit-tiny", in_chans=1)
        >>> bb(torch.rand(2, 1, 32, 32)).shape[1] == bb.num_features
        True
    """

    mean: Tensor  # buffers, registered in __init__
    std: Tensor

    def __init__(self, model: nn.Module, record: WeightsRecord, build_spec: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.weights_record = record
        self.build_spec = copy.deepcopy(build_spec)
        self.num_features = int(getattr(model, "head_hidden_size", None) or self._timm.num_features)
        shape = (1, record.in_chans, 1, 1)
        # Not persistent: the record is the source of truth, and weight files stay loadable by plain timm.
        self.register_buffer("mean", torch.tensor(record.mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(record.std, dtype=torch.float32).view(shape), persistent=False)

    def normalise(self, x: Tensor) -> Tensor:
        """Map ``[0, 1]`` images to the weights' input statistics; checks the channel count."""
        if x.ndim != 4 or x.shape[1] != self.weights_record.in_chans:
            raise ValueError(
                f"backbone {self.weights_record.name!r} expects images of shape (B, "
                f"{self.weights_record.in_chans}, H, W) in [0, 1], got {tuple(x.shape)}; build it with "
                f"in_chans={x.shape[1] if x.ndim == 4 else '?'} or convert the images"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled features (ViT tokens ``(B, N, D)`` or CNN map ``(B, D, h, w)``) of ``[0, 1]`` images."""
        return self._timm.forward_features(self.normalise(x))

    def forward(self, x: Tensor) -> Tensor:
        """Pooled embedding ``(B, num_features)`` of images ``(B, in_chans, H, W)`` in ``[0, 1]``."""
        return self._timm.forward_head(self.forward_features(x), pre_logits=True)

    @property
    def _timm(self) -> _TimmModel:
        """``model`` as the timm API it is (a static view only: the object is the same)."""
        return cast(_TimmModel, self.model)

    def moe_layers(self) -> list[MoELayer]:
        """The mixture-of-experts layers inside the model (empty for dense backbones)."""
        return [m for m in self.model.modules() if isinstance(m, MoELayer)]

    def aux_loss(self) -> Tensor:
        """Sum of the MoE auxiliary losses of the last forward pass; a zero scalar for dense backbones.

        Add it to the task loss during training (V-MoE importance + load losses, see the method spec §8).
        """
        losses = [m.last_aux_loss for m in self.moe_layers() if m.last_aux_loss is not None]
        if not losses:
            return self.mean.new_zeros(())
        return torch.stack([loss.float() for loss in losses]).sum()

    def extra_repr(self) -> str:
        r = self.weights_record
        return f"name={r.name!r}, source={r.source!r}, num_features={self.num_features}, in_chans={r.in_chans}"
