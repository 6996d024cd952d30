"""The cohort card as tables a person reads: what is in each split, for whom, and what was left out."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

__all__ = ["print_card"]

_ORDER = ["train", "val", "test", "site_ood", "condition_ood", "unlabelled"]


def _splits(card: dict) -> list[str]:
    present = list(card["counts"])
    return [s for s in _ORDER if s in present] + sorted(set(present) - set(_ORDER))


def print_card(card: dict, console: Console | None = None) -> None:
    console = console or Console()
    splits = _splits(card)
    console.print(f"[bold]Cohort {card['name']}[/bold]  {card['images']} images, {card['patients']} patients, "
                  f"{card['quarantined']} quarantined  (manifest v{card['manifest_version']} "
                  f"sha256 {card['manifest_sha256'][:12]})")
    outl = card.get("outlier_conditions") or []
    console.print(f"classes: {', '.join(card['classes'])}" + (f"  (training outliers: {', '.join(outl)})"
                                                                  if outl else ""))
    if card.get("heldout_conditions") or card.get("heldout_sites"):
        console.print(f"held out: conditions {card.get('heldout_conditions') or '-'}; "
                      f"sites {card.get('heldout_sites') or '-'}")

    t = Table(title="Images per split and label")
    t.add_column("label")
    for s in splits:
        t.add_column(s, justify="right")
    labels = sorted({lab for s in splits for lab in card["counts"][s]["by_label"]})
    for lab in labels:
        t.add_row(lab, *[str(card["counts"][s]["by_label"].get(lab, 0)) for s in splits])
    t.add_row("[bold]patients[/bold]", *[str(card["counts"][s]["patients"]) for s in splits])
    t.add_row("[bold]images[/bold]", *[str(card["counts"][s]["images"]) for s in splits])
    console.print(t)

    for attr in card["subgroups"]:
        t = Table(title=f"Images per split by {attr}")
        t.add_column(attr)
        for s in splits:
            t.add_column(s, justify="right")
        values = sorted({v for s in splits for v in card["counts"][s]["by_subgroup"].get(attr, {})})
        for v in values:
            t.add_row(v, *[str(sum(card["counts"][s]["by_subgroup"].get(attr, {}).get(v, {}).values()))
                           for s in splits])
        console.print(t)

    if card["quarantine_reasons"]:
        t = Table(title="Quarantined files (see quarantine.csv)")
        t.add_column("reason")
        t.add_column("files", justify="right")
        for reason, n in sorted(card["quarantine_reasons"].items(), key=lambda kv: -kv[1]):
            t.add_row(reason, str(n))
        console.print(t)
    lab = card.get("labels") or {}
    if lab.get("csv_rows_without_image") or lab.get("images_without_label"):
        console.print(f"labels: {lab.get('csv_rows_without_image', 0)} CSV rows match no image; "
                      f"{lab.get('images_without_label', 0)} images have no label (kept as unlabelled)")
