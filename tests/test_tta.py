"""Test-time augmentation and seed ensembles (issue 20 item 2): TTA changes the predictions every downstream table
reads, radiographs are never mirrored, and a seed ensemble is evaluated as its own model whose probabilities are
the mean of its members'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medvision.cli import app
from medvision.cohort.cohort import open_cohort
from medvision.config import ConfigError, parse_config
from medvision.data.dataset import CohortDataset
from medvision.evaluation.document import MetricsDocument, predictions_path
from medvision.evaluation.predict import predict_rows
from medvision.evaluation.seed_ensemble import seed_groups
from medvision.evaluation.settings import EvaluationSettings, TTASettings
from medvision.evaluation.tta import cohort_views, tta_views
from medvision.pipeline import load_pipeline
from medvision.report.build import report_from_evaluation
from medvision.tracking import load_run_classifier
from medvision.training import FinetuneConfig, finetune


@pytest.fixture(scope="module")
def two_seeds(synth_cxr_cohort, tmp_path_factory) -> tuple[list[str], str]:
    """One recipe (tiny ResNet, HOD head, one epoch) trained from seeds 0 and 1 in one SQLite store."""
    tmp = tmp_path_factory.mktemp("tta")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    runs = []
    for seed in (0, 1):
        raw = {
            "seed": seed,
            "data": {"cohort_dir": str(synth_cxr_cohort), "batch_size": 64},
            "backbone": {"name": "resnet-tiny", "weights": "none"},
            "head": {"name": "hod"},
            "optim": {"name": "adamw", "lr": 0.01, "epochs": 1, "warmup_epochs": 0},
            "trainer": {"accelerator": "cpu", "progress_bar": False},
            "output_dir": str(tmp / f"run{seed}"),
            "tracking": {"tracking_uri": uri, "experiment": "tta", "run_name": f"finetune/seed{seed}"},
        }
        runs.append(finetune(parse_config(raw, FinetuneConfig)).run_id)
    return runs, uri


def test_tta_is_the_mean_of_the_explicitly_flipped_predictions(two_seeds, synth_cxr_cohort):
    (run_id, _), uri = two_seeds
    classifier, _ = load_run_classifier(run_id, uri)
    cohort = open_cohort(synth_cxr_cohort)
    rows = cohort.rows("test")
    views = tta_views(TTASettings(preset="radiograph", flip=True, crops="none"), 32, 1)
    assert views.names == ["identity", "hflip"]  # asked to flip, a radiograph is mirrored left-right only
    tta = predict_rows(classifier, cohort, rows, views=views.views)

    ds = CohortDataset(cohort, rows)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    classifier.eval()
    with torch.inference_mode():
        plain, flipped = classifier(images), classifier(torch.flip(images, dims=[-1]))
        emb = (classifier.embed(images) + classifier.embed(torch.flip(images, dims=[-1]))) / 2
    probs = ((plain.probs + flipped.probs) / 2).numpy()
    np.testing.assert_allclose(tta.probs, probs, atol=1e-5)
    np.testing.assert_allclose(tta.logits, ((plain.logits + flipped.logits) / 2).numpy(), atol=1e-5)
    np.testing.assert_allclose(tta.embeddings, emb.numpy(), atol=1e-5)
    np.testing.assert_allclose(tta.ood_score, ((plain.ood_score + flipped.ood_score) / 2).numpy(), atol=1e-5)
    p_cols = [f"p:{c}" for c in classifier.classes]
    np.testing.assert_allclose(tta.frame[p_cols].to_numpy(), probs, atol=1e-5)  # the table the metrics read
    # and the views did change the answer (a test of averaging identical outputs would prove nothing)
    assert np.abs(tta.probs - plain.probs.numpy()).max() > 1e-4
    untouched = predict_rows(classifier, cohort, rows)  # no views: exactly the plain forward pass
    np.testing.assert_allclose(untouched.probs, plain.probs.numpy(), atol=1e-5)


def test_radiograph_views_are_never_mirrored_and_photo_views_are(synth_cxr_cohort):
    views = cohort_views(TTASettings(preset="auto"), open_cohort(synth_cxr_cohort))  # one-channel: radiograph
    assert views.preset == "radiograph" and views.active
    assert views.names == ["identity", *(f"crop_{w}" for w in ("center", "top_left", "top_right"))] + [
        "crop_bottom_left",
        "crop_bottom_right",
    ]
    image = np.zeros((1, 32, 32), np.uint8)
    image[:, :, :8] = 200  # a bright left edge: a mirrored view would put it on the right
    for view in views.views:
        out = view(image)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert out[:, :, :8].mean() > 100 > out[:, :, -8:].mean(), view.name

    photo = tta_views(TTASettings(preset="photo"), 32, 3)
    assert photo.names == ["identity", "hflip", "vflip", "hvflip"]
    rgb = np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    expected = [rgb, rgb[:, :, ::-1], rgb[:, ::-1, :], rgb[:, ::-1, ::-1]]
    for view, want in zip(photo.views, expected):
        np.testing.assert_array_equal(view(rgb), want)
    off = tta_views(TTASettings(), 32, 3)
    assert off.names == ["identity"] and not off.active
    with pytest.warns(FutureWarning, match="tta.preset"):  # the old spelling still loads, with a warning
        assert TTASettings.model_validate("grayscale").preset == "radiograph"


REPO = Path(__file__).resolve().parent.parent


def test_a_typo_in_tta_fails_at_load_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"tta\.flips"):
        parse_config({"tta": {"preset": "auto", "flips": True}}, EvaluationSettings, source="eval.yaml")
    with pytest.raises(ConfigError, match=r"tta\.preset"):
        parse_config({"tta": "radiografh"}, EvaluationSettings, source="eval.yaml")
    assert parse_config({"tta": "photo"}, EvaluationSettings).tta == TTASettings(preset="photo")
    result = CliRunner().invoke(app, ["evaluate", "run-x", "--tta", "mirror"])
    assert result.exit_code != 0 and "tta" in result.output

    data = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    data["stages"]["evaluate"]["tta"] = {"preset": "auto", "flips": True}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match=r"stages\.evaluate.*tta\.flips"):
        load_pipeline(path)
    data["stages"]["evaluate"].update(tta="auto", seed_ensemble=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    stage = load_pipeline(path).stages["evaluate"]
    assert stage.tta == TTASettings(preset="auto") and stage.seed_ensemble


def test_seed_members_of_one_recipe_form_an_ensemble_and_nothing_else_does():
    facts = {"backbone": "resnet-tiny", "weights": "none", "head": "hod", "label_fraction": 1.0}
    models = [  # what the pipeline's evaluate stage passes: a sweep over seed x lr in stage ft, one run in stage lp
        {"stage": "ft", "run_id": f"r{i}", "member": f"lr={lr},seed={seed}", "optim.lr": lr, "seed": seed, **facts}
        for i, (lr, seed) in enumerate([(0.1, 0), (0.1, 1), (0.01, 0), (0.01, 1), (0.01, 2)])
    ] + [{"stage": "lp", "run_id": "r9", "member": "main", "seed": 0, **facts}]
    names = [f"{m['stage']}-{m['member']}" for m in models]
    groups = seed_groups(models, names)
    assert [g.name for g in groups] == ["ft-seed-ensemble", "ft-seed-ensemble-2"]
    assert groups[0].members == names[:2] and groups[1].members == names[2:5]
    assert groups[1].model["optim.lr"] == 0.01 and groups[1].model["seed"] is None
    twice = [{**m, "seed": 0} for m in models[:2]]  # one seed twice: not an ensemble of seeds
    assert seed_groups(twice, names[:2]) == []


def test_a_seed_ensemble_is_evaluated_as_its_own_model_from_its_members_mean(two_seeds, tmp_path, monkeypatch):
    runs, uri = two_seeds
    out = tmp_path / "evaluation"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = ["evaluate", *runs, "--out", str(out), "--tta", "auto", "--seed-ensemble"]
    args += ["--bootstrap", "20", "--saliency", "0", "--min-patients", "5", "--subgroups", "sex,site"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = MetricsDocument.read(out / "metrics.json")
    assert doc.settings.seed_ensemble and doc.settings.tta is not None
    assert doc.settings.tta.preset == "radiograph" and len(doc.settings.tta.views) == 6
    members = [m for m in doc.models if not m.ensemble_of]
    ens = doc.model("finetune-seed-ensemble")
    assert ens.ensemble_of == [m.name for m in members] and len(members) == 2
    # scored like any model: operating point, temperature, calibration, OOD detectors and the trust section
    assert ens.operating_point is not None and ens.calibration is not None and ens.ood is not None
    assert ens.trust is not None and ens.trust.conformal is not None and "test" in ens.sets

    for s in ("val", "test", "site_ood", "condition_ood"):
        parts = [pd.read_parquet(out / predictions_path(m.name, s)) for m in members]
        mean = pd.read_parquet(out / predictions_path(ens.name, s))
        cols = [c for c in mean.columns if c.startswith("p:")]
        assert list(mean["image_id"]) == list(parts[0]["image_id"])
        want = np.mean([p[cols].to_numpy() for p in parts], axis=0)
        np.testing.assert_allclose(mean[cols].to_numpy(), want, atol=1e-6)
        np.testing.assert_allclose(mean["ood_score"], np.mean([p["ood_score"] for p in parts], axis=0), atol=1e-6)
        assert np.abs(mean[cols].to_numpy() - parts[0][cols].to_numpy()).max() > 1e-4  # the members differ
    html = report_from_evaluation(out, tmp_path / "report.html", title="seeds").read_text(encoding="utf-8")
    assert "finetune-seed-ensemble" in html
