"""The team server (scripts/team_server.py): two users on one PostgreSQL-backed MLflow server with basic
authentication share runs, reuse each other's stages and load a registered model; no password reaches an
output, a log or the server's records; PostgreSQL asks every connection for a password and another local
account reaches nothing; SIGTERM stops PostgreSQL and MLflow and leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from services import need
from tiny_pipeline import TINY
from typer.testing import CliRunner

from medvision.cli import app
from medvision.data.dataset import CohortDataModule
from medvision.pipeline import load_pipeline, run_pipeline
from medvision.sources.synth import synthesize
from medvision.tracking.store import TrackingAuthError, using_tracking_uri

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # an operations tool, not package code
from team_server import add_user, start_team_server  # noqa: E402

# Every test here starts PostgreSQL and an MLflow server: `make test-fast` leaves them out.
pytestmark = pytest.mark.server

KEY = "00112233445566778899aabbccddeeff"
ADMIN_PW = "admin-Pl4nted-pw-0001"
USERS = {"alice": "alice-Pl4nted-pw-0002", "bob": "bob-Pl4nted-pw-0003"}
PROBE_USER = "medvision-probe"  # the "other local account" of the security review


def _team_folder() -> Path:
    # Under root PostgreSQL runs as the postgres user, which cannot enter pytest's root-only tmp folders.
    folder = Path(tempfile.mkdtemp(prefix="medvision-team-"))
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def team():
    need("postgresql")
    folder = _team_folder()
    server = start_team_server(folder / "server", admin_password=ADMIN_PW, workers=2, timeout=300)
    try:
        for name, pw in USERS.items():
            add_user(server.url, server.admin_user, ADMIN_PW, name, pw)
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _secrets(team) -> list[str]:
    """Every password of the team server: MLflow's users and PostgreSQL's two roles."""
    pg = [(team.folder / f).read_text().strip().rsplit(":", 1)[1] for f in ("postgres.pgpass", "mlflow.pgpass")]
    return [ADMIN_PW, *USERS.values(), *pg]


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
@pytest.mark.timeout(1500)  # two concurrent trainings, a reuse, a registry round trip: 3-4 min, 14 on a loaded box
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
    printed = {}
    for user, proc in procs.items():
        out, _ = proc.communicate(timeout=900)
        printed[user] = out.decode()
        assert proc.returncode == 0, f"{user}: {printed[user][-3000:]}"

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

    # 5. no password anywhere: what the runs printed (medvision's lines and MLflow's own "View run at"), the run
    #    folders, every parameter and tag, and every artifact the server holds (read from its artifact root on
    #    disk: the same files a download gives, without one HTTP request per file)
    assert all("View run" in text and team.url in text for text in printed.values())  # MLflow's lines were read
    files = [*_files(tmp_path), *_files(team.folder / "artifacts")]
    texts = [*printed.values(), *(p.read_bytes().decode("utf-8", "replace") for p in files)]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PW)
    runs = client.search_runs([exp.experiment_id])
    for run in runs:
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags)]
        assert run.data.params.get("tracking.tracking_uri", team.url) == team.url
    assert {r.info.run_id for r in trains} <= {p.name for p in (team.folder / "artifacts").glob("*/*")}
    blob = "\n".join(texts)
    assert len(blob) > 100_000  # the models, configs and cohort cards were read
    assert [s for s in _secrets(team) if s in blob] == []


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_a_password_in_the_tracking_uri_is_refused_before_anything_reaches_the_server(team, tmp_path, monkeypatch):
    """The security review's probe 1: MLFLOW_TRACKING_URI=http://alice:PASSWORD@host:port and a small pipeline.
    It used to print the password 12 times, store it in every config.yaml and log it as a run parameter."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", KEY)
    host = team.url.removeprefix("http://")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{USERS['alice']}@{host}")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({**TINY, "name": "probe-uri"}, sort_keys=False))
    cli = CliRunner().invoke(app, ["run", "p.yaml"])
    assert cli.exit_code == 2, cli.output
    assert f"$MLFLOW_TRACKING_URI holds credentials (password: http://alice:***@{host})" in cli.output
    assert USERS["alice"] not in cli.output and "MLFLOW_TRACKING_PASSWORD" in cli.output
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PW)
    assert MlflowClient(team.url).get_experiment_by_name("tiny") is None  # nothing was recorded either


def _psql(*args: str, user: str | None = None, pgpass: Path | None = None) -> subprocess.CompletedProcess:
    cmd = ["psql", "-X", "-w", "-At", *args]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    env = {**os.environ, "PGPASSFILE": str(pgpass or "/nonexistent"), "PGCONNECT_TIMEOUT": "5"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30, cwd="/")


@pytest.fixture
def other_account():
    """A second local account (created with useradd; the suite runs as root here and in CI)."""
    if os.geteuid() != 0:
        pytest.fail("this test creates a second local account with useradd: run it as root", pytrace=False)
    created = subprocess.run(["id", PROBE_USER], capture_output=True).returncode != 0
    if created:
        subprocess.run(["useradd", "--system", "--no-create-home", PROBE_USER], check=True, capture_output=True)
    yield PROBE_USER
    if created:
        subprocess.run(["userdel", PROBE_USER], check=True, capture_output=True)


def test_postgresql_asks_every_connection_for_a_password_and_another_account_reaches_nothing(team, other_account):
    """The security review's probe 2: another local account ran `psql -h 127.0.0.1 -p PGPORT -U postgres -d
    mlflow_auth` and was let in as superuser (trust); the artifacts were 0755/0644."""
    port, sockets = str(team.pg_port), str(team.sockets)
    for host in ("127.0.0.1", sockets):  # the probe as typed, and the socket
        probe = _psql(
            "-h", host, "-p", port, "-U", "postgres", "-d", "mlflow_auth", "-c", "select 1", user=other_account
        )
        assert probe.returncode != 0 and probe.stdout == "", probe.stderr
        assert ("Connection refused" if host == "127.0.0.1" else "Permission denied") in probe.stderr
    with socket.socket() as s:  # nothing listens on TCP at all
        assert s.connect_ex(("127.0.0.1", team.pg_port)) != 0
    # The owner of the server reaches the socket, but without the password gets nothing (no trust, no peer) ...
    for role, db in (("postgres", "postgres"), ("mlflow", "mlflow_auth")):
        denied = _psql("-h", sockets, "-p", port, "-U", role, "-d", db, "-c", "select 1")
        assert denied.returncode != 0 and "password" in denied.stderr, denied.stderr
    # ... and with it, MLflow's role owns its databases without being a superuser.
    allowed = _psql(
        "-h", sockets, "-p", port, "-U", "mlflow", "-d", "mlflow_auth", "-c",
        "select rolsuper from pg_roles where rolname = current_user",
        pgpass=team.folder / "mlflow.pgpass",
    )  # fmt: skip
    assert (allowed.returncode, allowed.stdout.strip()) == (0, "f"), allowed.stderr

    # An artifact logged through the server, then every file and folder under the server's folder is owner-only.
    client = MlflowClient(team.url)
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "alice", USERS["alice"]
    try:
        run = client.create_run(client.create_experiment("modes")).info.run_id
        client.log_text(run, "planted artifact", "notes/a.txt")
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME"), os.environ.pop("MLFLOW_TRACKING_PASSWORD")
    assert list((team.folder / "artifacts").rglob("a.txt"))
    top = team.folder.stat().st_mode & 0o777
    assert top == (0o711 if os.geteuid() == 0 else 0o700)  # postgres passes through, nobody else lists
    loose = {str(p): oct(p.stat().st_mode & 0o777) for p in team.folder.rglob("*") if p.stat().st_mode & 0o077}
    assert loose == {}
    for tool, target in (("ls", ""), ("ls", "artifacts"), *(("cat", f) for f in ("postgres.pgpass", "mlflow.pgpass"))):
        read = subprocess.run(
            ["runuser", "-u", other_account, "--", tool, str(team.folder / target)], capture_output=True, text=True
        )
        assert read.returncode != 0 and "Permission denied" in read.stderr, (target, read.stdout)


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every live (not zombie) process: pid -> (parent pid, session, name)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it ended while we looked
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if rest[0] != "Z":
            found[int(stat.parent.name)] = (int(rest[1]), int(rest[3]), name)
    return found


def _family(*pids: int) -> dict[int, str]:
    """The live processes in the sessions of ``pids``, and all their descendants: pid -> name.

    Sessions alone are not enough: every PostgreSQL child process calls ``setsid()`` (so the postmaster can signal
    its group), so checkpointer, background writer and the rest each sit in a session of their own, under the
    postmaster as parent."""
    procs = _processes()
    sessions = {procs[pid][1] for pid in pids if pid in procs}
    family = {pid for pid, (_, session, _) in procs.items() if session in sessions}
    grown = True
    while grown:
        children = {pid for pid, (parent, _, _) in procs.items() if parent in family} - family
        family |= children
        grown = bool(children)
    return {pid: procs[pid][2] for pid in sorted(family)}


def _alive_in(sessions: set[int]) -> list[str]:
    """Live processes whose session is one of ``sessions`` (a process orphaned by its parent's end keeps its
    session, so this still finds it): "pid name"."""
    return [f"{pid} {name}" for pid, (_, session, name) in _processes().items() if session in sessions]


def _mlflow_pid(folder: Path) -> int | None:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--artifacts-destination" in args and os.fsencode(folder / "artifacts") in args:
            return int(cmdline.parent.name)
    return None


def _postmaster_ready(pid_file: Path) -> int | None:
    """The postmaster's pid once it accepts connections (initdb's standalone backends write negative pids)."""
    lines = pid_file.read_text().splitlines() if pid_file.exists() else []
    return int(lines[0]) if len(lines) >= 8 and int(lines[0]) > 0 and lines[7].strip() == "ready" else None


def _wait_for(what, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _sigterm_at(moment: str, cmd: list[str], env: dict[str, str], folder: Path, out: Path) -> None:
    """Start the supervisor, SIGTERM it while ``moment`` ("starting" or "running"), and check what is left."""
    postmaster = folder / "postgres" / "postmaster.pid"
    with out.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        if moment == "starting":  # PostgreSQL is up, MLflow is not answering yet
            _wait_for(lambda: _postmaster_ready(postmaster))
            assert "team server at" not in out.read_text()
        else:
            _wait_for(lambda: "team server at" in out.read_text())
        ml = _mlflow_pid(folder)
        family = _family(proc.pid, _postmaster_ready(postmaster), *([ml] if ml else []))
        # the supervisor, the postmaster and its children (checkpointer, writers, launchers); once running, MLflow's
        assert len(family) >= (4 if moment == "starting" else 8), family
        live = _processes()
        sessions = {live[pid][1] for pid in family if pid in live}  # each PostgreSQL child's own session too
    finally:
        proc.send_signal(signal.SIGTERM)  # the signal under test (and the cleanup should an assertion fail)
    assert proc.wait(timeout=120) == 0, out.read_text()[-2000:]
    # stop() waits for MLflow's leader and pg_ctl for the pid file, not for every child (a multiprocessing
    # resource tracker, the postmaster's last moments): gone within seconds, or orphaned
    left = _alive_in(sessions)
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _alive_in(sessions)
    assert left == [], (left, out.read_text()[-2000:])
    assert not postmaster.exists()  # PostgreSQL shut down cleanly (fast mode), not killed


def test_sigterm_stops_postgresql_and_mlflow_and_leaves_no_process_behind(tmp_path):
    """issue 19: `sigwait` without blocking the signals first let SIGTERM kill the supervisor outright, so its
    `finally: server.stop()` never ran and PostgreSQL and MLflow were orphaned. Checked twice on one folder: a
    SIGTERM while the server is still starting, and one while it runs (which also restarts an existing cluster)."""
    need("postgresql")
    top = _team_folder()
    folder = top / "server"
    env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PW, "MEDVISION_NEW_USER_PASSWORD": USERS["alice"]}
    cmd = [
        str(REPO / "scripts" / "team-server"),
        "--dir",
        str(folder),
        "--port",
        str(_free_port()),
        "--add-user",
        "alice",
    ]
    try:
        _sigterm_at("starting", cmd, env, folder, tmp_path / "starting.txt")
        _sigterm_at("running", cmd, env, folder, tmp_path / "running.txt")
        assert "MLflow team server at http://127.0.0.1:" in (tmp_path / "running.txt").read_text()
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
