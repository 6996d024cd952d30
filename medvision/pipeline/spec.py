"""A pipeline is data: named stages whose inputs name earlier stages, checked whole before anything runs.

Stages are a mapping keyed by stage id (YAML keeps their order), so ``--set stages.hod.config.optim.lr=0.01``
reaches any stage with the same override syntax as a single-stage config. What a stage may be is the stage-kind
registry's to say (:mod:`medvision.pipeline.kinds`): each kind brings its config model (a stage is validated by
the one its ``kind:`` names), its inputs (the references checked here) and its load-time checks (a training
stage validates every sweep member's config against the real model, so a typo anywhere fails before the first
stage starts, with the stage and key in the message).

``params`` are the pipeline's parameters (data paths, sizes): ``${params.NAME}`` inside any string is
replaced by its value, and ``--set params.NAME=...`` changes it, so a recipe never hard-codes a path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

import medvision.pipeline.stages  # noqa: F401  (importing registers the built-in kinds)
from medvision.config import (
    ConfigError,
    StrictModel,
    apply_overrides,
    did_you_mean,
    explain_validation_error,
    read_yaml,
)
from medvision.pipeline.kinds import StageKind, StageSpec, is_plain_name, plain_name_error, stage_kind, stage_kinds
from medvision.pipeline.study import check_study
from medvision.plugins import load_all
from medvision.tracking.uri import check_no_credentials

__all__ = ["PipelineSpec", "TrackingSpec", "load_pipeline"]

_PARAM = re.compile(r"\$\{params\.([A-Za-z_][A-Za-z0-9_]*)\}")


class TrackingSpec(StrictModel):
    """Where the pipeline's parent run and the stages' child runs go."""

    #: ``None``: $MLFLOW_TRACKING_URI if set, else ``sqlite:///mlflow.db`` in the working directory.
    tracking_uri: str | None = None
    experiment: str = "medvision"

    @model_validator(mode="after")
    def _no_credentials(self) -> TrackingSpec:
        if self.tracking_uri:  # a password here would be printed, stored and logged (medvision.tracking.uri)
            check_no_credentials(self.tracking_uri, "tracking.tracking_uri")
        return self


class PipelineSpec(StrictModel):
    """A whole study: stages in order, each reading earlier stages' outputs.

    Each stage is validated by its kind's config model; :func:`load_pipeline` does that through
    :func:`pipeline_model`, the subclass whose ``stages`` are the union of the registered kinds' models.
    """

    name: str
    description: str = ""
    #: Values for ``${params.NAME}`` in any string of the pipeline.
    params: dict[str, Any] = Field(default_factory=dict)
    #: Every stage writes under ``<output_dir>/<stage id>/``.
    output_dir: Path = Path("runs")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    stages: dict[str, StageSpec] = Field(min_length=1)

    @field_validator("stages", mode="before")
    @classmethod
    def _plain_stage_ids(cls, v: Any) -> Any:
        # Stage ids become folders under output_dir: "../../x" would write outside it.
        for stage_id in v if isinstance(v, Mapping) else ():
            if not is_plain_name(stage_id):
                raise ValueError(plain_name_error("stage id", stage_id, "it names a folder"))
        if isinstance(v, Mapping) and not v:
            raise ValueError("a pipeline needs at least one stage")
        return v

    def upstream(self, stage_id: str) -> list[str]:
        """The stage ids ``stage_id`` reads from (direct references only)."""
        stage = self.stages[stage_id]
        return list(stage_kind(stage.kind).references(stage).values())


def pipeline_model() -> type[PipelineSpec]:
    """:class:`PipelineSpec` whose stages are validated by the registered kinds' models (a discriminated union on
    ``kind``): a plugin's kind is as much a part of a pipeline as a built-in one."""
    return _pipeline_model(stage_kinds())


@functools.lru_cache(maxsize=8)
def _pipeline_model(kinds: tuple[StageKind[Any], ...]) -> type[PipelineSpec]:
    models = tuple(k.config for k in kinds)
    one: Any = Annotated[Union[models], Field(discriminator="kind")] if len(models) > 1 else models[0]  # noqa: UP007
    return create_model(
        "PipelineSpec", __base__=PipelineSpec, __module__=__name__, stages=(dict[str, one], Field(min_length=1))
    )


# -- loading --------------------------------------------------------------------------------------


def load_pipeline(path: str | Path, overrides: Sequence[str] | None = None) -> PipelineSpec:
    """Read, override, substitute ``${params.*}``, validate and cross-check a pipeline YAML.

    Raises:
        ConfigError: naming the file, the stage and the key of every problem found.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file") from None
    raw = read_yaml(text, str(path))  # before any copy: an alias bomb is refused here, not expanded
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping with name, stages, ...")
    load_all()  # extensions first: a plugin's stage kind, head or backbone may be what this file names
    _check_override_targets(raw, overrides or [], str(path))
    model = pipeline_model()
    data = apply_overrides(raw, overrides or [], model, source=str(path))
    data = _substitute(data, data.get("params") or {}, str(path))
    try:
        spec = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(explain_validation_error(err, model, str(path))) from None
    _check_references(spec, str(path))
    for stage_id, stage in spec.stages.items():
        stage_kind(stage.kind).validate(stage_id, stage, spec, str(path))
    check_study(spec, str(path))
    return spec


def _check_override_targets(raw: Mapping[str, Any], overrides: Sequence[str], source: str) -> None:
    """``--set params.NAME=...`` and ``--set stages.ID...`` must name a parameter or stage the file declares.

    Both sections are free-form mappings, so the schema cannot catch a typo in them: ``--set params.epoch=1``
    would add an unused parameter and leave ``epochs`` at its default, and ``--set stages.tranfser...`` would
    create a stage with no ``kind``. A misspelt override must fail before anything runs, naming the closest match.
    """
    for item in overrides:
        parts = item.partition("=")[0].strip().split(".")
        if len(parts) < 2 or parts[0] not in ("params", "stages"):
            continue
        section, name = parts[0], parts[1]
        value = raw.get(section)
        declared: Mapping[str, Any] = value if isinstance(value, Mapping) else {}
        if name in declared:
            continue
        what = "parameter" if section == "params" else "stage"
        listed = ", ".join(map(str, declared)) or "(none)"
        raise ConfigError(
            f"{source}: --set {item.partition('=')[0].strip()}: the pipeline has no {what} {name!r}."
            f"{did_you_mean(name, list(map(str, declared)))} Its {what}s: {listed}"
        )


def _substitute(value: Any, params: Mapping[str, Any], source: str) -> Any:
    if isinstance(value, Mapping):
        return {k: _substitute(v, params, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params, source) for v in value]
    if isinstance(value, str):
        whole = _PARAM.fullmatch(value)
        for name in _PARAM.findall(value):
            if name not in params:
                raise ConfigError(
                    f"{source}: '${{params.{name}}}' is used but params.{name} is not defined; "
                    f"defined: {', '.join(params) or '(none)'}"
                )
        if whole:  # a whole-string reference keeps the parameter's type (a number stays a number)
            return params[whole.group(1)]
        return _PARAM.sub(lambda m: str(params[m.group(1)]), value)
    return value


def _check_references(spec: PipelineSpec, source: str) -> None:
    """Every stage id a stage's inputs name is an earlier stage of a kind its kind accepts there."""
    seen: dict[str, str] = {}
    problems = []
    for stage_id, stage in spec.stages.items():
        kind = stage_kind(stage.kind)
        for field, target in kind.references(stage).items():
            allowed = kind.inputs[field.split("[")[0]]
            where = f"stages.{stage_id}.{field}"
            if target not in seen:
                later = " (it comes later; stages run in the order written)" if target in spec.stages else ""
                earlier = [s for s, k in seen.items() if k in allowed]
                problems.append(
                    f"  - {where}: {target!r} is not an earlier stage{later}; earlier "
                    f"{'/'.join(allowed)} stages: {', '.join(earlier) or '(none)'}"
                )
            elif seen[target] not in allowed:
                problems.append(f"  - {where}: {target!r} is a {seen[target]} stage; expected {'/'.join(allowed)}")
        seen[stage_id] = stage.kind
    if problems:
        raise ConfigError(f"{source}: stage references do not resolve:\n" + "\n".join(problems))
