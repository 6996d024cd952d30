"""Markdown tables of an evaluation's ``metrics.json`` for ``benchmarks/RESULTS.md``.

    python benchmarks/results_table.py runs/pad-ufes/evaluate/<key>/metrics.json

Prints: in-distribution discrimination per model (with 95% patient-level bootstrap CIs), the data-efficiency
points, OOD screening per detector, and the subgroup table of the primary model; then one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medvision.evaluation.document import Estimate, MetricsDocument


def _ci(m: Estimate | None) -> str:
    if m is None or m.value is None:
        return "n/a"
    return f"{m.value:.3f} ({m.low:.3f}–{m.high:.3f})" if m.low is not None and m.high is not None else f"{m.value:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path)
    ap.add_argument("--model", help="model whose subgroup table to print (default: the evaluation's primary)")
    args = ap.parse_args()
    doc = MetricsDocument.read(args.metrics)
    models = sorted(doc.models, key=lambda m: (m.stage or "", m.label_fraction))
    summary: dict = {"cohort": doc.cohort.name, "manifest_sha256": doc.cohort.manifest_sha256}

    print("| model | start | label fraction | test AUROC (95% CI) | test accuracy (95% CI) |")
    print("|---|---|---|---|---|")
    for m in models:
        start = "self-supervised" if str(m.weights or "").startswith("mlflow:") else str(m.weights)
        test = m.sets.get("test")
        print(
            f"| {m.stage} | {start} | {m.label_fraction:g} | {_ci(test.auroc if test else None)} | "
            f"{_ci(test.accuracy if test else None)} |"
        )
        summary[f"{m.name}/test_auroc"] = test.auroc.value if test else None

    primary = doc.model(args.model) if args.model else doc.primary
    print()
    for m in models:
        if m.ood is None or not m.ood.detectors:
            continue
        print(f"OOD screening, {m.name} (outliers = {', '.join(m.ood.outliers)}; outlier is the positive class)")
        print()
        print("| detector | AUROC (95% CI) | AUPR-OUT | AUPR-IN | FPR at 95% TPR |")
        print("|---|---|---|---|---|")
        for d in m.ood.detectors:
            ci = Estimate(value=d.auroc, low=d.auroc_low, high=d.auroc_high)
            print(f"| {d.detector} | {_ci(ci)} | {d.aupr_out:.3f} | {d.aupr_in:.3f} | {d.fpr_at_95_tpr:.3f} |")
            summary[f"{m.name}/ood_auroc/{d.detector}"] = d.auroc
        print()

    sub = primary.subgroups
    if sub is not None and sub.table:
        print(f"Subgroups, {primary.name}: {sub.metric} on {sub.set}; overall {_ci(sub.overall)}")
        print()
        print("| attribute | group | patients | images | AUROC (95% CI) | gap to overall (95% CI) | flag |")
        print("|---|---|---|---|---|---|---|")
        for r in sub.table:
            value = Estimate(value=r.value, low=r.low, high=r.high)
            gap = Estimate(value=r.gap, low=r.gap_low, high=r.gap_high)
            print(
                f"| {r.attribute} | {r.group} | {r.n_patients} | {r.n_images} | {_ci(value)} | "
                f"{_ci(gap)} | {r.flag or ''} |"
            )
        print()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
