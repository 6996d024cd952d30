"""Series-level models: embedding a 200-slice CT series through the feature cache vs a bare forward, and the memory
a training bag costs with the instance cap.

Embedding: the same 200 preprocessed slices of one synthetic CT series (``cohort synth --kind ct-series``) go
through the same frozen backbone in eval mode, in batches of ``--batch``:

* ``bare``: the slices as one float tensor already in memory, ``backbone(x)`` under ``no_grad`` per batch;
* ``feature cache``: :meth:`medvision.engine.features.FeatureCache.features` on a *cold* cache: read each slice from
  the memory-mapped preprocessing cache, embed it, write the feature shard and its index.

Both sides are timed in the shared alternating loop (``benchmarks/_timing.py``); the headline is the median of the
round-by-round ratio cache / bare in slices per second (target >= 0.9: the cache costs at most a tenth of the
forward it saves every later epoch). A warm read (every slice already embedded) is timed too.

Memory: one training step of a bag model that fine-tunes its backbone (``mode: full``) on a bag of the 200 slices,
at several instance caps: the bytes autograd saves for the backward pass (the activations that bound training
memory), counted exactly with ``torch.autograd.graph.saved_tensors_hooks``, plus the frozen-backbone case (features
from the cache: only the head's activations). Memory grows with the cap, not with the series' length.

Prints a human table, then one JSON object as the last line.

    .venv/bin/python benchmarks/mil_cost.py [--backbone effnet-lite0] [--size 128] [--slices 200] [--caps 8,16,32]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _timing import alternate, paired_ratios, print_rounds, spread  # benchmarks/_timing.py (run as a script)

from medvision.cohort.cache import PreprocessCache, entry_key
from medvision.cohort.preprocess import preprocess
from medvision.cohort.spec import PreprocessSpec
from medvision.data.bags import sample_instances
from medvision.engine.features import FeatureCache
from medvision.heads import create_head
from medvision.io import read_image
from medvision.models import create_backbone
from medvision.sources.synth import synthesize


def _series(work: Path, slices: int, size: int) -> tuple[PreprocessCache, list[str]]:
    """``slices`` slices of one synthetic CT series, decoded into a preprocessing cache (keys in file order)."""
    src = synthesize(work / "source", "ct-series", patients=1, seed=0, size=size, slices=int(slices * 1.25)).parent
    files = sorted((src / "images").rglob("*.dcm"))[:slices]
    if len(files) < slices:
        raise SystemExit(f"the synthetic series has {len(files)} slices, fewer than --slices {slices}")
    params = PreprocessSpec(size=size, channels=1)
    cache = PreprocessCache(work / "cache", params)
    keys, items = [], []
    for f in files:
        key = entry_key(hashlib.sha256(f.read_bytes()).hexdigest(), 0, params)
        keys.append(key)
        items.append((key, preprocess(read_image(f).pixels, params)))
    cache.append(items)
    return cache, keys


def _embedding(cache: PreprocessCache, keys: list[str], backbone, batch: int, rounds: int) -> dict:
    x = torch.from_numpy(np.stack([cache.to_float(cache.get(k)) for k in keys]))
    n = len(keys)

    @torch.no_grad()
    def bare() -> float:
        start = time.perf_counter()
        for i in range(0, n, batch):
            backbone(x[i : i + batch])
        return n / (time.perf_counter() - start)

    def cached() -> float:
        with tempfile.TemporaryDirectory() as cold:
            store = FeatureCache(cold, backbone, batch_size=batch)  # digesting the weights is set-up, not embedding
            start = time.perf_counter()
            store.features(cache, keys)
            rate = n / (time.perf_counter() - start)
            assert store.computed == n
        return rate

    rates = alternate({"bare forward": bare, "feature cache (cold)": cached}, rounds=rounds, warmup=1)
    with tempfile.TemporaryDirectory() as warm:
        store = FeatureCache(warm, backbone, batch_size=batch)
        store.features(cache, keys)
        start = time.perf_counter()
        store.features(cache, keys)
        warm_rate = n / (time.perf_counter() - start)
        assert store.computed == 0
    rates["feature cache (warm read)"] = [warm_rate]
    return rates


def _saved_bytes(step) -> int:
    """Bytes of every tensor autograd saves for backward during ``step()`` (storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def _memory(cache: PreprocessCache, keys: list[str], backbone, caps: list[int | None]) -> list[dict]:
    x = torch.from_numpy(np.stack([cache.to_float(cache.get(k)) for k in keys]))
    head = create_head("mil", backbone.num_features, 2, pooling="gated_attention")
    label = torch.tensor([1])
    rows = []
    for cap in caps:
        kept = torch.from_numpy(sample_instances(len(keys), cap, seed=0))

        def full_step(kept: torch.Tensor = kept) -> None:
            backbone.train()
            out = head(backbone(x[kept]).unsqueeze(0))
            head.loss(out, label).backward()

        rows.append({"cap": cap, "instances": len(kept), "mode": "full", "saved_mb": _saved_bytes(full_step) / 2**20})
    with torch.no_grad():
        feats = backbone.eval()(x)

    def frozen_step() -> None:
        out = head(feats.unsqueeze(0))
        head.loss(out, label).backward()

    rows.append({"cap": None, "instances": len(keys), "mode": "frozen", "saved_mb": _saved_bytes(frozen_step) / 2**20})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="effnet-lite0")
    ap.add_argument("--weights", default="hub", help="hub = the installed package's ImageNet weights")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--caps", default="8,16,32", help="instance caps of the memory table (the whole bag is added)")
    args = ap.parse_args()
    caps: list[int | None] = [int(c) for c in args.caps.split(",") if c.strip()]

    torch.manual_seed(0)
    backbone = create_backbone(args.backbone, args.weights, in_chans=1).eval()
    with tempfile.TemporaryDirectory(prefix="medvision-mil-cost-") as tmp:
        cache, keys = _series(Path(tmp), args.slices, args.size)
        rates = _embedding(cache, keys, backbone, args.batch, args.rounds)
        memory = _memory(cache, keys, backbone, [*caps, None])

    ratios = paired_ratios(rates["feature cache (cold)"], rates["bare forward"])
    ratio = spread(ratios)["median"]
    print(
        f"embedding one {args.slices}-slice CT series: {args.backbone} ({args.weights}), {args.size} px, batch "
        f"{args.batch}, {torch.get_num_threads()} threads (shared machine: other jobs may run)"
    )
    print_rounds(rates, "slices/s")
    print(f"ratio cache / bare (median of paired rounds, target >= 0.9): {ratio:.3f}")
    print()
    print("training memory of one bag: bytes autograd saves for backward (activations), by instance cap")
    print(f"{'mode':<8}{'cap':>8}{'instances':>11}{'saved MB':>11}")
    for r in memory:
        print(f"{r['mode']:<8}{str(r['cap'] or 'none'):>8}{r['instances']:>11}{r['saved_mb']:>11.1f}")
    full = [r for r in memory if r["mode"] == "full"]
    per_instance = [r["saved_mb"] / r["instances"] for r in full]
    print(
        f"memory is bounded by the cap: {min(per_instance):.2f}-{max(per_instance):.2f} MB per kept instance; a "
        f"{args.slices}-slice bag capped at {caps[-1]} saves {full[len(caps) - 1]['saved_mb']:.1f} MB instead of "
        f"{full[-1]['saved_mb']:.1f} MB"
    )
    print(
        json.dumps(
            {
                "benchmark": "mil_cost",
                "backbone": args.backbone,
                "weights": args.weights,
                "size": args.size,
                "slices": args.slices,
                "batch": args.batch,
                "threads": torch.get_num_threads(),
                "bare_slices_per_s": spread(rates["bare forward"]),
                "cache_slices_per_s": spread(rates["feature cache (cold)"]),
                "warm_read_slices_per_s": round(rates["feature cache (warm read)"][0], 1),
                "ratio": ratio,
                "ratio_spread": spread(ratios),
                "memory": [{**r, "saved_mb": round(r["saved_mb"], 2)} for r in memory],
                "target": 0.9,
                "meets_target": ratio >= 0.9,
            }
        )
    )


if __name__ == "__main__":
    main()
