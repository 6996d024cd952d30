"""Opening the MLflow store a stage records to: a client bound to one tracking URI, and its experiment.

Every call goes through an explicit :class:`mlflow.MlflowClient`, never the process-global
"active run", so two stages in one process (or a test suite) cannot write into each other's runs.
For a local SQLite store the experiment's artifacts are put beside the database file
(``<db folder>/mlartifacts``) instead of MLflow's default ``./mlruns`` in whatever folder the
process happens to run in.

Two processes may open one *new* SQLite store at once (two ``medvision run`` started together): MLflow
creates its tables on first use without a lock, so the second died with ``table ... already exists``.
Opening a SQLite store therefore holds a file lock beside the database (``<db>.lock``) while the tables are
created, and creating an experiment that another process created meanwhile returns that one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medvision.errors import InputError
from medvision.tracking.uri import check_no_credentials

__all__ = ["TrackingAuthError", "artifact_root_for", "get_or_create_experiment", "open_client", "using_tracking_uri"]


class TrackingAuthError(InputError):
    """The tracking server refused our credentials; the message says which variables to set."""


@contextlib.contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide URI at ``uri`` for the block (``mlflow:`` weights and model logging read
    it), then put back both the global and ``$MLFLOW_TRACKING_URI``, which ``mlflow.set_tracking_uri`` also
    sets: a stage must not leave the next stage, or the caller, talking to its store."""

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def open_client(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri``; for ``sqlite:///PATH`` the folder of PATH is created first and the
    store's tables are created (or migrated) under a file lock, one process at a time.

    Raises:
        TrackingURIError: the URI holds a password (it would reach MLflow's own printed lines).
        TrackingAuthError: an authenticating server refuses the user in $MLFLOW_TRACKING_USERNAME.
    """
    check_no_credentials(tracking_uri, "the tracking URI")
    db = _sqlite_path(tracking_uri)
    if db is None:
        client = MlflowClient(tracking_uri=tracking_uri)
        if tracking_uri.startswith(("http://", "https://")):
            _check_access(client, tracking_uri)
        return client
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)  # the store is made (tables created) on first use
    return client


def _check_access(client: MlflowClient, uri: str) -> None:
    """Fail before any work when an authenticating server (``mlflow server --app-name basic-auth``) refuses us,
    instead of deep inside a stage with MLflow's raw 401."""

    try:
        client.search_experiments(max_results=1)
    except MlflowException as e:
        text = str(e)
        code = next((c for c in ("401", "403") if f"error code {c}" in text), None)
        if code is None:
            raise
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        who = f"user {user!r}" if user else "an anonymous client (MLFLOW_TRACKING_USERNAME is not set)"
        what = "refused the password of" if code == "401" else "denies access to"
        raise TrackingAuthError(
            f"the MLflow server at {uri} {what} {who} (HTTP {code}); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to your account on that server (ask its admin for one)"
        ) from None


def artifact_root_for(tracking_uri: str) -> str | None:
    """Where new experiments keep artifacts: beside a SQLite file, else the server's default (``None``)."""
    db = _sqlite_path(tracking_uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created (with :func:`artifact_root_for`) when missing.

    Raises:
        ValueError: the experiment exists but was deleted (MLflow keeps the name reserved).
    """

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_root_for(client.tracking_uri))
        except MlflowException as e:
            # Two users (or pipelines) starting at once on a shared server: the other one created it first.
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {name!r} was deleted; restore it (mlflow experiments restore) or set "
            "tracking.experiment to another name"
        )
    return exp.experiment_id


def _sqlite_path(tracking_uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    rest = tracking_uri[len(prefix) :].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    # sqlite:////abs/path -> "/abs/path"; sqlite:///rel/path -> "rel/path" (relative to the cwd)
    return Path(rest)
