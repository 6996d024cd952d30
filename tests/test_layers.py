"""The one-way layers of docs/ARCHITECTURE.md, and the concepts that must have exactly one definition."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medvision.auroc import macro_auroc
from medvision.evaluation.ensemble import knn_rank_backbones
from medvision.knn import knn_accuracy

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_importing_the_classifier_loads_no_lightning_mlflow_or_sklearn():
    code = (
        "import sys, medvision.classifier\n"
        "print(','.join(m for m in ('lightning', 'pytorch_lightning', 'mlflow', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.slow
def test_layer_contract_holds_and_fails_on_a_planted_upward_import(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "medvision", copy / "medvision", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    assert _lint(copy).returncode == 0
    spec = copy / "medvision" / "cohort" / "spec.py"
    spec.write_text(spec.read_text() + "\nfrom medvision.pipeline import run_pipeline  # noqa: E402, F401\n")
    broken = _lint(copy)
    assert broken.returncode != 0
    assert "medvision.cohort.spec -> medvision.pipeline" in broken.stdout


def test_macro_auroc_is_sklearns_when_every_class_is_present_and_leaves_absent_classes_out():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    assert macro_auroc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    # class 2 absent: the mean of the two classes that have both outcomes, not NaN and not 0.5
    keep = y != 2
    expected = np.mean([roc_auc_score(y[keep] == k, p[keep, k]) for k in (0, 1)])
    assert macro_auroc(y[keep], p[keep]) == pytest.approx(expected, abs=1e-12)
    # binary: class 1's AUROC; bootstrap weights give one value per row, the row of ones is the plain metric
    yb, pb = (y == 1).astype(int), np.c_[1 - p[:, 1], p[:, 1]]
    w = np.vstack([np.ones(len(yb)), rng.integers(0, 3, len(yb))])
    vals = macro_auroc(yb, pb, w)
    assert vals[0] == pytest.approx(roc_auc_score(yb, pb[:, 1]), abs=1e-12)
    assert vals[1] == pytest.approx(roc_auc_score(yb, pb[:, 1], sample_weight=w[1]), abs=1e-12)


def test_checkpoint_selection_and_the_report_use_the_same_auroc():
    from medvision.evaluation.predict import Predictions
    from medvision.evaluation.tables import discrimination
    from medvision.training.module import FinetuneModule

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)  # class 2 of 3 absent from this validation set
    p = rng.dirichlet(np.ones(3), 60)
    head = type("H", (), {"multilabel": False, "num_classes": 3})()
    module = FinetuneModule.__new__(FinetuneModule)
    torch.nn.Module.__init__(module)
    module.classifier = type("C", (), {"head": head})()
    selected = module.epoch_metrics(torch.tensor(p), torch.full((60,), float("nan")), torch.tensor(y))["val/auroc"]
    import pandas as pd

    frame = pd.DataFrame({"label_idx": y, "patient_id": [f"p{i}" for i in range(60)]})
    pred = Predictions(frame=frame, logits=np.log(p), probs=p, embeddings=np.zeros((60, 2)), ood_score=None)
    reported = discrimination(pred, 1, None, 0, 0)["auroc"]["value"]
    assert selected == pytest.approx(reported, abs=1e-12)


def test_knn_accuracy_is_chunk_invariant_and_ranks_backbones():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    x[:, 0] += 3 * y  # planted structure
    t, ty = torch.from_numpy(x), torch.from_numpy(y)
    whole = knn_accuracy(t, ty, chunk_size=10_000)
    assert knn_accuracy(t, ty, chunk_size=7) == whole
    assert 0.5 < whole <= 1.0
    ranking = knn_rank_backbones({"structured": x, "noise": rng.normal(size=x.shape)}, y)
    assert ranking.index[0] == "structured"
    assert ranking.loc["structured", "loo_1nn_accuracy"] == pytest.approx(whole)


def test_the_served_model_needs_neither_lightning_nor_scikit_learn():
    from medvision.tracking.pyfunc import pip_requirements

    names = {r.split("==")[0] for r in pip_requirements()}
    assert {"torch", "timm", "mlflow"} <= names
    assert not names & {"lightning", "scikit-learn"}
    code = (
        "import sys, medvision.tracking.pyfunc\n"
        "print(','.join(m for m in ('lightning', 'pytorch_lightning', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
