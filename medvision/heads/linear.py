"""Linear classification heads: softmax (multi-class) and sigmoid (multi-label).

The BiT-style transfer recipe fine-tunes a backbone with a single linear layer on top (see the
method spec §1); these are that layer, with the two target types a cohort can have.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from .base import Head, HeadOptions, HeadOutput
from .registry import register_head

__all__ = ["LinearHead", "LinearOptions", "MultiLabelHead", "MultiLabelOptions"]


class LinearOptions(HeadOptions):
    #: Mix this much of the uniform distribution into the one-hot target (Szegedy et al. 2016,
    #: "Rethinking the Inception architecture", §7): softens over-confident fits on small cohorts.
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    #: Dropout on the embedding before the linear layer.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class MultiLabelOptions(HeadOptions):
    #: Dropout on the embedding before the linear layer.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


@register_head("linear")
class LinearHead(Head):
    """One linear layer, softmax probabilities, (label-smoothed) cross-entropy.

    Example:
        >>> import torch
        >>> head = LinearHead(16, 3, label_smoothing=0.1)
        >>> out = head(torch.randn(4, 16))
        >>> head.loss(out, torch.tensor([0, 2, 1, 0])).shape
        torch.Size([])
    """

    Options = LinearOptions
    options: LinearOptions

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__(in_features, num_classes, **options)
        self.dropout = nn.Dropout(self.options.dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> HeadOutput:
        self._check_features(features)
        logits = self.fc(self.dropout(features))
        return HeadOutput(logits=logits, probs=logits.float().softmax(-1))

    def loss(self, out: HeadOutput, target: Tensor) -> Tensor:
        """Cross-entropy with label smoothing ``eps``: ``(1-eps)(-log p_y) + eps * mean_k(-log p_k)``."""
        target = self._check_target(target, self.num_classes)
        return F.cross_entropy(out.logits.float(), target, label_smoothing=self.options.label_smoothing)


@register_head("multilabel")
class MultiLabelHead(Head):
    """One linear layer, an independent sigmoid per label, binary cross-entropy.

    For cohorts where an image carries several findings at once (``(B, L)`` 0/1 targets); the
    loss is averaged over examples and labels.
    """

    Options = MultiLabelOptions
    options: MultiLabelOptions

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__(in_features, num_classes, **options)
        self.multilabel = True
        self.dropout = nn.Dropout(self.options.dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> HeadOutput:
        self._check_features(features)
        logits = self.fc(self.dropout(features))
        return HeadOutput(logits=logits, probs=logits.float().sigmoid())

    def loss(self, out: HeadOutput, target: Tensor) -> Tensor:
        target = self._check_target(target, self.num_classes)
        return F.binary_cross_entropy_with_logits(out.logits.float(), target)
