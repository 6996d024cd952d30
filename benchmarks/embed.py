"""Embedding benchmark: a cohort through the frozen-feature cache vs a bare ``torch.no_grad()`` forward.

What the linear probe, LP-FT's first stage, ``recipe: auto`` and the feature-space OOD detectors pay once per
backbone: every training and validation image of a cohort embedded by the frozen backbone. medvision's side is
:class:`medvision.engine.features.FeatureCache` into an empty (cold) store each round: it reads the cached images,
runs the backbone in eval mode without gradients, and writes the embeddings as a shard plus its index. The bare
side is what a user would write without it: the same cached images stacked into batches of the same size and a
``torch.no_grad()`` forward, keeping the outputs in memory. Both use the same backbone object, the same batch size
and the same images. Rounds alternate sides after a warm-up round (``benchmarks/_timing.py``). Target: ratio of
medians >= 0.9 (the cache's bookkeeping and writes cost at most a tenth of the forward passes).
Prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/embed.py [--backbone effnet-lite0] [--size 96] [--patients 120] [--rounds 5]
    .venv/bin/python benchmarks/embed.py --cohort runs/pad-ufes-transfer/cohort/cohort   # a built cohort
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from _cohorts import synthetic_cohort  # benchmarks/_cohorts.py (run as a script)
from _timing import alternate, paired_ratios, spread

from medvision.cohort.cohort import open_cohort
from medvision.engine.features import FeatureCache
from medvision.models import create_backbone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="effnet-lite0")
    ap.add_argument("--weights", default="hub", help="hub = the installed package's ImageNet weights")
    ap.add_argument("--size", type=int, default=96, help="image side of the synthetic cohort")
    ap.add_argument("--patients", type=int, default=120, help="patients of the synthetic cohort")
    ap.add_argument("--cohort", type=Path, default=None, help="a built cohort folder instead of a synthetic one")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    source = nullcontext(args.cohort) if args.cohort else synthetic_cohort("derm", args.patients, args.size, "mv-emb-")
    with source as cohort_dir:
        cohort = open_cohort(cohort_dir)
        keys = [*cohort.rows("train")["cache_key"], *cohort.rows("val")["cache_key"]]
        backbone = create_backbone(args.backbone, args.weights, cohort.in_chans).eval()
        sides = {
            "feature_cache": lambda: _through_cache(cohort, backbone, keys, args.batch),
            "bare_no_grad": lambda: _bare(cohort, backbone, keys, args.batch),
        }
        check = _agreement(cohort, backbone, keys, args.batch)
        rates = alternate(sides, rounds=args.rounds, warmup=1)
        size = int(cohort.cache.params.size)

    ours, bare = spread(rates["feature_cache"]), spread(rates["bare_no_grad"])
    ratio = ours["median"] / bare["median"]
    per_round = spread(paired_ratios(rates["feature_cache"], rates["bare_no_grad"]))
    print(
        f"embedding: {args.backbone} ({args.weights}), {len(keys)} train + val images at {size} px, batch "
        f"{args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds (shared machine: other jobs run)"
    )
    print(f"{'side':<36}{'median img/s':>14}{'min':>10}{'max':>10}")
    print(f"{'FeatureCache (cold store, writes)':<36}{ours['median']:>14.1f}{ours['min']:>10.1f}{ours['max']:>10.1f}")
    print(f"{'bare torch.no_grad() forward':<36}{bare['median']:>14.1f}{bare['min']:>10.1f}{bare['max']:>10.1f}")
    print(f"ratio of medians {ratio:.3f} (target >= 0.9); per-round ratios median {per_round['median']:.3f}")
    print(f"max |embedding difference| between the sides: {check:.2e}")
    print(
        json.dumps(
            {
                "benchmark": "embed",
                "backbone": args.backbone,
                "weights": args.weights,
                "images": len(keys),
                "size": size,
                "batch": args.batch,
                "threads": torch.get_num_threads(),
                "rounds": args.rounds,
                "feature_cache_images_per_s": ours,
                "bare_images_per_s": bare,
                "ratio": round(ratio, 4),
                "per_round_ratio": per_round,
                "max_embedding_diff": check,
                "target": 0.9,
                "meets_target": ratio >= 0.9 and check < 1e-4,
            }
        )
    )


def _through_cache(cohort, backbone, keys: list[str], batch: int) -> float:
    """Images/s of a cold :class:`FeatureCache` computing and storing every embedding."""
    with tempfile.TemporaryDirectory(prefix="mv-emb-store-") as store:
        start = time.perf_counter()
        FeatureCache(store, backbone, batch_size=batch).features(cohort.cache, keys)
        return len(keys) / (time.perf_counter() - start)


@torch.no_grad()
def _bare(cohort, backbone, keys: list[str], batch: int) -> float:
    """Images/s of the plain loop: stack cached images, forward, keep the outputs."""
    start = time.perf_counter()
    out = []
    for i in range(0, len(keys), batch):
        x = np.stack([cohort.cache.to_float(cohort.cache.get(k)) for k in keys[i : i + batch]])
        out.append(backbone(torch.from_numpy(x)).numpy())
    np.concatenate(out)
    return len(keys) / (time.perf_counter() - start)


@torch.no_grad()
def _agreement(cohort, backbone, keys: list[str], batch: int) -> float:
    """Largest difference between the cached embeddings and the bare forward's (they must be the same numbers)."""
    sample = keys[: 2 * batch]
    with tempfile.TemporaryDirectory(prefix="mv-emb-check-") as store:
        cached = FeatureCache(store, backbone, batch_size=batch).features(cohort.cache, sample)
    x = np.stack([cohort.cache.to_float(cohort.cache.get(k)) for k in sample])
    bare = np.concatenate([backbone(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)])
    return float(np.abs(cached - bare).max())


if __name__ == "__main__":
    main()
