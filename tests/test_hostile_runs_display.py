"""Hostile runs (issue 13.10, run layer) and what a user sees: user text (class names, quarantine reasons) printed
and plotted literally, never read as Rich markup or mathtext; the pipeline summary whole in an 80-column terminal;
a progress bar in a terminal and none in a log.

Each test plants the bad input and asserts the behaviour docs/SECURITY.md promises; each failed on the code
before the fix.
"""

from __future__ import annotations

import sys

HOSTILE_NAMES = ["[/]", "[bold]x", "a$\\frac{$b", "$x^$"]


def test_class_names_with_markup_print_literally_in_the_cohort_card():
    import io

    from rich.console import Console

    from medvision.cohort.card import CohortCard, print_card

    split = {"by_label": {n: 1 for n in HOSTILE_NAMES}, "patients": 4, "images": 4, "by_subgroup": {}}
    card = CohortCard(
        name="c",
        images=4,
        patients=4,
        quarantined=0,
        manifest_version=1,
        manifest_sha256="0" * 64,
        classes=HOSTILE_NAMES,
        num_inlier_classes=len(HOSTILE_NAMES),
        class_counts={},
        outlier_conditions=[],
        heldout_conditions=[],
        heldout_sites=[],
        label_fractions=[1.0],
        counts={"train": split},
        subgroups=[],
        labels={},
        rules=[],
        pseudonym_key="test",
        spec={},
        quarantine_reasons={"[red]odd[/red] file": 1},
    )
    buf = io.StringIO()
    print_card(card, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert all(name in text for name in HOSTILE_NAMES) and "[red]odd[/red] file" in text


def test_class_names_with_mathtext_plot_literally_in_the_report_figures():
    import pandas as pd

    from medvision.report import figures

    counts = pd.DataFrame({"split": ["train"] * 4, "label": HOSTILE_NAMES, "images": [1, 2, 3, 4]})
    uri = figures.cohort_counts(counts, ["train"], HOSTILE_NAMES)
    assert uri.startswith("data:image/png;base64,")


def test_the_pipeline_summary_keeps_every_result_whole_in_an_80_column_terminal():
    import io

    from rich.console import Console

    from medvision.pipeline.run import PipelineResult
    from medvision.pipeline.summary import print_summary

    result = PipelineResult(parent_run_id="p" * 32, tracking_uri="sqlite:////data/studies/mlflow.db")
    headline = "val/auroc=0.734, val/knn_acc=0.612, val/ood_auroc=0.811"
    result.rows = [
        {
            "stage": "cohort",
            "kind": "cohort",
            "member": "-",
            "status": "ran",
            "run_id": "0" * 32,
            "seconds": 3.0,
            "result": "53 images, 30 patients, 0 quarantined",
        },
        {
            "stage": "hod",
            "kind": "finetune",
            "member": "label_fraction=0.25",
            "status": "reused",
            "run_id": "1" * 32,
            "seconds": 16.0,
            "result": headline,
        },
        {
            "stage": "report",
            "kind": "report",
            "member": "-",
            "status": "ran",
            "run_id": "2" * 32,
            "seconds": 3.0,
            "result": "/data/studies/out/report/report.html",
        },
    ]
    buf = io.StringIO()
    print_summary(result, Console(file=buf, width=80, color_system=None))
    text = buf.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()[:-3]) <= 80
    for metric in headline.split(", "):
        assert metric in text, metric  # wrapped between metrics, never inside one
    assert "sqlite:////data/studies/mlflow.db" in text  # the URI to copy stays on one line


def test_training_shows_a_rich_bar_in_a_terminal_and_nothing_in_a_log(synth_cxr_cohort, tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from medvision.config import parse_config
    from medvision.engine.trainer import build_trainer
    from medvision.training import FinetuneConfig

    raw = {
        "data": {"cohort_dir": str(synth_cxr_cohort)},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "trainer": {"accelerator": "cpu"},  # progress_bar left at its default
        "output_dir": str(tmp_path / "run"),
    }
    cfg = parse_config(raw, FinetuneConfig)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # a log file, CI
    assert build_trainer(cfg).progress_bar_callback is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal
    assert isinstance(build_trainer(cfg).progress_bar_callback, RichProgressBar)
