"""A fine-tuned HOD run exported as a MONAI bundle: MONAI's own offline checks pass and its inference
config reproduces medvision's predictions, p_out included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medvision.cli import app
from medvision.config import parse_config
from medvision.data.dataset import CohortDataModule
from medvision.export import BUNDLE_SCHEMA
from medvision.tracking import load_run_classifier
from medvision.training import FinetuneConfig, finetune


@pytest.fixture(scope="module")
def hod_run(synth_cxr_cohort, tmp_path_factory):
    """A one-epoch HOD fine-tune of a tiny ResNet in its own SQLite store: ``(run_id, tracking_uri)``."""
    tmp = tmp_path_factory.mktemp("bundle-run")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    raw = {
        "data": {"cohort_dir": str(synth_cxr_cohort), "batch_size": 64},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "head": {"name": "hod"},
        "optim": {"name": "adamw", "lr": 0.01, "epochs": 1, "warmup_epochs": 0},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(tmp / "run"),
        "tracking": {"tracking_uri": uri, "experiment": "bundle", "run_name": "hod-bundle"},
    }
    return finetune(parse_config(raw, FinetuneConfig)).run_id, uri


@pytest.mark.slow
def test_bundle_passes_monai_checks_and_reproduces_predictions(hod_run, synth_cxr_cohort, tmp_path):
    from monai.bundle import run, verify_metadata, verify_net_in_out

    run_id, uri = hod_run
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(
        app, ["export", run_id, "--format", "monai-bundle", "--out", str(bundle), "--tracking-uri", uri]
    )
    assert result.exit_code == 0, result.output
    meta, config = bundle / "configs" / "metadata.json", bundle / "configs" / "inference.json"
    assert (bundle / "models" / "model.ts").exists()

    # MONAI's checks, offline: the schema file kept in the repository stands in for the published one.
    verify_metadata(meta_file=str(meta), filepath=str(BUNDLE_SCHEMA))
    verify_net_in_out(
        net_id="network", meta_file=str(meta), config_file=str(config), device="cpu", bundle_root=str(bundle)
    )
    metadata = json.loads(meta.read_text())
    clf, card = load_run_classifier(run_id, tracking_uri=uri)
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert list(pred["channel_def"].values()) == [*card["classes"], "p_out"]
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == card["input_shape"][1:]

    # The same images through medvision and through the bundle's own inference config.
    ds = CohortDataModule(synth_cxr_cohort).dataset("val")
    x = np.stack([ds[i]["image"].numpy() for i in range(10)]).astype(np.float32)  # (N, 1, 32, 32) in [0, 1]
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, img in enumerate(x):
        Image.fromarray(np.round(img[0] * 255).astype(np.uint8)).save(pngs / f"img{i:02d}.png")
    run(
        run_id="run",
        config_file=str(config),
        meta_file=str(meta),
        bundle_root=str(bundle),
        dataset_dir=str(pngs),
        output_file=str(tmp_path / "predictions.csv"),
    )
    got = np.loadtxt(tmp_path / "predictions.csv", delimiter=",", skiprows=1)
    header = (tmp_path / "predictions.csv").read_text().splitlines()[0].split(",")
    assert header == [*card["classes"], "p_out"] and got.shape == (10, len(card["classes"]) + 1)
    with torch.no_grad():
        out = clf(torch.from_numpy(np.round(x * 255) / 255).float())
    np.testing.assert_allclose(got[:, :-1], out.probs.numpy(), atol=1e-5)
    np.testing.assert_allclose(got[:, -1], out.ood_score.numpy(), atol=1e-5)
    assert np.allclose(got[:, :-1].sum(1), 1, atol=1e-5) and not np.allclose(got[:, -1], got[0, -1])


@pytest.mark.slow
def test_export_refuses_a_full_folder_and_an_unknown_format(hod_run, tmp_path):
    run_id, uri = hod_run
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = CliRunner().invoke(app, ["export", run_id, "--out", str(tmp_path / "full"), "--tracking-uri", uri])
    assert r.exit_code == 2 and "not empty" in r.output
    r = CliRunner().invoke(app, ["export", run_id, "--format", "onnx", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "monai-bundle" in r.output
