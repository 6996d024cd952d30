"""The training stages: self-supervised pretraining and supervised fine-tuning (optionally swept).

The pipeline never re-implements a stage: a finetune stage is :func:`medvision.recipes.fit` (any recipe) with a
config whose cohort folder, starting weights, output folder and tracking are filled in from upstream stages. Each sweep
member's config is validated once, when the pipeline is loaded (its sweep values set through the one
:func:`medvision.config.apply_overrides`, so a typo fails before the first stage starts); running it only sets the
folders, weights and tracking the pipeline decides on that validated model.

A member's identity (what its stage key hashes) is :class:`medvision.engine.identity.RunIdentity`, the one
definition that ``resume: auto`` also reads: its validated config without the folders and tracking (the cohort is
identified by its manifest hash, not by the folder it was built in: users share stages; the upstream run whose
backbone it starts from is in its weights reference) and the cohort's manifest. ``recipe: auto`` trains each of its
candidates under that candidate config's own RunIdentity key, so a finished identical fixed-recipe member (a baseline
stage, or an interrupted ``auto``) is reused as the candidate, and a new candidate is reusable by them.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias, TypeVar

from mlflow import MlflowClient
from pydantic import Field, PrivateAttr, ValidationError, field_validator

from medvision.config import ConfigError, apply_overrides, explain_validation_error
from medvision.engine.identity import RunIdentity
from medvision.heads import get_head_class
from medvision.models import UnknownBackboneError, get_backbone_spec
from medvision.pipeline.executors import stage_lock
from medvision.pipeline.kinds import Identity, Rows, StageContext, StageKind, StageOutput, StageSpec
from medvision.pipeline.study import Study
from medvision.recipes import CandidateRunner, fit
from medvision.ssl import PretrainConfig, pretrain
from medvision.training import FinetuneConfig, FinetuneResult, finetune

__all__ = ["FinetuneKind", "FinetuneStage", "Member", "PretrainKind", "PretrainStage", "kept_headline", "sweep_members"]

TrainingConfig: TypeAlias = FinetuneConfig | PretrainConfig

#: The metrics a training row shows, when the run has them.
_HEADLINE = ("val/auroc", "val/knn_acc", "val/ood_auroc")


class TrainingStage(StageSpec):
    """What both training stages read: a cohort stage, optionally an earlier stage's backbone, and a config."""

    cohort: str
    #: An earlier pretrain/finetune stage whose backbone to start from; ``None`` uses ``config.backbone``.
    backbone_from: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    _members: list[Member] | None = PrivateAttr(default=None)


class PretrainStage(TrainingStage):
    """Self-supervised pretraining (SimCLR / MICLe) on a cohort's unlabelled pool."""

    kind: Literal["pretrain"]


class FinetuneStage(TrainingStage):
    """Supervised fine-tuning, optionally swept over label fractions, backbones or seeds."""

    kind: Literal["finetune"]
    #: Dotted FinetuneConfig keys → values, e.g. ``{data.label_fraction: [0.1, 1.0], seed: [0, 1]}``.
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("sweep")
    @classmethod
    def _non_empty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"sweep key {key!r} has no values")
        return v


T = TypeVar("T", bound=TrainingStage)


@dataclass(frozen=True)
class _MemberIdentity(Identity):
    """A training member's identity: its stage key is the :class:`RunIdentity` key, the one resume checks."""

    run: RunIdentity | None = None

    def key(self, kind: str, version: str) -> str:
        return self.run.key() if self.run is not None else super().key(kind, version)


@dataclass(frozen=True)
class Member:
    """One sweep member (``main`` without a sweep): its name, its sweep values and its validated config.

    ``config`` carries placeholder folders until the member runs (``COHORT``, ``OUT``): the pipeline sets them.
    """

    name: str
    chosen: dict[str, Any]
    config: TrainingConfig


def sweep_members(stage: TrainingStage) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(member name, {dotted key: value})`` for each combination of the stage's sweep (one when none)."""
    sweep: dict[str, list[Any]] = getattr(stage, "sweep", {})
    keys = list(sweep)
    for combo in itertools.product(*(sweep[k] for k in keys)):
        chosen = dict(zip(keys, combo))
        name = "-".join(f"{k.split('.')[-1]}={v}" for k, v in chosen.items()) or "main"
        yield re.sub(r"[^A-Za-z0-9_.=-]", "_", name), chosen


def backbone_name(stages: dict[str, StageSpec], stage_id: str) -> str | None:
    """The backbone a training stage starts from: its own ``backbone.name``, else its ``backbone_from``'s."""
    stage = stages[stage_id]
    if not isinstance(stage, TrainingStage):
        raise ConfigError(f"stages.{stage_id} is a {stage.kind} stage; only training stages have a backbone")
    backbone = stage.config.get("backbone")
    own = backbone.get("name") if isinstance(backbone, dict) else None
    if own or stage.backbone_from is None or stage.backbone_from not in stages:
        return own
    return backbone_name(stages, stage.backbone_from)


class TrainingKind(StageKind[T]):
    """What pretraining and fine-tuning share: inputs, member configs, identity, the run-or-reuse loop."""

    inputs = {"cohort": ("cohort",), "backbone_from": ("pretrain", "finetune")}
    resumes = True
    #: The stage's config model (``config`` of the YAML, per member).
    model: ClassVar[type[TrainingConfig]]

    @abstractmethod
    def run(self, ctx: StageContext[T], config: Any) -> str | None:
        """Train ``config`` (the member's config, folders and tracking set) for stage ``ctx``; return its MLflow run
        id."""

    # -- load time ------------------------------------------------------------------------------------------

    def members(self, stages: dict[str, StageSpec], stage_id: str, source: str = "pipeline") -> list[Member]:
        """Every member with its config validated once (cached on the stage).

        Raises:
            ConfigError: a member's config (sweep values included) fails validation, naming stage, member and key.
        """
        stage: T = stages[stage_id]  # type: ignore[assignment]
        if stage._members is not None:
            return stage._members
        inherited = backbone_name(stages, stage_id)
        members = []
        for name, chosen in sweep_members(stage):
            where = f"{source}: stages.{stage_id}.config" + (f" (sweep member {name})" if chosen else "")
            overrides = [f"{k}={json.dumps(v)}" for k, v in chosen.items()]
            data = apply_overrides(stage.config, overrides, self.model, source=f"stages.{stage_id}.sweep")
            if inherited and "name" not in (data.get("backbone") or {}):
                data.setdefault("backbone", {})["name"] = inherited
            # the pipeline decides the folders: what the stage config says there is overruled
            section = data.get("data")
            data["data"] = {**(section if isinstance(section, dict) else {}), "cohort_dir": "COHORT"}
            data["output_dir"] = "OUT"
            try:
                config = self.model.model_validate(data)
            except ValidationError as err:
                raise ConfigError(explain_validation_error(err, self.model, where)) from None
            _check_backbone_name(config.backbone.name, where)
            members.append(Member(name, chosen, config))
        stage._members = members
        return members

    def validate(self, stage_id: str, stage: T, spec: Any, source: str) -> None:
        self.members(spec.stages, stage_id, source)

    def check(self, stage_id: str, stage: T, study: Study) -> list[str]:
        study.cohort_of[stage_id] = stage.cohort
        return []

    # -- run time -------------------------------------------------------------------------------------------

    def identity(self, ctx: StageContext[T]) -> dict[str, Identity]:
        return {m.name: identity for m, identity, _ in self._wired(ctx)}

    def _wired(self, ctx: StageContext[T]) -> list[tuple[Member, Identity, TrainingConfig]]:
        """Each member with its identity and its config wired to the upstream cohort and backbone (folders still
        placeholders: the output folder is named by the stage key)."""
        stage = ctx.stage
        cohort = ctx.outputs[stage.cohort]
        if cohort.cohort_dir is None:
            raise ConfigError(f"stages.{ctx.stage_id}.cohort: stage {stage.cohort!r} recorded no cohort folder")
        weights, upstream = None, [cohort.manifest_sha256 or ""]
        if stage.backbone_from is not None:
            up = ctx.outputs[stage.backbone_from]
            if len(up.run_ids) != 1:
                raise ConfigError(
                    f"stages.{ctx.stage_id}.backbone_from: stage {stage.backbone_from!r} made "
                    f"{len(up.run_ids)} models (a sweep); start from a stage with one model"
                )
            weights = f"mlflow:runs:/{up.run_ids[0]}/backbone"
            upstream.append(up.run_ids[0])
        wired: list[tuple[Member, Identity, TrainingConfig]] = []
        for member in self.members(ctx.spec.stages, ctx.stage_id):
            config = _with(member.config, cohort_dir=cohort.cohort_dir, weights=weights)
            dumped = config.model_dump(mode="json", exclude={"tracking"})
            dumped["output_dir"] = None
            dumped["data"]["cohort_dir"] = None  # the cohort is its manifest hash (upstream), not its folder
            run = RunIdentity.of(config, manifest_sha256=cohort.manifest_sha256)
            wired.append((member, _MemberIdentity(dumped, upstream, cohort.manifest_sha256, run), config))
        return wired

    def execute(self, ctx: StageContext[T]) -> tuple[StageOutput, Rows]:
        cohort = ctx.outputs[ctx.stage.cohort]
        output = StageOutput(kind=self.name, cohort_dir=cohort.cohort_dir, manifest_sha256=cohort.manifest_sha256)
        rows: Rows = []
        for member, identity, config in self._wired(ctx):
            key = identity.key(self.name, ctx.version)
            with stage_lock(ctx, key):  # a second `medvision run` waits here, then reuses this member's run
                row = self._reuse_or_run(ctx, member, key, config)
            output.run_ids.append(row["run_id"])
            output.members.append({"member": member.name, **member.chosen, **_member_facts(config)})
            rows.append(row)
        return output, rows

    def _reuse_or_run(self, ctx: StageContext[T], member: Member, key: str, config: TrainingConfig) -> dict[str, Any]:
        client, monitor = ctx.tracker.client, config.monitor.metric
        run = ctx.tracker.finished(key)
        if run is not None:
            run_id = run.info.run_id
            return {
                "member": member.name,
                "status": "reused",
                "run_id": run_id,
                "result": kept_headline(client, run_id, monitor),
            }
        name = ctx.stage_id if member.name == "main" else f"{ctx.stage_id}/{member.name}"
        tracking = {"tracking_uri": ctx.tracker.uri, "experiment": ctx.tracker.experiment, "run_name": name}
        folders = {"output_dir": ctx.folder / f"{member.name}-{key[:8]}"}
        run_id = self.run(
            ctx, config.model_copy(update={**folders, "tracking": config.tracking.model_copy(update=tracking)})
        )
        if run_id is None:  # the pipeline always passes a tracking URI: a run without one is a bug
            raise RuntimeError(f"stages.{ctx.stage_id}: the {self.name} run recorded no MLflow run")
        # Tagged once finished: the stage key marks a *completed* result, and an interrupted run that resumes
        # (same checkpoint folder, same MLflow run) gets its tags when it completes.
        for tag, value in ctx.tracker.child_tags(ctx.stage_id, self.name, key).items():
            client.set_tag(run_id, tag, value)
        return {
            "member": member.name,
            "status": "ran",
            "run_id": run_id,
            "result": kept_headline(client, run_id, monitor),
        }


class PretrainKind(TrainingKind[PretrainStage]):
    """SimCLR / MICLe pretraining (:func:`medvision.ssl.pretrain`); its output is a backbone for later stages."""

    name = "pretrain"
    config = PretrainStage
    model = PretrainConfig

    def run(self, ctx: StageContext[PretrainStage], config: Any) -> str | None:
        return pretrain(config).run_id


class FinetuneKind(TrainingKind[FinetuneStage]):
    """Fine-tuning (:func:`medvision.recipes.fit`: any recipe), one run per sweep member; its outputs are
    classifiers."""

    name = "finetune"
    config = FinetuneStage
    model = FinetuneConfig

    def run(self, ctx: StageContext[FinetuneStage], config: Any) -> str | None:
        return fit(config, run_candidate=self._candidate_runner(ctx)).run_id

    def _candidate_runner(self, ctx: StageContext[FinetuneStage]) -> CandidateRunner:
        """How ``recipe: auto`` trains a candidate inside a pipeline: under the stage key of that exact config (its
        :class:`RunIdentity` key, what a fixed-recipe member with the same config is keyed by), so a finished
        identical run is reused and a new one becomes reusable by a later member or stage."""
        manifest = ctx.outputs[ctx.stage.cohort].manifest_sha256

        def run(config: FinetuneConfig) -> FinetuneResult:
            key = RunIdentity.of(config, manifest_sha256=manifest).key()
            with stage_lock(ctx, key):
                done = ctx.tracker.finished(key)
                if done is not None:
                    ctx.echo(f"[{ctx.stage_id}] candidate {config.recipe}: reusing finished run {done.info.run_id}")
                    metrics = dict(done.data.metrics)
                    best = metrics.get(f"best/{config.monitor.metric}")
                    return FinetuneResult(done.info.run_id, None, None, best, metrics, Path(config.output_dir))
                result = finetune(config)
                if result.run_id is not None:
                    for tag, value in ctx.tracker.child_tags(ctx.stage_id, self.name, key).items():
                        ctx.tracker.client.set_tag(result.run_id, tag, value)
                return result

        return run

    def check(self, stage_id: str, stage: FinetuneStage, study: Study) -> list[str]:
        """A fine-tune may only ask for a label fraction its cohort declared: the nested subsets are drawn at build
        time, and a sweep that asks for another one would train its first members and then fail. A case cohort's
        labels belong to whole cases (a series, a study, a patient): every member's head must read bags."""
        study.cohort_of[stage_id] = stage.cohort
        declared = study.fractions.get(stage.cohort)
        unit = study.units.get(stage.cohort, "image")
        for member in self.members(study.spec.stages, stage_id, study.source):
            f = getattr(member.config.data, "label_fraction", 1.0)
            if declared is not None and f < 1.0 and not any(abs(f - d) < 1e-9 for d in declared):
                raise ConfigError(
                    f"{study.source}: stages.{stage_id}: data.label_fraction {f} is not a label fraction of cohort "
                    f"{stage.cohort!r} ({', '.join(map(str, declared))}); add it to that cohort's "
                    "splits.label_fractions (the nested subsets are drawn when it is built) or use one of those"
                )
            head = member.config.head.name
            if unit != "image" and not get_head_class(head).takes_bags:
                raise ConfigError(
                    f"{study.source}: stages.{stage_id}: cohort {stage.cohort!r} is {unit}-level (unit: {unit}), but "
                    f"head {head!r} reads one image at a time; use head: {{name: mil, options: {{pooling: "
                    "gated_attention}} (or attention, mean, max, middle)"
                )
        return []


def _with(config: TrainingConfig, *, cohort_dir: Path, weights: str | None) -> TrainingConfig:
    """``config`` reading ``cohort_dir`` and, when it starts from an upstream stage, that stage's backbone."""
    update: dict[str, Any] = {"data": config.data.model_copy(update={"cohort_dir": cohort_dir})}
    if weights is not None:
        update["backbone"] = config.backbone.model_copy(update={"weights": weights})
    return config.model_copy(update=update)


def _check_backbone_name(name: str, where: str) -> None:
    """A misspelt backbone fails here, not after the cohort stage has run (the registry knows every name)."""
    try:
        get_backbone_spec(name)
    except UnknownBackboneError as e:
        raise ConfigError(f"{where}: backbone.name: {e}") from None


def _member_facts(config: TrainingConfig) -> dict[str, Any]:
    """What the evaluation and the report say about a member's model."""
    head = getattr(config, "head", None)
    return {
        "backbone": config.backbone.name,
        "weights": config.backbone.weights,
        "label_fraction": getattr(config.data, "label_fraction", 1.0),
        "seed": config.seed,
        "head": head.name if head is not None else None,  # a pretraining stage has none
    }


def kept_headline(client: MlflowClient, run_id: str, monitor: str) -> str:
    """The run's headline metrics at the epoch whose checkpoint was kept (the model the run *is*), said so.

    The last epoch's values are not the model's: with early overfitting the last validation AUROC can be far below
    the kept checkpoint's. The kept epoch is the first one whose ``monitor`` value equals the run's ``best/<monitor>``
    (what the checkpoint callback kept); without a best value (nothing finite to monitor) the last epoch is shown,
    and said to be.
    """
    metrics = client.get_run(run_id).data.metrics
    keys = [k for k in _HEADLINE if k in metrics] or sorted(k for k in metrics if not k.startswith("best/"))[:3]
    best = metrics.get(f"best/{monitor}")
    step = None
    if best is not None:
        history = sorted(client.get_metric_history(run_id, monitor), key=lambda m: m.step)
        step = next((m.step for m in history if math.isclose(m.value, best, rel_tol=1e-9, abs_tol=1e-12)), None)
    if step is None:
        return "last epoch: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in keys)
    at_step = {}
    for k in keys:
        values = [m.value for m in client.get_metric_history(run_id, k) if m.step == step]
        if values:
            at_step[k] = values[-1]
    kept = f"kept epoch {step + 1}/{len({m.step for m in history})}"  # counted from 1, as people do
    return f"{kept}: " + ", ".join(f"{k}={v:.3f}" for k, v in at_step.items())
