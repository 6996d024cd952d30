"""Monte-Carlo machinery shared by the heteroscedastic heads (HET, HET-XL).

Both heads model label noise as Gaussian noise on the logits and predict the *expected* softmax
(or sigmoid) under that noise, estimated by averaging over S samples (see the method spec §6).
With S = 1000 the sampled logits would be S times the size of the ordinary ones, so samples are
drawn and averaged in chunks. Under autograd each chunk is checkpointed and its noise regenerated
from a per-chunk seed in the backward pass, so training memory does not grow with S either.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .base import HeadOptions

__all__: list[str] = []  # private: the public names live on the heads

#: Probabilities are clipped here before a log, as in the HET papers' loss ``-log clip(p_y, 1e-7)``.
PROB_FLOOR = 1e-7
#: Added to ``softplus`` so the diagonal noise scale never collapses to exactly zero.
SCALE_FLOOR = 1e-3

#: ``draw(n, generator)`` returns ``(n, B, C)`` tempered logit samples.
Draw = Callable[[int, torch.Generator], Tensor]


class HeteroscedasticOptions(HeadOptions):
    #: R, the rank of the low-rank part of the noise covariance.
    rank: int = Field(15, ge=1)
    #: S, Monte-Carlo samples per example in training (the papers use 1000; fewer is cheaper and noisier).
    num_samples: int = Field(1000, ge=1)
    #: Monte-Carlo samples per example in eval mode, where the estimate should be at least as good.
    eval_samples: int = Field(1000, ge=1)
    #: Sigmoid variant for multi-label targets (``(B, L)`` 0/1) instead of softmax.
    multilabel: bool = False
    #: Most elements a chunk of sampled logits may hold; lower it to save memory. Changing it
    #: changes which random draws are used (seeds are per chunk), not what is estimated.
    chunk_elements: int = Field(1 << 22, ge=1)


def mc_probs(
    draw: Draw,
    *,
    num_samples: int,
    sample_numel: int,
    chunk_elements: int,
    multilabel: bool,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Average ``softmax`` (or ``sigmoid``) of ``num_samples`` logit samples, chunk by chunk.

    Args:
        draw: makes ``n`` samples from the generator it is given.
        sample_numel: elements one sample occupies (sets the chunk size).
        generator: seeds the per-chunk generators, for reproducible estimates; the global RNG
            when ``None``.
    """
    chunk = max(1, min(num_samples, chunk_elements // max(1, sample_numel)))
    starts = range(0, num_samples, chunk)
    seed_device = generator.device if generator is not None else torch.device("cpu")
    seeds = torch.randint(0, 2**62, (len(starts),), generator=generator, device=seed_device).tolist()
    total: Tensor | None = None
    for start, seed in zip(starts, seeds, strict=True):
        n = min(chunk, num_samples - start)
        if torch.is_grad_enabled():
            # Recomputed in backward from the same seed, so only the chunk's sum is kept.
            part = checkpoint(
                _chunk_sum, draw, n, seed, multilabel, device, use_reentrant=False, preserve_rng_state=False
            )
        else:
            part = _chunk_sum(draw, n, seed, multilabel, device)
        total = part if total is None else total + part
    assert total is not None
    return total / num_samples


def _chunk_sum(draw: Draw, n: int, seed: int, multilabel: bool, device: torch.device) -> Tensor:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    # Sample in float32 even under mixed precision: the average of many small differences is the point.
    with torch.autocast(device_type=device.type, enabled=False):
        u = draw(n, gen)
        return (u.sigmoid() if multilabel else u.softmax(-1)).sum(0)


def probs_to_logits(probs: Tensor, multilabel: bool) -> Tensor:
    """Logits whose usual activation returns ``probs`` (clipped): ``log p`` or ``log p - log(1 - p)``."""
    if multilabel:
        p = probs.clamp(PROB_FLOOR, 1 - PROB_FLOOR)
        return p.log() - (-p).log1p()
    return probs.clamp_min(PROB_FLOOR).log()


def prob_loss(probs: Tensor, target: Tensor, multilabel: bool) -> Tensor:
    """Mean negative log-likelihood of the MC-averaged probabilities, each clipped at ``1e-7``.

    Softmax: ``-log clip(p_y)``. Sigmoid: ``-[y log clip(p) + (1-y) log clip(1-p)]`` averaged
    over labels as well.
    """
    probs = probs.float()
    if multilabel:
        pos = probs.clamp_min(PROB_FLOOR).log()
        neg = (1 - probs).clamp_min(PROB_FLOOR).log()
        return -(target * pos + (1 - target) * neg).mean()
    p_y = probs.gather(1, target[:, None]).squeeze(1)
    return -p_y.clamp_min(PROB_FLOOR).log().mean()
