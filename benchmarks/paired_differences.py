"""Paired differences between models of one evaluation, with patient-level bootstrap intervals.

    python benchmarks/paired_differences.py runs/X/evaluate/<key> --compare imagenet_finetune random_finetune \
        --compare micle_finetune imagenet_finetune --ood

A claim such as "an ImageNet start beats random init" is a statement about a *difference*, and two overlapping
marginal intervals neither prove nor refute it. Every model of an evaluation scored the same test images, so the
difference has its own interval: one :class:`~medvision.evaluation.bootstrap.Bootstrap` (same patients drawn for
both models in each resample) evaluated on both models' saved predictions, then subtracted.

``--compare A B`` pairs the members of stages A and B (or the models named A and B) that share a label fraction and
reports test AUROC(A) - AUROC(B); a model compared with itself (one run twice, or identical predictions) is refused.
``--ood`` reports, for every model with a HOD head, OOD AUROC of ``p_out`` minus that of MSP on the
held-out conditions (outliers positive). Prints Markdown tables, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from medvision.auroc import macro_auroc
from medvision.evaluation.bootstrap import Bootstrap
from medvision.evaluation.document import Evaluation, ModelMetrics
from medvision.evaluation.ood import msp_score

N_RESAMPLES = 1000


def _probs(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return frame[[f"p:{c}" for c in classes]].to_numpy()


def _fmt(point: float, low: float, high: float) -> str:
    return f"{point:+.3f} ({low:+.3f} to {high:+.3f})"


def _verdict(low: float, high: float) -> str:
    """Whether the interval of a difference excludes zero, and on which side."""
    if low > 0:
        return "first better"
    if high < 0:
        return "second better"
    return "no difference shown"


def compare(ev: Evaluation, first: str, second: str, seed: int) -> list[dict]:
    """Test AUROC(first) - AUROC(second) for each label fraction both sides have.

    ``first`` and ``second`` are model names, or stage names (every member of the stage, one per label fraction).

    Raises:
        SystemExit: a side names no model or two models of one label fraction; the two are one run, or their test
            predictions are identical (a model compared with itself, which would print +0.000 as if it were a
            finding).
    """
    rows = []
    side_a, side_b = _side(ev, first), _side(ev, second)
    for fraction in sorted(set(side_a) & set(side_b)):
        a, b = side_a[fraction], side_b[fraction]
        fa, fb = ev.predictions(a.name, "test"), ev.predictions(b.name, "test")
        row = "case_id" if ev.metrics.cohort.unit != "image" else "image_id"  # case cohorts: one row per case
        if not fa[row].equals(fb[row]):
            raise SystemExit(f"{a.name} and {b.name} were not scored on the same test cases in the same order")
        _refuse_self_comparison(a, b, _probs(fa, a.classes), _probs(fb, b.classes))
        k = len(a.classes)
        keep = ((fa["label_idx"] >= 0) & (fa["label_idx"] < k)).to_numpy()
        y = fa["label_idx"].to_numpy()[keep]
        boot = Bootstrap(fa["patient_id"].to_numpy()[keep], n_resamples=N_RESAMPLES, seed=seed)
        ra = boot.ci(macro_auroc, y, _probs(fa, a.classes)[keep])
        rb = boot.ci(macro_auroc, y, _probs(fb, b.classes)[keep])
        d = ra - rb
        rows.append(
            {
                "first": a.name,
                "second": b.name,
                "label_fraction": fraction,
                "first_auroc": ra.point,
                "second_auroc": rb.point,
                "diff": d.point,
                "low": d.low,
                "high": d.high,
            }
        )
    return rows


def _side(ev: Evaluation, key: str) -> dict[float, ModelMetrics]:
    """The models ``key`` names (a model name, else a stage), by label fraction."""
    models = ev.metrics.models
    named = [m for m in models if m.name == key] or [m for m in models if m.stage == key]
    if not named:
        raise SystemExit(
            f"no model or stage {key!r} in this evaluation; models: {', '.join(m.name for m in models)}; "
            f"stages: {', '.join(sorted({str(m.stage) for m in models}))}"
        )
    by_fraction: dict[float, ModelMetrics] = {}
    for m in named:
        if m.label_fraction in by_fraction:
            raise SystemExit(
                f"{key!r} names two models at label fraction {m.label_fraction:g} "
                f"({by_fraction[m.label_fraction].name} and {m.name}); compare them by model name"
            )
        by_fraction[m.label_fraction] = m
    return by_fraction


def _refuse_self_comparison(a: ModelMetrics, b: ModelMetrics, pa: np.ndarray, pb: np.ndarray) -> None:
    if a.run_id == b.run_id:
        raise SystemExit(f"{a.name} and {b.name} are the same run ({a.run_id}): there is nothing to compare")
    if pa.shape == pb.shape and np.array_equal(pa, pb):
        raise SystemExit(
            f"{a.name} (run {a.run_id}) and {b.name} (run {b.run_id}) made identical test predictions: one model's "
            "predictions were saved under both names, or the two runs are one model; the difference would be 0 by "
            "construction. Evaluate the runs again with this medvision (models get distinct names)"
        )


def hod_minus_msp(ev: Evaluation, seed: int) -> list[dict]:
    """OOD AUROC of HOD's p_out minus MSP's, held-out conditions vs test inliers, for every HOD model."""
    rows = []
    for m in ev.metrics.models:
        ood_sets = m.ood.outliers if m.ood else []
        parts = [ev.predictions(m.name, "test")] + [ev.predictions(m.name, s) for s in ood_sets]
        if not ood_sets or "ood_score" not in parts[0]:
            continue
        k = len(m.classes)
        inl = parts[0][(parts[0]["label_idx"] >= 0) & (parts[0]["label_idx"] < k)]
        both = pd.concat([inl, *parts[1:]], ignore_index=True)
        is_ood = np.r_[np.zeros(len(inl), bool), np.ones(len(both) - len(inl), bool)]
        boot = Bootstrap(both["patient_id"].to_numpy(), n_resamples=N_RESAMPLES, seed=seed)
        hod = boot.ci("auroc", is_ood, both["ood_score"].to_numpy())
        msp = boot.ci("auroc", is_ood, msp_score(_probs(both, m.classes)))
        d = hod - msp
        rows.append(
            {"model": m.name, "hod": hod.point, "msp": msp.point, "diff": d.point, "low": d.low, "high": d.high}
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evaluation", type=Path, help="an evaluation folder (metrics.json + predictions/)")
    ap.add_argument("--compare", nargs=2, action="append", default=[], metavar=("FIRST", "SECOND"))
    ap.add_argument("--ood", action="store_true", help="HOD p_out minus MSP for every HOD model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ev = Evaluation.open(args.evaluation)
    summary: dict = {"evaluation": str(args.evaluation), "resamples": N_RESAMPLES, "compare": [], "ood": []}

    for first, second in args.compare:
        rows = compare(ev, first, second, args.seed)
        if not rows:
            raise SystemExit(f"no label fraction is shared by stages {first!r} and {second!r} in this evaluation")
        print(f"Test AUROC, {first} minus {second} (paired patient-level bootstrap, {N_RESAMPLES} resamples)\n")
        print("| label fraction | first | second | difference (95% CI) | reading |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['label_fraction']:g} | {r['first_auroc']:.3f} | {r['second_auroc']:.3f} | "
                f"{_fmt(r['diff'], r['low'], r['high'])} | {_verdict(r['low'], r['high'])} |"
            )
        print()
        summary["compare"] += rows

    if args.ood:
        rows = hod_minus_msp(ev, args.seed)
        print(f"OOD AUROC on held-out conditions, HOD p_out minus MSP (paired, {N_RESAMPLES} resamples)\n")
        print("| model | HOD | MSP | difference (95% CI) | reading |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['model']} | {r['hod']:.3f} | {r['msp']:.3f} | {_fmt(r['diff'], r['low'], r['high'])} | "
                f"{_verdict(r['low'], r['high'])} |"
            )
        print()
        summary["ood"] = rows
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
