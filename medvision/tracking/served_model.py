"""The served classifier: MLflow's *model from code* for a fine-tuned :class:`~medvision.classifier.Classifier`.

Why from code rather than a pickled object: a pyfunc model logged as a Python object is a cloudpickle that the
serving host unpickles, which runs whatever the pickle says. Logged from code, the model folder holds this
file (source, readable in review), the classifier's weights as safetensors and a JSON card, and MLflow *imports*
this file instead of unpickling anything of ours. That does not make a model folder harmless: importing code
is running code, so write access to the artifact store still means code execution on a serving host (see
docs/SECURITY.md). It also keeps serving light: this file imports only :mod:`medvision.classifier` (no
Lightning, no scikit-learn), so the serving environment does not need the training stack.

MLflow executes this file as the model's code (under a generated module name) and takes the model from
:func:`mlflow.models.set_model`; imported as ``medvision.tracking.served_model`` it only defines the class.

What the model takes and gives (so ``mlflow.pyfunc.load_model(...).predict`` and ``mlflow models serve`` agree):

* input: a numpy array ``(N, C, H, W)`` of float32 images in ``[0, 1]`` (the cohort cache's own format; the
  normalisation is inside the backbone), at most :data:`MAX_BATCH` images per call. Over REST:
  ``{"inputs": [[[[...]]]]}``.
* output: a DataFrame, one row per image, one probability column per task class (named as the class) and, for
  heads with a built-in OOD score (HOD), ``ood_score`` (higher = more likely an unseen condition).

A bad input raises :class:`ModelInputError`, which ``mlflow models serve`` turns into HTTP 400 carrying the
message (e.g. "pixel values must be in [0, 1]") instead of a generic "unexpected error".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from medvision.classifier import load_classifier

__all__ = ["MAX_BATCH", "ClassifierModel", "ModelInputError"]

#: Images per request. A (1024, 3, 224, 224) float request is ~600 MB as JSON and ~600 MB again as floats;
#: a cap keeps one client from exhausting a serving host's memory. Split larger batches into several requests.
MAX_BATCH = 256
_CHUNK = 64  # images per forward pass inside a request


class ModelInputError(MlflowException, ValueError):
    """The request's images do not fit the model's contract (HTTP 400 when served; a ValueError in Python)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class ClassifierModel(PythonModel):
    """pyfunc wrapper of a saved :class:`~medvision.classifier.Classifier` (see the module docstring)."""

    def load_context(self, context) -> None:
        self._classifier, card = load_classifier(context.artifacts["classifier"])
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._classifier.to(self._device)
        self._classes = list(card.classes)

    # The annotation tells MLflow the input is an array it should pass through as is (our signature validates
    # it); without one MLflow warns on every load.
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> pd.DataFrame:
        x = as_images(model_input)
        probs, scores = [], []
        with torch.inference_mode():
            for start in range(0, len(x), _CHUNK):
                out = self._classifier(torch.from_numpy(x[start : start + _CHUNK]).to(self._device))
                probs.append(out.probs.float().cpu().numpy())
                if out.ood_score is not None:
                    scores.append(out.ood_score.float().cpu().numpy())
        p = np.concatenate(probs) if probs else np.zeros((0, len(self._classes)), np.float32)
        frame = pd.DataFrame(p.astype(np.float64), columns=self._classes)
        if scores:
            frame["ood_score"] = np.concatenate(scores).astype(np.float64)
        return frame


def as_images(model_input: Any) -> np.ndarray:
    """The request as a contiguous float32 ``(N, C, H, W)`` array in [0, 1].

    Raises:
        ModelInputError: wrong rank, more than :data:`MAX_BATCH` images, or values outside [0, 1] / NaN.
    """
    if isinstance(model_input, dict) and len(model_input) == 1:
        model_input = next(iter(model_input.values()))
    try:
        x = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ModelInputError(f"model input must be a numeric array of images (N, C, H, W): {e}") from None
    if x.ndim != 4:
        raise ModelInputError(f"model input must be images of shape (N, C, H, W), got shape {x.shape}")
    if len(x) > MAX_BATCH:
        raise ModelInputError(f"at most {MAX_BATCH} images per request, got {len(x)}; split the batch")
    if x.size and (np.isnan(x).any() or np.min(x) < 0.0 or np.max(x) > 1.0):
        raise ModelInputError("pixel values must be float32 in [0, 1] (as stored in the cohort cache), without NaN")
    return np.ascontiguousarray(x)


if __name__ != "medvision.tracking.served_model":  # executed by MLflow as the model's code
    set_model(ClassifierModel())
