"""Hostile runs (issue 13.11, run layer): the model a run logs and serves. A tampered checkpoint is not unpickled
when the best model is logged; the served model is code, not a pickle, runs without Lightning or scikit-learn, and
answers a bad request with 400 and its own message.

Each test plants the bad input and asserts the behaviour docs/SECURITY.md promises; each failed on the code
before the fix.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import yaml


def _tiny_classifier():
    import torch

    from medvision.classifier import Classifier
    from medvision.heads import create_head
    from medvision.models import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("resnet-tiny", weights="none", in_chans=1)
    return Classifier(backbone, create_head("linear", backbone.num_features, 2), ["benign", "malignant"])


class _Payload:
    """Unpickling this writes a marker file: what a tampered checkpoint would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_tampered_checkpoint_is_not_unpickled_when_the_best_model_is_logged(tmp_path):
    import pickle

    import torch
    from torch import nn

    from medvision.tracking import MLflowTracking

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}, "callbacks": _Payload(marker)}, ckpt)
    module = nn.Module()
    module.classifier = _tiny_classifier()
    callback = MLflowTracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "x")
    with pytest.raises(pickle.UnpicklingError):
        callback._log_network(module, ckpt)
    assert not marker.exists()


def test_the_served_model_is_code_not_a_pickle_and_needs_neither_lightning_nor_sklearn(tmp_path):
    import numpy as np
    from mlflow import MlflowClient

    from medvision.tracking import log_classifier
    from medvision.tracking.store import get_or_create_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(get_or_create_experiment(client, "serve")).info.run_id
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_classifier(client, run_id, _tiny_classifier(), (1, 32, 32))
    advice = [str(w.message) for w in caught if "mlflow" in w.filename and issubclass(w.category, UserWarning)]
    assert advice == []  # input example, type hints, pickled python_model: causes fixed, nothing to hide
    model_dir = Path(client.download_artifacts(run_id, "model", str(tmp_path / "dl")))
    assert not [p.name for p in model_dir.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    assert "model_code_path" in mlmodel and "python_model" not in mlmodel
    requirements = (model_dir / "requirements.txt").read_text()
    assert "lightning" not in requirements and "scikit-learn" not in requirements

    # Serving in an interpreter where Lightning and scikit-learn cannot be imported: the model still predicts,
    # and a bad request gets the model's own message.
    np.save(tmp_path / "x.npy", np.full((2, 1, 32, 32), 0.5, np.float32))
    absent = tmp_path / "absent"  # importing any of these fails, as on a host where they are not installed
    for name in ("lightning", "pytorch_lightning", "sklearn"):
        (absent / name).mkdir(parents=True)
        (absent / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this host')")
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np, mlflow.pyfunc
        model = mlflow.pyfunc.load_model({str(model_dir)!r})
        print(model.predict(np.load({str(tmp_path / "x.npy")!r})).shape)
        try:
            model.predict(np.full((1, 1, 32, 32), 2.0, np.float32))
        except Exception as e:
            print(type(e).__name__, e)
        """
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(absent)}  # and medvision from the model's code_paths only
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "(2, 2)"
    assert lines[1].startswith("ModelInputError") and "pixel values must be float32 in [0, 1]" in lines[1]


def test_the_scoring_server_answers_a_bad_request_with_400_and_the_models_own_message(tmp_path):
    import json

    import mlflow.pyfunc
    import numpy as np
    from fastapi.testclient import TestClient
    from mlflow import MlflowClient
    from mlflow.pyfunc import scoring_server

    from medvision.tracking import log_classifier
    from medvision.tracking.served_model import MAX_BATCH
    from medvision.tracking.store import get_or_create_experiment

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(get_or_create_experiment(client, "serve")).info.run_id
    log_classifier(client, run_id, _tiny_classifier(), (1, 32, 32))
    model = mlflow.pyfunc.load_model(client.download_artifacts(run_id, "model", str(tmp_path / "dl")))
    server = TestClient(scoring_server.init(model))  # the app `mlflow models serve` runs

    def post(images: np.ndarray):
        body = json.dumps({"inputs": images.astype(np.float32).tolist()})
        return server.post("/invocations", content=body, headers={"Content-Type": "application/json"})

    bad = post(np.full((1, 1, 32, 32), 255.0))
    assert bad.status_code == 400 and "pixel values must be float32 in [0, 1]" in bad.json()["message"]
    big = post(np.full((MAX_BATCH + 1, 1, 32, 32), 0.5))
    assert big.status_code == 400 and f"at most {MAX_BATCH} images per request" in big.json()["message"]
    ok = post(np.full((2, 1, 32, 32), 0.5))
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2
