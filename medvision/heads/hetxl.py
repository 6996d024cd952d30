"""HET-XL: heteroscedastic head with its noise in the embedding space and a learned temperature.

Collier et al. 2023, "Massively Scaling Heteroscedastic Classifiers" (ICLR). HET's noise
covariance has K x R parameters per input, which is too much for many classes; HET-XL puts the
noise on the D-dim embedding before the last linear layer, so the parameter count no longer grows
with K, and learns the temperature instead of grid-searching it. See the method spec §6.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from ._sampling import SCALE_FLOOR, HeteroscedasticOptions, mc_probs, prob_loss, probs_to_logits
from .base import Head, HeadOutput
from .registry import register_head

__all__ = ["HETXLHead", "HETXLOptions"]


class HETXLOptions(HeteroscedasticOptions):
    #: Bounds of the learned temperature: tau = tau_lo + (tau_hi - tau_lo) * sigmoid(t), t init 0.
    tau_lo: float = Field(0.05, gt=0.0)
    tau_hi: float = Field(5.0, gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> HETXLOptions:
        if self.tau_lo >= self.tau_hi:
            raise ValueError(f"tau_lo ({self.tau_lo}) must be below tau_hi ({self.tau_hi})")
        return self


@register_head("hetxl")
class HETXLHead(Head):
    """Predicts ``E[softmax(u / tau)]`` for ``u = W (phi + eps') + b``, ``eps' ~ N(0, V'V'^T + diag(d'^2))``.

    From the embedding ``phi`` (D-dim; method spec §6, HET-XL):

    * ``V'(x) = reshape(W_V' phi)`` to ``D x R``, row-major: ``V'[i, r] = (W_V' phi)[i * R + r]``;
    * ``d'(x) = softplus(W_d' phi) + 1e-3``; so ``eps' = V'(x) eps_R + d'(x) * eps_D``;
    * ``tau = tau_lo + (tau_hi - tau_lo) * sigmoid(t)``, ``t`` a learned scalar starting at 0;
    * ``p(y | x) ~= (1/S) sum_s softmax(u_s / tau)``; loss ``-log clip(p_y, 1e-7)``.

    ``W_V'`` has ``D * D * R`` weights — independent of K but quadratic in D, so lower ``rank``
    for wide embeddings. ``multilabel=True`` gives the sigmoid variant. ``S`` is ``num_samples``
    in training and ``eval_samples`` in eval mode; pass ``generator=`` to reproduce an estimate.
    """

    Options = HETXLOptions
    options: HETXLOptions

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__(in_features, num_classes, **options)
        self.multilabel = self.options.multilabel
        self.rank = self.options.rank
        self.fc = nn.Linear(in_features, num_classes)  # W, b
        self.factor_loading = nn.Linear(in_features, in_features * self.rank, bias=False)  # W_V'
        self.diag_scale = nn.Linear(in_features, in_features, bias=False)  # W_d'
        self.temperature_logit = nn.Parameter(torch.zeros(()))

    @property
    def temperature(self) -> Tensor:
        """The current learned temperature, always within ``[tau_lo, tau_hi]``."""
        lo, hi = self.options.tau_lo, self.options.tau_hi
        return lo + (hi - lo) * torch.sigmoid(self.temperature_logit)

    def forward(self, features: Tensor, *, generator: torch.Generator | None = None) -> HeadOutput:
        """MC-averaged probabilities; ``generator`` (CPU unless on the features' device) seeds the noise."""
        self._check_features(features)
        batch, dim, r = features.shape[0], self.in_features, self.rank
        phi = features.float()
        factors = self.factor_loading(features).float().view(batch, dim, r)
        diag = F.softplus(self.diag_scale(features).float()) + SCALE_FLOOR
        weight, bias = self.fc.weight.float(), self.fc.bias.float()
        tau = self.temperature

        def draw(n: int, gen: torch.Generator) -> Tensor:
            eps_r = torch.randn(n, batch, r, generator=gen, device=phi.device)
            eps_d = torch.randn(n, batch, dim, generator=gen, device=phi.device)
            noisy = phi + torch.einsum("bdr,nbr->nbd", factors, eps_r) + diag * eps_d
            return F.linear(noisy, weight, bias) / tau

        probs = mc_probs(
            draw,
            num_samples=self.options.num_samples if self.training else self.options.eval_samples,
            sample_numel=batch * (2 * dim + r + self.num_classes),
            chunk_elements=self.options.chunk_elements,
            multilabel=self.multilabel,
            device=phi.device,
            generator=generator,
        )
        return HeadOutput(logits=probs_to_logits(probs, self.multilabel), probs=probs)

    def loss(self, out: HeadOutput, target: Tensor) -> Tensor:
        """``-log clip(p_y, 1e-7)`` (softmax) or clipped BCE on the averaged probabilities (sigmoid)."""
        return prob_loss(out.probs, self._check_target(target, self.num_classes), self.multilabel)
