"""One fine-tuning run in MLflow: params, per-epoch metrics, config, cohort hash, a servable model, no PHI."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medvision.cohort.cohort import open_cohort
from medvision.config import parse_config
from medvision.data.dataset import CohortDataModule
from medvision.models import create_backbone
from medvision.tracking import load_run_classifier
from medvision.training import FinetuneConfig, finetune

EPOCHS = 2


# Each test here trains and logs real runs (tens of seconds): `make test-fast` leaves them out.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hod_run(synth_cxr_cohort, tmp_path_factory):
    """A short HOD fine-tune recorded in its own SQLite store: ``(result, config, tracking_uri)``."""
    tmp = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    raw = {
        "data": {"cohort_dir": str(synth_cxr_cohort), "batch_size": 32},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "head": {"name": "hod", "options": {"coarse_weight": 0.5}},
        "optim": {"name": "adamw", "lr": 0.01, "epochs": EPOCHS, "warmup_epochs": 0.5},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(tmp / "run"),
        "tracking": {"tracking_uri": uri, "experiment": "test-tracking", "run_name": "hod-smoke"},
    }
    cfg = parse_config(raw, FinetuneConfig)
    return finetune(cfg), cfg, uri


@pytest.fixture
def global_uri(hod_run):
    """Point MLflow's process-wide tracking URI at the run's store (``runs:/`` URIs resolve through it)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(hod_run[2])
    yield hod_run[2]
    mlflow.set_tracking_uri(previous)


def _val_images(cohort: Path, n: int = 12) -> np.ndarray:
    ds = CohortDataModule(cohort).dataset("val")
    return np.stack([ds[i]["image"].numpy() for i in range(n)]).astype(np.float32)


def test_run_holds_flat_params_per_epoch_metrics_and_the_cohort_hash(hod_run, synth_cxr_cohort):
    result, cfg, uri = hod_run
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "hod-smoke"
    p = run.data.params
    assert p["optim.lr"] == "0.01" and p["head.name"] == "hod" and p["head.options.coarse_weight"] == "0.5"
    assert p["mode"] == "full" and p["backbone.name"] == "resnet-tiny" and p["backbone.source"] == "none"
    sha = open_cohort(synth_cxr_cohort).manifest_sha256
    assert p["data.manifest_sha256"] == sha and run.data.tags["cohort.manifest_sha256"] == sha
    for name in ("train/loss", "val/loss", "val/auroc", "val/acc", "train/lr"):
        steps = sorted(m.step for m in client.get_metric_history(result.run_id, name))
        assert steps == list(range(EPOCHS)), name
    assert run.data.metrics["val/auroc"] == pytest.approx(result.metrics["val/auroc"])


def test_artifacts_reproduce_the_config_and_name_the_cohort(hod_run, synth_cxr_cohort, tmp_path):
    result, cfg, uri = hod_run
    client = MlflowClient(uri)
    top = {f.path for f in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "cohort", "model", "backbone"} <= top
    local = Path(client.download_artifacts(result.run_id, "config.yaml", str(tmp_path)))
    again = parse_config(yaml.safe_load(local.read_text()), FinetuneConfig)
    assert again.model_copy(update={"data": cfg.data, "output_dir": cfg.output_dir, "tracking": cfg.tracking}) == cfg
    assert again.data.cohort_dir == Path(synth_cxr_cohort).resolve() and again.tracking.tracking_uri == uri
    sha_file = Path(client.download_artifacts(result.run_id, "cohort/manifest_sha256.txt", str(tmp_path)))
    assert sha_file.read_text().strip() == open_cohort(synth_cxr_cohort).manifest_sha256


def test_pyfunc_model_predicts_class_probabilities_and_hod_ood_score(hod_run, global_uri, synth_cxr_cohort):
    result, cfg, uri = hod_run
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    x = _val_images(synth_cxr_cohort)
    frame = model.predict(x)
    inliers = open_cohort(synth_cxr_cohort).classes[:3]
    assert list(frame.columns) == [*inliers, "ood_score"] and len(frame) == len(x)
    np.testing.assert_allclose(frame[inliers].sum(axis=1), 1.0, atol=1e-5)
    assert frame["ood_score"].between(0, 1).all()

    # the served weights are the best checkpoint's, and agree with the classifier loaded for evaluation
    clf, card = load_run_classifier(result.run_id, tracking_uri=uri)
    assert card.classes == inliers and card.input_shape == (1, 32, 32)
    assert card.preprocessing == open_cohort(synth_cxr_cohort).card.recipe  # the cohort's recipe travels with it
    best = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in clf.head.state_dict().items():
        assert torch.equal(value, best["classifier.head." + key]), key
    with torch.no_grad():
        out = clf(torch.from_numpy(x))
    np.testing.assert_allclose(frame[inliers].to_numpy(), out.probs.numpy(), atol=1e-6)
    np.testing.assert_allclose(frame["ood_score"].to_numpy(), out.ood_score.numpy(), atol=1e-6)

    with pytest.raises(MlflowException, match=r"\(-1, 1, 32, 32\)"):  # the signature guards the shape
        model.predict(x[0])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):  # and the model the value range
        model.predict(x * 255.0)


def test_model_is_servable_through_the_scoring_server_input_path(hod_run, global_uri, synth_cxr_cohort):
    from mlflow.models import validate_serving_input

    result = hod_run[0]
    x = _val_images(synth_cxr_cohort, n=3)
    payload = json.dumps({"inputs": x.tolist()})  # what `mlflow models serve` receives on /invocations
    frame = validate_serving_input(f"runs:/{result.run_id}/model", payload)
    assert len(frame) == 3 and "ood_score" in frame.columns


def test_backbone_artifact_starts_a_later_stage(hod_run, global_uri):
    result = hod_run[0]
    clf, _ = load_run_classifier(result.run_id, tracking_uri=hod_run[2])
    bb = create_backbone("resnet-tiny", weights=f"mlflow:runs:/{result.run_id}/backbone", in_chans=1)
    mine, theirs = bb.state_dict(), clf.backbone.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_nothing_recorded_carries_planted_phi(hod_run, synth_cxr_cohort, tmp_path):
    result, cfg, uri = hod_run
    planted = json.loads((Path(synth_cxr_cohort).parent / "source" / "phi_planted.json").read_text())
    secrets = {str(v) for values in planted.values() for v in values if len(str(v)) >= 4}
    assert secrets
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    texts = [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(run.data.metrics)]
    local = Path(client.download_artifacts(result.run_id, "", str(tmp_path)))
    for path in local.rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".json", ".txt", ".md", ""} and "code" not in path.parts:
            texts.append(path.read_text(errors="replace"))
    blob = "\n".join(texts)
    leaked = sorted(s for s in secrets if s in blob)
    assert not leaked
