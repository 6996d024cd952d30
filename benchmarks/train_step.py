"""Training-step benchmark: medvision's fine-tuning step through the Lightning Trainer vs a bare PyTorch loop.

Both sides train the same timm network (the backbone's own timm module; the bare side gets a timm
classifier via ``reset_classifier``) on the same in-memory batches from the same DataLoader, with the
same optimiser (SGD + momentum, per-step LambdaLR warm-up/cosine), gradient-norm clipping and loss
(cross-entropy). The medvision side is :class:`medvision.training.FinetuneModule` driven by
``lightning.Trainer`` (callbacks, logging of ``train/loss``, schedule, clipping) - everything a real run
does except checkpoint writing and validation, which happen once per epoch and are not per-step cost.
Both sides run an untimed warm-up round, then timed rounds alternate which side goes first (one process,
so machine noise falls on both alike); the median round of each side is the headline, with min/max/IQR
and the per-round ratios as its spread (benchmarks/_timing.py). Target: medvision / bare >= 0.95 images/s
on CPU. Prints a table, then one JSON object as the last line. Lightning adds a fixed few milliseconds per step (hooks,
metric bookkeeping), so the ratio falls below target only for steps of a few tens of milliseconds (tiny
models at tiny images); the default (192 px) is still a small model at a small clinical image size.

    .venv/bin/python benchmarks/train_step.py [--backbone bit-tiny] [--size 192] [--batch 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from _steps import RandomBatches, timed_fit  # benchmarks/_steps.py (run as a script)
from _timing import alternate, paired_ratios, print_rounds, spread  # benchmarks/_timing.py (run as a script)
from torch.utils.data import DataLoader

from medvision.config import parse_config
from medvision.engine.schedule import WarmupCosine
from medvision.heads import create_head
from medvision.models import create_backbone
from medvision.training import Classifier, FinetuneConfig, FinetuneModule


def medvision_round(classifier: Classifier, cfg: FinetuneConfig, loader: DataLoader, warmup: int) -> float:
    seconds = timed_fit(
        FinetuneModule(classifier, cfg.optim),
        loader,
        warmup,
        accelerator="cpu",
        gradient_clip_val=cfg.optim.grad_clip,
        gradient_clip_algorithm="norm",
        deterministic=False,
    )
    return (len(loader) - warmup) * loader.batch_size / seconds


def bare_round(
    model: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor, cfg: FinetuneConfig, loader: DataLoader, warmup: int
) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(len(loader) // 4, len(loader)))
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    start = 0.0
    for i, batch in enumerate(loader):
        if i == warmup:
            start = time.perf_counter()
        x, y = batch["image"], batch["label"]
        loss = loss_fn(model((x - mean) / std), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        loss.item()  # the medvision side reads the loss for logging, so does this one
    return (len(loader) - warmup) * loader.batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="bit-tiny", help="a registered backbone (random weights)")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--chans", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per side (alternating order)")
    ap.add_argument("--warmup-rounds", type=int, default=1, help="untimed rounds per side before timing")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = parse_config(
        {
            "data": {"cohort_dir": "unused", "batch_size": args.batch},
            "backbone": {"name": args.backbone, "weights": "none"},
            "optim": {"name": "sgd", "lr": 0.01, "epochs": 1, "warmup_epochs": 0.25},
        },
        FinetuneConfig,
    )
    torch.manual_seed(0)
    backbone = create_backbone(args.backbone, "none", in_chans=args.chans)
    head = create_head("linear", backbone.num_features, args.classes)
    classifier = Classifier(backbone, head, [f"c{i}" for i in range(args.classes)])
    bare = copy.deepcopy(backbone.model)
    bare.reset_classifier(args.classes)
    mean, std = backbone.mean.clone(), backbone.std.clone()
    n = (args.steps + args.warmup) * args.batch
    loader = DataLoader(RandomBatches(n, args.chans, args.size, args.classes), batch_size=args.batch, shuffle=False)

    rates = alternate(
        {
            "medvision (Lightning)": lambda: medvision_round(classifier, cfg, loader, args.warmup),
            "bare PyTorch loop": lambda: bare_round(bare, mean, std, cfg, loader, args.warmup),
        },
        rounds=args.rounds,
        warmup=args.warmup_rounds,
    )
    ours, theirs = rates["medvision (Lightning)"], rates["bare PyTorch loop"]
    # The median round per side is the headline; the per-round ratios (each pair ran back to back) give the spread.
    ratio = statistics.median(ours) / statistics.median(theirs)
    per_round = spread(paired_ratios(ours, theirs))
    print(
        f"train step: {args.backbone} (timm {backbone.model.__class__.__name__}), {args.chans}x{args.size}x"
        f"{args.size}, batch {args.batch}, {args.steps} timed steps x {args.rounds} rounds after "
        f"{args.warmup_rounds} warm-up round(s) per side, {torch.get_num_threads()} threads"
    )
    print_rounds(rates, "images/s")
    print(
        f"ratio of medians {ratio:.3f} (target >= 0.95); per-round ratios median {per_round['median']:.3f}, "
        f"min {per_round['min']:.3f}, max {per_round['max']:.3f}"
    )
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "backbone": args.backbone,
                "input": [args.chans, args.size, args.size],
                "batch": args.batch,
                "steps": args.steps,
                "rounds": args.rounds,
                "warmup_rounds": args.warmup_rounds,
                "threads": torch.get_num_threads(),
                "medvision_images_per_s": round(statistics.median(ours), 2),
                "bare_images_per_s": round(statistics.median(theirs), 2),
                "medvision_spread": spread(ours),
                "bare_spread": spread(theirs),
                "medvision_rounds": [round(v, 2) for v in ours],
                "bare_rounds": [round(v, 2) for v in theirs],
                "ratio": round(ratio, 4),
                "ratio_spread": per_round,
                "target": 0.95,
                "meets_target": ratio >= 0.95,
            }
        )
    )


if __name__ == "__main__":
    main()
