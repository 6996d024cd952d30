"""Config machinery (medvision.config) and the fine-tuning config: typos fail at load, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from medvision.config import ConfigError, StrictModel, flatten, load_config, parse_config, to_yaml
from medvision.engine.config import TrackingConfig, resolve_tracking_uri
from medvision.training.config import FinetuneConfig

BASE = {
    "data": {"cohort_dir": "cohorts/x", "batch_size": 8},
    "backbone": {"name": "resnet-tiny", "weights": "none"},
    "head": {"name": "hod", "options": {"coarse_weight": 0.5}},
    "optim": {"name": "sgd", "lr": 0.01, "epochs": 3, "warmup_epochs": 1},
}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_yaml_loads_with_defaults_filled(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), FinetuneConfig)
    assert cfg.optim.lr == 0.01 and cfg.optim.momentum == 0.9
    assert cfg.mode == "full" and cfg.resume == "auto" and cfg.trainer.strategy == "auto"
    assert cfg.head.options == {"coarse_weight": 0.5}  # num_outlier_classes comes from the cohort later


def test_typo_in_nested_key_fails_at_load_naming_it_and_the_allowed_keys(tmp_path):
    bad = {**BASE, "optim": {**BASE["optim"], "momentun": 0.9}}
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, bad), FinetuneConfig)
    msg = str(e.value)
    assert "optim.momentun" in msg and "Did you mean 'momentum'" in msg
    assert "warmup_epochs" in msg and str(tmp_path / "run.yaml") in msg


def test_typo_at_top_level_and_bad_value_are_both_reported(tmp_path):
    bad = {**BASE, "optimizer": {}, "mode": "frozen"}
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, bad), FinetuneConfig)
    msg = str(e.value)
    assert "optimizer: unknown key" in msg and "Did you mean 'optim'" in msg
    assert "mode:" in msg and "'frozen'" in msg


def test_unknown_head_option_fails_naming_option_and_the_heads_options(tmp_path):
    bad = {**BASE, "head": {"name": "hod", "options": {"coarse_wieght": 1.0}}}
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, bad), FinetuneConfig)
    assert "coarse_wieght" in str(e.value) and "coarse_weight" in str(e.value)


def test_set_overrides_parse_yaml_scalars_and_reach_free_form_options(tmp_path):
    cfg = load_config(
        _write(tmp_path, BASE),
        FinetuneConfig,
        [
            "optim.lr=1e-3",
            "trainer.devices=2",
            "trainer.precision=bf16-mixed",
            "head.options.coarse_weight=1",
            "monitor.patience=null",
            "backbone.options={drop_path_rate: 0.1}",
        ],
    )
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.trainer.devices == 2 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.head.options["coarse_weight"] == 1
    assert cfg.monitor.patience is None and cfg.backbone.options == {"drop_path_rate": 0.1}


def test_set_with_unknown_path_fails_naming_the_dotted_path_and_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, BASE), FinetuneConfig, ["optim.lrr=0.1"])
    msg = str(e.value)
    assert "optim.lrr" in msg and "Did you mean 'lr'" in msg and "momentum" in msg
    with pytest.raises(ConfigError, match="single value"):
        load_config(_write(tmp_path, BASE), FinetuneConfig, ["optim.lr.value=0.1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(_write(tmp_path, BASE), FinetuneConfig, ["optim.lr"])


def test_set_with_invalid_value_fails_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        load_config(_write(tmp_path, BASE), FinetuneConfig, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="warmup_epochs"):
        load_config(_write(tmp_path, BASE), FinetuneConfig, ["optim.warmup_epochs=5"])


def test_missing_file_and_non_mapping_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml", FinetuneConfig)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml", FinetuneConfig)


def test_resolved_yaml_reloads_to_the_same_config_and_flattens_to_dotted_keys(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), FinetuneConfig, ["seed=7"])
    again = parse_config(yaml.safe_load(to_yaml(cfg)), FinetuneConfig)
    assert again == cfg
    flat = flatten(cfg)
    assert flat["optim.lr"] == 0.01 and flat["head.options.coarse_weight"] == 0.5 and flat["seed"] == 7
    assert flat["backbone.options"] == {}  # an empty mapping stays a value


def test_machinery_serves_any_stage_model():
    class Inner(StrictModel):
        size: int = 1

    class Stage(StrictModel):
        inner: Inner = Inner()
        name: str = "x"

    assert parse_config({}, Stage, ["inner.size=4"]).inner.size == 4
    with pytest.raises(ConfigError, match="Allowed under inner: size"):
        parse_config({}, Stage, ["inner.sise=4"])


def test_tracking_uri_defaults_to_sqlite_in_cwd_unless_env_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert resolve_tracking_uri(TrackingConfig()) == "http://tracker:5000"
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="sqlite:///x.db")) == "sqlite:///x.db"


def test_cli_bad_override_exits_2_before_any_work(tmp_path):
    from medvision.cli.finetune import finetune_command

    app = typer.Typer()
    app.command()(finetune_command)
    out = tmp_path / "out"
    path = _write(tmp_path, {**BASE, "output_dir": str(out)})
    res = CliRunner().invoke(app, [str(path), "--set", "optim.lrate=0.1"])
    assert res.exit_code == 2
    assert "optim.lrate" in res.output
    res = CliRunner().invoke(app, [str(path), "--set", "head.options.coarse_weight=-1"])
    assert res.exit_code == 2 and "coarse_weight" in res.output
    assert not out.exists()  # nothing was started
