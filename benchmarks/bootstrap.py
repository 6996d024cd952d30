"""Bootstrap benchmark: subgroup AUROC with 95% patient-level intervals, vectorised vs a fairlearn loop.

20,000 predictions from patients with 1-4 images each, 6 subgroups, 1000 patient-level resamples. medvision's
``SubgroupFrame`` evaluates all resamples at once from one weight matrix; the baseline builds a fairlearn
``MetricFrame`` (``roc_auc_score`` per group) on each resample, using the *same* resample indices, in the same
process. Point estimates must agree to 1e-12 (asserted). Target: >= 20x faster. When the fairlearn loop over all
resamples would take too long, it is timed on ``--baseline-resamples`` of them and extrapolated linearly (the
table says so). Both sides run a warm-up round, then ``--rounds`` alternating timed rounds (benchmarks/_timing.py);
the medians are the headline. Prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/bootstrap.py [--images 20000] [--resamples 1000] [--baseline-resamples 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pandas as pd
from _timing import alternate, paired_ratios, spread  # benchmarks/_timing.py (run as a script)
from fairlearn.metrics import MetricFrame
from sklearn.metrics import roc_auc_score

from medvision.evaluation.bootstrap import Bootstrap, percentile_interval
from medvision.evaluation.subgroups import SubgroupFrame


def simulate(n_images: int, n_groups: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_images)  # 1-4 images per patient, trimmed to n_images
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n_images) + 1]
    pid = np.repeat(np.arange(len(sizes)), sizes)[:n_images]
    n_pat = pid.max() + 1
    group = np.array([f"g{i}" for i in range(n_groups)])[rng.integers(0, n_groups, n_pat)][pid]
    y = rng.integers(0, 2, n_pat)[pid]
    score = y * (0.8 + 0.1 * (group == "g0")) + rng.normal(size=n_images) + rng.normal(size=n_pat)[pid] * 0.5
    return pid, group, y, np.round(score, 3)  # rounding creates ties, as real scores have


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--groups", type=int, default=6)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--baseline-resamples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per side (after one warm-up round each)")
    args = ap.parse_args()

    pid, group, y, score = simulate(args.images, args.groups, args.seed)
    sf = pd.Series(group, name="group")

    n_base = min(args.baseline_resamples, args.resamples)
    kept: dict = {}

    def medvision_side() -> float:
        t0 = time.perf_counter()
        boot = Bootstrap(pid, n_resamples=args.resamples, seed=args.seed)
        frame = SubgroupFrame(
            metrics={"auroc": "auroc"},
            y_true=y,
            y_pred=score,
            sensitive_features=sf,
            groups=pid,
            min_patients=20,
            bootstrap=boot,
        )
        kept["ours"] = frame.table().loc["group"].xs("auroc", level="metric")
        kept["boot"] = boot
        return 1.0 / (time.perf_counter() - t0)

    def fairlearn_side() -> float:  # the same resamples (same image indices), looped through MetricFrame
        boot = kept["boot"]
        t0 = time.perf_counter()
        kept["point"] = MetricFrame(metrics=roc_auc_score, y_true=y, y_pred=score, sensitive_features=sf).by_group
        reps = []
        for b in range(n_base):
            idx = boot.resample_indices(b)
            reps.append(
                MetricFrame(
                    metrics=roc_auc_score, y_true=y[idx], y_pred=score[idx], sensitive_features=sf.to_numpy()[idx]
                ).by_group
            )
        seconds = (time.perf_counter() - t0) * args.resamples / n_base
        kept["reps"] = pd.concat(reps, axis=1).T
        return 1.0 / seconds

    # Warm both, then alternate (benchmarks/_timing.py); rates are runs/s, so seconds = 1 / rate.
    rates = alternate({"medvision": medvision_side, "fairlearn": fairlearn_side}, rounds=args.rounds, warmup=1)
    t_ours = 1.0 / statistics.median(rates["medvision"])
    t_base = 1.0 / statistics.median(rates["fairlearn"])
    speedups = spread(paired_ratios(rates["medvision"], rates["fairlearn"]))
    ours, point, reps, boot = kept["ours"], kept["point"], kept["reps"], kept["boot"]

    max_point_diff = float(np.max(np.abs(ours["value"].to_numpy() - point.loc[ours.index].to_numpy(float))))
    assert max_point_diff <= 1e-12, f"point estimates differ by {max_point_diff}"
    ours_reps = {g: boot.replicates("auroc", y, score, mask=group == g)[:n_base] for g in ours.index}
    max_rep_diff = max(float(np.max(np.abs(ours_reps[g] - reps[g].to_numpy(float)))) for g in ours.index)
    assert max_rep_diff <= 1e-12, f"per-resample AUROCs differ by {max_rep_diff}"

    speedup = t_base / t_ours
    extrapolated = n_base < args.resamples
    print(
        f"subgroup AUROC, {args.images} images / {pid.max() + 1} patients / {args.groups} groups, "
        f"{args.resamples} patient-level resamples"
    )
    print(f"{'method':<42}{'median s':>10}{'min s':>8}{'max s':>8}   ({args.rounds} rounds after a warm-up)")
    note = f" (timed {n_base}, x{args.resamples / n_base:g} extrapolated)" if extrapolated else ""
    for label, key in (
        ("medvision SubgroupFrame (vectorised)", "medvision"),
        ("fairlearn MetricFrame loop" + note, "fairlearn"),
    ):
        secs = [1.0 / r for r in rates[key]]
        print(f"{label:<42}{statistics.median(secs):>10.2f}{min(secs):>8.2f}{max(secs):>8.2f}")
    print(
        f"speed-up: {speedup:.1f}x (target >= 20x; per round {speedups['min']:.1f}-{speedups['max']:.1f}x); "
        f"point estimates equal to {max_point_diff:.1e} (<= 1e-12), "
        f"per-resample AUROCs of the first {n_base} resamples equal to {max_rep_diff:.1e}"
    )
    print(f"{'group':<8}{'n_patients':>11}{'auroc':>8}{'low':>8}{'high':>8}   fairlearn-loop 95% CI ({n_base} res.)")
    for g, row in ours.iterrows():
        lo, hi = percentile_interval(reps[g].to_numpy(float), 0.95)
        print(
            f"{g:<8}{int(row['n_patients']):>11}{row['value']:>8.4f}{row['low']:>8.4f}{row['high']:>8.4f}"
            f"   [{lo:.4f}, {hi:.4f}]"
        )
    print(
        json.dumps(
            {
                "benchmark": "bootstrap_subgroup_auroc",
                "images": args.images,
                "patients": int(pid.max() + 1),
                "groups": args.groups,
                "resamples": args.resamples,
                "medvision_s": round(t_ours, 3),
                "fairlearn_loop_s": round(t_base, 3),
                "fairlearn_resamples_timed": n_base,
                "fairlearn_extrapolated": extrapolated,
                "speedup": round(speedup, 1),
                "speedup_spread": speedups,
                "rounds": args.rounds,
                "target_speedup": 20,
                "max_point_diff": max_point_diff,
                "max_replicate_diff": max_rep_diff,
            }
        )
    )


if __name__ == "__main__":
    main()
