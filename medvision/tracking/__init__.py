"""Experiment tracking in MLflow: one run per stage, rank 0 only, servable models at the end.

* :class:`MLflowTracking` — the Lightning callback every training stage adds;
* :func:`log_classifier` / :class:`ClassifierModel` — a fine-tuned classifier as a pyfunc model;
* :func:`load_run_classifier` — the classifier of a run back as a torch module (evaluation);
* :func:`open_client` / :func:`get_or_create_experiment` — the store, without global MLflow state;
* :func:`redact_uri` / :func:`check_no_credentials` — tracking URIs never carry a password.
"""

from __future__ import annotations

import importlib
from typing import Any

# Resolved on first use (PEP 562): a serving host unpickles ClassifierModel from medvision.tracking.pyfunc, and
# importing the callback here would make it install Lightning just to answer predictions.
_WHERE = {
    "MLflowTracking": "medvision.tracking.callback",
    "ClassifierModel": "medvision.tracking.pyfunc",
    "load_run_classifier": "medvision.tracking.pyfunc",
    "log_classifier": "medvision.tracking.pyfunc",
    "artifact_root_for": "medvision.tracking.store",
    "get_or_create_experiment": "medvision.tracking.store",
    "open_client": "medvision.tracking.store",
    "TrackingURIError": "medvision.tracking.uri",
    "check_no_credentials": "medvision.tracking.uri",
    "redact_uri": "medvision.tracking.uri",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
