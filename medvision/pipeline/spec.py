"""A pipeline is data: named stages whose inputs name earlier stages, checked whole before anything runs.

Stages are a mapping keyed by stage id (YAML keeps their order), so ``--set stages.hod.config.optim.lr=0.01``
reaches any stage with the same override syntax as a single-stage config. Each training stage carries the
stage's own config (``FinetuneConfig`` / ``PretrainConfig``) minus what the pipeline wires in (the cohort
folder, the backbone weights from an earlier stage, output folders, tracking); that partial config is
validated at load time against the real model, once per sweep member, so a typo anywhere fails before the
first stage starts, with the stage and key in the message.

``params`` are the pipeline's parameters (data paths, sizes): ``${params.NAME}`` inside any string is
replaced by its value, and ``--set params.NAME=...`` changes it, so a recipe never hard-codes a path.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from medvision.cohort.spec import FolderOptions
from medvision.config import (
    PLAIN_NAME,
    ConfigError,
    StrictModel,
    apply_overrides,
    did_you_mean,
    explain_validation_error,
    read_yaml,
)
from medvision.evaluation.settings import EvaluationSettings
from medvision.pipeline.stages import stage_config_model, wire_config
from medvision.pipeline.study import check_study
from medvision.tracking.uri import check_no_credentials

__all__ = [
    "CohortStage",
    "EvaluateStage",
    "FinetuneStage",
    "PipelineSpec",
    "PretrainStage",
    "ReportStage",
    "Stage",
    "TrackingSpec",
    "backbone_name",
    "load_pipeline",
    "sweep_members",
]

_PARAM = re.compile(r"\$\{params\.([A-Za-z_][A-Za-z0-9_]*)\}")
_PLAIN_HINT = "letters, digits, '_', '.', '-', starting with a letter or digit"


def _is_plain(name: Any) -> bool:
    return isinstance(name, str) and re.fullmatch(PLAIN_NAME, name) is not None


class SynthSource(StrictModel):
    """A synthetic cohort written by :func:`medvision.sources.synth.synthesize` (the demo's data)."""

    kind: Literal["derm", "cxr", "ct-series"] = "derm"
    patients: int = Field(120, ge=10)
    seed: int = 0
    size: int = Field(64, ge=16)
    #: ``ct-series``: the typical number of slices per series (the others ignore it).
    slices: int = Field(40, ge=8, le=1000)


class MedMNISTSource(StrictModel):
    """A MedMNIST ``.npz`` imported with :func:`medvision.sources.medmnist.import_medmnist`."""

    npz: Path


class FolderSource(FolderOptions):
    """An image folder plus an optional labels CSV, with the defaults of ``medvision cohort build --images``."""

    images: Path
    #: Extra cohort-spec keys merged over the folder defaults (e.g. ``splits.heldout_conditions``).
    spec: dict[str, Any] = Field(default_factory=dict)


class CohortStage(StrictModel):
    """Build a cohort: from a cohort spec file, a synthetic generator, a MedMNIST file or a folder + CSV."""

    kind: Literal["cohort"]
    spec: Path | None = None
    synth: SynthSource | None = None
    medmnist: MedMNISTSource | None = None
    folder: FolderSource | None = None
    #: Cohort-spec keys merged over the source's spec (e.g. ``preprocess.size``, ``splits.label_fractions``).
    overrides: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, _: Any) -> None:
        names = {
            "folder.name": self.folder.name if self.folder is not None else None,
            "folder.spec.name": self.folder.spec.get("name") if self.folder is not None else None,
            "overrides.name": self.overrides.get("name"),
        }
        for key, name in names.items():
            if name is not None and not _is_plain(name):
                raise ValueError(f"{key} {name!r} is not a plain name ({_PLAIN_HINT}); it names the cohort's folder")
        given = [k for k in ("spec", "synth", "medmnist", "folder") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a cohort stage takes exactly one source of spec, synth, medmnist, folder "
                f"(got {', '.join(given) or 'none'})"
            )


class PretrainStage(StrictModel):
    """Self-supervised pretraining (SimCLR / MICLe) on a cohort's unlabelled pool."""

    kind: Literal["pretrain"]
    cohort: str
    #: An earlier pretrain/finetune stage whose backbone to start from; ``None`` uses ``config.backbone``.
    backbone_from: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class FinetuneStage(StrictModel):
    """Supervised fine-tuning, optionally swept over label fractions, backbones or seeds."""

    kind: Literal["finetune"]
    cohort: str
    backbone_from: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    #: Dotted FinetuneConfig keys → values, e.g. ``{data.label_fraction: [0.1, 1.0], seed: [0, 1]}``.
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("sweep")
    @classmethod
    def _non_empty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"sweep key {key!r} has no values")
        return v


class EvaluateStage(EvaluationSettings):
    """Predictions and metrics of earlier finetune stages' models on the cohort's evaluation sets."""

    kind: Literal["evaluate"]
    models: list[str] = Field(min_length=1)


class ReportStage(StrictModel):
    """The clinical HTML report from an evaluate stage (and everything upstream of it)."""

    kind: Literal["report"]
    evaluation: str
    title: str | None = None


Stage = Annotated[
    CohortStage | PretrainStage | FinetuneStage | EvaluateStage | ReportStage, Field(discriminator="kind")
]


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
    """A whole study: stages in order, each reading earlier stages' outputs."""

    name: str
    description: str = ""
    #: Values for ``${params.NAME}`` in any string of the pipeline.
    params: dict[str, Any] = Field(default_factory=dict)
    #: Every stage writes under ``<output_dir>/<stage id>/``.
    output_dir: Path = Path("runs")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    stages: dict[str, Stage] = Field(min_length=1)

    @field_validator("stages", mode="before")
    @classmethod
    def _plain_stage_ids(cls, v: Any) -> Any:
        # Stage ids become folders under output_dir: "../../x" would write outside it.
        for stage_id in v if isinstance(v, Mapping) else ():
            if not _is_plain(stage_id):
                raise ValueError(f"stage id {stage_id!r} is not a plain name ({_PLAIN_HINT}); it names a folder")
        if isinstance(v, Mapping) and not v:
            raise ValueError("a pipeline needs at least one stage")
        return v

    def upstream(self, stage_id: str) -> list[str]:
        """The stage ids ``stage_id`` reads from (direct references only)."""
        return list(_references(self.stages[stage_id]).values())


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
    _check_override_targets(raw, overrides or [], str(path))
    data = apply_overrides(raw, overrides or [], PipelineSpec, source=str(path))
    data = _substitute(data, data.get("params") or {}, str(path))
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(explain_validation_error(err, PipelineSpec, str(path))) from None
    _check_references(spec, str(path))
    _check_stage_configs(spec, str(path))
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


def sweep_members(stage: FinetuneStage) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(member name, {dotted key: value})`` for each combination of the stage's sweep (one when none)."""
    keys = list(stage.sweep)
    for combo in itertools.product(*(stage.sweep[k] for k in keys)):
        chosen = dict(zip(keys, combo))
        name = "-".join(f"{k.split('.')[-1]}={v}" for k, v in chosen.items()) or "main"
        yield re.sub(r"[^A-Za-z0-9_.=-]", "_", name), chosen


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


_ALLOWED_UPSTREAM = {
    "cohort": ("cohort",),
    "backbone_from": ("pretrain", "finetune"),
    "models": ("finetune",),
    "evaluation": ("evaluate",),
}


def _references(stage: Any) -> dict[str, str]:
    refs: dict[str, str] = {}
    for field in _ALLOWED_UPSTREAM:
        value = getattr(stage, field, None)
        if isinstance(value, str):
            refs[field] = value
        elif isinstance(value, list):
            refs.update({f"{field}[{i}]": v for i, v in enumerate(value)})
    return refs


def _check_references(spec: PipelineSpec, source: str) -> None:
    seen: dict[str, str] = {}
    problems = []
    for stage_id, stage in spec.stages.items():
        for field, target in _references(stage).items():
            allowed = _ALLOWED_UPSTREAM[field.split("[")[0]]
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


def backbone_name(spec: PipelineSpec, stage_id: str) -> str | None:
    """The backbone a training stage starts from: its own ``backbone.name``, else its ``backbone_from``'s."""
    stage = spec.stages[stage_id]
    if not isinstance(stage, PretrainStage | FinetuneStage):
        raise ConfigError(
            f"stages.{stage_id} is a {stage.kind} stage; only pretrain and finetune stages have a backbone"
        )
    own = (stage.config.get("backbone") or {}).get("name") if isinstance(stage.config.get("backbone"), dict) else None
    if own or stage.backbone_from is None or stage.backbone_from not in spec.stages:
        return own
    return backbone_name(spec, stage.backbone_from)


def _check_backbone_name(name: object, where: str) -> None:
    """A misspelt backbone fails here, not after the cohort stage has run (the registry knows every name)."""
    if not isinstance(name, str):
        return
    from medvision.models import UnknownBackboneError, get_backbone_spec  # timm: loaded only when checking

    try:
        get_backbone_spec(name)
    except UnknownBackboneError as e:
        raise ConfigError(f"{where}: backbone.name: {e}") from None


def _check_stage_configs(spec: PipelineSpec, source: str) -> None:
    """Validate every training stage's partial config (per sweep member) against the real config model."""

    for stage_id, stage in spec.stages.items():
        if not isinstance(stage, FinetuneStage | PretrainStage):
            continue
        model = stage_config_model(stage.kind)
        members = sweep_members(stage) if isinstance(stage, FinetuneStage) else iter([("main", {})])
        for member, chosen in members:
            where = f"{source}: stages.{stage_id}.config" + (f" (sweep member {member})" if chosen else "")
            overrides = [f"{k}={json.dumps(v)}" for k, v in chosen.items()]
            try:
                data = apply_overrides(stage.config, overrides, model, source=f"stages.{stage_id}.sweep")
                inherited = backbone_name(spec, stage_id)
                if inherited and "name" not in (data.get("backbone") or {}):
                    data.setdefault("backbone", {})["name"] = inherited
                model.model_validate(
                    wire_config(stage.kind, data, cohort_dir=Path("COHORT"), output_dir=Path("OUT"), weights=None)
                )
            except ValidationError as err:
                raise ConfigError(explain_validation_error(err, model, where)) from None
            _check_backbone_name((data.get("backbone") or {}).get("name"), where)
