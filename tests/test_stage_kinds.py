"""Stage kinds are objects in one registry: a kind from outside the package validates, runs and is reused like a
built-in one; sweep members are validated models before anything runs; a training row shows the kept checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import yaml
from mlflow import MlflowClient

from medvision.config import ConfigError
from medvision.pipeline import StageKind, StageSpec, load_pipeline, run_pipeline
from medvision.pipeline.executors import record_output, reused_output
from medvision.pipeline.kinds import Identity, StageContext, StageOutput, register_stage_kind, stage_kind, stage_kinds
from medvision.pipeline.stages.training import FinetuneKind, kept_headline
from medvision.training import FinetuneConfig

REPO = Path(__file__).resolve().parent.parent


class CountStage(StageSpec):
    kind: Literal["count-files"]
    #: an earlier cohort stage whose folder to count
    cohort: str


class CountFilesKind(StageKind[CountStage]):
    """Counts the files of a built cohort: reads an upstream output, records its own, is reused by key."""

    name = "count-files"
    config = CountStage
    inputs = {"cohort": ("cohort",)}

    def identity(self, ctx: StageContext[CountStage]) -> dict[str, Identity]:
        cohort = ctx.outputs[ctx.stage.cohort]
        return {"-": Identity(ctx.stage.model_dump(mode="json"), [cohort.manifest_sha256 or ""], None)}

    def execute(self, ctx: StageContext[CountStage]):
        key = self.identity(ctx)["-"].key(self.name, ctx.version)
        reused = reused_output(ctx, key)
        if reused is not None:
            return reused, [{"member": "-", "status": "reused", "run_id": reused.run_ids[0], "result": "-"}]
        run_id = ctx.tracker.start_child(ctx.stage_id, self.name, key, ctx.stage_id)
        cohort_dir = ctx.outputs[ctx.stage.cohort].cohort_dir
        count = sum(1 for p in cohort_dir.rglob("*") if p.is_file())
        output = StageOutput(kind=self.name, run_ids=[run_id], members=[{"files": count}])
        record_output(ctx, run_id, output)
        ctx.tracker.end(run_id, True)
        return output, [{"member": "-", "status": "ran", "run_id": run_id, "result": f"{count} files"}]


@pytest.fixture(scope="module")
def count_kind():
    if "count-files" not in {k.name for k in stage_kinds()}:
        register_stage_kind(CountFilesKind)
    return stage_kind("count-files")


def _pipeline(tmp_path: Path, stages: dict) -> Path:
    path = tmp_path / "p.yaml"
    data = {"name": "kinds", "output_dir": str(tmp_path / "out"), "tracking": {"experiment": "kinds"}, "stages": stages}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


COHORT = {"kind": "cohort", "synth": {"kind": "cxr", "patients": 20, "seed": 0, "size": 32}}


def test_a_registered_kind_is_validated_checked_run_and_reused_like_a_built_in(count_kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", "00112233445566778899aabbccddeeff")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"stages\.count\.cohrot: unknown key\. Did you mean 'cohort'\?"):
        load_pipeline(_pipeline(tmp_path, {"cohort": COHORT, "count": {"kind": "count-files", "cohrot": "cohort"}}))
    with pytest.raises(ConfigError, match=r"stages\.count\.cohort: 'nope' is not an earlier stage"):
        load_pipeline(_pipeline(tmp_path, {"cohort": COHORT, "count": {"kind": "count-files", "cohort": "nope"}}))
    with pytest.raises(ConfigError, match=r"Input tag 'count-file' .* does not match"):
        load_pipeline(_pipeline(tmp_path, {"cohort": COHORT, "count": {"kind": "count-file", "cohort": "cohort"}}))

    spec = load_pipeline(_pipeline(tmp_path, {"cohort": COHORT, "count": {"kind": "count-files", "cohort": "cohort"}}))
    assert isinstance(spec.stages["count"], CountStage) and spec.upstream("count") == ["cohort"]
    first = run_pipeline(spec, echo=lambda _: None)
    assert [r["status"] for r in first.rows] == ["ran", "ran"] and first.outputs["count"].members[0]["files"] > 3
    again = run_pipeline(spec, echo=lambda _: None)
    assert [r["status"] for r in again.rows] == ["reused", "reused"]
    assert again.outputs["count"].run_ids == first.outputs["count"].run_ids


def test_registering_a_taken_name_or_a_mismatched_tag_fails(count_kind):
    with pytest.raises(ValueError, match="already registered"):
        register_stage_kind(CountFilesKind)

    class Wrong(CountFilesKind):
        name = "count-other"  # its config's kind still says count-files

    with pytest.raises(ValueError, match=r"CountStage\.kind must be Literal\['count-other'\]"):
        register_stage_kind(Wrong)


def test_sweep_members_are_validated_configs_before_anything_runs():
    spec = load_pipeline(REPO / "pipelines" / "demo.yaml", ["params.patients=50"])
    members = FinetuneKind().members(spec.stages, "transfer")
    assert all(isinstance(m.config, FinetuneConfig) for m in members)
    # the sweep values are set on the typed model (floats and strings as the model declares them)
    assert [(m.config.backbone.weights, m.config.data.label_fraction) for m in members] == [
        ("hub", 0.25), ("hub", 1.0), ("none", 0.25), ("none", 1.0)
    ]  # fmt: skip
    hod = FinetuneKind().members(spec.stages, "hod")
    assert {m.config.backbone.name for m in hod} == {"resnet-tiny"}  # inherited from its backbone_from stage


def test_a_bad_sweep_value_names_the_member_and_the_key(tmp_path):
    data = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    data["stages"]["hod"]["sweep"] = {"optim.lr": [0.01, -1]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(
        ConfigError, match=r"(?s)stages\.hod\.config \(sweep member lr=-1\).*optim\.lr: Input should be greater"
    ):
        load_pipeline(path)


def test_a_training_row_shows_the_kept_checkpoints_score_not_the_last_epochs(tmp_path):
    """Issue 21: the summary showed the last epoch's validation AUROC (0.363), not the kept checkpoint's (0.61)."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("headline")).info.run_id
    for step, (auroc, ood) in enumerate([(0.52, 0.60), (0.61, 0.71), (0.363, 0.55)]):
        client.log_metric(run_id, "val/auroc", auroc, step=step)
        client.log_metric(run_id, "val/ood_auroc", ood, step=step)
    client.log_metric(run_id, "best/val/auroc", 0.61)  # what the checkpoint callback logs at the end
    assert kept_headline(client, run_id, "val/auroc") == "kept epoch 2/3: val/auroc=0.610, val/ood_auroc=0.710"

    nothing_kept = client.create_run(client.get_experiment_by_name("headline").experiment_id).info.run_id
    client.log_metric(nothing_kept, "val/auroc", 0.5, step=0)
    assert kept_headline(client, nothing_kept, "val/auroc") == "last epoch: val/auroc=0.500"  # said so
