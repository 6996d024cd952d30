"""Two users, one PostgreSQL-backed MLflow server with basic authentication: shared runs, stage reuse
across users, a clear refusal of a wrong password, and a registered model loaded by models:/NAME/VERSION."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from medvision.cli import app
from medvision.data.dataset import CohortDataModule
from medvision.pipeline import load_pipeline, run_pipeline
from medvision.sources.synth import synthesize
from medvision.tracking.store import TrackingAuthError, using_tracking_uri
from medvision.tracking.team_server import add_user, start_team_server

KEY = "00112233445566778899aabbccddeeff"
ADMIN_PW = "admin-Pl4nted-pw-0001"
USERS = {"alice": "alice-Pl4nted-pw-0002", "bob": "bob-Pl4nted-pw-0003"}


@pytest.fixture(scope="module")
def team():
    # PostgreSQL runs as the postgres user, which cannot enter pytest's root-only tmp folders.
    folder = Path(tempfile.mkdtemp(prefix="medvision-team-"))
    folder.chmod(0o755)
    server = start_team_server(folder, admin_password=ADMIN_PW, workers=1)
    try:
        for name, pw in USERS.items():
            add_user(server.url, server.admin_user, ADMIN_PW, name, pw)
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _pipeline(source_spec: Path, lr: float) -> dict:
    return {
        "name": "team-cxr",
        "output_dir": "out",
        "tracking": {"experiment": "team"},
        "stages": {
            "cohort": {"kind": "cohort", "spec": str(source_spec)},
            "train": {
                "kind": "finetune",
                "cohort": "cohort",
                "config": {
                    "backbone": {"name": "resnet-tiny", "weights": "none"},
                    "data": {"batch_size": 32},
                    "optim": {"name": "adamw", "lr": lr, "epochs": 1, "warmup_epochs": 0},
                    "trainer": {"accelerator": "cpu", "progress_bar": False},
                },
            },
        },
    }


def _env(team, user: str, password: str) -> dict[str, str]:
    return {
        **os.environ,
        "MEDVISION_PSEUDONYM_KEY": KEY,
        "MLFLOW_TRACKING_URI": team.url,
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password,
    }


@pytest.mark.slow
def test_two_users_share_the_server_reuse_stages_and_the_registry(team, tmp_path, monkeypatch):
    # A cohort source on a shared drive: both users' cohort stages have the same key.
    source = synthesize(tmp_path / "shared" / "source", "cxr", patients=40, seed=2, size=32)
    dirs = {}
    for user, lr in (("alice", 0.003), ("bob", 0.001)):
        dirs[user] = tmp_path / user
        dirs[user].mkdir()
        (dirs[user] / "pipeline.yaml").write_text(yaml.safe_dump(_pipeline(source, lr)))

    # 1. both users start their pipeline at the same moment
    procs = {
        u: subprocess.Popen(
            [sys.executable, "-m", "medvision.cli", "run", "pipeline.yaml"],
            cwd=dirs[u],
            env=_env(team, u, USERS[u]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for u in USERS
    }
    for user, proc in procs.items():
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{user}: {out.decode()[-3000:]}"

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PW)
    client = MlflowClient(team.url)
    exp = client.get_experiment_by_name("team")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("medvision.kind") == "pipeline"]
    trains = [r for r in runs if r.data.tags.get("medvision.kind") == "finetune"]
    assert len(parents) == 2 and len(trains) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["optim.lr"] for r in trains} == {"0.003", "0.001"}
    for r in trains:  # metrics and artifacts of both users are on the server
        assert client.get_metric_history(r.info.run_id, "val/loss")
        assert "model" in {a.path for a in client.list_artifacts(r.info.run_id)}
    for p in parents:  # each pipeline holds exactly its own two stages (no duplicate runs)
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
        assert sorted(r.data.tags["medvision.stage"] for r in children) in (["cohort", "train"], ["train"])
    alice_train = next(r for r in trains if r.data.params["optim.lr"] == "0.003")

    # 2. bob runs alice's pipeline: both stages are reused from the server, nothing is trained again
    monkeypatch.chdir(dirs["bob"])
    for k, v in _env(team, "bob", USERS["bob"]).items():
        monkeypatch.setenv(k, v)
    (dirs["bob"] / "alice.yaml").write_text(yaml.safe_dump(_pipeline(source, 0.003)))
    result = run_pipeline(load_pipeline(dirs["bob"] / "alice.yaml"), echo=lambda _: None)
    assert [r["status"] for r in result.rows] == ["reused", "reused"]
    assert result.outputs["train"].run_ids == [alice_train.info.run_id]

    # 3. a wrong password is refused before any work, with a message that says what to set
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-bobs-password")
    with pytest.raises(TrackingAuthError, match="refused the password of user 'bob' \\(HTTP 401\\)"):
        run_pipeline(load_pipeline(dirs["bob"] / "alice.yaml"), echo=lambda _: None)
    cli = CliRunner().invoke(app, ["run", str(dirs["bob"] / "alice.yaml")])
    assert cli.exit_code == 2 and "MLFLOW_TRACKING_PASSWORD" in cli.output and "not-bobs-password" not in cli.output

    # 4. alice registers her model; anyone on the team loads it by models:/NAME/VERSION
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS["alice"])
    with using_tracking_uri(team.url):
        version = mlflow.register_model(f"runs:/{alice_train.info.run_id}/model", "team-cxr")
        assert version.version == "1"
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS["bob"])
        model = mlflow.pyfunc.load_model("models:/team-cxr/1")
        cohort = result.outputs["cohort"].cohort_dir
        ds = CohortDataModule(cohort).dataset("test")
        x = np.stack([ds[i]["image"].numpy() for i in range(4)]).astype(np.float32)
        frame = model.predict(x)
        assert frame.shape[0] == 4 and np.allclose(frame.sum(axis=1), 1, atol=1e-5)
        from mlflow.models import validate_serving_input

        served = validate_serving_input("models:/team-cxr/1", json.dumps({"inputs": x.tolist()}))
        np.testing.assert_allclose(served.to_numpy(), frame.to_numpy(), atol=1e-6)
