"""A reference to a trained classifier, parsed once: a run, a registered model version, or a local folder.

Every command that takes a model (``medvision evaluate``, ``medvision export``, :func:`load_run_classifier`)
parses what the user typed here, so ``runs:/ID``, a bare run id, ``models:/NAME/3``, ``models:/NAME@champion``
and ``./my-model`` mean the same thing everywhere, and a typo fails naming the forms that work.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from medvision.errors import InputError

__all__ = ["ModelRef", "ModelRefError"]

#: MLflow run ids: 32 hex digits (uuid4().hex).
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_FORMS = (
    "runs:/RUN_ID (or a bare run id; runs:/RUN_ID/PATH for a model logged elsewhere than 'model'), "
    "models:/NAME/VERSION, models:/NAME@ALIAS, or a folder holding a saved classifier"
)


class ModelRefError(InputError):
    """Text that is no model reference; the message names the forms that are."""


class ModelRef(BaseModel):
    """A parsed model reference (:meth:`parse`).

    Attributes:
        kind: ``run`` (an MLflow run's logged model), ``registered`` (a model registry version) or ``path``.
        run_id / artifact_path: the run and where in it the model is (``model`` by default).
        name / version / alias: the registered model and which version (a number or an ``@alias``).
        path: a local folder: a saved classifier (``classifier.json``) or a pyfunc model folder.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["run", "registered", "path"]
    run_id: str | None = None
    artifact_path: str = "model"
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    path: Path | None = None

    @classmethod
    def parse(cls, text: str | ModelRef, artifact_path: str = "model") -> ModelRef:
        """Parse ``text``; ``artifact_path`` is where a run's model lives when ``text`` does not say.

        Raises:
            ModelRefError: none of the accepted forms.
        """
        if isinstance(text, ModelRef):
            return text
        raw = str(text).strip()
        if raw.startswith("runs:/"):
            run_id, _, path = raw.removeprefix("runs:/").strip("/").partition("/")
            if not _RUN_ID.match(run_id):
                raise ModelRefError(f"{raw!r}: {run_id!r} is not an MLflow run id (32 hex digits); give {_FORMS}")
            return cls(kind="run", run_id=run_id, artifact_path=path or artifact_path)
        if raw.startswith("models:/"):
            body = raw.removeprefix("models:/").strip("/")
            name, at, alias = body.partition("@")
            if at and name and alias and "/" not in alias:
                return cls(kind="registered", name=name, alias=alias)
            name, _, version = body.rpartition("/")
            if name and version.isdigit():
                return cls(kind="registered", name=name, version=version)
            raise ModelRefError(f"{raw!r} names no registered model version; give {_FORMS}")
        if _RUN_ID.match(raw):
            return cls(kind="run", run_id=raw, artifact_path=artifact_path)
        if raw and Path(raw).expanduser().is_dir():
            return cls(kind="path", path=Path(raw).expanduser().resolve())
        raise ModelRefError(f"{raw!r} is not a model reference (no such folder either); give {_FORMS}")

    @property
    def uri(self) -> str:
        """The MLflow model URI (``runs:/...``, ``models:/...``) or the folder's path."""
        if self.kind == "run":
            return f"runs:/{self.run_id}/{self.artifact_path}"
        if self.kind == "registered":
            return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"
        return str(self.path)

    def __str__(self) -> str:
        return self.uri
