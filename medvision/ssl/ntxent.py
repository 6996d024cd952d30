"""NT-Xent, the SimCLR contrastive loss, with negatives gathered across devices (see the method spec §2).

N images give 2N views; each view's embedding ``z`` (after the projection head, L2-normalised) is an
anchor whose positive is the other view of the same image (or, for MICLe, of the same patient) and
whose negatives are all other views in the *global* batch:
    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )

averaged over the anchors. Under DDP each process holds N_local images; the keys of every process are
all-gathered *with* gradients (``torch.distributed.nn.functional.all_gather``), so a rank's embeddings
receive the gradient of every rank's anchors that used them as negatives. Each rank averages over its
own anchors; DDP's gradient averaging then yields exactly the gradient of the loss on the
concatenated global batch (the 2-process test proves it).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.nn.functional import all_gather

__all__ = ["ProjectionHead", "gather_with_grad", "nt_xent_loss"]


class ProjectionHead(nn.Module):
    """The SimCLR projection MLP g: ``layers`` linear layers, BatchNorm + ReLU between them.

    SimCLR found the contrastive loss works best on a projection of the representation, and the
    representation *before* the projection transfers best; so the head is discarded after pretraining
    and only the backbone is saved.

    Args:
        in_dim: backbone embedding size.
        hidden_dim: width of the hidden layers.
        out_dim: projection size (128 by default in the method spec).
        layers: number of linear layers (2 or 3 in SimCLR; 1 gives a linear projection).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, layers: int = 2) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"projection layers must be at least 1, got {layers}")
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        mods.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` (same shape on every rank) over all ranks along dim 0, keeping gradients.

    Outside an initialised process group (or with one process) returns ``t`` unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t

    return torch.cat(all_gather(t), dim=0)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, gather: bool = True) -> Tensor:
    """NT-Xent loss of paired embeddings, averaged over this process's 2N anchors.

    Args:
        z1: ``(N, D)`` projections of the first views (normalised here; need not be unit length).
        z2: ``(N, D)`` projections of the second views; row i is the positive of ``z1[i]``.
        temperature: tau > 0; smaller values weight hard negatives more.
        gather: take negatives from every rank (with gradients) when a process group is running.
            All ranks must pass the same N.

    Returns:
        The scalar loss (float32).

    Raises:
        ValueError: shapes differ or the temperature is not positive.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"nt_xent_loss needs two (N, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = z1.shape[0]
    local = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D): views 1 then views 2
    keys = gather_with_grad(local) if gather else local
    offset = 0
    if keys.shape[0] != local.shape[0]:
        offset = dist.get_rank() * 2 * n  # this rank's block in the gathered keys
    logits = local @ keys.T / temperature  # (2N, 2N * world)
    rows = torch.arange(2 * n, device=local.device)
    self_idx = rows + offset
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_idx] = True
    logits = logits.masked_fill(is_self, float("-inf"))  # the sum runs over k != i
    positive = self_idx + torch.where(rows < n, n, -n)
    return F.cross_entropy(logits, positive)
