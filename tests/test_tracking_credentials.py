"""A tracking URI with a password is refused wherever it enters (a config key, an override, $MLFLOW_TRACKING_URI,
a direct client), and the refusal shows it redacted: the password appears in no message and no file.

The same probe against the real team server (an authenticating MLflow on PostgreSQL) is in test_team_server.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny_pipeline import TINY
from typer.testing import CliRunner

from medvision.cli import app
from medvision.config import ConfigError, load_config
from medvision.engine.config import TrackingConfig, resolve_tracking_uri
from medvision.pipeline import load_pipeline
from medvision.tracking.store import open_client
from medvision.tracking.uri import TrackingURIError, redact_uri
from medvision.training import FinetuneConfig

PASSWORD = "Pl4nted-uri-pw-0042"
URI = f"http://admin:{PASSWORD}@127.0.0.1:5999"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (URI, "http://admin:***@127.0.0.1:5999"),
        (f"postgresql+psycopg://mlflow:{PASSWORD}@db/mlflow", "postgresql+psycopg://mlflow:***@db/mlflow"),
        (
            f"postgresql://db/mlflow?user=m&password={PASSWORD}&sslmode=require",
            "postgresql://db/mlflow?user=m&password=***&sslmode=require",
        ),
        (f"https://mlflow.example.org/?token={PASSWORD}", "https://mlflow.example.org/?token=***"),
        ("http://admin@127.0.0.1:5000", "http://admin@127.0.0.1:5000"),  # a user name alone is no secret
        ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
    ],
)
def test_redact_uri_hides_passwords_and_secret_parameters_only(uri, shown):
    assert redact_uri(uri) == shown


def test_a_password_in_the_config_key_fails_at_load_naming_the_key_not_the_password(tmp_path: Path):
    raw = {"data": {"cohort_dir": "c"}, "backbone": {"name": "resnet-tiny"}, "tracking": {"tracking_uri": URI}}
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(config, FinetuneConfig)
    assert "tracking.tracking_uri holds credentials" in str(err.value) and PASSWORD not in str(err.value)
    assert "http://admin:***@127.0.0.1:5999" in str(err.value)

    raw.pop("tracking")
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:  # the same through --set
        load_config(config, FinetuneConfig, [f"tracking.tracking_uri={URI}"])
    assert "MLFLOW_TRACKING_PASSWORD" in str(err.value) and PASSWORD not in str(err.value)

    with pytest.raises(ValueError) as direct:  # a Python caller building the section itself
        TrackingConfig(tracking_uri=URI)
    assert PASSWORD not in str(direct.value)


def test_a_password_in_a_pipeline_fails_its_check_and_in_the_environment_fails_the_run_before_any_work(
    tmp_path: Path, monkeypatch
):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({**TINY, "tracking": {"experiment": "x", "tracking_uri": URI}}, sort_keys=False))
    with pytest.raises(ConfigError, match="tracking.tracking_uri holds credentials") as err:
        load_pipeline(pipeline)
    assert PASSWORD not in str(err.value)
    cli = CliRunner().invoke(app, ["run", str(pipeline), "--check"])
    assert cli.exit_code == 2 and PASSWORD not in cli.output

    # The probe of the security review: the password in $MLFLOW_TRACKING_URI.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", URI)
    pipeline.write_text(yaml.safe_dump(TINY, sort_keys=False))
    cli = CliRunner().invoke(app, ["run", str(pipeline)])
    assert cli.exit_code == 2, cli.output
    assert "$MLFLOW_TRACKING_URI holds credentials" in cli.output and "MLFLOW_TRACKING_PASSWORD" in cli.output
    assert PASSWORD not in cli.output
    assert not (tmp_path / "out").exists()  # refused before any stage wrote anything
    with pytest.raises(TrackingURIError):
        resolve_tracking_uri(TrackingConfig())
    with pytest.raises(TrackingURIError, match=r"admin:\*\*\*@"):  # the last gate, for direct API callers
        open_client(URI)
