"""How each pipeline stage kind runs: wire its inputs from earlier stages, call the stage's Python API.

The pipeline never re-implements a stage: a finetune stage is :func:`medvision.recipes.fit` (any recipe) with a
config whose cohort folder, starting weights, output folder and tracking were filled in from upstream
stages. What a stage hands downstream is a :class:`StageOutput` (run ids and folders, never data).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medvision.ssl.config import PretrainConfig
from medvision.training.config import FinetuneConfig

__all__ = ["StageOutput", "stage_config_model", "wire_config"]


@dataclass
class StageOutput:
    """What later stages may read from a finished stage.

    Attributes:
        kind: the stage kind.
        run_ids: the MLflow run(s) it made (one per sweep member for a swept finetune).
        members: per sweep member (finetune), its name and chosen sweep values.
        cohort_dir: the built cohort (cohort stages).
        manifest_sha256: the cohort's manifest hash (cohort stages; used in reuse keys downstream).
        path: the stage's main output file or folder (evaluation folder, report file).
        reused: ``True`` when an identical finished run was found and nothing ran.
    """

    kind: str
    run_ids: list[str] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    cohort_dir: Path | None = None
    manifest_sha256: str | None = None
    path: Path | None = None
    reused: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "run_ids": self.run_ids,
            "members": self.members,
            "cohort_dir": str(self.cohort_dir) if self.cohort_dir else None,
            "manifest_sha256": self.manifest_sha256,
            "path": str(self.path) if self.path else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageOutput:
        return cls(
            kind=data["kind"],
            run_ids=list(data["run_ids"]),
            members=list(data["members"]),
            cohort_dir=Path(data["cohort_dir"]) if data.get("cohort_dir") else None,
            manifest_sha256=data.get("manifest_sha256"),
            path=Path(data["path"]) if data.get("path") else None,
            reused=True,
        )


def stage_config_model(kind: str) -> type[BaseModel]:
    """The config model a training stage's ``config`` mapping is validated against."""
    if kind == "finetune":
        return FinetuneConfig
    if kind == "pretrain":
        return PretrainConfig
    raise ValueError(f"stage kind {kind!r} has no training config")


def wire_config(
    kind: str,
    config: dict[str, Any],
    *,
    cohort_dir: Path,
    output_dir: Path,
    weights: str | None,
    tracking: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stage's config with what the pipeline decides filled in.

    The cohort folder and the output folder always come from the pipeline; ``weights`` (an
    ``mlflow:runs:/ID/backbone`` of an upstream stage) replaces ``backbone.weights`` when the stage reads its
    backbone from another stage. A stage config that sets any of these itself is overruled, not merged.
    """
    data = copy.deepcopy(config)
    data.setdefault("data", {})
    if not isinstance(data["data"], dict):
        data["data"] = {}
    data["data"]["cohort_dir"] = str(cohort_dir)
    data["output_dir"] = str(output_dir)
    if weights is not None:
        backbone = data.setdefault("backbone", {})
        if isinstance(backbone, dict):
            backbone["weights"] = weights
    if tracking is not None:
        data["tracking"] = {**(data.get("tracking") or {}), **tracking}
    return data
