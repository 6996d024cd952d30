"""One function per stage kind: decide the stage key, reuse a finished run or run the stage's API.

Each executor returns the stage's :class:`StageOutput` and summary rows (one per sweep member).

Two ``medvision run`` of one pipeline may run at once (a user starts it twice, a scheduler retries). Each
unit of work therefore holds a file lock in its stage folder while it checks for a finished run and, if there
is none, runs: a training member or an evaluation locks its stage key (its output folder is named by it); a
cohort or report stage, whose output folder is shared by every key, locks the stage. The second process
waits, then finds the finished run and reuses it: no duplicate runs, no two trainings in one checkpoint folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout
from pydantic import BaseModel, ValidationError

from medvision.cohort.build import build_cohort
from medvision.cohort.spec import CohortSpec, FolderOptions, load_spec, spec_from_folder
from medvision.config import ConfigError, explain_validation_error
from medvision.evaluation.stage import EvaluationRequest, evaluate_models
from medvision.pipeline.spec import (
    CohortStage,
    EvaluateStage,
    FinetuneStage,
    PipelineSpec,
    PretrainStage,
    ReportStage,
    backbone_name,
    sweep_members,
)
from medvision.pipeline.stages import StageOutput, stage_config_model, wire_config
from medvision.pipeline.study import merge_spec
from medvision.pipeline.tracker import OUTPUT_TAG, Tracker, stage_key
from medvision.recipes import CandidateRunner, fit
from medvision.report.build import report_from_evaluation
from medvision.sources.medmnist import import_medmnist
from medvision.sources.synth import synthesize
from medvision.ssl import pretrain
from medvision.training import FinetuneConfig, FinetuneResult, finetune

__all__ = ["StageContext", "execute"]

Rows = list[dict[str, Any]]


@dataclass
class StageContext:
    """Everything an executor may use: its stage, the upstream outputs, where to write, how to track."""

    stage_id: str
    stage: Any
    spec: PipelineSpec
    outputs: dict[str, StageOutput]
    out_root: Path
    tracker: Tracker
    version: str
    echo: Callable[[str], None]

    @property
    def folder(self) -> Path:
        return self.out_root / self.stage_id


def execute(ctx: StageContext) -> tuple[StageOutput, Rows]:
    kind = ctx.stage.kind
    ctx.echo(f"[{ctx.stage_id}] {kind} ...")
    runner = {
        "cohort": _cohort,
        "pretrain": _training,
        "finetune": _training,
        "evaluate": _evaluate,
        "report": _report,
    }[kind]
    if kind in ("cohort", "report"):  # one output folder for every key: one run of the stage at a time
        with _stage_lock(ctx, "stage"):
            return runner(ctx)
    return runner(ctx)  # locks per stage key inside


@contextlib.contextmanager
def _stage_lock(ctx: StageContext, name: str) -> Iterator[None]:
    """Hold ``<stage folder>/.NAME.lock`` (released by the OS if the process dies); say so when waiting."""
    ctx.folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(ctx.folder / f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        ctx.echo(f"[{ctx.stage_id}] another run is working on this stage ({lock.lock_file}); waiting for it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _reuse(ctx: StageContext, key: str) -> StageOutput | None:
    run = ctx.tracker.finished(key)
    if run is None or OUTPUT_TAG not in run.data.tags:
        return None
    out = StageOutput.from_json(json.loads(run.data.tags[OUTPUT_TAG]))
    if out.path is not None and not out.path.exists() or out.cohort_dir is not None and not out.cohort_dir.exists():
        return None  # its files were deleted: run again
    return out


def _record(ctx: StageContext, run_id: str, output: StageOutput) -> None:
    ctx.tracker.client.set_tag(run_id, OUTPUT_TAG, json.dumps(output.to_json()))


# -- cohort ---------------------------------------------------------------------------------------


def _cohort(ctx: StageContext) -> tuple[StageOutput, Rows]:
    stage: CohortStage = ctx.stage
    spec_data = _cohort_spec(ctx, stage)
    try:
        spec = CohortSpec.model_validate(spec_data)
    except ValidationError as err:
        raise ConfigError(explain_validation_error(err, CohortSpec, f"stages.{ctx.stage_id} (cohort spec)")) from None
    inputs = [_fingerprint(Path(spec.images))]
    if spec.labels is not None and Path(spec.labels.csv).exists():  # corrected labels rebuild the cohort
        st = Path(spec.labels.csv).stat()
        inputs.append(f"{spec.labels.csv}:{st.st_size}:{st.st_mtime_ns}")
    key = stage_key("cohort", spec.model_dump(mode="json"), inputs, None, ctx.version)
    cohort_dir = ctx.folder / "cohort"
    reused = _reuse(ctx, key)
    if reused is not None:
        return reused, [
            {
                "member": "-",
                "status": "reused",
                "run_id": reused.run_ids[0],
                "result": f"manifest {(reused.manifest_sha256 or 'unknown')[:12]}",
            }
        ]
    run_id = ctx.tracker.start_child(ctx.stage_id, "cohort", key, ctx.stage_id)
    ok = False
    try:
        card = build_cohort(spec, cohort_dir)
        client = ctx.tracker.client
        for name in ("images", "patients", "quarantined"):
            client.log_metric(run_id, f"cohort/{name}", float(card[name]))
        client.log_param(run_id, "cohort.name", spec.name)
        client.log_param(run_id, "cohort.manifest_sha256", card["manifest_sha256"])
        client.log_artifact(run_id, str(cohort_dir / "cohort.json"), "cohort")
        output = StageOutput(
            kind="cohort", run_ids=[run_id], cohort_dir=cohort_dir, manifest_sha256=card["manifest_sha256"]
        )
        _record(ctx, run_id, output)
        ok = True
    finally:
        ctx.tracker.end(run_id, ok)
    return output, [
        {
            "member": "-",
            "status": "ran",
            "run_id": run_id,
            "result": f"{card['images']} images, {card['patients']} patients, {card['quarantined']} quarantined",
        }
    ]


def _cohort_spec(ctx: StageContext, stage: CohortStage) -> dict[str, Any]:
    """The cohort spec as a mapping, with the stage's overrides merged in."""
    source = ctx.folder / "source"
    if stage.spec is not None:
        data = load_spec(stage.spec).model_dump(mode="json")
    elif stage.synth is not None:
        marker = source / "synth.json"
        params = stage.synth.model_dump()
        if not (marker.exists() and json.loads(marker.read_text()) == params):
            synthesize(source, **params)
            marker.write_text(json.dumps(params))

        data = load_spec(source / "cohort.yaml").model_dump(mode="json")
    elif stage.medmnist is not None:
        npz = Path(stage.medmnist.npz).expanduser().resolve()
        marker = source / "medmnist.json"
        stamp = {"npz": str(npz), "size": npz.stat().st_size if npz.exists() else None}
        if not (marker.exists() and json.loads(marker.read_text()) == stamp):
            import_medmnist(npz, source)
            marker.write_text(json.dumps(stamp))

        data = load_spec(source / "cohort.yaml").model_dump(mode="json")
    elif stage.folder is not None:
        f = stage.folder
        options = FolderOptions.model_validate(f.model_dump(exclude={"images", "spec"}) | {"name": ctx.stage_id})
        data = spec_from_folder(f.images, options).model_dump(mode="json")
        merge_spec(data, f.spec)
    else:  # CohortStage's own validation demands one source, so only a hand-built stage lands here
        raise ConfigError(f"stages.{ctx.stage_id}: a cohort stage needs one of spec, synth, medmnist, folder")
    merge_spec(data, stage.overrides)
    return data


def _fingerprint(root: Path) -> str:
    """Names, sizes and modification times of every file under ``root``: a changed archive changes the key."""
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            st = os.stat(os.path.join(dirpath, name))
            h.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# -- pretrain / finetune --------------------------------------------------------------------------


def _training(ctx: StageContext) -> tuple[StageOutput, Rows]:
    stage: PretrainStage | FinetuneStage = ctx.stage
    cohort = ctx.outputs[stage.cohort]
    if cohort.cohort_dir is None:
        raise ConfigError(f"stages.{ctx.stage_id}.cohort: stage {stage.cohort!r} recorded no cohort folder")
    cohort_dir = cohort.cohort_dir
    weights, upstream_keys = None, [cohort.manifest_sha256 or ""]
    inherited = backbone_name(ctx.spec, ctx.stage_id)
    if stage.backbone_from is not None:
        up = ctx.outputs[stage.backbone_from]
        if len(up.run_ids) != 1:
            raise ConfigError(
                f"stages.{ctx.stage_id}.backbone_from: stage {stage.backbone_from!r} made "
                f"{len(up.run_ids)} models (a sweep); start from a stage with one model"
            )
        weights = f"mlflow:runs:/{up.run_ids[0]}/backbone"
        upstream_keys.append(up.run_ids[0])
    members = sweep_members(stage) if isinstance(stage, FinetuneStage) else iter([("main", {})])
    model = stage_config_model(stage.kind)
    output = StageOutput(kind=stage.kind)
    rows: Rows = []
    for member, chosen in members:
        data = json.loads(json.dumps(stage.config))
        for dotted, value in chosen.items():
            node = data
            *parents, last = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        if inherited and "name" not in (data.get("backbone") or {}):
            data.setdefault("backbone", {})["name"] = inherited
        wired = wire_config(stage.kind, data, cohort_dir=cohort_dir, output_dir=Path("-"), weights=weights)
        identity = _identity(model.model_validate(wired))
        key = stage_key(stage.kind, identity, upstream_keys, cohort.manifest_sha256, ctx.version)
        name = ctx.stage_id if member == "main" else f"{ctx.stage_id}/{member}"
        with _stage_lock(ctx, key):  # a second `medvision run` waits here, then reuses this member's run
            run = ctx.tracker.finished(key)
            if run is not None:
                row = {"member": member, "status": "reused", "run_id": run.info.run_id}
                row["result"] = _headline(run.data.metrics)
            else:
                tracking = {"tracking_uri": ctx.tracker.uri, "experiment": ctx.tracker.experiment, "run_name": name}
                cfg = model.model_validate(
                    wire_config(
                        stage.kind,
                        data,
                        cohort_dir=cohort_dir,
                        output_dir=ctx.folder / f"{member}-{key[:8]}",
                        weights=weights,
                        tracking=tracking,
                    )
                )
                reuse = _candidate_runner(ctx, upstream_keys, cohort.manifest_sha256)
                result = _run_training(stage.kind, cfg, reuse)
                # Tagged once finished: the stage key marks a *completed* result, and an interrupted run that
                # resumes (same checkpoint folder, same MLflow run) gets its tags when it completes.
                for tag, value in ctx.tracker.child_tags(ctx.stage_id, stage.kind, key).items():
                    ctx.tracker.client.set_tag(result.run_id, tag, value)
                row = {"member": member, "status": "ran", "run_id": result.run_id, "result": _headline(result.metrics)}
        output.run_ids.append(row["run_id"])
        output.members.append({"member": member, **chosen, **_member_facts(identity)})
        rows.append(row)
    return output, rows


def _run_training(kind: str, cfg: Any, run_candidate: CandidateRunner) -> Any:
    if kind == "finetune":
        return fit(cfg, run_candidate=run_candidate)

    return pretrain(cfg)


def _identity(cfg: BaseModel) -> dict[str, Any]:
    """What makes two training members the same work: the validated config with every default filled in (a stage
    that writes a default out and one that leaves it are the same work), without where it writes and records; the
    cohort is identified by its manifest hash (upstream), not by the folder it was built in: users share stages."""
    identity = cfg.model_dump(mode="json", exclude={"output_dir", "tracking", "resume"})
    if isinstance(identity.get("data"), dict):
        identity["data"]["cohort_dir"] = None
    return identity


def _candidate_runner(ctx: StageContext, upstream: list[str], manifest: str | None) -> CandidateRunner:
    """How ``recipe: auto`` trains a candidate inside a pipeline: under the stage key of that exact config, so a
    finished identical run (the same recipe run as a baseline stage, or an interrupted ``auto``) is reused, and a
    new one becomes reusable by them."""

    def run(cfg: FinetuneConfig) -> FinetuneResult:
        key = stage_key("finetune", _identity(cfg), upstream, manifest, ctx.version)
        with _stage_lock(ctx, key):
            done = ctx.tracker.finished(key)
            if done is not None:
                ctx.echo(f"[{ctx.stage_id}] candidate {cfg.recipe}: reusing finished run {done.info.run_id}")
                metrics = dict(done.data.metrics)
                best = metrics.get(f"best/{cfg.monitor.metric}")
                return FinetuneResult(done.info.run_id, None, None, best, metrics, Path(cfg.output_dir))
            result = finetune(cfg)
            if result.run_id is not None:
                for tag, value in ctx.tracker.child_tags(ctx.stage_id, "finetune", key).items():
                    ctx.tracker.client.set_tag(result.run_id, tag, value)
            return result

    return run


def _member_facts(config: dict[str, Any]) -> dict[str, Any]:
    backbone = config.get("backbone") or {}
    return {
        "backbone": backbone.get("name"),
        "weights": backbone.get("weights", "hub"),
        "label_fraction": (config.get("data") or {}).get("label_fraction", 1.0),
        "seed": config.get("seed", 0),
        "head": (config.get("head") or {}).get("name", "linear"),
    }


def _headline(metrics: dict[str, float]) -> str:
    keys = [k for k in ("val/auroc", "val/knn_acc", "val/ood_auroc") if k in metrics] or sorted(metrics)[:3]
    return ", ".join(f"{k}={metrics[k]:.3f}" for k in keys)


# -- evaluate / report ----------------------------------------------------------------------------


def _trained_stage(ctx: StageContext, ref: str) -> PretrainStage | FinetuneStage:
    """The training stage ``ref`` names (spec validation has already checked that it is one)."""
    up = ctx.spec.stages[ref]
    if not isinstance(up, PretrainStage | FinetuneStage):
        raise ConfigError(f"stages.{ctx.stage_id}.models: {ref!r} is a {up.kind} stage; expected a finetune stage")
    return up


def _evaluate(ctx: StageContext) -> tuple[StageOutput, Rows]:
    stage: EvaluateStage = ctx.stage
    models = []
    for ref in stage.models:
        up = ctx.outputs[ref]
        for run_id, member in zip(up.run_ids, up.members):
            models.append({"stage": ref, "run_id": run_id, **member})
    cohort_ids = {_trained_stage(ctx, ref).cohort for ref in stage.models}
    if len(cohort_ids) > 1:
        raise ConfigError(
            f"stages.{ctx.stage_id}.models: the models come from different cohorts "
            f"({', '.join(sorted(cohort_ids))}); evaluate each cohort's models in its own stage"
        )
    cohort = ctx.outputs[next(iter(cohort_ids))]
    settings = stage.model_dump(mode="json")
    key = stage_key("evaluate", settings, [m["run_id"] for m in models], cohort.manifest_sha256, ctx.version)
    with _stage_lock(ctx, key):  # its folder is named by the key; a second run waits, then reuses
        return _evaluate_key(ctx, key, models, cohort)


def _evaluate_key(
    ctx: StageContext, key: str, models: list[dict[str, Any]], cohort: StageOutput
) -> tuple[StageOutput, Rows]:
    stage: EvaluateStage = ctx.stage
    reused = _reuse(ctx, key)
    if reused is not None:
        return reused, [{"member": "-", "status": "reused", "run_id": reused.run_ids[0], "result": str(reused.path)}]
    run_id = ctx.tracker.start_child(ctx.stage_id, "evaluate", key, ctx.stage_id)
    ok = False
    try:
        folder = ctx.folder / key[:8]
        settings = stage.model_dump(exclude={"kind", "models"})
        request = EvaluationRequest(
            cohort_dir=cohort.cohort_dir, models=models, tracking_uri=ctx.tracker.uri, **settings
        )
        headline = evaluate_models(request, folder)
        client = ctx.tracker.client
        for k, v in headline.items():
            client.log_metric(run_id, k, float(v))
        client.log_artifacts(run_id, str(folder), "evaluation")
        output = StageOutput(
            kind="evaluate",
            run_ids=[run_id],
            path=folder,
            cohort_dir=cohort.cohort_dir,
            manifest_sha256=cohort.manifest_sha256,
            members=[{"models": [m["run_id"] for m in models]}],
        )
        _record(ctx, run_id, output)
        ok = True
    finally:
        ctx.tracker.end(run_id, ok)
    return output, [{"member": "-", "status": "ran", "run_id": run_id, "result": _headline(headline)}]


def _report(ctx: StageContext) -> tuple[StageOutput, Rows]:
    stage: ReportStage = ctx.stage
    evaluation = ctx.outputs[stage.evaluation]
    key = stage_key(
        "report", stage.model_dump(mode="json"), [evaluation.run_ids[0]], evaluation.manifest_sha256, ctx.version
    )
    reused = _reuse(ctx, key)
    if reused is not None:
        return reused, [{"member": "-", "status": "reused", "run_id": reused.run_ids[0], "result": str(reused.path)}]
    run_id = ctx.tracker.start_child(ctx.stage_id, "report", key, ctx.stage_id)
    ok = False
    try:
        if evaluation.path is None:
            raise ConfigError(f"stages.{ctx.stage_id}.evaluation: stage {stage.evaluation!r} recorded no output folder")
        path = report_from_evaluation(
            evaluation.path,
            ctx.folder / "report.html",
            title=stage.title or ctx.spec.name,
            pipeline_yaml=yaml.safe_dump(ctx.spec.model_dump(mode="json"), sort_keys=False),
        )
        ctx.tracker.client.log_artifact(run_id, str(path), "report")
        output = StageOutput(kind="report", run_ids=[run_id], path=path)
        _record(ctx, run_id, output)
        ok = True
    finally:
        ctx.tracker.end(run_id, ok)
    return output, [{"member": "-", "status": "ran", "run_id": run_id, "result": str(path)}]
