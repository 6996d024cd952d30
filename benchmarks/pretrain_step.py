"""Pretraining-step benchmark: medvision's SimCLR step through the Lightning Trainer vs a bare PyTorch loop.

Both sides train the same backbone + projection head with the same NT-Xent loss, the same LARS optimiser
(decay / no-decay groups, per-step warm-up + cosine schedule) and the same augmentation-free input pairs
(random tensors already in memory, served by one shared DataLoader). The medvision side is
:class:`medvision.ssl.PretrainModule` driven by ``lightning.Trainer`` (callbacks, epoch logging of
``train/loss`` and ``train/micle_multi_instance_share``, schedule): everything a real run does per step;
checkpoints and the kNN monitor run once per epoch and are left out. Each side first runs an untimed warm-up
round (a cold first round once read 168 images/s against 931 in the next); then timed rounds alternate which
side goes first, in one process, so machine noise hits both alike. The median round is the headline, with
min/max/IQR and per-round ratios as the spread (benchmarks/_timing.py). Target: medvision / bare >= 0.95.
Prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/pretrain_step.py [--backbone resnet-tiny] [--size 64] [--batch 32] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _steps import sync, timed_fit  # benchmarks/_steps.py (run as a script)
from _timing import alternate, paired_ratios, print_rounds, spread  # benchmarks/_timing.py (run as a script)
from torch.utils.data import DataLoader, Dataset

from medvision.engine.schedule import WarmupCosine
from medvision.models import create_backbone
from medvision.ssl import LARS, PretrainModule, PretrainOptimConfig, ProjectionHead, nt_xent_loss


class _Pairs(Dataset):
    """Fixed random view pairs (no augmentation, so only the training step is measured)."""

    def __init__(self, n: int, chans: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.v1 = torch.rand(n, chans, size, size, generator=g)
        self.v2 = torch.rand(n, chans, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.v1)

    def __getitem__(self, i: int) -> dict:
        return {"view1": self.v1[i], "view2": self.v2[i], "multi_instance": torch.tensor(1.0)}


def _module(args, optim: PretrainOptimConfig) -> PretrainModule:
    torch.manual_seed(0)
    backbone = create_backbone(args.backbone, "none", args.chans)
    head = ProjectionHead(backbone.num_features, backbone.num_features, 128, 2)
    return PretrainModule(backbone, head, optim, temperature=0.1, batch_size=args.batch)


def run_lightning(args, loader: DataLoader, optim: PretrainOptimConfig) -> float:
    seconds = timed_fit(
        _module(args, optim),
        loader,
        args.skip,
        accelerator=args.accelerator,
        precision=args.precision,
        limit_train_batches=args.steps,
    )
    return (args.steps - args.skip) * 2 * args.batch / seconds


def run_bare(args, loader: DataLoader, optim: PretrainOptimConfig) -> float:
    module = _module(args, optim)
    device = torch.device(
        "cuda"
        if args.accelerator in ("gpu", "cuda") or (args.accelerator == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    backbone, head = module.backbone.to(device).train(), module.projection.to(device).train()
    params = [p for p in list(backbone.parameters()) + list(head.parameters()) if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": optim.weight_decay, "lars": True},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lars": False},
    ]
    opt = LARS(groups, lr=optim.peak_lr(args.batch), momentum=optim.momentum, trust_coefficient=optim.trust_coefficient)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(round(optim.warmup_epochs * args.steps), args.steps))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    t0 = 0.0
    for i, batch in enumerate(loader):
        if i == args.steps:
            break
        if i == args.skip:
            sync()
            t0 = time.perf_counter()
        v1, v2 = batch["view1"].to(device), batch["view2"].to(device)
        with autocast:
            z = head(backbone(torch.cat([v1, v2])))
            loss = nt_xent_loss(z[: len(v1)], z[len(v1) :], 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        _ = loss.detach()  # the Lightning side keeps the loss for epoch logging; no host sync here either
    sync()
    return (args.steps - args.skip) * 2 * args.batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet-tiny")
    p.add_argument("--chans", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="pairs per step (2x images)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the timing")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per side (alternating order)")
    p.add_argument("--warmup-rounds", type=int, default=1, help="untimed rounds per side before timing")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    optim = PretrainOptimConfig(name="lars", epochs=2, warmup_epochs=0.2, lr=0.3)
    data = _Pairs(args.batch * args.steps, args.chans, args.size)
    loader = DataLoader(data, batch_size=args.batch, shuffle=False, drop_last=True)
    rates = alternate(
        {"medvision": lambda: run_lightning(args, loader, optim), "bare": lambda: run_bare(args, loader, optim)},
        rounds=args.rounds,
        warmup=args.warmup_rounds,
    )
    med = {n: statistics.median(v) for n, v in rates.items()}
    ratio = med["medvision"] / med["bare"]
    per_round = spread(paired_ratios(rates["medvision"], rates["bare"]))
    print(
        f"pretraining step: {args.backbone}, {args.batch} pairs x {args.size}px, {args.steps - args.skip} timed "
        f"steps x {args.rounds} rounds after {args.warmup_rounds} warm-up round(s) per side, LARS, "
        f"{args.precision}, accelerator={args.accelerator}, torch threads={torch.get_num_threads()}"
    )
    print_rounds(rates, "images/s")
    print(
        f"median medvision {med['medvision']:.1f} images/s, bare {med['bare']:.1f} images/s, ratio {ratio:.3f} "
        f"(target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}); per-round ratios {per_round['min']:.3f}"
        f"-{per_round['max']:.3f}"
    )
    print(
        json.dumps(
            {
                "benchmark": "pretrain_step",
                "backbone": args.backbone,
                "batch_pairs": args.batch,
                "size": args.size,
                "precision": args.precision,
                "accelerator": args.accelerator,
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "rounds": args.rounds,
                "warmup_rounds": args.warmup_rounds,
                "medvision_images_per_s": round(med["medvision"], 2),
                "bare_images_per_s": round(med["bare"], 2),
                "medvision_spread": spread(rates["medvision"]),
                "bare_spread": spread(rates["bare"]),
                "ratio": round(ratio, 4),
                "ratio_spread": per_round,
                "target": 0.95,
                "met": ratio >= 0.95,
            }
        )
    )


if __name__ == "__main__":
    main()
