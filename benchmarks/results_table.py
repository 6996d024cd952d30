"""Markdown tables of an evaluation's ``metrics.json`` for ``benchmarks/RESULTS.md``.

    python benchmarks/results_table.py runs/pad-ufes/evaluate/<key>/metrics.json

Prints: in-distribution discrimination per model (with 95% patient-level bootstrap CIs), the data-efficiency
points, OOD screening per detector, and the subgroup table of the primary model; then one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _ci(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    low, high = m.get("low"), m.get("high")
    return f"{m['value']:.3f} ({low:.3f}–{high:.3f})" if low is not None and high is not None else f"{m['value']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path)
    ap.add_argument("--model", help="model whose subgroup table to print (default: the evaluation's primary)")
    args = ap.parse_args()
    doc = json.loads(args.metrics.read_text())
    models = doc["models"]
    summary: dict = {"cohort": doc["cohort"]["name"], "manifest_sha256": doc["cohort"]["manifest_sha256"]}

    print("| model | start | label fraction | test AUROC (95% CI) | test accuracy (95% CI) |")
    print("|---|---|---|---|---|")
    for m in sorted(models, key=lambda m: (m["stage"] or "", m["label_fraction"])):
        start = "self-supervised" if str(m.get("weights", "")).startswith("mlflow:") else str(m.get("weights"))
        test = m["sets"].get("test", {})
        print(
            f"| {m['stage']} | {start} | {m['label_fraction']:g} | {_ci(test.get('auroc'))} | "
            f"{_ci(test.get('accuracy'))} |"
        )
        summary[f"{m['name']}/test_auroc"] = (test.get("auroc") or {}).get("value")

    primary = next(m for m in models if m["name"] == (args.model or doc["primary_model"]))
    print()
    for m in sorted(models, key=lambda m: (m["stage"] or "", m["label_fraction"])):
        ood = m.get("ood") or {}
        if not ood.get("detectors"):
            continue
        print(f"OOD screening, {m['name']} (outliers = {', '.join(ood['outliers'])}; outlier is the positive class)")
        print()
        print("| detector | AUROC (95% CI) | AUPR-OUT | AUPR-IN | FPR at 95% TPR |")
        print("|---|---|---|---|---|")
        for d in ood["detectors"]:
            ci = {"value": d["auroc"], "low": d.get("auroc_low"), "high": d.get("auroc_high")}
            print(
                f"| {d['detector']} | {_ci(ci)} | {d['aupr_out']:.3f} | {d['aupr_in']:.3f} | {d['fpr_at_95_tpr']:.3f} |"
            )
            summary[f"{m['name']}/ood_auroc/{d['detector']}"] = d["auroc"]
        print()

    sub = primary.get("subgroups") or {}
    if sub.get("table"):
        print(f"Subgroups, {primary['name']}: {sub['metric']} on {sub['set']}; overall {_ci(sub['overall'])}")
        print()
        print("| attribute | group | patients | images | AUROC (95% CI) | gap to overall (95% CI) | flag |")
        print("|---|---|---|---|---|---|---|")
        for r in sub["table"]:
            gap = {"value": r.get("gap"), "low": r.get("gap_low"), "high": r.get("gap_high")}
            print(
                f"| {r['attribute']} | {r['group']} | {r['n_patients']} | {r['n_images']} | {_ci(r)} | "
                f"{_ci(gap)} | {r.get('flag') or ''} |"
            )
        print()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
