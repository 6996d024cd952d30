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


def test_a_folder_named_by_a_patient_id_is_refused_with_a_fix_predict_offers(tmp_path):
    """The cohort build's advice (`--no-record-paths`) is not an option of predict, whose DICOM results find their
    sources by path: predict says to rename, and quotes the path redacted."""
    from medvision.cohort.recipe import PreprocessRecipe
    from medvision.heads import create_head
    from medvision.models import create_backbone
    from medvision.training import Classifier
    from tests.dicom_factory import dicom_image, write

    backbone = create_backbone("resnet-tiny", "none", in_chans=1)
    clf = Classifier(backbone, create_head("linear", backbone.num_features, 2), ["a", "b"])
    recipe = PreprocessRecipe(size=32, channels=1, fit="pad", storage="uint8")
    save_classifier(clf, tmp_path / "clf", input_shape=(1, 32, 32), preprocessing=recipe)
    pid = "PLANTID0XYZ"
    for images in (tmp_path / "images", tmp_path / pid / "scans"):  # the ID in a subfolder, then in the root's path
        (images / pid).mkdir(parents=True)
        write(dicom_image(np.zeros((16, 16), np.uint8), PatientID=pid), images / pid / "case0.dcm")
        args = [str(tmp_path / "clf"), "--images", str(images), "--out", str(tmp_path / "o")]
        code, output = _predict(args, f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert code == 2, output
        assert "<patient>/case0.dcm" in output and "rename those folders or files" in output, output
        assert "--no-record-paths" not in output and pid not in output, output


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


# --- Seed ensembles and test-time augmentation, as evaluation computes them -------------------------------------

_ENSEMBLE = "finetune-seed-ensemble"


@pytest.fixture(scope="module")
def evaluated_ensemble(evaluated_hod_run, synth_cxr_cohort, tmp_path_factory) -> tuple[list[str], str, Path]:
    """The HOD run and a second seed of its recipe (in its store), evaluated together with ``--seed-ensemble`` and
    ``--tta auto`` (radiograph crops on these grey images): ``([run, run], tracking_uri, eval_dir)``."""
    from tests.conftest import hod_finetune

    run_id, uri, _ = evaluated_hod_run
    tmp = tmp_path_factory.mktemp("evaluated-ensemble")
    runs = [run_id, hod_finetune(synth_cxr_cohort, tmp / "run", uri, seed=1)]
    out = tmp / "evaluation"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        args = [*runs, "--out", str(out), "--bootstrap", "5", "--saliency", "0", "--sets", "test"]
        result = CliRunner().invoke(app, ["evaluate", *args, "--seed-ensemble", "--tta", "auto"])
    assert result.exit_code == 0, result.output
    return runs, uri, out


@pytest.fixture(scope="module")
def few_test_images(evaluated_hod_run, synth_cxr_cohort, tmp_path_factory) -> Path:
    """40 of the cohort's test images built label-free with the models' recipe and the cohort's pseudonym key (so
    their image ids are the evaluation's): a small cohort to predict with ``--cohort``, six views and two models
    per image staying quick."""
    from medvision.cohort.build import build_cohort
    from medvision.serving import label_free_spec
    from medvision.tracking import load_run_classifier

    run_id, uri, _ = evaluated_hod_run
    recipe = load_run_classifier(run_id, uri)[1].preprocessing
    cohort = open_cohort(synth_cxr_cohort)
    tmp = tmp_path_factory.mktemp("test-images")
    for relpath in cohort.rows("test")["relpath"].iloc[:40]:
        (tmp / "images" / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(cohort.card.spec["images"]) / relpath, tmp / "images" / relpath)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)
        build_cohort(label_free_spec(tmp / "images", recipe, workers=1), tmp / "cohort")
    return tmp / "cohort"


def _model_predictions(eval_dir: Path, name: str | None = None, run_id: str | None = None) -> pd.DataFrame:
    """Evaluate's test predictions of the model called ``name`` (or the single run ``run_id``), by image id."""
    doc = Evaluation.open(eval_dir)
    model = next(m for m in doc.metrics.models if m.name == name or (m.run_id == run_id and not m.ensemble_of))
    return doc.predictions(model.name, "test").set_index("image_id")


def _agree(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """``got`` (predict's table) has ``expected``'s probabilities and OOD scores on every image of ``expected``."""
    columns = [c for c in expected.columns if c.startswith("p:") or c == "ood_score"]
    assert "ood_score" in columns and len(got) == 40 and set(got["image_id"]) <= set(expected.index)
    got = got.set_index("image_id")
    np.testing.assert_allclose(got[columns], expected.loc[got.index, columns], atol=1e-5)


def _differ(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """The largest gap between two tables' probabilities on ``a``'s images: what a test relies on to fail."""
    columns = [c for c in a.columns if c.startswith("p:")]
    return float(np.abs(a[columns].to_numpy() - b.loc[a.index, columns].to_numpy()).max())


def _logged(uri: str, output: str) -> dict[str, str]:
    return MlflowClient(uri).get_run(output.split("MLflow run ")[1].split()[0]).data.params


@pytest.mark.slow
def test_predict_with_several_runs_gives_the_mean_evaluations_seed_ensemble_gives(
    evaluated_ensemble, few_test_images, tmp_path
):
    runs, uri, eval_dir = evaluated_ensemble
    ensemble = _model_predictions(eval_dir, name=_ENSEMBLE)
    first, second = (_model_predictions(eval_dir, run_id=r) for r in runs)
    assert _differ(first, second) > 1e-3  # two seeds, two models: one member alone is not the ensemble
    code, output = _predict([*runs, "--tta", "auto", "--cohort", str(few_test_images), "--out", str(tmp_path)], uri)
    assert code == 0, output
    _agree(pd.read_parquet(tmp_path / "predictions.parquet"), ensemble)
    assert "seed ensemble of 2 runs" in output
    params = _logged(uri, output)
    assert params["members"] == ",".join(runs) and params["ensemble"] == "seed-mean"
    record = Evaluation.open(eval_dir).metrics.settings.tta
    assert params["tta.views"] == ",".join(record.views) and params["tta.preset"] == "radiograph"


@pytest.mark.slow
def test_predict_with_tta_gives_evaluates_tta_probabilities(
    evaluated_hod_run, evaluated_ensemble, few_test_images, tmp_path
):
    runs, uri, eval_dir = evaluated_ensemble
    augmented = _model_predictions(eval_dir, run_id=runs[0])  # evaluate --tta auto: six views of each image
    plain = _model_predictions(evaluated_hod_run[2], run_id=runs[0])  # the same run evaluated without
    assert _differ(augmented, plain) > 1e-4  # the views change the probabilities: ignoring --tta would fail here
    code, output = _predict([runs[0], "--tta", "auto", "--cohort", str(few_test_images), "--out", str(tmp_path)], uri)
    assert code == 0, output
    _agree(pd.read_parquet(tmp_path / "predictions.parquet"), augmented)
    assert "averaged over 6 views" in output


@pytest.mark.slow
def test_predict_with_a_tta_evaluation_applies_its_views_and_its_ensemble_unasked(
    evaluated_ensemble, few_test_images, tmp_path
):
    runs, uri, eval_dir = evaluated_ensemble
    # the runs in the other order: an ensemble is its set of members
    code, output = _predict(
        [*runs[::-1], "--cohort", str(few_test_images), "--out", str(tmp_path), "--evaluation", str(eval_dir)], uri
    )
    assert code == 0, output
    got = pd.read_parquet(tmp_path / "predictions.parquet")
    _agree(got, _model_predictions(eval_dir, name=_ENSEMBLE))
    model = Evaluation.open(eval_dir).metrics.model(_ENSEMBLE)  # its thresholds, not a member's
    assert got["positive"].tolist() == (got[f"p:{model.positive_class}"] >= model.operating_point.threshold).tolist()
    params = _logged(uri, output)
    assert params["evaluation.model"] == _ENSEMBLE and params["tta.preset"] == "radiograph"


def _saved_model(folder: Path, classes: list[str], size: int = 32) -> str:
    """An untrained tiny classifier saved with a recipe (``size`` px, grey): a model predict can load."""
    from medvision.cohort.recipe import PreprocessRecipe
    from medvision.heads import create_head
    from medvision.models import create_backbone
    from medvision.training import Classifier

    backbone = create_backbone("resnet-tiny", "none", in_chans=1)
    clf = Classifier(backbone, create_head("linear", backbone.num_features, len(classes)), classes)
    recipe = PreprocessRecipe(size=size, channels=1, fit="pad", storage="uint8")
    save_classifier(clf, folder, input_shape=(1, size, size), preprocessing=recipe)
    return str(folder)


def test_ensemble_members_of_other_classes_or_recipes_are_refused_before_any_image_is_read(tmp_path):
    first = _saved_model(tmp_path / "first", ["a", "b"])
    other_classes = _saved_model(tmp_path / "other-classes", ["a", "c"])
    other_size = _saved_model(tmp_path / "other-size", ["a", "b"], size=48)
    images, out, uri = tmp_path / "images", tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    images.mkdir()
    (images / "broken.dcm").write_bytes(b"DICM" + b"\x00" * 300)
    source = ["--images", str(images), "--out", str(out)]
    for models, why in [
        ([first, other_classes], "classes ['a', 'c'], not ['a', 'b']"),
        ([first, other_size], "preprocessing.size 48, not 32"),
        ([first, first], "given more than once"),
    ]:
        code, output = _predict([*models, *source], uri)
        assert code == 2 and why in output, output
        assert f"model {models[1]}" in output or "more than once" in output
    code, output = _predict([first, *source, "--tta", "sideways"], uri)
    assert code == 2 and "--tta" in output and "photo" in output, output
    assert not out.exists()  # no cohort built, no image read, nothing written


@pytest.mark.slow
def test_runs_or_tta_other_than_the_evaluations_are_refused_before_any_image_is_read(
    evaluated_hod_run, evaluated_ensemble, tmp_path
):
    from medvision.serving.models import load_models

    runs, uri, eval_dir = evaluated_ensemble
    single_eval = evaluated_hod_run[2]  # evaluated the first run alone, without test-time augmentation
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    (images / "broken.dcm").write_bytes(b"DICM" + b"\x00" * 300)
    source = ["--images", str(images), "--out", str(out)]
    code, output = _predict([*runs, *source, "--evaluation", str(single_eval)], uri)
    assert code == 2 and "did not evaluate runs" in output and "--seed-ensemble" in output, output
    # another seed of the same recipe (same classes): the evaluation of the first run certified nothing for it
    code, output = _predict([runs[1], *source, "--evaluation", str(single_eval)], uri)
    assert code == 2 and f"did not evaluate run {runs[1]}" in output and "medvision evaluate" in output, output
    code, output = _predict([*runs, *source, "--evaluation", str(eval_dir), "--tta", "none"], uri)
    assert code == 2 and "--tta none" in output and "leave --tta out" in output, output
    code, output = _predict([runs[0], *source, "--evaluation", str(single_eval), "--tta", "auto"], uri)
    assert code == 2 and "--tta auto" in output, output
    assert not out.exists()  # no cohort built in --out: refused before any image was read
    # The evaluation's own views, named as given (auto) or as resolved there (radiograph), are accepted.
    for asked in ("auto", "radiograph", None):
        served = load_models(runs, uri, evaluation=eval_dir, tta=asked)
        assert served.tta.preset == "radiograph" and served.evaluated.metrics.name == _ENSEMBLE


def test_a_seed_ensemble_is_named_in_dicom_reports_by_a_version_a_dicom_field_holds(tmp_path):
    """A DICOM version holds 64 characters: an ensemble is versioned by a digest of its members, not their list."""
    from medvision.classifier import load_classifier
    from medvision.serving.predict import model_identity
    from medvision.tracking.model_ref import ModelRef

    _, card = load_classifier(_saved_model(tmp_path / "clf", ["a", "b"]))
    runs = ["0" * 32, "1" * 32, "2" * 32]
    ensemble = model_identity(ModelRef.parse(runs[0]), card, None, runs)
    assert ensemble.name.startswith("seed ensemble of 3 runs") and len(ensemble.version) <= 64
    assert model_identity(ModelRef.parse(runs[0]), card, None, runs[::-1]) == ensemble  # the set, not the order
    assert model_identity(ModelRef.parse(runs[0]), card, None, runs[:2]).version != ensemble.version
    assert model_identity(ModelRef.parse(runs[0]), card, None, runs[:1]).version == runs[0]  # one run: its id
