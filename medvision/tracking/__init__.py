"""Experiment tracking in MLflow: one run per stage, rank 0 only, servable models at the end.

* :class:`MLflowTracking` — the Lightning callback every training stage adds;
* :func:`log_classifier` / :class:`ClassifierModel` — a fine-tuned classifier as a pyfunc model;
* :func:`load_run_classifier` — the classifier of a run back as a torch module (evaluation);
* :func:`open_client` / :func:`get_or_create_experiment` — the store, without global MLflow state.
"""

from medvision.tracking.callback import MLflowTracking
from medvision.tracking.pyfunc import ClassifierModel, load_run_classifier, log_classifier
from medvision.tracking.store import artifact_root_for, get_or_create_experiment, open_client

__all__ = [
    "ClassifierModel",
    "MLflowTracking",
    "artifact_root_for",
    "get_or_create_experiment",
    "load_run_classifier",
    "log_classifier",
    "open_client",
]
