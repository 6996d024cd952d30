"""Probe-fit benchmark: the linear probe's C path stopped early (the default) vs walked to the end of the grid.

What the ``linear-probe`` recipe, LP-FT's first stage and ``recipe: auto`` pay for every (label fraction, seed) of
a transfer pipeline: :class:`medvision.training.probe.LogisticProbe` cross-validating C by patient-grouped folds on
a cohort's frozen embeddings, then refitting on every row. Both sides fit the same embeddings, labels, patients,
folds and grid; the only difference is ``patience`` (3 grid points past the best mean held-out loss, or ``None``:
every C). The embeddings come from :class:`~medvision.engine.features.FeatureCache` (computed once, outside the
clock). The two must choose the same C and the same weights; the script reports both. Rounds alternate the sides
after a warm-up round (``benchmarks/_timing.py``). Target: the same C everywhere and a median speed-up >= 2.
Prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/probe_fit.py [--patients 200] [--size 64] [--rounds 3]
    .venv/bin/python benchmarks/probe_fit.py --cohort runs/pneumoniamnist-transfer/cohort/cohort \\
        --fractions 0.1 0.25 1.0 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from _cohorts import synthetic_cohort  # benchmarks/_cohorts.py (run as a script)
from _timing import alternate, spread

from medvision.cohort.cohort import open_cohort
from medvision.engine.features import FeatureCache
from medvision.models import create_backbone
from medvision.training.probe import LogisticProbe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="effnet-lite0")
    ap.add_argument("--weights", default="hub", help="hub = the installed package's ImageNet weights")
    ap.add_argument("--size", type=int, default=64, help="image side of the synthetic cohort")
    ap.add_argument("--patients", type=int, default=200, help="patients of the synthetic cohort")
    ap.add_argument("--cohort", type=Path, default=None, help="a built cohort folder instead of a synthetic one")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    source = nullcontext(args.cohort) if args.cohort else synthetic_cohort("cxr", args.patients, args.size, "mv-pf-")
    cells = []
    with source as cohort_dir:
        cohort = open_cohort(cohort_dir)
        backbone = create_backbone(args.backbone, args.weights, cohort.in_chans).eval()
        # a given cohort's embeddings go where its pipeline's are ($MEDVISION_FEATURE_CACHE); a synthetic one's
        # into its own scratch folder
        store = FeatureCache(None if args.cohort else Path(cohort_dir).parent / "features", backbone)
        k = cohort.num_inlier_classes
        for fraction in args.fractions:
            rows = cohort.rows("train", fraction)
            rows = rows[(rows["label_idx"] >= 0) & (rows["label_idx"] < k)]
            x = store.features(cohort.cache, rows["cache_key"].tolist())
            y, groups = rows["label_idx"].to_numpy(), rows["patient_id"].to_numpy()
            cells.append({"fraction": fraction, **_cell(x, y, groups, k, args.seed, args.rounds)})
    _report(args, cells)


def _cell(x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int, seed: int, rounds: int) -> dict:
    """Both sides on one (fraction, seed): median seconds per fit, grid points walked, C and weights chosen."""
    fitted: dict[str, LogisticProbe] = {}

    def side(name: str, patience: int | None):
        def run() -> float:
            start = time.perf_counter()
            fitted[name] = LogisticProbe(seed=seed, patience=patience).fit(x, y, groups, k)
            return 1.0 / (time.perf_counter() - start)  # fits per second

        return run

    rates = alternate({"early": side("early", 3), "full": side("full", None)}, rounds=rounds, warmup=1)
    early, full = fitted["early"], fitted["full"]
    return {
        "rows": len(y),
        "dims": int(x.shape[1]),
        "early_s": round(1 / spread(rates["early"])["median"], 3),
        "full_s": round(1 / spread(rates["full"])["median"], 3),
        "grid_points_early": int(np.isfinite(early.cv_loss_[0]).sum()),
        "grid_points_full": len(full.c_grid),
        "C_early": early.C_,
        "C_full": full.C_,
        "max_coef_diff": float(np.abs(early.coef_ - full.coef_).max()),
    }


def _report(args, cells: list[dict]) -> None:
    print(
        f"probe fit: {args.backbone} ({args.weights}) embeddings, seed {args.seed}, {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads (shared machine: other jobs may run)"
    )
    print(f"{'fraction':>9}{'rows':>7}{'full s':>9}{'early s':>9}{'speed-up':>10}{'C points':>10}{'same C':>8}")
    for c in cells:
        c["speedup"] = round(c["full_s"] / c["early_s"], 2)
        c["same_C"] = c["C_early"] == c["C_full"] and c["max_coef_diff"] < 1e-6
        points = f"{c['grid_points_early']}/{c['grid_points_full']}"
        print(
            f"{c['fraction']:>9}{c['rows']:>7}{c['full_s']:>9.2f}{c['early_s']:>9.2f}{c['speedup']:>10.2f}"
            f"{points:>10}{'yes' if c['same_C'] else 'NO':>8}"
        )
    total_full, total_early = sum(c["full_s"] for c in cells), sum(c["early_s"] for c in cells)
    ratio = total_full / total_early
    print(f"all fractions: {total_full:.1f} s walking the whole grid, {total_early:.1f} s early-stopped: x{ratio:.2f}")
    print(
        json.dumps(
            {
                "benchmark": "probe_fit",
                "backbone": args.backbone,
                "cohort": str(args.cohort) if args.cohort else f"synthetic cxr, {args.patients} patients",
                "seed": args.seed,
                "rounds": args.rounds,
                "cells": cells,
                "speedup": round(ratio, 3),
                "target": 2.0,
                "meets_target": ratio >= 2.0 and all(c["same_C"] for c in cells),
            }
        )
    )


if __name__ == "__main__":
    main()
