"""What ``recipe: auto`` chose in a pipeline's runs, and what each fixed recipe's training amounted to.

    python benchmarks/recipe_choices.py sqlite:///runs/mlflow.db --experiment pad-ufes-transfer

For every ``auto`` run: its label fraction and seed, the candidates the fingerprint allowed, each candidate's
validation macro AUROC with its patient-bootstrap interval, the paired difference against the recipe kept so far,
and the winner (read from the run's ``recipe/decision.json``, the document the report shows). For every fixed-recipe
run: the epochs its time budget allowed (``budget/epochs``), the probe's ``C``, its validation AUROC and its wall
time. Prints Markdown tables, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from mlflow import MlflowClient

from medvision.training.recipe import decision_of_run


def _ci(i) -> str:
    if i is None or i.point is None:
        return "n/a"
    return f"{i.point:.3f} ({i.low:.3f}–{i.high:.3f})" if i.low is not None else f"{i.point:.3f}"


def _diff(i) -> str:
    if i is None or i.point is None:
        return ""
    return f"{i.point:+.3f} ({i.low:+.3f} to {i.high:+.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tracking_uri")
    ap.add_argument("--experiment", required=True)
    args = ap.parse_args()
    client = MlflowClient(args.tracking_uri)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.tracking_uri}")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=5000) if r.info.status == "FINISHED"]
    autos = [r for r in runs if r.data.tags.get("medvision.recipe") == "auto"]
    fixed = [r for r in runs if r.data.params.get("recipe") in ("linear-probe", "lp-ft", "finetune")]

    def key(r) -> tuple[float, int]:
        return float(r.data.params.get("data.label_fraction", 1)), int(r.data.params.get("seed", 0))

    choices = []
    print(
        "| label fraction | seed | candidates (validation macro AUROC, 95% CI) | paired difference vs kept | winner |"
    )
    print("|---|---|---|---|---|")
    for run in sorted(autos, key=key):
        d = decision_of_run(run.info.run_id, args.tracking_uri)
        if d is None:
            continue
        fraction, seed = key(run)
        cands = "; ".join(f"{c.recipe} {_ci(c.val_auroc)}" for c in d.candidates)
        diffs = "; ".join(f"{c.recipe} − {c.versus} {_diff(c.difference)}" for c in d.candidates if c.versus)
        print(f"| {fraction:g} | {seed} | {cands} | {diffs} | **{d.winner}** |")
        choices.append(
            {
                "label_fraction": fraction,
                "seed": seed,
                "min_patients_per_class": d.fingerprint.min_patients_per_class,
                "candidates": [c.model_dump() for c in d.candidates],
                "winner": d.winner,
            }
        )
    print()
    print("| recipe | label fraction | seed | epochs (budget) | probe C | validation AUROC | wall s |")
    print("|---|---|---|---|---|---|---|")
    trained = []
    for run in sorted(fixed, key=lambda r: (r.data.params["recipe"], *key(r))):
        m, p = run.data.metrics, run.data.params
        fraction, seed = key(run)
        epochs = m.get("budget/epochs")
        c = m.get("probe/C", float(p["lpft.probe_C"]) if "lpft.probe_C" in p else None)
        wall = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
        auroc = m.get("best/val/auroc")
        print(
            f"| {p['recipe']} | {fraction:g} | {seed} | {'' if epochs is None else int(epochs)} | "
            f"{'' if c is None else f'{c:g}'} | {'' if auroc is None else f'{auroc:.3f}'} | {wall:.0f} |"
        )
        trained.append(
            {
                "recipe": p["recipe"],
                "label_fraction": fraction,
                "seed": seed,
                "epochs": epochs,
                "C": c,
                "val_auroc": auroc,
                "wall_s": wall,
            }
        )
    print()
    wins = Counter((c["label_fraction"], c["winner"]) for c in choices)
    print(
        json.dumps(
            {
                "experiment": args.experiment,
                "auto": choices,
                "fixed": trained,
                "wins": [{"label_fraction": f, "winner": w, "count": n} for (f, w), n in sorted(wins.items())],
            }
        )
    )


if __name__ == "__main__":
    main()
