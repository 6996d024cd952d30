"""``metrics.json`` is a typed document with one writer and one reader, and two models never share a name.

The silent error these reproduce (issue 21): ``medvision evaluate RUN_A RUN_B`` with two runs of one recipe (an
ImageNet start and a random start, both named ``finetune/lf1.0``) named both models alike, so one model's predictions
overwrote the other's and ``benchmarks/paired_differences.py`` compared a model with itself, printing +0.000.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medvision._documents import DocumentError
from medvision.cli import app
from medvision.config import parse_config
from medvision.evaluation.document import Evaluation, MetricsDocument
from medvision.evaluation.stage import model_names
from medvision.training import FinetuneConfig, finetune

ROOT = Path(__file__).resolve().parents[1]


def _paired_differences():
    spec = importlib.util.spec_from_file_location("paired_differences", ROOT / "benchmarks" / "paired_differences.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_models_named_alike_or_given_twice_are_refused_before_any_work():
    pipeline = [
        {"run_id": "a" * 32, "stage": "transfer", "member": "lf0.25"},
        {"run_id": "b" * 32, "stage": "transfer", "member": "lf1.0"},
    ]
    assert model_names(pipeline) == ["transfer-lf0.25", "transfer-lf1.0"]  # the pipeline's names, unchanged
    assert model_names(pipeline[:1]) == ["model"]
    same = [{**m, "member": "lf1.0"} for m in pipeline]
    with pytest.raises(ValueError, match=r"would all be named 'transfer-lf1.0'.*overwrite"):
        model_names(same)
    with pytest.raises(ValueError, match=r"a{32} given more than once"):
        model_names([pipeline[0], pipeline[0]])
    assert model_names([{"run_id": "c" * 32, "name": "finetune/lf1.0-cccccccc"}]) == ["finetune-lf1.0-cccccccc"]


def test_an_older_or_damaged_metrics_document_is_refused_naming_the_file_and_the_fix(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"schema": 1, "models": []}))
    with pytest.raises(DocumentError, match=r"metrics.json: a metrics document .* without schema_version.*evaluate"):
        Evaluation.open(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"schema_version": 5}))
    with pytest.raises(DocumentError, match=r"schema_version is 5, this medvision reads version 4"):
        Evaluation.open(tmp_path)
    (tmp_path / "metrics.json").write_text('{"schema_version": 4, "models": [')
    with pytest.raises(DocumentError, match="not a readable metrics document"):
        Evaluation.open(tmp_path)


@pytest.fixture(scope="module")
def two_starts(synth_cxr_cohort, tmp_path_factory):
    """Two one-epoch fine-tunes of one recipe that differ only in their start, both run as ``finetune/lf1.0``."""
    tmp = tmp_path_factory.mktemp("two-starts")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    runs = []
    for seed in (0, 1):
        raw = {
            "data": {"cohort_dir": str(synth_cxr_cohort), "batch_size": 64},
            "backbone": {"name": "resnet-tiny", "weights": "none"},
            "head": {"name": "linear"},
            "optim": {"name": "adamw", "lr": 0.01, "epochs": 1, "warmup_epochs": 0},
            "trainer": {"accelerator": "cpu", "progress_bar": False},
            "output_dir": str(tmp / f"run-{seed}"),
            "seed": seed,
            "tracking": {"tracking_uri": uri, "experiment": "starts", "run_name": "finetune/lf1.0"},
        }
        runs.append(finetune(parse_config(raw, FinetuneConfig)).run_id)
    return runs, uri, tmp


@pytest.mark.slow
def test_evaluating_two_runs_of_one_name_keeps_both_models_predictions(two_starts, monkeypatch):
    runs, uri, tmp = two_starts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp / "eval"
    args = ["evaluate", *runs, "--out", str(out), "--bootstrap", "5", "--saliency", "0", "--sets", "test"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    ev = Evaluation.open(out)
    names = [m.name for m in ev.metrics.models]
    assert names == [f"finetune-lf1.0-{r[:8]}" for r in runs]  # distinct and stable: the run name and id
    a, b = (ev.predictions(n, "test") for n in names)
    classes = ev.metrics.models[0].classes
    pa, pb = (f[[f"p:{c}" for c in classes]].to_numpy() for f in (a, b))
    assert a["image_id"].equals(b["image_id"]) and not np.allclose(pa, pb)  # two models, not one twice

    # the paired comparison, by model name, compares two different models ...
    pd_ = _paired_differences()
    rows = pd_.compare(ev, names[0], names[1], seed=0)
    assert len(rows) == 1 and rows[0]["diff"] == pytest.approx(rows[0]["first_auroc"] - rows[0]["second_auroc"])
    # ... and refuses to compare a model with itself instead of printing +0.000
    with pytest.raises(SystemExit, match="same run"):
        pd_.compare(ev, names[0], names[0], seed=0)
    # a stage name pairs its members by seed: "finetune" at seed 0 is names[0] itself
    with pytest.raises(SystemExit, match="same run"):
        pd_.compare(ev, "finetune", names[0], seed=0)
    one_seed = [m.model_copy(update={"seed": 0}) for m in ev.metrics.models]
    alike = Evaluation(ev.folder, ev.metrics.model_copy(update={"models": one_seed}))
    with pytest.raises(SystemExit, match="two models at label fraction 1 and seed 0"):
        pd_.compare(alike, "finetune", names[0], seed=0)  # both runs are "finetune" at one fraction and seed
    dup = ev.metrics.model_copy(update={"models": [ev.metrics.models[0], ev.metrics.models[1]]})
    twin = Evaluation(ev.folder, dup)
    twin.predictions = lambda model, split: a  # one model's predictions saved under both names (the old bug)
    with pytest.raises(SystemExit, match="identical test predictions"):
        pd_.compare(twin, names[0], names[1], seed=0)
    same = pd_.compare(twin, names[0], names[1], seed=0, chosen=True)  # --best-of: auto that chose this recipe
    assert len(same) == 1 and same[0]["diff"] == 0 and same[0]["low"] == same[0]["high"] == 0

    # one run given twice is refused before anything is predicted
    again = CliRunner().invoke(app, ["evaluate", runs[0], f"runs:/{runs[0]}", "--out", str(tmp / "e2")])
    assert again.exit_code == 2 and "given more than once" in again.output
    assert not (tmp / "e2" / "metrics.json").exists()
    assert MetricsDocument.read(out / "metrics.json") == ev.metrics  # the one reader reads what the writer wrote
