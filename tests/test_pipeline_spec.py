"""Pipelines are validated whole before any stage runs: typos and dangling references name their place."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medvision.cli import app
from medvision.config import ConfigError
from medvision.pipeline import load_pipeline
from medvision.pipeline.stages.training import sweep_members

REPO = Path(__file__).resolve().parent.parent
PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _base() -> dict:
    return yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_every_shipped_pipeline_validates(path):
    spec = load_pipeline(path)
    assert spec.stages


def test_demo_pipeline_wires_and_sweeps():
    spec = load_pipeline(REPO / "pipelines" / "demo.yaml", ["params.patients=50"])
    assert spec.stages["cohort"].synth.patients == 50  # ${params.*} keeps the type
    members = [name for name, _ in sweep_members(spec.stages["hod"])]
    assert members == ["label_fraction=0.25", "label_fraction=1.0"]


def test_a_typo_in_a_stage_config_names_the_stage_and_key(tmp_path):
    data = _base()
    data["stages"]["hod"]["config"]["optim"]["lrr"] = 0.1
    with pytest.raises(ConfigError, match=r"(?s)stages\.hod\.config.*optim\.lrr: unknown key.*Did you mean 'lr'"):
        load_pipeline(_write(tmp_path, data))


def test_a_stage_key_error_names_the_key_as_written_not_the_stage_kind_twice(tmp_path):
    data = _base()
    data["stages"]["hod"]["sweeps"] = {"data.label_fraction": [0.1]}
    with pytest.raises(ConfigError) as bad:
        load_pipeline(_write(tmp_path, data))
    assert "stages.hod.sweeps: unknown key. Did you mean 'sweep'?" in str(bad.value)
    assert "finetune.sweeps" not in str(bad.value)  # pydantic's union tag is not part of the user's key


def test_a_typo_in_a_sweep_key_fails(tmp_path):
    data = _base()
    data["stages"]["hod"]["sweep"] = {"data.label_fractoin": [0.1]}
    with pytest.raises(ConfigError, match=r"label_fractoin"):
        load_pipeline(_write(tmp_path, data))


def test_a_dangling_reference_names_the_place(tmp_path):
    data = _base()
    data["stages"]["hod"]["backbone_from"] = "mcile"
    with pytest.raises(ConfigError, match=r"stages\.hod\.backbone_from: 'mcile' is not an earlier stage.*micle"):
        load_pipeline(_write(tmp_path, data))


def test_a_forward_or_wrong_kind_reference_fails(tmp_path):
    data = _base()
    data["stages"]["evaluate"]["models"] = ["micle"]  # a pretrain stage has no classifier
    with pytest.raises(ConfigError, match=r"stages\.evaluate\.models\[0\]: 'micle' is a pretrain stage"):
        load_pipeline(_write(tmp_path, data))
    data = _base()
    data["stages"]["hod"]["cohort"] = "report"
    with pytest.raises(ConfigError, match=r"comes later"):
        load_pipeline(_write(tmp_path, data))


def test_unknown_stage_kind_and_undefined_param(tmp_path):
    data = _base()
    data["stages"]["extra"] = {"kind": "deploy"}
    with pytest.raises(ConfigError, match=r"stages\.extra"):
        load_pipeline(_write(tmp_path, data))
    data = _base()
    data["stages"]["cohort"]["synth"]["seed"] = "${params.sed}"
    with pytest.raises(ConfigError, match=r"params\.sed is not defined"):
        load_pipeline(_write(tmp_path, data))


def test_cli_refuses_a_bad_pipeline_before_running_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _base()
    data["stages"]["hod"]["config"]["optim"]["epochs"] = "many"
    result = CliRunner().invoke(app, ["run", str(_write(tmp_path, data))])
    assert result.exit_code == 2
    assert "stages.hod.config" in result.output and "optim.epochs" in result.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "demo-output").exists()
    ok = CliRunner().invoke(app, ["run", str(REPO / "pipelines" / "demo.yaml"), "--check"])
    assert ok.exit_code == 0 and "valid" in ok.output


def test_deferral_costs_and_risk_levels_are_checked_at_load(tmp_path):
    data = _base()
    data["stages"]["evaluate"]["costs"] = {"outlier_mised": {"high": 50}}
    with pytest.raises(ConfigError, match=r"outlier_mised"):
        load_pipeline(_write(tmp_path, data))
    data = _base()
    data["stages"]["evaluate"]["risk"] = {"psoriasis": "severe"}
    with pytest.raises(ConfigError, match=r"severe"):
        load_pipeline(_write(tmp_path, data))
    data["stages"]["evaluate"]["risk"] = {"psoriasis": "high"}
    data["stages"]["evaluate"]["costs"] = {"inlier_deferred": 0.2}
    spec = load_pipeline(_write(tmp_path, data))
    assert spec.stages["evaluate"].risk == {"psoriasis": "high"}


# -- the whole study is checked before anything runs (issue 12, item 3) ---------------------------


@pytest.fixture
def folder_study(tmp_path):
    """A folder + CSV cohort stage (values readable at --check time) and an evaluate stage."""
    images = tmp_path / "images"
    images.mkdir()
    rows = [{"img": f"a{i}", "dx": ["nev", "mel", "df"][i % 3], "site": ["vienna", "rosario"][i % 2]} for i in range(9)]
    (tmp_path / "labels.csv").write_text("img,dx,site\n" + "".join(f"{r['img']},{r['dx']},{r['site']}\n" for r in rows))
    data = _base()
    data["stages"]["cohort"] = {
        "kind": "cohort",
        "folder": {"images": str(images), "labels": str(tmp_path / "labels.csv"), "label_column": "dx",
                   "site_column": "site",
                   "spec": {"splits": {"heldout_conditions": ["df"], "label_fractions": [0.25, 1.0]}}},
    }  # fmt: skip
    data["stages"]["evaluate"].update(positive_class="mel", risk={"df": "high"}, subgroups=["sex", "site"])
    return data


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["stages"]["cohort"].update(overrides={"splits": {"heldout_sites": ["Vienna_dias"]}}),
         r"site 'Vienna_dias' does not exist.*did you mean 'vienna'"),
        (lambda d: d["stages"]["cohort"].update(overrides={"splits": {"outlier_conditions": ["MEL"]}}),
         r"label value 'MEL' does not exist.*did you mean 'mel'"),
        (lambda d: d["stages"]["cohort"].update(overrides={"splits": {"heldout_site": ["x"]}}),
         r"heldout_site: unknown key.*Did you mean 'heldout_sites'"),
        (lambda d: d["stages"]["evaluate"].update(positive_class="melanoma"),
         r"positive_class: class 'melanoma' does not exist.*did you mean 'mel'"),
        (lambda d: d["stages"]["evaluate"].update(subgroups=["agegroup", "skin"]),
         r"subgroup attribute 'agegroup'.*Existing: age_band, sex, site"),
        (lambda d: d["stages"]["evaluate"].update(risk={"DF": "high"}),
         r"risk: held-out condition 'DF' does not exist.*did you mean 'df'"),
        (lambda d: d["stages"]["cohort"]["folder"].update(label_column="diagnose"),
         r"labels.label_columns: labels CSV .* has no column 'diagnose'.*Its columns: img, dx, site"),
        (lambda d: d["stages"]["cohort"]["folder"].update(key_column="image"),
         r"labels.key_column: labels CSV .* has no column 'image'. Did you mean 'img'\?"),
    ],
    ids=["site", "outlier", "override-key", "positive-class", "subgroups", "risk", "label-column", "key-column"],
)  # fmt: skip
def test_check_finds_every_value_the_study_names_that_its_data_lacks(folder_study, tmp_path, change, expected):
    change(folder_study)
    with pytest.raises(ConfigError, match=f"(?s){expected}"):
        load_pipeline(_write(tmp_path, folder_study))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "p.yaml"), "--check"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_check_says_what_it_checked(folder_study, tmp_path):
    result = CliRunner().invoke(app, ["run", str(_write(tmp_path, folder_study)), "--check"])
    assert result.exit_code == 0, result.output
    assert "named values checked against labels CSV" in result.output
    assert "evaluate: positive_class, risk and subgroups checked against the cohort" in result.output


def test_check_says_plainly_when_the_data_is_not_there(folder_study, tmp_path):
    folder = folder_study["stages"]["cohort"]["folder"]
    folder.update(images=str(tmp_path / "imgs"), labels=str(tmp_path / "no.csv"), key_column="img")
    result = CliRunner().invoke(app, ["run", str(_write(tmp_path, folder_study)), "--check"])
    assert result.exit_code == 0, result.output  # the keys are valid; the data may appear before the run
    out = " ".join(result.output.split())
    assert f"NOT FOUND on this machine: images folder {tmp_path / 'imgs'}; labels CSV {tmp_path / 'no.csv'}" in out
    assert "will fail until these exist" in out


def test_synthetic_cohort_overrides_no_stages_and_stage_key_hints(tmp_path):
    data = _base()
    data["stages"]["cohort"]["overrides"] = {"splits": {"heldout_condition": ["x"]}}
    with pytest.raises(ConfigError, match=r"(?s)overrides: not cohort-spec keys.*heldout_condition"):
        load_pipeline(_write(tmp_path, data))
    with pytest.raises(ConfigError, match=r"(?s)stages: .*at least one stage"):
        load_pipeline(_write(tmp_path, {"name": "empty", "stages": {}}))
    data = _base()
    data["stages"]["cohort"]["sinth"] = {}
    with pytest.raises(ConfigError, match=r"Allowed here: folder, kind, medmnist, overrides, spec, synth"):
        load_pipeline(_write(tmp_path, data))


def test_the_closing_hint_works_from_any_folder(tmp_path):
    import io
    import sys

    from rich.console import Console

    from medvision.pipeline import print_summary
    from medvision.pipeline.run import PipelineResult

    buffer = io.StringIO()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    print_summary(PipelineResult(parent_run_id="abc", tracking_uri=uri), Console(file=buffer, width=300))
    hint = next(line for line in buffer.getvalue().splitlines() if "browse the runs" in line)
    command = hint.split(": ", 1)[1].split(" ui ")[0]
    assert Path(command).is_absolute() and Path(command).parent == Path(sys.executable).parent
    assert hint.endswith(f"--backend-store-uri {uri}")


def test_a_misspelt_set_of_a_parameter_or_stage_fails_before_anything_runs():
    # params and stages are free-form mappings: without this check the typo would add an unused parameter (and
    # train 20 epochs instead of 1) or a stage with no kind.
    demo = REPO / "pipelines" / "demo.yaml"
    with pytest.raises(
        ConfigError, match=r"--set params\.epoch: the pipeline has no parameter 'epoch'\. Did you mean 'epochs'\?"
    ):
        load_pipeline(demo, ["params.epoch=1"])
    with pytest.raises(ConfigError, match=r"no stage 'tranfser'\. Did you mean 'transfer'\? Its stages: cohort, micle"):
        load_pipeline(demo, ["stages.tranfser.config.optim.lr=0.1"])
    assert load_pipeline(demo, ["params.epochs=2", "stages.transfer.config.optim.lr=0.1"])  # the real names pass


def test_a_warmup_longer_than_the_run_says_which_keys_to_change():
    spec = REPO / "pipelines" / "transfer-effnet.yaml"
    with pytest.raises(ConfigError, match=r"lower optim\.warmup_epochs \(0 for none\) or raise optim\.epochs"):
        load_pipeline(spec, ["params.epochs=1"])


def test_a_cohort_spec_not_found_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # recipes name cohorts/... relative to the repository root
    with pytest.raises(ConfigError, match=r"no such cohort spec \(looked for .*cohorts/pad-ufes\.yaml: relative to"):
        load_pipeline(REPO / "pipelines" / "hod-derm.yaml")


def test_a_sweep_over_a_label_fraction_the_cohort_does_not_declare_fails_before_training(tmp_path):
    data = _base()
    data["stages"]["hod"]["sweep"]["data.label_fraction"] = [0.2, 1.0]  # the demo cohort declares 0.25 and 1.0
    with pytest.raises(ConfigError, match=r"stages\.hod: data\.label_fraction 0\.2 is not a label fraction of cohort"):
        load_pipeline(_write(tmp_path, data))


def test_a_misspelt_backbone_fails_at_check_naming_the_closest_and_the_cli_list():
    with pytest.raises(
        ConfigError, match=r"backbone\.name: unknown backbone 'effnet-lite9'\. Did you mean: effnet-lite1"
    ):
        load_pipeline(REPO / "pipelines" / "demo.yaml", ["stages.transfer.config.backbone.name=effnet-lite9"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"splits": {"train": 0.8, "val": 0.3, "test": 0.3}}, r"splits: Value error, train \+ val \+ test must be 1"),
        ({"preprocess": {"size": -5}}, r"preprocess\.size: Input should be greater than or equal to 8 \(got -5\)"),
    ],
    ids=["splits-sum-1.4", "negative-size"],
)
def test_check_validates_the_values_of_a_synthetic_cohorts_overrides(tmp_path, overrides, expected):
    """Issue 21, probe 8: these were "valid" at --check and failed only when the cohort stage ran."""
    data = _base()
    data["stages"]["cohort"]["overrides"] = overrides
    with pytest.raises(ConfigError, match=rf"(?s)stages\.cohort\.overrides.*{expected}"):
        load_pipeline(_write(tmp_path, data))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "p.yaml"), "--check"])
    assert result.exit_code == 2 and "valid (" not in result.output and "Traceback" not in result.output
    data["stages"]["cohort"]["overrides"] = {
        "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
        "preprocess": {"size": 48},
    }
    assert load_pipeline(_write(tmp_path, data))  # good values pass: the stand-in spec's own keys are never blamed


def test_a_value_only_a_generated_cohort_can_refute_fails_right_after_it_is_built(tmp_path, monkeypatch):
    """A synthetic cohort has no labels before it runs, so `--check` defers its classes to the build. The study is
    checked again once the cohort exists: a misspelt positive_class stops the run before any training stage (it
    used to fail at the evaluate stage, after every model had trained, as "a bug in medvision")."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    data = _base()
    data["stages"]["evaluate"]["positive_class"] = "melanomma"
    pipeline = _write(tmp_path, data)
    checked = CliRunner().invoke(app, ["run", str(pipeline), "--check"])
    assert checked.exit_code == 0 and "checked when its cohort is built" in checked.output, checked.output

    result = CliRunner().invoke(app, ["run", str(pipeline), "--set", "params.patients=44", "--set", "params.size=32"])
    assert result.exit_code == 2, result.output
    assert f"{pipeline}: stages.evaluate" in result.output
    assert "positive_class: class 'melanomma' does not exist" in result.output and "'melanoma'" in result.output
    assert "a bug in medvision" not in result.output
    runs = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()]
    )
    stages = {r.data.tags.get("medvision.stage") for r in runs}
    assert "cohort" in stages and not stages & {"micle", "hod", "transfer", "pretrain", "finetune"}, stages


def test_a_stage_config_error_at_run_time_names_the_key_as_the_pipeline_sets_it(tmp_path, monkeypatch):
    """The pretraining pool check names `data.batch_size`, the stage config's key; from `run` the key to set is
    `stages.micle.config.data.batch_size`, and the message says so."""
    monkeypatch.chdir(tmp_path)
    pipeline = _write(tmp_path, _base())
    result = CliRunner().invoke(app, ["run", str(pipeline), "--set", "params.patients=44", "--set", "params.size=32"])
    assert result.exit_code == 2, result.output
    assert "fewer than one global batch" in result.output
    assert "--set stages.micle.config.KEY=VALUE" in result.output and "a bug in medvision" not in result.output


def test_a_sweep_key_with_dots_can_be_overridden_on_the_command_line():
    """A sweep's keys are dotted config keys themselves: `--set stages.transfer.sweep.backbone.weights=[none]` sets
    the key `backbone.weights` (it was split into sweep.backbone.weights and refused as 'not a valid list')."""
    spec = load_pipeline(REPO / "pipelines" / "demo.yaml", ["stages.transfer.sweep.backbone.weights=[none]"])
    assert spec.stages["transfer"].sweep["backbone.weights"] == ["none"]
    assert spec.stages["transfer"].sweep["data.label_fraction"] == [0.25, 1.0]  # the other key kept
    members = [name for name, _ in sweep_members(spec.stages["transfer"])]
    assert members == ["weights=none-label_fraction=0.25", "weights=none-label_fraction=1.0"]
