"""The cohort card as tables a person reads: what is in each split, for whom, and what was left out."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medvision.cohort.normalise import category
from medvision.cohort.spec import CohortSpec

__all__ = ["MANIFEST_VERSION", "build_card", "manifest_sha256", "print_card", "study_rules"]

MANIFEST_VERSION = 1

_ORDER = ["train", "val", "test", "site_ood", "condition_ood", "unlabelled"]


def _splits(card: dict) -> list[str]:
    present = list(card["counts"])
    return [s for s in _ORDER if s in present] + sorted(set(present) - set(_ORDER))


def print_card(card: dict, console: Console | None = None) -> None:
    """Print the card as rich tables. Every name in it (cohort, class, subgroup value, reason) is user text and
    is escaped, so a class called ``[/]`` prints as typed instead of being read as rich markup (which raised)."""
    console = console or Console()
    # Every value below comes from the data (labels, sites, reasons with "[redacted]"): printed literally, never
    # read as rich markup (a class named "[/]" would otherwise crash the printer).
    splits = _splits(card)
    console.print(
        f"[bold]Cohort {escape(card['name'])}[/bold]  {card['images']} images, {card['patients']} patients, "
        f"{card['quarantined']} quarantined  (manifest v{card['manifest_version']} "
        f"sha256 {card['manifest_sha256'][:12]})"
    )
    cases = card.get("cases")
    if cases:
        size = cases["instances_per_case"]
        console.print(
            f"cases: {cases['cases']} {cases['unit']} case(s) of {cases['instances']} instances "
            f"({size['min']}-{size['max']} per case, median {size['median']:g}); per split "
            + ", ".join(f"{k} {v}" for k, v in cases["by_split"].items())
            + f"; ordered by {', '.join(f'{k} ({v})' for k, v in cases['ordering'].items())}; "
            f"{cases['quarantined_cases']} quarantined whole",
            markup=False,
        )
        for note, n in cases.get("notes", {}).items():
            console.print(f"  {note} ({n} case(s))", markup=False)
    outl = card.get("outlier_conditions") or []
    counts = card.get("class_counts") or {}
    named = [f"{c} ({counts[c]})" if c in counts else c for c in card["classes"]]
    console.print(
        f"classes: {', '.join(named)}" + (f"  (training outliers: {', '.join(outl)})" if outl else ""), markup=False
    )
    if card.get("heldout_conditions") or card.get("heldout_sites"):
        held = f"conditions {card.get('heldout_conditions') or '-'}; sites {card.get('heldout_sites') or '-'}"
        console.print(escape(f"held out: {held}"))

    t = Table(title="Images per split and label")
    t.add_column("label")
    for s in splits:
        t.add_column(s, justify="right")
    labels = sorted({lab for s in splits for lab in card["counts"][s]["by_label"]})
    for lab in labels:
        t.add_row(escape(lab), *[str(card["counts"][s]["by_label"].get(lab, 0)) for s in splits])
    t.add_row("[bold]patients[/bold]", *[str(card["counts"][s]["patients"]) for s in splits])
    t.add_row("[bold]images[/bold]", *[str(card["counts"][s]["images"]) for s in splits])
    console.print(t)

    for attr in card["subgroups"]:
        t = Table(title=escape(f"Images per split by {attr}"))
        t.add_column(escape(attr))
        for s in splits:
            t.add_column(s, justify="right")
        values = sorted({v for s in splits for v in card["counts"][s]["by_subgroup"].get(attr, {})})
        for v in values:
            t.add_row(
                escape(v),
                *[str(sum(card["counts"][s]["by_subgroup"].get(attr, {}).get(v, {}).values())) for s in splits],
            )
        console.print(t)

    if card["quarantine_reasons"]:
        t = Table(title="Quarantined files (see quarantine.csv)")
        t.add_column("reason")
        t.add_column("files", justify="right")
        for reason, n in sorted(card["quarantine_reasons"].items(), key=lambda kv: -kv[1]):
            t.add_row(escape(reason), str(n))
        console.print(t)
    for warning in card.get("warnings") or []:
        console.print(escape(f"warning: {warning}"), style="yellow")
    for rule in card.get("rules") or []:
        console.print(f"rule: {rule}", markup=False)
    lab = card.get("labels") or {}
    if lab.get("csv_rows_without_image") or lab.get("images_without_label"):
        console.print(
            f"labels: {lab.get('csv_rows_without_image', 0)} CSV rows match no image; "
            f"{lab.get('images_without_label', 0)} images have no label (kept as unlabelled)"
        )


def manifest_sha256(manifest: pd.DataFrame) -> str:
    """Content hash of a manifest, independent of parquet library versions."""
    ordered = manifest.sort_values("image_id").reset_index(drop=True)
    return hashlib.sha256(ordered.to_csv(index=False).encode()).hexdigest()


def build_card(
    m: pd.DataFrame, q: pd.DataFrame, spec: CohortSpec, classes: list[str], label_stats: dict, key_source: str
) -> dict:
    subgroup_cols = (
        ["sex", "age_band", "site", *spec.labels.subgroup_columns] if spec.labels else ["sex", "age_band", "site"]
    )
    counts: dict = {}
    for split, g in m.groupby("split", sort=True):
        entry = {
            "images": len(g),
            "patients": int(g["patient_id"].nunique()),
            "by_label": {
                str(k): int(v) for k, v in g["label"].fillna("(unlabelled)").value_counts().sort_index().items()
            },
        }
        entry["by_subgroup"] = {
            col: {
                str(val): {
                    str(lab): int(n)
                    for lab, n in gg["label"].fillna("(unlabelled)").value_counts().sort_index().items()
                }
                for val, gg in g.groupby(col, sort=True)
            }
            for col in subgroup_cols
        }
        counts[str(split)] = entry
    return {
        "class_counts": {str(k): int(v) for k, v in m["label"].dropna().value_counts().sort_index().items()},
        "rules": study_rules(m, spec, label_stats),
        "name": spec.name,
        "manifest_version": MANIFEST_VERSION,
        "manifest_sha256": manifest_sha256(m),
        "images": len(m),
        "patients": int(m["patient_id"].nunique()),
        "quarantined": len(q),
        "quarantine_reasons": {str(k): int(v) for k, v in q["reason"].value_counts().items()},
        "classes": classes,
        "num_inlier_classes": len(classes) - len([c for c in spec.splits.outlier_conditions if c in classes]),
        "outlier_conditions": [c for c in spec.splits.outlier_conditions if c in classes],
        "heldout_conditions": spec.splits.heldout_conditions,
        "heldout_sites": spec.splits.heldout_sites,
        "label_fractions": sorted(set(spec.splits.label_fractions) | {1.0}),
        "subgroups": subgroup_cols,
        "counts": counts,
        "labels": label_stats,
        "pseudonym_key": key_source,
        "spec": json.loads(spec.model_dump_json()),
    }


def study_rules(m: pd.DataFrame, spec: CohortSpec, label_stats: dict) -> list[str]:
    """The rules that decided what each evaluation set holds, as sentences with the number of images they touched.

    Said in the card (and so in the report) because each one changes what a metric measures.
    """
    sp, rules = spec.splits, []
    if sp.heldout_sites and sp.heldout_conditions:
        sites = {category(s) for s in sp.heldout_sites}
        moved = int(((m["site"].isin(sites)) & (m["split"] == "condition_ood")).sum())
        rules.append(
            f"patients of a held-out site ({', '.join(sp.heldout_sites)}) with a held-out condition "
            f"({', '.join(sp.heldout_conditions)}) go to condition_ood, not site_ood: {moved} image(s)"
        )
    if sp.heldout_conditions:
        other = int(((m["split"] == "condition_ood") & ~m["label"].isin(sp.heldout_conditions)).sum())
        if other:
            rules.append(
                f"condition_ood also holds {other} other image(s) of its patients; they are not scored as outliers"
            )
    if sp.outlier_conditions:
        shown = m[m["label"].isin(sp.outlier_conditions) & m["split"].isin(["val", "test", "site_ood"])]
        by_split = ", ".join(f"{k} {v}" for k, v in shown["split"].value_counts().sort_index().items()) or "none"
        rules.append(
            f"abstention classes ({', '.join(sp.outlier_conditions)}) are trained on as outliers (label_idx after "
            f"the inlier classes) and left out of every discrimination metric and of the OOD inliers ({by_split})"
        )
    lab = spec.labels
    if lab is not None and (lab.include or lab.exclude):
        rules.append(
            f"labels CSV rows filtered (include {lab.include or '-'}, exclude {lab.exclude or '-'}): "
            f"{label_stats.get('csv_rows_excluded', 0)} row(s) dropped, their images quarantined"
        )
    if lab is not None and lab.map:
        touched = label_stats.get("label_map") or {}
        parts = [
            f"{k!r} -> {'(unlabelled)' if v is None else repr(v)} ({touched.get(k, 0)})" for k, v in lab.map.items()
        ]
        rules.append(f"label values mapped: {'; '.join(parts)}")
    return rules
