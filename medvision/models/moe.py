"""Mixture-of-experts layers that replace the MLP of a ViT block (see the method spec §8).

Two routings are offered, both drop-in for timm's ``block.mlp`` (``(B, N, D) -> (B, N, D)``):

* :class:`SoftMoE` (Puigcerver et al., "From Sparse to Soft Mixtures of Experts", 2023): every slot is a
  softmax-weighted average of all tokens and every token a softmax-weighted average of all slot outputs, so
  nothing is dropped and no auxiliary loss is needed.
* :class:`SparseMoE` (Riquelme et al., "Scaling Vision with Sparse Mixture of Experts", 2021 — V-MoE): each
  token goes to its top-k experts, each expert takes at most ``round(k·T·C/E)`` tokens of a sequence, the rest
  overflow (their MoE output is zero, so the block's residual carries them through unchanged), and importance
  and load losses keep the experts evenly used.

The experts themselves are :class:`Experts`: n independent two-layer MLPs evaluated in one batched matmul,
stored in ``nn.Linear`` layout so a dense MLP can be tiled into them (sparse upcycling).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

__all__ = ["Experts", "MoEConfig", "MoELayer", "SoftMoE", "SparseMoE"]


class MoEConfig(BaseModel):
    """Where and how a ViT's MLPs become mixtures of experts.

    Attributes:
        kind: ``softmoe`` (soft slots) or ``vmoe`` (sparse top-k routing).
        num_experts: experts per MoE layer (E, or n for Soft MoE).
        layers: indices of the blocks whose MLP is replaced; ``None`` means the last half of the blocks
            (the method spec's default).
        top_k: experts per token for ``vmoe`` (1 or 2).
        capacity_factor: C in the ``vmoe`` capacity ``round(k·T·C/E)``; 1.05 as in V-MoE.
        slots_per_expert: p for ``softmoe``; n·p slots in all.
        aux_weight: weight of each of the ``vmoe`` importance and load losses (0.005 as in V-MoE).
        normalize_gates: rescale a token's top-k gate values to sum to one. V-MoE does not; sparse upcycling
            needs it so that identical experts reproduce the dense MLP exactly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["softmoe", "vmoe"]
    num_experts: int = Field(ge=1)
    layers: tuple[int, ...] | None = None
    top_k: Literal[1, 2] = 1
    capacity_factor: float = Field(default=1.05, gt=0)
    slots_per_expert: int = Field(default=1, ge=1)
    aux_weight: float = Field(default=0.005, ge=0)
    normalize_gates: bool = False

    @model_validator(mode="after")
    def _fits_kind(self) -> MoEConfig:
        if self.kind == "vmoe" and self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.kind == "vmoe" and self.slots_per_expert != 1:
            raise ValueError("slots_per_expert only applies to kind='softmoe'")
        if self.kind == "softmoe" and (self.top_k != 1 or self.normalize_gates):
            raise ValueError("top_k and normalize_gates only apply to kind='vmoe' (Soft MoE has no top-k)")
        return self


class Experts(nn.Module):
    """``num_experts`` independent MLPs ``fc2(act(fc1(x)))`` applied to ``(E, S, dim)`` inputs in one matmul.

    Weights keep ``nn.Linear``'s ``(out, in)`` layout per expert, so tiling a dense ``fc1``/``fc2`` into every
    expert is a copy (:meth:`copy_from_dense`).
    """

    def __init__(
        self, num_experts: int, dim: int, hidden_dim: int, act: nn.Module | None = None, drop: float = 0.0
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.fc1_bias = nn.Parameter(torch.zeros(num_experts, hidden_dim))
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.fc2_bias = nn.Parameter(torch.zeros(num_experts, dim))
        self.act = act if act is not None else nn.GELU()
        self.drop = nn.Dropout(drop)
        # timm initialises ViT linear layers with a truncated normal of std 0.02 and zero bias; so do we.
        nn.init.trunc_normal_(self.fc1_weight, std=0.02)
        nn.init.trunc_normal_(self.fc2_weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(E, S, dim)``, the S inputs of each expert -> ``(E, S, dim)``."""
        h = torch.baddbmm(self.fc1_bias.unsqueeze(1), x, self.fc1_weight.transpose(1, 2))
        h = self.drop(self.act(h))
        return self.drop(torch.baddbmm(self.fc2_bias.unsqueeze(1), h, self.fc2_weight.transpose(1, 2)))

    @torch.no_grad()
    def copy_from_dense(self, fc1: nn.Linear, fc2: nn.Linear) -> None:
        """Tile one dense MLP into every expert (sparse upcycling, see the method spec §8)."""
        if fc1.weight.shape != self.fc1_weight.shape[1:] or fc2.weight.shape != self.fc2_weight.shape[1:]:
            raise ValueError(
                f"dense MLP shapes fc1 {tuple(fc1.weight.shape)}, fc2 {tuple(fc2.weight.shape)} do not match "
                f"the experts' {tuple(self.fc1_weight.shape[1:])}, {tuple(self.fc2_weight.shape[1:])}"
            )
        self.fc1_weight.copy_(fc1.weight.unsqueeze(0).expand_as(self.fc1_weight))
        self.fc2_weight.copy_(fc2.weight.unsqueeze(0).expand_as(self.fc2_weight))
        self.fc1_bias.copy_(_bias_or_zeros(fc1).unsqueeze(0).expand_as(self.fc1_bias))
        self.fc2_bias.copy_(_bias_or_zeros(fc2).unsqueeze(0).expand_as(self.fc2_bias))


class MoELayer(nn.Module):
    """Common surface of the MoE layers: ``experts`` and the auxiliary loss of the last forward."""

    experts: Experts
    last_aux_loss: Tensor | None

    @property
    def num_experts(self) -> int:
        return self.experts.num_experts


class SoftMoE(MoELayer):
    """Soft MoE layer (Puigcerver et al. 2023, eqs. 1-3; see the method spec §8).

    For one sequence ``X`` (m×d) and slot parameters ``Φ`` (d×n·p): rows of X and columns of Φ are
    L2-normalised and their product scaled by a learnable scalar (init 1) to give logits L = XΦ. Dispatch
    weights ``D = softmax(L)`` over tokens (per slot) form slots ``X̃ = DᵀX``; expert i maps its p slots;
    combine weights ``C = softmax(L)`` over slots (per token) give ``Y = C·Ỹ``.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        slots_per_expert: int = 1,
        act: nn.Module | None = None,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.slots_per_expert = slots_per_expert
        num_slots = num_experts * slots_per_expert
        # LeCun-normal initialisation of Φ, as in the Soft MoE paper.
        self.phi = nn.Parameter(torch.randn(dim, num_slots) / math.sqrt(dim))
        self.scale = nn.Parameter(torch.ones(()))
        self.experts = Experts(num_experts, dim, hidden_dim, act=act, drop=drop)
        self.last_aux_loss = None

    def forward(self, x: Tensor) -> Tensor:
        b, m, d = x.shape
        n, p = self.num_experts, self.slots_per_expert
        logits = self.scale * torch.einsum(
            "bmd,ds->bms", F.normalize(x.float(), dim=-1), F.normalize(self.phi.float(), dim=0)
        )
        dispatch = logits.softmax(dim=1).to(x.dtype)  # over tokens, per slot
        combine = logits.softmax(dim=2).to(x.dtype)  # over slots, per token
        slots = torch.einsum("bms,bmd->bsd", dispatch, x)  # X̃ = DᵀX, (B, n·p, d)
        per_expert = slots.reshape(b, n, p, d).transpose(0, 1).reshape(n, b * p, d)
        outputs = self.experts(per_expert).reshape(n, b, p, d).transpose(0, 1).reshape(b, n * p, d)
        self.last_aux_loss = x.new_zeros((), dtype=torch.float32)  # Soft MoE needs no auxiliary loss
        return torch.einsum("bms,bsd->bmd", combine, outputs)


class SparseMoE(MoELayer):
    """V-MoE layer with noisy top-k routing and per-expert capacity (Riquelme et al. 2021; method spec §8).

    Gates are ``softmax(Wx + ε)`` with ``ε ~ N(0, 1/E²)`` drawn only in training. Each sequence is one routing
    group of T tokens: every expert accepts at most ``round(k·T·C/E)`` assignments, filled first by all
    tokens' first choices in token order, then by their second choices. An assignment past capacity is dropped;
    a token with all its assignments dropped gets MoE output 0, i.e. the block's residual passes it through.

    After every forward, ``last_aux_loss`` holds ``w·(L_imp + L_load)``: the squared coefficients of variation
    of the per-expert importance (summed gates) and load (probability, under fresh noise, that an expert's
    clean logit reaches the token's k-th largest noisy logit), each weighted ``aux_weight`` (0.005).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: float = 1.05,
        aux_weight: float = 0.005,
        normalize_gates: bool = False,
        act: nn.Module | None = None,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts={num_experts}, got {top_k}")
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.aux_weight = aux_weight
        self.normalize_gates = normalize_gates
        self.router = nn.Linear(dim, num_experts, bias=False)
        nn.init.trunc_normal_(self.router.weight, std=0.02)
        self.experts = Experts(num_experts, dim, hidden_dim, act=act, drop=drop)
        self.last_aux_loss = None

    def capacity(self, num_tokens: int) -> int:
        """Assignments one expert accepts from a sequence of ``num_tokens`` tokens: round(k·T·C/E), at least 1."""
        return max(1, math.floor(self.top_k * num_tokens * self.capacity_factor / self.num_experts + 0.5))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        e, k = self.num_experts, self.top_k
        sigma = 1.0 / e
        clean = self.router(x).float()
        noisy = clean + sigma * torch.randn_like(clean) if self.training else clean
        gates = noisy.softmax(dim=-1)
        top_gates, top_idx = gates.topk(k, dim=-1)  # (B, T, k)
        if self.normalize_gates:
            top_gates = top_gates / top_gates.sum(dim=-1, keepdim=True)

        cap = self.capacity(t)
        # Assignments in priority order: every token's first choice (token order), then every second choice.
        expert = top_idx.transpose(1, 2).reshape(b, k * t)
        weight = top_gates.transpose(1, 2).reshape(b, k * t)
        position = (F.one_hot(expert, e).cumsum(dim=1) - 1).gather(2, expert.unsqueeze(-1)).squeeze(-1)
        kept = position < cap
        overflow_bin = e * cap
        slot = torch.where(kept, expert * cap + position, torch.full_like(expert, overflow_bin))
        index = slot.unsqueeze(-1).expand(-1, -1, d)

        tokens = x.unsqueeze(1).expand(b, k, t, d).reshape(b, k * t, d)
        buffer = x.new_zeros(b, overflow_bin + 1, d).scatter_add(1, index, tokens)
        per_expert = buffer[:, :overflow_bin].reshape(b, e, cap, d).transpose(0, 1).reshape(e, b * cap, d)
        outputs = self.experts(per_expert).reshape(e, b, cap, d).transpose(0, 1).reshape(b, overflow_bin, d)
        outputs = torch.cat([outputs, outputs.new_zeros(b, 1, d)], dim=1)
        combined = outputs.gather(1, index) * (weight * kept).unsqueeze(-1).to(outputs.dtype)
        self.last_aux_loss = self._aux_loss(gates, clean, noisy, sigma)
        return combined.reshape(b, k, t, d).sum(dim=1)

    def _aux_loss(self, gates: Tensor, clean: Tensor, noisy: Tensor, sigma: float) -> Tensor:
        importance = gates.sum(dim=1)  # (B, E), per routing group
        threshold = noisy.topk(self.top_k, dim=-1).values[..., -1:]
        load = (1.0 - torch.special.ndtr((threshold - clean) / sigma)).sum(dim=1)
        return self.aux_weight * (_cv_squared(importance) + _cv_squared(load))


def _cv_squared(values: Tensor) -> Tensor:
    """Squared coefficient of variation over experts, averaged over routing groups."""
    return (values.std(dim=-1, unbiased=False) / values.mean(dim=-1).clamp_min(1e-9)).pow(2).mean()


def _bias_or_zeros(linear: nn.Linear) -> Tensor:
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
