"""``medvision predict``: a trained model on new cases gives the probabilities ``medvision evaluate`` gave the same
images, reads a folder as a label-free cohort build would (quarantine with reasons, pseudonyms, the model's own
recipe), keeps every identifier out of its outputs and its MLflow run, and refuses a model without a recipe before
it reads an image."""

from __future__ import annotations

import json
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


def test_one_source_a_sendable_url_and_a_valid_pacs_spec_are_checked_before_the_model_is_loaded(tmp_path):
    """Exactly one of --images/--cohort/--pacs, a --send URL naming a PACS and a --pacs spec without typos are
    checked from the command line alone: the model (here none exists) is not loaded, no PACS is asked anything."""
    images, out, uri = tmp_path / "images", tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    images.mkdir()
    spec = tmp_path / "request.yaml"
    spec.write_text("protocol: dimse\nhost: 127.0.0.1\nport: 9\nstore: store\nqeury: {modality: [DX]}\n")
    missing = str(tmp_path / "no-model")
    for sources in ([], ["--images", str(images), "--pacs", str(spec)], ["--cohort", str(images), "--pacs", str(spec)]):
        code, output = _predict([missing, *sources, "--out", str(out)], uri)
        assert code == 2 and "exactly one of --images" in output and "--pacs SPEC" in output, output
    for url, why in [
        ("ftp://pacs/x", "dimse://CALLED_AET@host:port"),
        ("dimse://ORTHANC@pacs", "dimse://CALLED_AET@host:port"),
        ("dimse://ORTHANC:Secr3t-pw@pacs:104", "DIMSE has no passwords"),
        ("dimse://AN-AE-TITLE-TOO-LONG@pacs:104", "invalid called_aet"),
        ("https://user:Secr3t-pw@pacs/dicom-web", "without credentials"),
    ]:
        code, output = _predict([missing, "--images", str(images), "--out", str(out), "--send", url], uri)
        assert code == 2 and why in output and "Secr3t-pw" not in output, output
    code, output = _predict([missing, "--pacs", str(spec), "--out", str(out)], uri)
    assert code == 2 and "pacs.qeury: unknown key. Did you mean 'query'?" in output, output
    assert not out.exists() and not (tmp_path / "store").exists()  # nothing pulled, nothing written


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


@pytest.mark.slow
def test_predict_with_the_evaluation_applies_its_operating_point_conformal_sets_and_referral(
    evaluated_hod_run, synth_cxr_cohort, tmp_path
):
    from tests.test_dicom_results import report_values

    run_id, uri, eval_dir = evaluated_hod_run
    base = [run_id, "--cohort", str(synth_cxr_cohort), "--out", str(tmp_path / "out")]
    code, output = _predict([*base, "--evaluation", str(tmp_path / "nowhere")], uri)
    assert code == 2 and f"--evaluation {tmp_path / 'nowhere'}: metrics.json does not exist" in output
    assert "medvision evaluate" in output and not (tmp_path / "out").exists()  # the fix named, before any image
    other = tmp_path / "feature-ood"  # a referral rule on a feature-space detector: predict cannot apply its OOD part
    other.mkdir()
    doc = json.loads((eval_dir / "metrics.json").read_text())
    for m in doc["models"]:
        if m.get("trust") and m["trust"].get("abstain"):
            m["trust"]["abstain"].update(ood="mahalanobis", ood_threshold=1.0)
    (other / "metrics.json").write_text(json.dumps(doc))
    code, output = _predict([*base, "--evaluation", str(other)], uri)
    assert code == 2 and "trust.abstain.ood is 'mahalanobis'" in output and not (tmp_path / "out").exists()

    code, output = _predict([*base, "--evaluation", str(eval_dir), "--dicom-results"], uri)
    assert code == 0, output
    got = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    model = Evaluation.open(eval_dir).metrics.primary
    probs = got[[f"p:{c}" for c in model.classes]].to_numpy()
    # The operating point and the referral rule are the recorded thresholds, applied as recorded.
    positive = got[f"p:{model.positive_class}"] >= model.operating_point.threshold
    assert got["positive"].tolist() == positive.tolist()
    rule = model.trust.abstain
    refer = probs.max(axis=1) < (np.inf if rule.threshold is None else rule.threshold)
    if rule.ood_threshold is not None:
        assert got["ood_flag"].tolist() == (got["ood_score"] > rule.ood_threshold).tolist()
        refer |= got["ood_score"].to_numpy() > rule.ood_threshold
    assert got["refer"].tolist() == refer.tolist()
    # The conformal sets keep their promise on the labelled test images (target 0.9, a few dozen patients).
    cohort = open_cohort(synth_cxr_cohort)
    test = cohort.rows("test")
    test = test[test["label"].isin(model.classes)].merge(got[["image_id", "conformal_set"]], on="image_id")
    covered = [label in s.split("|") for label, s in zip(test["label"], test["conformal_set"], strict=True)]
    assert np.mean(covered) >= model.trust.conformal.target - 0.15
    assert got["conformal_set"].str.split("|").map(len).mean() < len(model.classes)  # not every class every time
    # The DICOM reports carry the referral decision and the OOD flag of each image.
    path = sorted((tmp_path / "out" / "dicom").glob("*.dcm"))[0]
    values = report_values(pydicom.dcmread(path))
    for image_id, (_, codes) in values.items():
        row = got.set_index("image_id").loc[image_id]
        assert codes["Referral decision"] == ("Refer to a human reader" if row["refer"] else "Accept")
        if "ood_flag" in got.columns:
            assert codes["Out-of-distribution"] == ("Yes" if row["ood_flag"] else "No")
