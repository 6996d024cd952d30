"""Bootstrap benchmark: subgroup AUROC with 95% patient-level intervals, vectorised vs a plain loop and fairlearn.

20,000 predictions from patients with 1-4 images each, 6 subgroups, 1000 patient-level resamples. medvision's
``SubgroupFrame`` evaluates all resamples at once from one weight matrix. Two baselines, in the same process, on the
*same* resamples:

- the loop a statistician would write with numpy and scikit-learn: draw patients with replacement (numpy, the same
  generator and seed, so the same draws), gather their images, ``roc_auc_score`` per group per resample, percentile
  interval. Timed on every resample: this is the headline ratio. Target: >= 20x.
- fairlearn's ``MetricFrame`` (``roc_auc_score`` per group) rebuilt on each resample (its own ``n_boot`` draws
  rows, i.e. images, not patients, so it cannot give these intervals). It costs about 0.4-1 s a resample here, so
  by default it is timed on ``--baseline-resamples`` of them and extrapolated linearly to all (each resample costs
  the same: same size, same groups); the table and the JSON say so. ``--baseline-resamples 0`` times it on every
  resample.

Point estimates and the per-resample AUROCs of both baselines must agree with medvision's to 1e-12 (asserted). All
three sides run a warm-up round, then ``--rounds`` alternating timed rounds (benchmarks/_timing.py); medians are the
headline, per-round paired ratios their spread. Prints a table, then one JSON object as the last line.

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

from medvision.evaluation.bootstrap import Bootstrap
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


def plain_bootstrap(
    pid: np.ndarray, group: np.ndarray, y: np.ndarray, score: np.ndarray, resamples: int, seed: int
) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, tuple[float, float]]]:
    """The numpy + scikit-learn loop: patient-level resamples, ``roc_auc_score`` per group, percentile intervals.

    The patients are drawn exactly as :class:`~medvision.evaluation.bootstrap.Bootstrap` draws them (one
    ``default_rng(seed).integers`` matrix over the sorted unique patient ids), so the replicates can be compared.
    Returns (point, replicates, interval) per group.
    """
    patients, inverse = np.unique(pid, return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(patients), size=(resamples, len(patients)), dtype=np.int32)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(patients) + 1))
    images_of = [order[starts[p] : starts[p + 1]] for p in range(len(patients))]
    names = np.unique(group)
    point = {g: float(roc_auc_score(y[group == g], score[group == g])) for g in names}
    reps = {g: np.empty(resamples) for g in names}
    for b in range(resamples):
        idx = np.concatenate([images_of[p] for p in draws[b]])
        yb, sb, gb = y[idx], score[idx], group[idx]
        for g in names:
            m = gb == g
            reps[g][b] = roc_auc_score(yb[m], sb[m])
    ci = {g: tuple(np.percentile(reps[g], [2.5, 97.5])) for g in names}
    return point, reps, ci


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--groups", type=int, default=6)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument(
        "--baseline-resamples", type=int, default=100, help="fairlearn loop timed on this many resamples (0: all)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per side (after one warm-up round each)")
    args = ap.parse_args()

    pid, group, y, score = simulate(args.images, args.groups, args.seed)
    sf = pd.Series(group, name="group")

    n_fair = args.resamples if args.baseline_resamples <= 0 else min(args.baseline_resamples, args.resamples)
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

    def plain_side() -> float:  # every resample, nothing extrapolated
        t0 = time.perf_counter()
        kept["plain"] = plain_bootstrap(pid, group, y, score, args.resamples, args.seed)
        return 1.0 / (time.perf_counter() - t0)

    def fairlearn_side() -> float:  # the same resamples (same image indices), looped through MetricFrame
        boot = kept["boot"]
        t0 = time.perf_counter()
        kept["point"] = MetricFrame(metrics=roc_auc_score, y_true=y, y_pred=score, sensitive_features=sf).by_group
        reps = []
        for b in range(n_fair):
            idx = boot.resample_indices(b)
            reps.append(
                MetricFrame(
                    metrics=roc_auc_score, y_true=y[idx], y_pred=score[idx], sensitive_features=sf.to_numpy()[idx]
                ).by_group
            )
        seconds = (time.perf_counter() - t0) * args.resamples / n_fair
        kept["reps"] = pd.concat(reps, axis=1).T
        return 1.0 / seconds

    # Warm all three, then alternate (benchmarks/_timing.py); rates are runs/s, so seconds = 1 / rate.
    rates = alternate(
        {"medvision": medvision_side, "plain": plain_side, "fairlearn": fairlearn_side}, rounds=args.rounds, warmup=1
    )
    secs = {k: 1.0 / statistics.median(v) for k, v in rates.items()}
    vs_plain = spread(paired_ratios(rates["medvision"], rates["plain"]))
    vs_fair = spread(paired_ratios(rates["medvision"], rates["fairlearn"]))
    ours, point, reps, boot = kept["ours"], kept["point"], kept["reps"], kept["boot"]
    plain_point, plain_reps, plain_ci = kept["plain"]

    ours_reps = {g: boot.replicates("auroc", y, score, mask=group == g) for g in ours.index}
    diffs = {
        "fairlearn point": max(abs(ours.loc[g, "value"] - float(point.loc[g])) for g in ours.index),
        "plain point": max(abs(ours.loc[g, "value"] - plain_point[g]) for g in ours.index),
        "fairlearn replicates": max(
            float(np.max(np.abs(ours_reps[g][:n_fair] - reps[g].to_numpy(float)))) for g in ours.index
        ),
        "plain replicates": max(float(np.max(np.abs(ours_reps[g] - plain_reps[g]))) for g in ours.index),
    }
    for what, d in diffs.items():
        assert d <= 1e-12, f"{what} AUROCs differ from medvision's by {d}"

    extrapolated = n_fair < args.resamples
    print(
        f"subgroup AUROC, {args.images} images / {pid.max() + 1} patients / {args.groups} groups, "
        f"{args.resamples} patient-level resamples; one process, {args.rounds} rounds after a warm-up, sides "
        "alternating (shared machine: the ratios are the robust figures)"
    )
    print(f"{'method':<58}{'median s':>10}{'min s':>8}{'max s':>8}{'ratio':>9}")
    note = f" (timed {n_fair}, x{args.resamples / n_fair:g} extrapolated)" if extrapolated else ""
    for label, key, ratio in (
        ("medvision SubgroupFrame (vectorised)", "medvision", None),
        ("numpy + sklearn roc_auc_score loop (all resamples)", "plain", vs_plain),
        ("fairlearn MetricFrame loop" + note, "fairlearn", vs_fair),
    ):
        s = [1.0 / r for r in rates[key]]
        shown = f"{secs[key] / secs['medvision']:>8.1f}x" if ratio else ""
        print(f"{label:<58}{statistics.median(s):>10.2f}{min(s):>8.2f}{max(s):>8.2f}{shown}")
    print(
        f"ratio vs the numpy + sklearn loop: {secs['plain'] / secs['medvision']:.1f}x (target >= 20x; per round "
        f"{vs_plain['min']:.1f}-{vs_plain['max']:.1f}x); vs fairlearn: {secs['fairlearn'] / secs['medvision']:.1f}x"
        f"{' (extrapolated)' if extrapolated else ''}. Largest differences from medvision's AUROCs: "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
    )
    print(f"{'group':<8}{'n_patients':>11}{'auroc':>8}{'low':>8}{'high':>8}   numpy + sklearn loop 95% CI")
    for g, row in ours.iterrows():
        lo, hi = plain_ci[g]
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
                "rounds": args.rounds,
                "medvision_s": round(secs["medvision"], 3),
                "plain_loop_s": round(secs["plain"], 3),
                "speedup_vs_plain": round(secs["plain"] / secs["medvision"], 1),
                "speedup_vs_plain_spread": vs_plain,
                "fairlearn_loop_s": round(secs["fairlearn"], 3),
                "fairlearn_resamples_timed": n_fair,
                "fairlearn_extrapolated": extrapolated,
                "speedup_vs_fairlearn": round(secs["fairlearn"] / secs["medvision"], 1),
                "speedup_vs_fairlearn_spread": vs_fair,
                "target_speedup_vs_plain": 20,
                "max_diff": diffs,
            }
        )
    )


if __name__ == "__main__":
    main()
