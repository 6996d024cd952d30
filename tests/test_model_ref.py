"""Model references are parsed in one place: a run id, ``runs:/``, ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``
and a local folder all load the same classifier, and anything else fails naming the forms that work."""

from __future__ import annotations

import pytest
import torch

from medvision.classifier import Classifier, ClassifierCard, load_classifier, save_classifier
from medvision.cohort.recipe import PreprocessRecipe
from medvision.heads import create_head
from medvision.models import create_backbone
from medvision.tracking.model_ref import ModelRef, ModelRefError

RUN = "0123456789abcdef0123456789abcdef"


def _classifier() -> Classifier:
    torch.manual_seed(0)
    backbone = create_backbone("resnet-tiny", weights="none", in_chans=1)
    return Classifier(backbone, create_head("linear", backbone.num_features, 2), ["benign", "malignant"]).eval()


def test_every_form_of_a_model_reference_parses_to_one_meaning(tmp_path):
    assert ModelRef.parse(RUN) == ModelRef.parse(f"runs:/{RUN}") == ModelRef.parse(f"runs:/{RUN}/model")
    assert ModelRef.parse(f"runs:/{RUN}/other/model").artifact_path == "other/model"
    assert ModelRef.parse(f"runs:/{RUN}").uri == f"runs:/{RUN}/model"
    assert ModelRef.parse("models:/lesions/3") == ModelRef(kind="registered", name="lesions", version="3")
    assert ModelRef.parse("models:/lesions@champion").uri == "models:/lesions@champion"
    assert ModelRef.parse(str(tmp_path)) == ModelRef(kind="path", path=tmp_path.resolve())
    for bad in ("runs:/not-a-run", "models:/lesions", "models:/lesions/latest-ish", "no-such-folder", ""):
        with pytest.raises(ModelRefError, match=r"runs:/RUN_ID .*models:/NAME/VERSION"):
            ModelRef.parse(bad)


def test_a_classifier_card_records_the_recipe_and_reads_an_older_card(tmp_path):
    recipe = PreprocessRecipe(size=32, channels=1, fit="pad", storage="uint8", kinds=["dicom"])
    save_classifier(_classifier(), tmp_path / "clf", preprocessing=recipe)
    clf, card = load_classifier(tmp_path / "clf")
    assert card.preprocessing == recipe and card.input_shape == (1, 32, 32) and card.backbone.name == "resnet-tiny"
    with pytest.raises(ValueError, match=r"input shape \(3, 32, 32\) differs from the preprocessing recipe"):
        ClassifierCard.of(clf, (3, 32, 32), recipe)
    # a card written by the previous version (format 1, no recipe) still loads; export then refuses it
    legacy = card.model_dump(mode="json", exclude={"schema_version", "backbone", "preprocessing"}) | {"format": 1}
    assert ClassifierCard.parse(legacy).preprocessing is None


def test_a_run_a_registered_version_an_alias_and_a_folder_load_the_same_classifier(tmp_path):
    from mlflow import MlflowClient

    from medvision.tracking import load_run_classifier, log_classifier
    from medvision.tracking.store import get_or_create_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    run_id = client.create_run(get_or_create_experiment(client, "refs")).info.run_id
    recipe = PreprocessRecipe(size=32, channels=1, fit="stretch", storage="uint8")
    log_classifier(client, run_id, _classifier(), preprocessing=recipe)
    client.create_registered_model("lesions")
    version = client.create_model_version("lesions", f"runs:/{run_id}/model", run_id=run_id).version
    client.set_registered_model_alias("lesions", "champion", version)
    save_classifier(_classifier(), tmp_path / "folder", preprocessing=recipe)

    x = torch.rand(3, 1, 32, 32)
    outputs = []
    refs = (run_id, f"runs:/{run_id}", f"models:/lesions/{version}", "models:/lesions@champion", tmp_path / "folder")
    for ref in refs:
        clf, card = load_run_classifier(str(ref), tracking_uri=uri)
        assert card.preprocessing == recipe, ref
        with torch.no_grad():
            outputs.append(clf(x).probs)
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0])
    with pytest.raises(FileNotFoundError, match="holds no classifier") as missing:
        load_run_classifier("models:/lesions/7", tracking_uri=uri)
    assert f"in MLflow store {uri}" in str(missing.value) and "--tracking-uri" in str(missing.value)  # where it looked


def test_a_run_and_a_registered_version_of_it_are_one_model_not_an_ensemble_of_two(tmp_path):
    """``predict RUN models:/NAME/1`` where version 1 is RUN: the same weights, which averaged would count twice."""
    from mlflow import MlflowClient

    from medvision.errors import InputError
    from medvision.serving.models import load_models
    from medvision.tracking import log_classifier
    from medvision.tracking.store import get_or_create_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    runs = [client.create_run(get_or_create_experiment(client, "refs")).info.run_id for _ in range(2)]
    recipe = PreprocessRecipe(size=32, channels=1, fit="stretch", storage="uint8")
    for run_id in runs:
        log_classifier(client, run_id, _classifier(), preprocessing=recipe)
    client.create_registered_model("lesions")
    version = client.create_model_version("lesions", f"runs:/{runs[0]}/model", run_id=runs[0]).version
    with pytest.raises(InputError, match=rf"run\(s\) {runs[0]} given more than once \(also through a registered"):
        load_models([runs[0], f"models:/lesions/{version}"], uri)
    served = load_models([runs[1], f"models:/lesions/{version}"], uri)  # two runs: an ensemble of two
    assert served.run_ids == (runs[1], runs[0])
