"""LARS: SGD with momentum and a layer-wise trust ratio (You et al. 2017), the SimCLR optimiser.

Large contrastive batches need large learning rates (the method spec §2: ``0.3 x batch / 256``); plain
SGD then diverges on layers whose gradients are large relative to their weights. LARS scales each
tensor's update by ``eta * ||w|| / ||g + wd * w||``, so every layer moves by a similar *relative*
amount. As in SimCLR, biases and normalisation parameters (param groups with ``lars=False``) get neither
weight decay nor the trust ratio.

Why not ``timm.optim.Lars``: timm divides by ``||g|| + wd * ||w||`` (NVIDIA's LARC bound), whereas SimCLR's own
optimiser divides by the norm of the decayed gradient, ``||g + wd * w||``; the two differ whenever the gradient is not
parallel to the weights, and this module follows SimCLR.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["LARS"]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling on top of SGD with momentum.

    Args:
        params: parameters or param groups; a group may set ``lars=False`` to skip adaptation.
        lr: base learning rate.
        momentum: heavy-ball momentum.
        weight_decay: L2 weight decay, added to the gradient before the trust ratio.
        trust_coefficient: eta, the scale of the trust ratio (0.001 in SimCLR).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"LARS lr must be positive, got {lr}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "lars": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    g = g * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss
