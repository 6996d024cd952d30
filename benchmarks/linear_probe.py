"""Linear-probe benchmark: 20 epochs of a linear head on cached frozen features vs the end-to-end loop.

Both sides run medvision's real ``finetune`` (Lightning, MLflow, checkpoints) with ``mode: linear`` on the same
synthetic dermatology cohort, the same seed and the same ImageNet ``effnet-lite0`` backbone; the only difference
is ``data.feature_cache``. The end-to-end side pushes every training and validation image through the frozen
backbone every epoch; the cached side embeds each image once (that cost is timed and charged to it) and then trains
the head on features. Timed: the fit (``on_train_start`` .. ``on_train_end``: 20 epochs of training and validation),
not the MLflow model upload that both sides share. The two heads must agree: the script also reports the largest
difference of their validation probabilities (float tolerance; a deterministic CPU run). Target: ratio >= 10.
Prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/linear_probe.py [--backbone effnet-lite0] [--size 128] [--patients 80] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _cohorts import synthetic_cohort  # benchmarks/_cohorts.py (run as a script)
from lightning.pytorch.callbacks import Callback

from medvision.cohort.cohort import open_cohort
from medvision.config import parse_config
from medvision.engine.features import FeatureCache
from medvision.models import create_backbone
from medvision.tracking import load_run_classifier
from medvision.training import FinetuneConfig, finetune


class _FitClock(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def _run(cohort: Path, work: Path, args, feature_cache: bool):
    raw = {
        "data": {"cohort_dir": str(cohort), "batch_size": args.batch, "feature_cache": feature_cache},
        "backbone": {"name": args.backbone, "weights": args.weights},
        "mode": "linear",
        "optim": {"name": "sgd", "lr": 0.05, "epochs": args.epochs, "warmup_epochs": 1},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(work / ("cached" if feature_cache else "end-to-end")),
        "resume": "never",
        "seed": 0,
        "tracking": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "linear-probe-bench"},
    }
    clock = _FitClock()
    result = finetune(parse_config(raw, FinetuneConfig), callbacks=[clock])
    return result, clock.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="effnet-lite0")
    ap.add_argument("--weights", default="hub", help="hub = the installed package's ImageNet weights")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--patients", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    with synthetic_cohort("derm", args.patients, args.size, prefix="medvision-linear-probe-") as cohort_dir:
        work = cohort_dir.parent  # run outputs and the MLflow store go beside the cohort, deleted with it
        os.environ["MEDVISION_FEATURE_CACHE"] = str(work / "features")  # a cold feature cache, deleted with it
        cohort = open_cohort(cohort_dir)

        slow, slow_s = _run(cohort_dir, work, args, feature_cache=False)
        fast, fast_s = _run(cohort_dir, work, args, feature_cache=True)
        # The cached side's fit embedded the images before training started; charge that cost to it.
        embed_s = _embed_seconds(cohort, args)
        n_train = len(cohort.rows("train"))
        n_val = len(cohort.rows("val"))

        a, b = _heads(fast), _heads(slow)
        head_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        probs_diff = _val_prob_diff(fast, slow, cohort, f"sqlite:///{work / 'mlflow.db'}")

    cached_total = fast_s + embed_s
    ratio = slow_s / cached_total
    print(
        f"linear probe: {args.backbone} ({args.weights}), {args.size} px, {n_train} train + {n_val} val images, "
        f"{args.epochs} epochs, batch {args.batch}, {torch.get_num_threads()} threads (shared machine: other jobs run)"
    )
    print(f"{'side':<34}{'seconds':>10}")
    print(f"{'end-to-end (backbone every epoch)':<34}{slow_s:>10.2f}")
    print(f"{'cached: embed once':<34}{embed_s:>10.2f}")
    print(f"{'cached: 20 epochs on features':<34}{fast_s:>10.2f}")
    print(f"{'ratio (target >= 10)':<34}{ratio:>10.1f}")
    print(f"max |head weight diff| {head_diff:.2e}, max |val probability diff| {probs_diff:.2e}")
    print(
        json.dumps(
            {
                "benchmark": "linear_probe",
                "backbone": args.backbone,
                "weights": args.weights,
                "size": args.size,
                "train_images": n_train,
                "val_images": n_val,
                "epochs": args.epochs,
                "threads": torch.get_num_threads(),
                "end_to_end_s": round(slow_s, 3),
                "embed_once_s": round(embed_s, 3),
                "cached_fit_s": round(fast_s, 3),
                "ratio": round(ratio, 2),
                "max_head_weight_diff": head_diff,
                "max_val_probability_diff": probs_diff,
                "target": 10,
                "meets_target": ratio >= 10 and probs_diff < 1e-4,
            }
        )
    )


def _heads(result) -> dict[str, torch.Tensor]:
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if ".head." in k}


def _embed_seconds(cohort, args) -> float:
    """Time embedding the train + val images into a cold feature cache, as the cached side did once."""
    backbone = create_backbone(args.backbone, args.weights, cohort.card.in_chans)
    keys = [*cohort.rows("train")["cache_key"], *cohort.rows("val")["cache_key"]]
    with tempfile.TemporaryDirectory() as cold:
        start = time.perf_counter()
        FeatureCache(cold, backbone, batch_size=max(args.batch, 64)).features(cohort.cache, keys)
        return time.perf_counter() - start


def _val_prob_diff(fast, slow, cohort, tracking_uri: str) -> float:
    """Both logged classifiers, end to end through the backbone, on the validation images."""
    rows = cohort.rows("val")
    x = torch.from_numpy(np.stack([cohort.cache.to_float(cohort.cache.get(k)) for k in rows["cache_key"]]))
    out = []
    for result in (fast, slow):
        classifier, _ = load_run_classifier(result.run_id, tracking_uri)
        with torch.no_grad():
            out.append(classifier(x).probs)
    return float((out[0] - out[1]).abs().max())


if __name__ == "__main__":
    main()
