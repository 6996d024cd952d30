"""Input-pipeline benchmark: does the data path keep an EfficientNet-Lite0 at 224 px fed?

End-to-end side: an epoch of training steps whose batches come from the cohort cache through the real
:class:`~medvision.data.dataset.CohortDataModule` (memory-mapped uint8 cache -> ``photo`` augmentation on uint8
-> float conversion -> collation), with medvision's default workers (``num_workers: auto``) and the seeded sampler.
Pure-step side: the same model's same steps (forward, cross-entropy, backward, SGD) on batches already in memory.
``ratio`` = end-to-end images/s / pure-step images/s; target >= 0.9. Both sides are warmed up, then alternate over
``--rounds`` rounds; medians and spreads are reported (the machine is shared with other jobs, which only ever slow a
round down). The breakdown says where the time of one image goes: cache read, augmentation, float conversion, and
the step itself; with ``--channels-last`` it also times the step in channels-last memory format.
Prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/input_pipeline.py [--patients 60] [--batch 16] [--rounds 5] [--channels-last]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
from _cohorts import synthetic_cohort  # benchmarks/_cohorts.py (run as a script)

from medvision.classifier import Classifier
from medvision.data.augment import FinetuneAugmentConfig
from medvision.data.dataset import CohortDataModule
from medvision.heads import create_head
from medvision.models import create_backbone


def _step(model: Classifier, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = torch.nn.functional.cross_entropy(model(x).logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    loss.item()


def _epoch(model, opt, batches, channels_last: bool = False) -> float:
    """Images per second over one pass of ``batches`` (an iterable of dicts, consumed as a loader would be)."""
    n, start = 0, time.perf_counter()
    for batch in batches:
        x, y = batch["image"], batch["label"]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        _step(model, opt, x, y)
        n += len(y)
    return n / (time.perf_counter() - start)


def _breakdown(dm: CohortDataModule, samples: int) -> dict[str, float]:
    """Milliseconds per image of each input stage, in this process."""
    ds = dm.dataset("train")
    cache, keys = ds.cache, ds.rows["cache_key"].tolist()[:samples]
    t0 = time.perf_counter()
    raw = [np.array(cache.get(k)) for k in keys]
    t1 = time.perf_counter()
    aug = [dm.augment(a, seed) for seed, a in enumerate(raw)]
    t2 = time.perf_counter()
    _ = [cache.to_float(a) for a in aug]
    t3 = time.perf_counter()
    n = len(keys)
    return {"cache_read_ms": 1e3 * (t1 - t0) / n, "augment_ms": 1e3 * (t2 - t1) / n, "to_float_ms": 1e3 * (t3 - t2) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="effnet-lite0")
    ap.add_argument("--weights", default="hub")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true", help="also time the pure step in channels-last")
    args = ap.parse_args()

    with synthetic_cohort("derm", args.patients, args.size, prefix="medvision-input-") as cohort:
        dm = CohortDataModule(
            cohort,
            batch_size=args.batch,
            num_workers="auto",
            augment=FinetuneAugmentConfig(preset="photo"),
            seed=0,
        )
        loader = dm.train_dataloader()  # the same loader every round: persistent workers stay up, as in training
        torch.manual_seed(0)
        backbone = create_backbone(args.backbone, args.weights, dm.in_chans)
        k = len(dm.classes)  # a logit for every training label (inlier classes and outlier conditions)
        model = Classifier(backbone, create_head("linear", backbone.num_features, k), dm.classes)
        model = model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        steps = len(loader)
        g = torch.Generator().manual_seed(0)
        shape = (args.batch, dm.in_chans, args.size, args.size)
        memory = [
            {"image": torch.rand(shape, generator=g), "label": torch.randint(0, k, (args.batch,))} for _ in range(steps)
        ]

        def end_to_end(epoch: int) -> float:
            loader.sampler.set_epoch(epoch)
            return _epoch(model, opt, loader)

        _epoch(model, opt, memory[:2])  # warm-up: allocator, kernels, the loader's workers
        end_to_end(0)
        e2e, pure, last = [], [], []
        for r in range(args.rounds):
            sides = [("e2e", lambda r=r: end_to_end(r + 1)), ("pure", lambda: _epoch(model, opt, memory))]
            for name, fn in sides if r % 2 == 0 else sides[::-1]:  # alternate who goes first
                (e2e if name == "e2e" else pure).append(fn())
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
            _epoch(model, opt, memory[:2], channels_last=True)
            last = [_epoch(model, opt, memory, channels_last=True) for _ in range(max(2, args.rounds // 2))]
            model = model.to(memory_format=torch.contiguous_format)
        parts = _breakdown(dm, samples=min(64, len(dm.dataset("train"))))
        images = len(loader) * args.batch

    ratio = statistics.median(e2e) / statistics.median(pure)
    step_ms = 1e3 / statistics.median(pure)
    threads = torch.get_num_threads()
    print(
        f"input pipeline: {args.backbone} ({args.weights}) at {args.size} px, photo augmentation, batch {args.batch}, "
        f"{images} images per epoch, {dm.num_workers} workers (auto on {os.cpu_count()} cores), {threads} threads; "
        f"machine shared with other jobs (load average {os.getloadavg()[0]:.1f})"
    )
    print(f"{'side':<30}{'median img/s':>14}{'min':>8}{'max':>8}")
    for name, runs in (("end-to-end (CohortDataModule)", e2e), ("pure step (tensors in memory)", pure)):
        print(f"{name:<30}{statistics.median(runs):>14.2f}{min(runs):>8.2f}{max(runs):>8.2f}")
    if last:
        print(f"{'pure step, channels-last':<30}{statistics.median(last):>14.2f}{min(last):>8.2f}{max(last):>8.2f}")
    print(f"{'ratio (target >= 0.9)':<30}{ratio:>14.3f}")
    print(
        "per image: "
        + ", ".join(f"{k[:-3].replace('_', ' ')} {v:.2f} ms" for k, v in parts.items())
        + f", training step {step_ms:.1f} ms"
    )
    print(
        json.dumps(
            {
                "benchmark": "input_pipeline",
                "backbone": args.backbone,
                "size": args.size,
                "batch": args.batch,
                "images_per_epoch": images,
                "workers": dm.num_workers,
                "cores": os.cpu_count(),
                "threads": threads,
                "load_average": round(os.getloadavg()[0], 2),
                "end_to_end_images_per_s": round(statistics.median(e2e), 3),
                "pure_step_images_per_s": round(statistics.median(pure), 3),
                "end_to_end_rounds": [round(v, 3) for v in e2e],
                "pure_step_rounds": [round(v, 3) for v in pure],
                "channels_last_images_per_s": round(statistics.median(last), 3) if last else None,
                **{k: round(v, 3) for k, v in parts.items()},
                "step_ms_per_image": round(step_ms, 2),
                "ratio": round(ratio, 4),
                "target": 0.9,
                "meets_target": ratio >= 0.9,
            }
        )
    )


if __name__ == "__main__":
    main()
