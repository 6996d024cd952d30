"""HET: heteroscedastic classification head with input-dependent, correlated logit noise.

Collier et al. 2021, "Correlated Input-Dependent Label Noise in Large-Scale Image
Classification" (CVPR). Medical labels are noisy in ways that depend on the image (a subtle
finding, an ambiguous photo) and that correlate between classes (two look-alike conditions);
modelling that noise stops it from being memorised as signal. See the method spec §6.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ._sampling import SCALE_FLOOR, HeteroscedasticOptions, mc_probs, prob_loss, probs_to_logits
from .base import Head, HeadOutput
from .registry import register_head

__all__ = ["HETHead", "HETOptions"]


class HETOptions(HeteroscedasticOptions):
    #: tau, the fixed softmax temperature; the paper tunes it on validation data.
    temperature: float = Field(1.0, gt=0.0)


@register_head("het")
class HETHead(Head):
    """Predicts ``E[softmax(u / tau)]`` for noisy logits ``u = mu(x) + V(x) eps_R + d(x) * eps_K``.

    With ``eps ~ N(0, I)`` and the embedding ``phi`` (method spec §6, HET):

    * ``mu = W phi + b`` — the ordinary logits;
    * ``V(x) = reshape(W_V phi)`` to ``K x R``, row-major: ``V[k, r] = (W_V phi)[k * R + r]``;
    * ``d(x) = softplus(W_d phi) + 1e-3``;
    * ``p(y | x) ~= (1/S) sum_s softmax(u_s / tau)``; loss ``-log clip(p_y, 1e-7)``.

    With ``multilabel=True`` the softmax becomes an independent sigmoid per label and the loss
    binary cross-entropy on the averaged probabilities. ``S`` is ``num_samples`` in training and
    ``eval_samples`` in eval mode; the estimate is random, so pass ``generator=`` to
    :meth:`forward` to reproduce it.

    Example:
        >>> import torch
        >>> head = HETHead(16, 3, rank=4, num_samples=64)
        >>> out = head(torch.randn(2, 16), generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(out.probs.sum(-1), torch.ones(2)))
        True
    """

    Options = HETOptions
    options: HETOptions

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__(in_features, num_classes, **options)
        self.multilabel = self.options.multilabel
        self.rank = self.options.rank
        self.loc = nn.Linear(in_features, num_classes)  # W, b
        self.factor_loading = nn.Linear(in_features, num_classes * self.rank, bias=False)  # W_V
        self.diag_scale = nn.Linear(in_features, num_classes, bias=False)  # W_d

    def forward(self, features: Tensor, *, generator: torch.Generator | None = None) -> HeadOutput:
        """MC-averaged probabilities; ``generator`` (CPU unless on the features' device) seeds the noise."""
        self._check_features(features)
        batch, k, r = features.shape[0], self.num_classes, self.rank
        mu = self.loc(features).float()
        factors = self.factor_loading(features).float().view(batch, k, r)
        diag = F.softplus(self.diag_scale(features).float()) + SCALE_FLOOR
        tau = self.options.temperature

        def draw(n: int, gen: torch.Generator) -> Tensor:
            eps_r = torch.randn(n, batch, r, generator=gen, device=mu.device)
            eps_k = torch.randn(n, batch, k, generator=gen, device=mu.device)
            u = mu + torch.einsum("bkr,nbr->nbk", factors, eps_r) + diag * eps_k
            return u / tau

        probs = mc_probs(
            draw,
            num_samples=self.options.num_samples if self.training else self.options.eval_samples,
            sample_numel=batch * (k + r),
            chunk_elements=self.options.chunk_elements,
            multilabel=self.multilabel,
            device=mu.device,
            generator=generator,
        )
        return HeadOutput(logits=probs_to_logits(probs, self.multilabel), probs=probs)

    def loss(self, out: HeadOutput, target: Tensor) -> Tensor:
        """``-log clip(p_y, 1e-7)`` (softmax) or clipped BCE on the averaged probabilities (sigmoid)."""
        return prob_loss(out.probs, self._check_target(target, self.num_classes), self.multilabel)
