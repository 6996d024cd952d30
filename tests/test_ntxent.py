"""NT-Xent: equals the per-anchor definition, and gathered across processes equals one big batch."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from medvision.ssl.lars import LARS
from medvision.ssl.ntxent import ProjectionHead, nt_xent_loss


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine's cores are shared; more threads than cores slow tiny ops ~10x.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """The method spec's formula, one anchor at a time, in float64."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = i + n if i < n else i - n
        sims = [float(z[i] @ z[k]) / tau for k in range(n2)]
        denom = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
        total += -math.log(math.exp(sims[j]) / denom)
    return total / n2


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5, 1.0])
def test_nt_xent_equals_per_anchor_loop(tau):
    g = torch.Generator().manual_seed(int(tau * 1000))
    z1, z2 = torch.randn(7, 5, generator=g) * 3, torch.randn(7, 5, generator=g)
    assert nt_xent_loss(z1, z2, tau).item() == pytest.approx(naive_nt_xent(z1, z2, tau), rel=1e-5, abs=1e-6)


def test_nt_xent_is_low_for_matching_views_and_rejects_bad_input():
    z = torch.randn(8, 16)
    aligned = nt_xent_loss(z, z + 0.01 * torch.randn_like(z), 0.1)
    shuffled = nt_xent_loss(z, z[torch.randperm(8)], 0.1)
    assert aligned < shuffled
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(z, z, 0.0)
    with pytest.raises(ValueError, match="shape"):
        nt_xent_loss(z, z[:4], 0.1)


def test_projection_head_layers_and_shape():
    head = ProjectionHead(32, 64, 16, layers=3)
    assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == 3
    assert head(torch.randn(4, 32)).shape == (4, 16)
    with pytest.raises(ValueError, match="layers"):
        ProjectionHead(32, 64, 16, layers=0)


def test_lars_scales_updates_by_trust_ratio_and_skips_flagged_groups():
    w = torch.nn.Parameter(torch.full((4,), 2.0))  # ||w|| = 4
    b = torch.nn.Parameter(torch.full((4,), 2.0))
    opt = LARS([{"params": [w]}, {"params": [b], "lars": False}], lr=1.0, momentum=0.0, trust_coefficient=0.5)
    w.grad, b.grad = torch.full((4,), 10.0), torch.full((4,), 10.0)  # ||g|| = 20
    opt.step()
    # w: update = lr * eta * ||w|| / ||g|| * g = 0.5 * 4 / 20 * 10 = 1.0 per entry; b: plain SGD step of 10
    assert torch.allclose(w, torch.full((4,), 1.0))
    assert torch.allclose(b, torch.full((4,), -8.0))


# -- two processes (gloo) vs one --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, x1: torch.Tensor, x2: torch.Tensor, tau: float, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same encoder on both ranks, as DDP requires
        enc = DistributedDataParallel(torch.nn.Linear(x1.shape[1], 6))
        n = x1.shape[0] // world
        a = x1[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        b = x2[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss = nt_xent_loss(enc(a), enc(b), tau, gather=True)
        loss.backward()  # DDP averages the encoder's gradients over ranks
        torch.save(
            {
                "loss": loss.detach(),
                "ga": a.grad,
                "gb": b.grad,
                "gw": enc.module.weight.grad,
                "gbias": enc.module.bias.grad,
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_loss_and_gradients_equal_single_process_on_concatenated_batch(tmp_path):
    world, tau = 2, 0.2
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    mp.spawn(_rank_main, args=(world, _free_port(), x1, x2, tau, str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    torch.manual_seed(0)
    enc = torch.nn.Linear(10, 6)
    a, b = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    full = nt_xent_loss(enc(a), enc(b), tau, gather=False)
    full.backward()

    # each rank averages over its own anchors: the mean over ranks is the loss of the whole batch
    assert torch.stack([r["loss"] for r in ranks]).mean().item() == pytest.approx(full.item(), rel=1e-5)
    # without the gather each rank's loss would only see its own half as negatives
    assert ranks[0]["loss"].item() != pytest.approx(nt_xent_loss(enc(x1[:4]), enc(x2[:4]), tau).item(), rel=1e-3)
    n = 8 // world
    for r, res in enumerate(ranks):
        # inputs: a rank's rows get gradient from every rank's anchors (through the gather); DDP's
        # average over ranks divides that by the world size
        assert torch.allclose(res["ga"] / world, a.grad[r * n : (r + 1) * n], atol=1e-6)
        assert torch.allclose(res["gb"] / world, b.grad[r * n : (r + 1) * n], atol=1e-6)
        assert torch.allclose(res["gw"], enc.weight.grad, atol=1e-6)
        assert torch.allclose(res["gbias"], enc.bias.grad, atol=1e-6)
