"""``medvision predict``: a trained model on new cases gives the probabilities ``medvision evaluate`` gave the same
images, reads a folder as a label-free cohort build would (quarantine with reasons, pseudonyms, the model's own
recipe), keeps every identifier out of its outputs and its MLflow run, and refuses a model without a recipe before
it reads an image."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from medvision.classifier import save_classifier
from medvision.cli import app
from medvision.cohort.cohort import open_cohort
from medvision.evaluation.document import Evaluation
from tests.conftest import _TEST_PSEUDONYM_KEY

#: Identifiers planted in one DICOM file: none may appear in anything predict writes or logs.
_NAME, _PID = "Quillfeather^Zenobia", "PHI-4471-ZQ"


def _predict(args: list[str], uri: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["predict", *args, "--tracking-uri", uri])
    return result.exit_code, result.output


def _probs(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return frame.set_index("image_id")[columns].to_numpy()


def _evaluated(eval_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Evaluate's own predictions (validation and test) and the output columns it wrote."""
    ev = Evaluation.open(eval_dir)
    model = ev.metrics.primary
    frame = pd.concat([ev.predictions(model.name, s) for s in ("val", "test")], ignore_index=True)
    return frame, [*(f"p:{c}" for c in model.classes), "ood_score"]


@pytest.mark.slow
def test_predict_on_the_cohort_gives_evaluates_probabilities(evaluated_hod_run, synth_cxr_cohort, tmp_path):
    run_id, uri, eval_dir = evaluated_hod_run
    code, output = _predict([f"runs:/{run_id}", "--cohort", str(synth_cxr_cohort), "--out", str(tmp_path)], uri)
    assert code == 0, output
    got = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(got) == len(open_cohort(synth_cxr_cohort).manifest)  # every image, whatever its split or label
    assert list(got.columns[:5]) == ["image_id", "patient_id", "study_id", "series_id", "frame"]
    assert "relpath" not in got.columns
    expected, columns = _evaluated(eval_dir)
    assert set(expected["image_id"]) <= set(got["image_id"])
    np.testing.assert_allclose(
        _probs(got.set_index("image_id").loc[expected["image_id"]].reset_index(), columns),
        _probs(expected, columns),
        atol=1e-5,
    )
    csv = pd.read_csv(tmp_path / "predictions.csv")
    np.testing.assert_allclose(_probs(csv, columns), _probs(got, columns), atol=1e-12)
    run = MlflowClient(uri).get_run(output.split("MLflow run ")[1].split()[0])
    assert run.data.tags["medvision.model_run_id"] == run_id and run.data.metrics["images"] == len(got)
    assert run.data.params["ood_score"] == "hod" and run.data.params["recipe.size"] == "32"


@pytest.mark.slow
def test_predict_on_an_image_folder_quarantines_pseudonymises_and_logs_no_identifier(
    evaluated_hod_run, synth_cxr_cohort, tmp_path, monkeypatch
):
    run_id, uri, eval_dir = evaluated_hod_run
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)  # the cohort's key: the same image ids
    cohort = open_cohort(synth_cxr_cohort)
    images = tmp_path / "images"
    shutil.copytree(cohort.card.spec["images"], images)  # the cohort's own folder, then two changes:
    planted = cohort.rows("test")["relpath"].iloc[0]
    ds = pydicom.dcmread(images / planted)
    ds.PatientName, ds.PatientID = _NAME, _PID  # identifiers in the header ...
    ds.save_as(images / planted)
    (images / "broken.dcm").write_bytes(b"DICM" + b"\x00" * 300)  # ... and a file no reader can decode
    out = tmp_path / "out"

    code, output = _predict([run_id, "--images", str(images), "--out", str(out)], uri)
    assert code == 0, output
    got = pd.read_parquet(out / "predictions.parquet")
    quarantine = pd.read_csv(out / "quarantine.csv")
    assert quarantine["relpath"].tolist() == ["broken.dcm"] and quarantine["reason"].str.len().min() > 10
    assert "broken.dcm: " in output  # listed on the terminal with its reason, never skipped silently
    assert len(got) == len(cohort.manifest)  # every other file is predicted
    assert not {"label", "label_idx", "split", "relpath"} & set(got.columns)
    # The same pseudonym key, the same SOP instances: the same image ids, and evaluate's probabilities.
    expected, columns = _evaluated(eval_dir)
    assert set(expected["image_id"]) <= set(got["image_id"])
    np.testing.assert_allclose(
        _probs(got.set_index("image_id").loc[expected["image_id"]].reset_index(), columns),
        _probs(expected, columns),
        atol=1e-5,
    )
    # The model's recipe, not the folder defaults (224 px, 3 channels): the cached images are the cohort's.
    built = open_cohort(out / "cohort")
    assert built.card.recipe.model_dump(exclude={"kinds"}) == cohort.card.recipe.model_dump(exclude={"kinds"})

    # No identifier in any output file (the label-free cohort included) or in the MLflow store and artifacts.
    store = Path(uri.removeprefix("sqlite:///")).parent
    files = [p for root in (out, store) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "predictions.csv" and store in p.parents for p in files)  # the run's artifacts are there
    for path in files:
        data = path.read_bytes()
        for phi in (_NAME, _PID, _NAME.split("^")[0]):
            assert phi.encode() not in data, f"{phi} in {path}"
    assert _NAME not in output and _PID not in output


def test_a_model_without_a_recipe_is_refused_before_any_image_is_read(tmp_path):
    from medvision.heads import create_head
    from medvision.models import create_backbone
    from medvision.training import Classifier

    backbone = create_backbone("resnet-tiny", "none", in_chans=1)
    clf = Classifier(backbone, create_head("linear", backbone.num_features, 2), ["a", "b"])
    save_classifier(clf, tmp_path / "clf", input_shape=(1, 32, 32))  # trained on a data module, not a cohort
    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.dcm").write_bytes(b"DICM" + b"\x00" * 300)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    code, output = _predict([str(tmp_path / "clf"), "--images", str(images), "--out", str(tmp_path / "out")], uri)
    assert code == 2 and "'preprocessing'" in output and "classifier.json" in output, output
    assert not (tmp_path / "out").exists()  # no cohort built, no image read, nothing written

    both = ["--images", str(images), "--cohort", str(images), "--out", str(tmp_path / "out")]
    code, output = _predict([str(tmp_path / "clf"), *both], uri)
    assert code == 2 and "exactly one of --images" in output


def test_a_bag_model_is_refused_naming_the_command_that_reads_cases(tmp_path):
    """A MIL head reads a bag of images per case; predict writes one row per image, so it refuses before reading."""
    from medvision.cohort.recipe import PreprocessRecipe
    from medvision.heads import create_head
    from medvision.models import create_backbone
    from medvision.training import Classifier

    backbone = create_backbone("resnet-tiny", "none", in_chans=1)
    clf = Classifier(backbone, create_head("mil", backbone.num_features, 2, pooling="mean"), ["a", "b"])
    recipe = PreprocessRecipe(size=32, channels=1, fit="pad", storage="uint8")
    save_classifier(clf, tmp_path / "clf", input_shape=(1, 32, 32), preprocessing=recipe)
    images = tmp_path / "images"
    images.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, output = _predict([str(tmp_path / "clf"), "--images", str(images), "--out", str(tmp_path / "out")], uri)
    assert code == 2 and "reads a bag of images per case" in output and "medvision evaluate" in output, output
    assert not (tmp_path / "out").exists()
