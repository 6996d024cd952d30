"""HOD: hierarchical outlier detection head.

Roy et al. 2022, "Does your dermatology classifier know what it doesn't know? Detecting the
long-tail of unseen conditions" (Medical Image Analysis). Each outlier condition seen in training
gets its own abstention class, and a coarse inlier-vs-outlier loss is added on top of the usual
fine-grained one, so the model learns both *what* a case is and *whether* it is one of the task
classes at all. See the method spec §4.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from .base import CohortShape, Head, HeadConfigError, HeadOptions, HeadOutput
from .registry import register_head

__all__ = ["HODHead", "HODOptions"]


class HODOptions(HeadOptions):
    #: M, the number of outlier conditions present in the *training* set; each gets a logit.
    num_outlier_classes: int = Field(ge=1)
    #: lambda, the weight of the coarse inlier/outlier loss. The paper picks it from {0.1, 0.5, 1}
    #: by validation OOD AUROC; 0.5 is the middle of that grid.
    coarse_weight: float = Field(0.5, ge=0.0)


@register_head("hod")
class HODHead(Head):
    """K inlier + M outlier logits trained with ``L = L_fine + lambda * L_coarse``.

    Targets are class indices: ``0..K-1`` the inlier (task) classes, ``K..K+M-1`` the training
    outlier conditions. With ``p = softmax(z)`` over all K + M logits (method spec §4):

    * ``L_fine = -log p_y``
    * ``L_coarse = -[1(y in OUT) log p_out + 1(y in IN) log p_in]``, ``p_out = sum_{j in OUT} p_j``
    * ``ood_score = p_out``

    ``probs`` are the K inlier probabilities renormalised to sum to one, i.e. ``softmax`` over
    the K inlier logits alone. That is the user's task distribution *given* the case is an
    inlier: the decision "is this one of my classes?" is carried by ``ood_score``, and keeping it
    out of ``probs`` lets calibration and accuracy metrics treat HOD like any K-class model. Its
    argmax is the spec's inlier prediction (argmax over the K inlier logits). The full K + M
    distribution is :meth:`full_probs`.

    Example:
        >>> import torch
        >>> head = HODHead(16, 4, num_outlier_classes=2)
        >>> out = head(torch.randn(3, 16))
        >>> out.logits.shape, out.probs.shape, out.ood_score.shape
        (torch.Size([3, 6]), torch.Size([3, 4]), torch.Size([3]))
    """

    Options = HODOptions
    options: HODOptions
    cohort_options = frozenset({"num_outlier_classes"})
    ood_score_name = "hod"

    @classmethod
    def options_for_cohort(cls, options: Mapping[str, Any], cohort: CohortShape) -> dict[str, Any]:
        """M is the cohort's number of training outlier conditions (``splits.outlier_conditions``).

        Raises:
            HeadConfigError: the cohort has no training outlier condition, or ``num_outlier_classes`` differs.
        """
        m = int(cohort.num_outlier_classes)
        if m < 1:
            raise HeadConfigError(
                "head 'hod' needs training outlier conditions, but the cohort has none; declare them in the "
                "cohort spec (splits.outlier_conditions) or use another head"
            )
        given = options.get("num_outlier_classes", m)
        if given != m:
            raise HeadConfigError(
                f"head.options.num_outlier_classes is {given} but the cohort has {m} training outlier "
                "conditions; leave the option out to take the cohort's"
            )
        return {**options, "num_outlier_classes": m}

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__(in_features, num_classes, **options)
        self.num_outlier_classes = self.options.num_outlier_classes
        self.num_outputs = num_classes + self.num_outlier_classes
        self.fc = nn.Linear(in_features, self.num_outputs)

    def forward(self, features: Tensor) -> HeadOutput:
        self._check_features(features)
        logits = self.fc(features)
        z = logits.float()
        k = self.num_classes
        # p_out = sum_OUT e^z / (sum_IN e^z + sum_OUT e^z) = sigmoid(LSE(z_OUT) - LSE(z_IN)): no overflow.
        p_out = torch.sigmoid(z[:, k:].logsumexp(-1) - z[:, :k].logsumexp(-1))
        return HeadOutput(logits=logits, probs=z[:, :k].softmax(-1), ood_score=p_out)

    @staticmethod
    def full_probs(out: HeadOutput) -> Tensor:
        """``(B, K + M)`` softmax over all logits, inlier classes first."""
        return out.logits.float().softmax(-1)

    def loss(self, out: HeadOutput, target: Tensor) -> Tensor:
        """Mean over the batch of ``L_fine + lambda * L_coarse``, all terms as log-sum-exps."""
        target = self._check_target(target, self.num_outputs)
        z = out.logits.float()
        k = self.num_classes
        log_norm = z.logsumexp(-1)
        fine = log_norm - z.gather(1, target[:, None]).squeeze(1)
        log_p_in = z[:, :k].logsumexp(-1) - log_norm
        log_p_out = z[:, k:].logsumexp(-1) - log_norm
        coarse = -torch.where(target >= k, log_p_out, log_p_in)
        return (fine + self.options.coarse_weight * coarse).mean()
