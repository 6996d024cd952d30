"""Bag heads: a case's instance embeddings pooled into one, then one linear layer (multiple-instance learning).

A series-, study- or patient-level case is a bag of instances (slices, views, photos) with one label. The head
reads the backbone embedding of every instance, ``(B, N, D)`` with a ``(B, N)`` mask for bags of different
lengths, pools them into one ``(B, D)`` case embedding and classifies it (the embedding-level approach of Ilse,
Tomczak & Welling 2018, "Attention-based deep multiple instance learning", ICML; §2.3). Poolings:

* ``mean`` and ``max`` (element-wise over the instances): the classic permutation-invariant baselines;
* ``attention`` (Ilse et al. eq. 8): ``a_k = softmax_k( w^T tanh(V h_k) )``, ``z = sum_k a_k h_k``;
* ``gated_attention`` (eq. 9): ``a_k = softmax_k( w^T (tanh(V h_k) * sigm(U h_k)) )``; the sigmoid gate lets
  the weight depend non-linearly on ``h_k`` without tanh's near-linearity around 0;
* ``middle``: the bag's middle instance alone, the "one representative slice" baseline a series model must beat.

Every pooling also gives instance weights (summing to 1 over the bag's real instances): the attention itself, the
uniform ``1/n`` for ``mean``, the share of dimensions an instance supplies the maximum for under ``max``, one-hot for
``middle``. Evaluation ranks a case's instances by them (the report shows the top ones).

Why not MONAI's ``MILModel``: it runs its backbone inside ``forward`` over all ``B x N`` images (so a frozen backbone
cannot read the feature cache), has no mask (padded instances of shorter bags would join the mean, the max and the
softmax), offers only the ungated attention (eq. 8) with a fixed 2048-wide hidden layer, pools instance *logits*
for ``mean``/``max``, and returns no instance weights. On full bags its ``calc_head`` for ``mean`` and ``att``
equals this head's ``mean`` and ``attention`` with the same weights; ``tests/test_mil.py`` checks that.

A 2-D input ``(B, D)`` is a batch of bags of one instance, so the head also honours the plain :class:`Head`
contract (and the registry's conformance tests).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from .base import Head, HeadOptions, HeadOutput
from .registry import register_head

__all__ = ["BagPooling", "MILHead", "MILOptions", "Pooling"]

Pooling = Literal["gated_attention", "attention", "mean", "max", "middle"]


class MILOptions(HeadOptions):
    #: How instance embeddings become the case embedding (see the module docstring).
    pooling: Pooling = "gated_attention"
    #: Hidden width ``L`` of the attention network (Ilse et al. use 128); ignored by the other poolings.
    attention_dim: int = Field(128, ge=1)
    #: Dropout on the pooled case embedding before the linear layer.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    #: Label smoothing of the case-level cross-entropy (as for the linear head).
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class BagPooling(nn.Module):
    """``(B, N, D)`` instance embeddings and a ``(B, N)`` mask -> ``(B, D)`` case embedding and ``(B, N)`` weights.

    Example:
        >>> pool = BagPooling("mean", 4)
        >>> z, w = pool(torch.ones(1, 3, 4), torch.tensor([[True, True, False]]))
        >>> z.tolist(), w.tolist()
        ([[1.0, 1.0, 1.0, 1.0]], [[0.5, 0.5, 0.0]])
    """

    def __init__(self, pooling: Pooling, dim: int, attention_dim: int = 128) -> None:
        super().__init__()
        self.pooling = pooling
        if pooling in ("attention", "gated_attention"):
            self.V = nn.Linear(dim, attention_dim)  # tanh branch
            self.w = nn.Linear(attention_dim, 1)
        if pooling == "gated_attention":
            self.U = nn.Linear(dim, attention_dim)  # sigmoid gate

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        maskf = mask.to(h.dtype)
        count = maskf.sum(1, keepdim=True).clamp_min(1.0)
        if self.pooling == "mean":
            weights = maskf / count
            return (h * weights.unsqueeze(-1)).sum(1), weights
        if self.pooling == "max":
            filled = h.masked_fill(~mask.unsqueeze(-1), float("-inf"))
            z, arg = filled.max(1)
            share = F.one_hot(arg, h.shape[1]).to(h.dtype).mean(1)  # (B, N): share of dims each instance wins
            return z, share
        if self.pooling == "middle":
            middle = ((mask.sum(1) - 1).clamp_min(0) // 2).long()
            weights = F.one_hot(middle, h.shape[1]).to(h.dtype)
            return h[torch.arange(h.shape[0], device=h.device), middle], weights
        hidden = torch.tanh(self.V(h))
        if self.pooling == "gated_attention":
            hidden = hidden * torch.sigmoid(self.U(h))
        scores = self.w(hidden).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        weights = scores.softmax(1).to(h.dtype)
        return (h * weights.unsqueeze(-1)).sum(1), weights


@register_head("mil")
class MILHead(Head):
    """A multiple-instance head: pool a bag's instance embeddings, then one linear layer, softmax, cross-entropy.

    ``forward(features, mask=None)`` takes ``(B, N, D)`` features and a ``(B, N)`` boolean mask of real instances
    (``None``: all real), or ``(B, D)`` for bags of one. :meth:`pool` gives the case embedding and instance weights.

    Example:
        >>> head = MILHead(8, 2, pooling="gated_attention", attention_dim=4)
        >>> out = head(torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool))
        >>> out.probs.shape, head.pool(torch.randn(3, 5, 8))[1].sum(1).round().tolist()
        (torch.Size([3, 2]), [1.0, 1.0, 1.0])
    """

    Options = MILOptions
    options: MILOptions
    #: The head reads bags: the classifier, the data modules and evaluation hand it ``(B, N, D)`` and a mask.
    takes_bags: ClassVar[bool] = True

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__(in_features, num_classes, **options)
        self.pooling = BagPooling(self.options.pooling, in_features, self.options.attention_dim)
        self.dropout = nn.Dropout(self.options.dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def pool(self, features: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(case embedding (B, D), instance weights (B, N))`` of a batch of bags."""
        h, mask = self._bags(features, mask)
        return self.pooling(h, mask)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> HeadOutput:
        return self.classify(self.pool(features, mask)[0])

    def classify(self, pooled: Tensor) -> HeadOutput:
        """The output for already pooled case embeddings (evaluation pools once and keeps the weights)."""
        logits = self.fc(self.dropout(pooled))
        return HeadOutput(logits=logits, probs=logits.float().softmax(-1))

    def loss(self, out: HeadOutput, target: Tensor) -> Tensor:
        target = self._check_target(target, self.num_classes)
        return F.cross_entropy(out.logits.float(), target, label_smoothing=self.options.label_smoothing)

    def _bags(self, features: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if features.ndim == 2:
            features = features.unsqueeze(1)
        if features.ndim != 3 or features.shape[-1] != self.in_features:
            raise ValueError(
                f"head 'mil' expects bags of instance features (B, N, {self.in_features}) or (B, {self.in_features}),"
                f" got {tuple(features.shape)}"
            )
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        if mask.shape != features.shape[:2]:
            raise ValueError(f"head 'mil': mask {tuple(mask.shape)} does not match bags {tuple(features.shape[:2])}")
        if not bool(mask.any(1).all()):
            raise ValueError("head 'mil': every bag needs at least one instance (a mask row is all False)")
        return features, mask.bool()
