"""Paired differences between models of one evaluation, with patient-level bootstrap intervals.

    python benchmarks/paired_differences.py runs/X/evaluate/<key> --compare imagenet_finetune random_finetune \
        --compare micle_finetune imagenet_finetune --ood

A claim such as "an ImageNet start beats random init" is a statement about a *difference*, and two overlapping
marginal intervals neither prove nor refute it. Every model of an evaluation scored the same test images, so the
difference has its own interval: one :class:`~medvision.evaluation.bootstrap.Bootstrap` (same patients drawn for
both models in each resample) evaluated on both models' saved predictions, then subtracted.

``--compare A B`` pairs the members of stages A and B that share a label fraction and reports test AUROC(A) -
AUROC(B). It refuses (exit status 1, naming the models and what to do) to compare a model with itself: a stage with
itself, two models of one name in ``metrics.json`` (one's predictions overwrote the other's), one prediction file
for both, or two files whose predictions are identical. Such a difference is +0.000 by construction, not a finding.

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


class SameModelError(SystemExit):
    """Two compared models are one model's predictions: their difference would be zero by construction."""


def refuse_duplicate_names(doc: dict, source: Path) -> None:
    """Two models of one name share one predictions folder, so the second's predictions overwrote the first's."""
    names = [m["name"] for m in doc["models"]]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SameModelError(
            f"{source}: {len(twice)} model name(s) appear more than once ({', '.join(twice)}); their predictions "
            f"share one folder (predictions/<name>/), so one model's overwrote the other's and any comparison between "
            "them would compare a model with itself. Re-run the evaluation so each model gets its own name."
        )


def refuse_same_predictions(
    folder: Path, a: dict, b: dict, pa: Path, pb: Path, fa: pd.DataFrame, fb: pd.DataFrame
) -> None:
    """Refuse a pair that is one model's predictions twice: same file, identical bytes, or identical probabilities."""
    why = None
    if a["name"] == b["name"]:
        why = f"both are model {a['name']!r}"
    elif pa.resolve() == pb.resolve():
        why = f"both read the same prediction file {pa}"
    elif pa.read_bytes() == pb.read_bytes():
        why = f"their prediction files {pa} and {pb} are byte for byte identical"
    elif a["classes"] == b["classes"] and np.array_equal(_probs(fa, a["classes"]), _probs(fb, b["classes"])):
        why = f"their predicted probabilities on the test images are identical ({pa}, {pb})"
    if why:
        raise SameModelError(
            f"{folder}: refusing to compare {a['name']} with {b['name']}: {why}. The difference would be +0.000 by "
            "construction, not a finding. Compare two different models: check the stage names given to --compare, "
            "and if these are two runs evaluated together, re-run `medvision evaluate` so that each model has its "
            "own name and predictions."
        )


def compare(folder: Path, models: dict[str, dict], first: str, second: str, seed: int) -> list[dict]:
    """Test AUROC(first) - AUROC(second) for each label fraction both stages have.

    Raises:
        SameModelError: when ``first`` and ``second`` are one stage, or a pair's predictions are one model's.
    """
    if first == second:
        raise SameModelError(
            f"{folder}: --compare {first} {second} compares stage {first!r} with itself; the difference would be "
            "+0.000 by construction. Name two different stages."
        )
    rows = []
    by_fraction = {(m["stage"], m["label_fraction"]): m for m in models.values()}
    for (stage, fraction), a in sorted(by_fraction.items(), key=lambda kv: kv[0][1]):
        b = by_fraction.get((second, fraction))
        if stage != first or b is None:
            continue
        pa, pb = (folder / "predictions" / m["name"] / "test.parquet" for m in (a, b))
        fa, fb = pd.read_parquet(pa), pd.read_parquet(pb)
        refuse_same_predictions(folder, a, b, pa, pb, fa, fb)
        row = "case_id" if "case_id" in fa else "image_id"  # case cohorts are scored one row per case
        if not fa[row].equals(fb[row]):
            raise SystemExit(f"{a['name']} and {b['name']} were not scored on the same test cases in the same order")
        k = len(a["classes"])
        keep = ((fa["label_idx"] >= 0) & (fa["label_idx"] < k)).to_numpy()
        y = fa["label_idx"].to_numpy()[keep]
        boot = Bootstrap(fa["patient_id"].to_numpy()[keep], n_resamples=N_RESAMPLES, seed=seed)
        ra = boot.ci(macro_auroc, y, _probs(fa, a["classes"])[keep])
        rb = boot.ci(macro_auroc, y, _probs(fb, b["classes"])[keep])
        d = ra - rb
        rows.append(
            {
                "first": a["name"],
                "second": b["name"],
                "label_fraction": fraction,
                "first_auroc": ra.point,
                "second_auroc": rb.point,
                "diff": d.point,
                "low": d.low,
                "high": d.high,
            }
        )
    return rows


def hod_minus_msp(folder: Path, models: dict[str, dict], seed: int) -> list[dict]:
    """OOD AUROC of HOD's p_out minus MSP's, held-out conditions vs test inliers, for every HOD model."""
    rows = []
    for m in models.values():
        ood_sets = (m.get("ood") or {}).get("outliers") or []
        test_path = folder / "predictions" / m["name"] / "test.parquet"
        parts = [pd.read_parquet(test_path)] + [
            pd.read_parquet(folder / "predictions" / m["name"] / f"{s}.parquet") for s in ood_sets
        ]
        if not ood_sets or "ood_score" not in parts[0]:
            continue
        k = len(m["classes"])
        inl = parts[0][(parts[0]["label_idx"] >= 0) & (parts[0]["label_idx"] < k)]
        both = pd.concat([inl, *parts[1:]], ignore_index=True)
        is_ood = np.r_[np.zeros(len(inl), bool), np.ones(len(both) - len(inl), bool)]
        boot = Bootstrap(both["patient_id"].to_numpy(), n_resamples=N_RESAMPLES, seed=seed)
        hod = boot.ci("auroc", is_ood, both["ood_score"].to_numpy())
        msp = boot.ci("auroc", is_ood, msp_score(_probs(both, m["classes"])))
        d = hod - msp
        rows.append(
            {"model": m["name"], "hod": hod.point, "msp": msp.point, "diff": d.point, "low": d.low, "high": d.high}
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evaluation", type=Path, help="an evaluation folder (metrics.json + predictions/)")
    ap.add_argument("--compare", nargs=2, action="append", default=[], metavar=("FIRST", "SECOND"))
    ap.add_argument("--ood", action="store_true", help="HOD p_out minus MSP for every HOD model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    doc = json.loads((args.evaluation / "metrics.json").read_text())
    refuse_duplicate_names(doc, args.evaluation / "metrics.json")
    models = {m["name"]: m for m in doc["models"]}
    summary: dict = {"evaluation": str(args.evaluation), "resamples": N_RESAMPLES, "compare": [], "ood": []}

    for first, second in args.compare:
        rows = compare(args.evaluation, models, first, second, args.seed)
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
        rows = hod_minus_msp(args.evaluation, models, args.seed)
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
