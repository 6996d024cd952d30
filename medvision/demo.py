"""``make demo``: the main job end to end on an embedded default, on CPU, with no network.

It writes a synthetic dermatology cohort of real DICOM files (fake PHI in the headers), builds it
into a cohort (pseudonyms, patient-level splits, held-out site and conditions, the image cache)
and shows its card. Stages that exist downstream are added here as they land, so the demo is
always the product's current main path.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from medvision.cohort.build import build_cohort
from medvision.cohort.card import print_card
from medvision.cohort.synth import synthesize

__all__ = ["run_demo"]


def run_demo(out: str | Path, patients: int = 120, seed: int = 0) -> dict:
    """Run the demo into ``out``; returns the cohort card."""
    console = Console()
    out = Path(out).resolve()
    console.rule("1/2  synthetic DICOM cohort")
    spec_path = synthesize(out / "source", kind="derm", patients=patients, seed=seed)
    console.print(f"wrote {spec_path.parent} (DICOM + photos, labels.csv, cohort.yaml)")
    console.rule("2/2  cohort build")
    card = build_cohort(spec_path, out / "cohort")
    print_card(card, console)
    console.rule("done")
    console.print(f"cohort: {out / 'cohort'}  (manifest.parquet, quarantine.csv, cohort.json, cache/)")
    console.print(f"look again with: .venv/bin/medvision cohort show {out / 'cohort'}")
    return card
