"""GPU training throughput: medvision's Lightning fine-tuning step vs a bare PyTorch loop, images/s and MFU.

For each backbone (default ``vit-b16``, ``bit-m-r50x1``, ``effnet-lite0``; random init, 224 px, bf16-mixed)
both sides train the same timm network on the same in-memory batches with AdamW (fused on CUDA, as
medvision's module builds it there), gradient-norm clipping and cross-entropy. The medvision side is
:class:`medvision.training.FinetuneModule` driven by ``lightning.Trainer``; the bare side is the loop a
careful PyTorch user writes (autocast, no per-step host sync). ``--compile`` wraps both networks in
``torch.compile``. Model FLOPs per image are 3x the forward FLOPs counted by ``torch.utils.flop_counter``;
MFU = achieved FLOP/s / ``--peak-tflops`` (the device's dense bf16 peak, e.g. 989 for an H100/H200
SXM). Rounds: an untimed warm-up round per side (it also absorbs compilation), then alternating timed
rounds (benchmarks/_timing.py); medians are the headline. Targets on a GPU: medvision / bare >= 0.95 and
ViT-B/16 MFU >= 45%. On a CPU it runs as a smoke test with a tiny model (the MFU figure is then
meaningless; the JSON says which device ran). Prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/gpu_throughput.py [--models vit-b16,bit-m-r50x1,effnet-lite0] [--batch 128]
        [--steps 20] [--rounds 5] [--peak-tflops 989] [--compile]
    .venv/bin/python benchmarks/gpu_throughput.py --models resnet-tiny --size 32 --batch 4 --steps 2  # CPU smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from _steps import RandomBatches, sync, timed_fit  # benchmarks/_steps.py (run as a script)
from _timing import alternate, paired_ratios, print_rounds, spread  # benchmarks/_timing.py (run as a script)
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from medvision.engine.config import OptimConfig
from medvision.engine.schedule import WarmupCosine
from medvision.heads import create_head
from medvision.models import create_backbone, list_backbones
from medvision.training import Classifier, FinetuneModule

#: Names the issue asks for that the registry may not carry yet, and the timm architecture that stands in
#: (any timm name passes through medvision's registry unchanged).
FALLBACK = {"effnet-lite0": "tf_efficientnet_lite0"}


def resolve_name(name: str) -> str | None:
    """The backbone name to build: registered names as they are, else a stand-in; None (with a note) if none."""
    if name in list_backbones() or name not in FALLBACK:
        return name
    stand_in = FALLBACK[name]
    print(f"note: {name!r} is not registered in medvision yet; measuring timm's {stand_in!r} through the registry")
    return stand_in


def flops_per_image(model: torch.nn.Module, batch: torch.Tensor) -> float:
    """Training FLOPs per image: 3x the forward FLOPs counted by torch (matmuls and convolutions).

    Why 3x rather than counting the backward pass too: the usual MFU convention (backward = 2x forward), and
    torch's counter overstates the backward of grouped / depthwise convolutions by the group count (40x for
    EfficientNet-Lite0), which would inflate MFU for exactly the models where it matters.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch)
    return 3 * counter.get_total_flops() / len(batch)


def medvision_round(module: FinetuneModule, loader: DataLoader, args) -> float:
    seconds = timed_fit(
        module,
        loader,
        args.warmup_steps,
        accelerator=args.accelerator,
        precision=args.precision,
        gradient_clip_val=1.0,
        gradient_clip_algorithm="norm",
        deterministic=False,
    )
    return args.steps * args.batch / seconds


def bare_round(
    model: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor, loader: DataLoader, device: torch.device, args
) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(len(loader) // 4, len(loader)))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    model.train()
    start = 0.0
    for i, batch in enumerate(loader):
        if i == args.warmup_steps:
            sync()
            start = time.perf_counter()
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(model((x - mean) / std), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    sync()
    return args.steps * args.batch / (time.perf_counter() - start)


def measure(name: str, args, device: torch.device) -> dict:
    built = resolve_name(name)
    torch.manual_seed(0)
    try:
        backbone = create_backbone(built, "none", in_chans=3)
    except Exception as e:  # noqa: BLE001 - one model that cannot be built must not stop the others
        print(f"note: skipping {name}: {type(e).__name__}: {e}")
        return {"model": name, "skipped": f"{type(e).__name__}: {e}"}
    head = create_head("linear", backbone.num_features, args.classes)
    classifier = Classifier(backbone, head, [f"c{i}" for i in range(args.classes)])
    bare = copy.deepcopy(backbone.model)
    bare.reset_classifier(args.classes)
    bare.to(device)
    mean, std = backbone.mean.clone().to(device), backbone.std.clone().to(device)
    flops = flops_per_image(bare, torch.rand(args.batch, 3, args.size, args.size, device=device))
    module = FinetuneModule(classifier, OptimConfig(name="adamw", lr=1e-4, epochs=2, warmup_epochs=0.25))
    if args.compile:
        module.classifier = torch.compile(module.classifier)
        bare = torch.compile(bare)
    n = (args.warmup_steps + args.steps) * args.batch
    loader = DataLoader(
        RandomBatches(n, 3, args.size, args.classes, distinct=min(n, 4 * args.batch)),
        batch_size=args.batch,
        shuffle=False,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    rates = alternate(
        {
            "medvision (Lightning)": lambda: medvision_round(module, loader, args),
            "bare PyTorch loop": lambda: bare_round(bare, mean, std, loader, device, args),
        },
        rounds=args.rounds,
        warmup=args.warmup_rounds,
    )
    ours, theirs = rates["medvision (Lightning)"], rates["bare PyTorch loop"]
    peak = args.peak_tflops * 1e12
    print(
        f"\n{name}" + (f" (as {built})" if built != name else "") + f": {flops / 1e9:.2f} GFLOP per image "
        f"(training step, 3x forward), batch {args.batch}, {args.size} px, {args.precision}"
        + (", torch.compile" if args.compile else "")
    )
    print_rounds(rates, "images/s")
    ratio = statistics.median(ours) / statistics.median(theirs)
    mfu = {k: flops * statistics.median(v) / peak for k, v in (("medvision", ours), ("bare", theirs))}
    print(
        f"ratio {ratio:.3f} (target >= 0.95); MFU medvision {mfu['medvision']:.1%}, bare {mfu['bare']:.1%} "
        f"of {args.peak_tflops:g} TFLOP/s"
    )
    return {
        "model": name,
        "built_as": built,
        "flops_per_image": flops,
        "medvision_images_per_s": round(statistics.median(ours), 2),
        "bare_images_per_s": round(statistics.median(theirs), 2),
        "medvision_spread": spread(ours),
        "bare_spread": spread(theirs),
        "ratio": round(ratio, 4),
        "ratio_spread": spread(paired_ratios(ours, theirs)),
        "mfu_medvision": float(f"{mfu['medvision']:.4g}"),
        "mfu_bare": float(f"{mfu['bare']:.4g}"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit-b16,bit-m-r50x1,effnet-lite0", help="comma-separated backbone names")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--warmup-steps", type=int, default=3, help="untimed steps at the start of each round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per side (alternating order)")
    ap.add_argument("--warmup-rounds", type=int, default=1, help="untimed rounds per side before timing")
    ap.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    ap.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="the device's dense bf16 peak in TFLOP/s (H100/H200 SXM: 989; A100: 312)",
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile both networks")
    args = ap.parse_args()
    cuda = args.accelerator != "cpu" and torch.cuda.is_available()
    if args.accelerator == "gpu" and not cuda:
        raise SystemExit("--accelerator gpu: no CUDA device is visible here")
    args.accelerator = "gpu" if cuda else "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}" + ("" if cuda else " - no GPU here: a smoke run, images/s and MFU are not GPU figures"))
    results = [measure(m.strip(), args, device) for m in args.models.split(",") if m.strip()]
    measured = [r for r in results if "ratio" in r]
    vit = next((r for r in measured if r["model"] == "vit-b16"), None)
    print(
        json.dumps(
            {
                "benchmark": "gpu_throughput",
                "device": name,
                "cuda": cuda,
                "size": args.size,
                "batch": args.batch,
                "precision": args.precision,
                "compile": args.compile,
                "peak_tflops": args.peak_tflops,
                "steps": args.steps,
                "rounds": args.rounds,
                "warmup_rounds": args.warmup_rounds,
                "models": results,
                "ratio": min((r["ratio"] for r in measured), default=None),
                "vit_b16_mfu": vit["mfu_medvision"] if vit else None,
                "targets": {"ratio": 0.95, "vit_b16_mfu": 0.45},
            }
        )
    )


if __name__ == "__main__":
    main()
