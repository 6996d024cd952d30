"""Stage kinds: what a pipeline stage can be, each an object in one registry.

A kind declares everything the rest of the pipeline needs to know about it, so nothing else compares kind names:

* ``config`` — the pydantic model of the stage's YAML (its ``kind: Literal[...]`` tag picks it);
* ``inputs`` — which of its fields name earlier stages, and of which kinds (reference checks, ``upstream``);
* ``identity`` — what each unit of its work is (the stage key hashes it: equal keys, same result, reused);
* ``execute`` — the work itself, from a typed :class:`StageContext` to a :class:`StageOutput` and summary rows;
* optionally ``validate`` (load time, beyond the model: e.g. each sweep member's config) and ``check`` (the
  whole-study ``--check`` against the data), and the flags ``resumes``, ``exclusive`` and ``opens_file``.

The built-in kinds (cohort, pretrain, finetune, evaluate, report) live in :mod:`medvision.pipeline.stages`; a
third-party kind is a :class:`StageKind` subclass registered with :func:`register_stage_kind`, or declared under
the ``medvision.stages`` entry point group (:mod:`medvision.plugins`) of its own distribution.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from medvision.config import PLAIN_NAME, ConfigError, StrictModel, did_you_mean
from medvision.pipeline.tracker import Tracker, stage_key
from medvision.plugins import STAGES, PluginError, load_group

if TYPE_CHECKING:  # the spec and the study hold stages of every kind: they import this module, not the reverse
    from medvision.pipeline.spec import PipelineSpec
    from medvision.pipeline.study import Study

__all__ = [
    "Identity",
    "Rows",
    "StageContext",
    "StageKind",
    "StageOutput",
    "StageSpec",
    "is_plain_name",
    "load_stage_plugins",
    "plain_name_error",
    "register_stage_kind",
    "stage_kind",
    "stage_kinds",
]

#: Summary rows of a stage: one per unit of work, ``{"member", "status", "run_id", "result"}``.
Rows = list[dict[str, Any]]


def is_plain_name(name: object) -> bool:
    """A name safe as one folder name (stage ids and cohort names become folders under the output folder)."""
    return isinstance(name, str) and re.fullmatch(PLAIN_NAME, name) is not None


def plain_name_error(key: str, name: object, why: str) -> str:
    """The message for a ``key`` whose value ``name`` is not a plain name; ``why`` says what it names."""
    return (
        f"{key} {name!r} is not a plain name (letters, digits, '_', '.', '-', starting with a letter or digit); {why}"
    )


class StageSpec(StrictModel):
    """Base of every stage's config model. A kind's model narrows ``kind`` to ``Literal["its name"]``."""

    kind: str


S = TypeVar("S", bound=StageSpec)


@dataclass
class StageOutput:
    """What later stages may read from a finished stage.

    Attributes:
        kind: the stage kind.
        run_ids: the MLflow run(s) it made (one per sweep member for a swept finetune).
        members: per sweep member (training stages), its name, chosen sweep values and model facts.
        cohort_dir: the built cohort (a cohort stage's own; the one a training or evaluate stage worked on).
        manifest_sha256: that cohort's manifest hash (part of downstream stage keys).
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


@dataclass(frozen=True)
class Identity:
    """What one unit of a stage's work is: its resolved config, what it reads, and the cohort it reads it from.

    Attributes:
        config: JSON-able settings that decide the result (folders and tracking left out: users share stages).
        upstream: the identities of the inputs (a cohort's manifest hash, upstream run ids).
        manifest_sha256: the cohort the work is computed on.
    """

    config: Any
    upstream: list[str]
    manifest_sha256: str | None

    def key(self, kind: str, version: str) -> str:
        """The stage key: this identity, the kind and the code version (:func:`stage_key`)."""
        return stage_key(kind, self.config, self.upstream, self.manifest_sha256, version)


@dataclass
class StageContext(Generic[S]):
    """Everything an executor may use: its typed stage, the upstream outputs, where to write, how to track."""

    stage_id: str
    stage: S
    spec: PipelineSpec
    outputs: dict[str, StageOutput]
    out_root: Path
    tracker: Tracker
    version: str
    echo: Callable[[str], None]

    @property
    def folder(self) -> Path:
        return self.out_root / self.stage_id

    @property
    def kind(self) -> StageKind[S]:
        return stage_kind(self.stage.kind)


class StageKind(ABC, Generic[S]):
    """One kind of pipeline stage (see the module docstring for what each attribute is for).

    Attributes:
        name: the ``kind:`` value in a pipeline YAML.
        config: the stage's config model (a :class:`StageSpec` whose ``kind`` is ``Literal[name]``).
        inputs: config field → the kinds of the earlier stages it may name (a ``str`` or ``list[str]`` field).
        resumes: an interrupted stage continues from its last checkpoint (otherwise it runs again).
        exclusive: every key of the stage writes one output folder, so one run of it at a time (the stage is
            locked around :meth:`execute`); otherwise :meth:`execute` locks each unit's key itself.
        opens_file: its output path is one file a person opens (the report): the summary shows its name in the
            table and the whole path below it.
    """

    name: ClassVar[str]
    config: ClassVar[type[StageSpec]]
    inputs: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    resumes: ClassVar[bool] = False
    exclusive: ClassVar[bool] = False
    opens_file: ClassVar[bool] = False

    def references(self, stage: S) -> dict[str, str]:
        """``{field (with [i] for lists): stage id}`` of every earlier stage ``stage`` names in its inputs."""
        refs: dict[str, str] = {}
        for name in self.inputs:
            value = getattr(stage, name, None)
            if isinstance(value, str):
                refs[name] = value
            elif isinstance(value, list):
                refs.update({f"{name}[{i}]": v for i, v in enumerate(value)})
        return refs

    def validate(self, stage_id: str, stage: S, spec: PipelineSpec, source: str) -> None:  # noqa: B027
        """Load-time checks beyond the config model (the references are already checked). Default: none.

        Raises:
            ConfigError: naming ``source``, the stage and the key.
        """

    def check(self, stage_id: str, stage: S, study: Study) -> list[str]:
        """The whole-study check (``--check``) against what the data says; returns notes on what was checked.

        Raises:
            ConfigError: naming the stage, the key, the value, what exists and the closest spelling.
        """
        return []

    @abstractmethod
    def identity(self, ctx: StageContext[S]) -> dict[str, Identity]:
        """What each unit of the stage's work is, by member name (``-`` for a stage that is one unit)."""

    @abstractmethod
    def execute(self, ctx: StageContext[S]) -> tuple[StageOutput, Rows]:
        """Reuse or run every unit; return the stage's output and one summary row per unit."""


_KINDS: dict[str, StageKind[Any]] = {}
_adopted = False


def register_stage_kind(kind: StageKind[Any] | type[StageKind[Any]]) -> StageKind[Any]:
    """Add a stage kind (an instance, or a class built with no arguments); returns the registered instance.

    Raises:
        ValueError: the name is taken, or the config model's ``kind`` field does not name it.
    """
    obj = kind() if isinstance(kind, type) else kind
    name = getattr(obj, "name", None)
    if not isinstance(obj, StageKind) or not isinstance(name, str) or not hasattr(obj, "config"):
        raise TypeError(f"register_stage_kind takes a StageKind with a name and a config model, got {kind!r}")
    if name in _KINDS:
        raise ValueError(f"stage kind {name!r} is already registered by {type(_KINDS[name]).__qualname__}")
    tag = obj.config.model_fields.get("kind")
    if tag is None or getattr(tag.annotation, "__args__", None) != (name,):
        raise ValueError(f"stage kind {name!r}: {obj.config.__name__}.kind must be Literal[{name!r}]")
    _KINDS[name] = obj
    return obj


def load_stage_plugins() -> None:
    """Adopt the kinds of the ``medvision.stages`` entry points (once per process).

    Raises:
        PluginError: a plugin that fails to import, or an object that is not a StageKind.
    """
    global _adopted
    if _adopted:
        return
    _adopted = True  # before loading: a plugin module that registers itself may look a kind up while importing
    try:
        for ep_name, obj in load_group(STAGES):
            if isinstance(obj, ModuleType):
                continue  # importing it registered its kinds
            cls = obj if isinstance(obj, type) else type(obj)
            if not issubclass(cls, StageKind):
                raise PluginError(f"the {STAGES} entry point {ep_name!r} gives {obj!r}; it must name a StageKind")
            if not any(type(k) is cls for k in _KINDS.values()):
                register_stage_kind(cast("StageKind[Any] | type[StageKind[Any]]", obj))
    except BaseException:
        _adopted = False
        raise


def stage_kinds() -> tuple[StageKind[Any], ...]:
    """Every registered kind, in registration order (the built-ins first)."""
    load_stage_plugins()
    return tuple(_KINDS.values())


def stage_kind(name: str) -> StageKind[Any]:
    """The kind registered as ``name``.

    Raises:
        ConfigError: an unknown name, with the closest registered one.
    """
    load_stage_plugins()
    try:
        return _KINDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown stage kind {name!r}.{did_you_mean(name, list(_KINDS))} Stage kinds: {', '.join(_KINDS)}"
        ) from None
