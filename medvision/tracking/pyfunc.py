"""A fine-tuned classifier as an MLflow ``pyfunc`` model, and the backbone beside it.

What the model takes and gives is described in :mod:`medvision.tracking.served_model`, the model's
code. The signature records ``C, H, W`` of the training images.

The model folder holds that code file (MLflow's models-from-code: nothing is pickled), the classifier
(:func:`medvision.classifier.save_classifier`: safetensors + JSON) and a copy of the medvision source
(``code_paths``), so serving needs only the listed pip requirements, not a medvision checkout.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

import medvision
from medvision.classifier import CARD_FILE, Classifier, ClassifierCard, load_classifier, save_classifier
from medvision.cohort.recipe import PreprocessRecipe
from medvision.models import save_backbone
from medvision.tracking import served_model
from medvision.tracking.model_ref import ModelRef
from medvision.tracking.served_model import ClassifierModel
from medvision.tracking.uri import redact_uri

__all__ = ["ClassifierModel", "load_run_classifier", "log_classifier", "pip_requirements"]

#: What loading and running the model imports (medvision's own source travels in code_paths).
_REQUIREMENTS = (
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pandas",
    "safetensors",
    "pydantic",
    "pyyaml",
    "mlflow",
)  # no lightning, no scikit-learn: the served code (served_model.py) imports medvision.classifier only


def pip_requirements() -> list[str]:
    """Pinned requirements of the serving environment (the installed versions, local tags dropped)."""
    reqs = []
    for dist in _REQUIREMENTS:
        try:
            version = importlib.metadata.version(dist).split("+", 1)[0]
        except importlib.metadata.PackageNotFoundError:
            continue
        reqs.append(f"{dist}=={version}")
    return reqs


def _signature(classes: list[str], has_ood: bool, input_shape: tuple[int, ...] | None) -> ModelSignature:
    shape = (-1, *input_shape) if input_shape is not None else (-1, -1, -1, -1)
    outputs: list[ColSpec | TensorSpec] = [ColSpec("double", c) for c in classes]
    if has_ood:
        outputs.append(ColSpec("double", "ood_score"))
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]), outputs=Schema(outputs))


def _has_ood_score(head) -> bool:
    """Ask the head itself (the contract: ``ood_score`` is ``None`` for heads without one)."""

    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            param = next(head.parameters())
            out = head(torch.zeros(1, head.in_features, dtype=param.dtype, device=param.device))
    finally:
        head.train(was_training)
    return out.ood_score is not None


def log_classifier(
    client: MlflowClient,
    run_id: str,
    classifier,
    input_shape: tuple[int, ...] | None = None,
    model_path: str = "model",
    backbone_path: str = "backbone",
    preprocessing: PreprocessRecipe | None = None,
) -> None:
    """Log ``classifier`` to run ``run_id``: a pyfunc model at ``model_path`` and the backbone alone
    (``save_backbone`` layout) at ``backbone_path``, so ``mlflow:runs:/RUN_ID/backbone`` starts a
    later stage from it.

    Args:
        client: a client bound to the run's tracking URI.
        classifier: a :class:`~medvision.classifier.Classifier` (weights are copied).
        input_shape: ``(C, H, W)`` of the training images, for the model signature (default: the recipe's).
        preprocessing: the recipe of the cohort the classifier was trained on (recorded in its card, so export and
            serving prepare images exactly as training did).

    Raises:
        ValueError: a class is called ``ood_score`` (it would collide with the score column).
    """

    if "ood_score" in classifier.classes:
        raise ValueError("a class named 'ood_score' collides with the OOD score column; rename the class")
    has_ood = _has_ood_score(classifier.head)
    input_shape = ClassifierCard.of(classifier, input_shape, preprocessing).input_shape  # the recipe's, if given
    with tempfile.TemporaryDirectory(prefix="medvision-model-") as tmp:
        tmp_path = Path(tmp)
        save_backbone(classifier.backbone, tmp_path / "backbone")
        client.log_artifacts(run_id, str(tmp_path / "backbone"), backbone_path)
        save_classifier(classifier, tmp_path / "classifier", input_shape=input_shape, preprocessing=preprocessing)
        mlflow.pyfunc.save_model(
            path=str(tmp_path / "model"),
            python_model=served_model.__file__,  # model from code: nothing of ours is pickled
            artifacts={"classifier": str(tmp_path / "classifier")},
            code_paths=[str(Path(medvision.__file__).parent)],
            signature=_signature(classifier.classes, has_ood, input_shape),
            # A blank image of the training shape: documents the request format, and MLflow checks that it
            # serves before the model is logged (no patient data: it is all zeros).
            input_example=np.zeros((1, *input_shape), np.float32) if input_shape is not None else None,
            pip_requirements=pip_requirements(),
        )
        client.log_artifacts(run_id, str(tmp_path / "model"), model_path)


def load_run_classifier(
    ref: str | ModelRef, tracking_uri: str | None = None, model_path: str = "model"
) -> tuple[Classifier, ClassifierCard]:
    """The :class:`~medvision.classifier.Classifier` a fine-tuning run logged (CPU, eval mode), for evaluation and
    export code that wants tensors, features and the head rather than the pyfunc DataFrame.

    Args:
        ref: a model reference (:class:`~medvision.tracking.model_ref.ModelRef`): a run id, ``runs:/RUN_ID``,
            ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or a local folder (a saved classifier or a pyfunc
            model folder).
        tracking_uri: the store; ``None`` uses MLflow's current one ($MLFLOW_TRACKING_URI).
        model_path: the run's artifact path of the pyfunc model, when ``ref`` does not say.

    Returns:
        ``(classifier, card)``.

    Raises:
        ModelRefError: ``ref`` is no model reference.
        FileNotFoundError: there is no classifier where ``ref`` points (not a fine-tuning run, or it ended before
            logging its model).
    """
    ref = ModelRef.parse(ref, artifact_path=model_path)
    if ref.kind == "path" and ref.path is not None:
        return load_classifier(_classifier_folder(ref.path))
    with tempfile.TemporaryDirectory(prefix="medvision-run-") as tmp:
        try:
            source = _registered_source(ref, tracking_uri) if ref.kind == "registered" else ref
            if isinstance(source, ModelRef):
                local = mlflow.artifacts.download_artifacts(
                    run_id=source.run_id,
                    artifact_path=f"{source.artifact_path}/artifacts/classifier",
                    dst_path=tmp,
                    tracking_uri=tracking_uri,
                )
            else:
                downloaded = mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri
                )
                local = str(_classifier_folder(Path(downloaded)))
        except (MlflowException, OSError) as e:
            store = redact_uri(tracking_uri or mlflow.get_tracking_uri())
            raise FileNotFoundError(
                f"{ref} holds no classifier in MLflow store {store} ({e}); give a finished fine-tuning run "
                "(runs:/RUN_ID) or a registered version of one, and --tracking-uri (or $MLFLOW_TRACKING_URI) when "
                "it is in another store"
            ) from None
        return load_classifier(local)


def _registered_source(ref: ModelRef, tracking_uri: str | None) -> ModelRef | str:
    """Where a registered model version's files are: the run that logged it, or the version's own source URI."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    if ref.alias:
        version = client.get_model_version_by_alias(str(ref.name), ref.alias)
    else:
        version = client.get_model_version(str(ref.name), str(ref.version))
    source = str(version.source or "")
    if source.startswith("runs:/"):
        return ModelRef.parse(source)
    if not source:
        raise FileNotFoundError(f"{ref} records no source for its files")
    return source


def _classifier_folder(folder: Path) -> Path:
    """A saved classifier's folder: ``folder`` itself, or the classifier inside a pyfunc model folder."""
    for candidate in (folder, folder / "artifacts" / "classifier"):
        if (candidate / CARD_FILE).exists():
            return candidate
    raise FileNotFoundError(
        f"{folder} holds no saved classifier ({CARD_FILE}, or artifacts/classifier/{CARD_FILE} of a pyfunc model)"
    )
