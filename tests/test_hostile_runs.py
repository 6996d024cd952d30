"""Hostile runs (issue 13, run layer): configs that try to escape their folder or blow up memory, phone-home,
concurrent runs on one store, unsafe deserialisation, identifiers reaching the report, user text as markup.

Each test plants the bad input and asserts the behaviour docs/SECURITY.md promises; each failed on the code
before the fix.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import yaml

from medvision.config import ConfigError
from medvision.pipeline import load_pipeline

REPO = Path(__file__).resolve().parent.parent


def _pipeline(tmp_path: Path, data: dict, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _synth_stage(**extra) -> dict:
    return {"kind": "cohort", "synth": {"kind": "derm", "patients": 20}, **extra}


# -- 13.7 paths and sizes from configs ------------------------------------------------------------


@pytest.mark.parametrize("stage_id", ["../../escaped", "/abs", "a/b", ".hidden", ""])
def test_a_stage_id_that_is_not_a_plain_name_is_refused_naming_it(tmp_path, stage_id):
    path = _pipeline(tmp_path, {"name": "x", "stages": {stage_id: _synth_stage()}})
    with pytest.raises(ConfigError, match="stage id .* is not a plain name"):
        load_pipeline(path)


@pytest.mark.parametrize(
    "where", [{"overrides": {"name": "../up"}}, {"folder": {"images": "img", "name": "../../x"}, "synth": None}]
)
def test_a_cohort_name_that_is_not_a_plain_name_is_refused_by_check(tmp_path, where):
    stage = {**_synth_stage(), **where}
    stage = {k: v for k, v in stage.items() if v is not None}
    path = _pipeline(tmp_path, {"name": "x", "stages": {"c": stage}})
    with pytest.raises(ConfigError, match=r"stages\.c.*name '\.\./.*not a plain name"):
        load_pipeline(path)


def _limit_memory() -> None:  # a bomb that is expanded must fail the subprocess, not the test machine
    resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))


@pytest.mark.slow  # a fresh interpreter imports the whole stack (~20-40 s on a loaded CI box)
def test_a_billion_laughs_pipeline_is_refused_quickly_without_expanding_it(tmp_path):
    lines = ["name: x", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    lines += ["stages: {c: {kind: cohort, synth: {kind: derm}}}"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 1024
    code = textwrap.dedent(
        f"""
        from medvision.config import ConfigError
        from medvision.pipeline import load_pipeline
        try:
            load_pipeline({str(path)!r})
        except ConfigError as e:
            print(e)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=_limit_memory
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "alias bomb" in done.stdout and "bomb.yaml" in done.stdout


def test_a_billion_laughs_cohort_spec_is_refused_too(tmp_path):
    from medvision.cohort.spec import SpecError, load_spec

    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "cohort.yaml").write_text("\n".join([*lines, "name: c", "images: img"]) + "\n")
    with pytest.raises(SpecError, match="alias bomb"):
        load_spec(tmp_path / "cohort.yaml")


def test_ordinary_anchors_still_load(tmp_path):
    text = textwrap.dedent(
        """
        name: x
        params: {optim: &opt {name: adamw, lr: 0.001, epochs: 1, warmup_epochs: 0}}
        stages:
          c: {kind: cohort, synth: {kind: derm, patients: 20}}
          f: {kind: finetune, cohort: c, config: {backbone: {name: resnet-tiny, weights: none}, optim: *opt}}
        """
    )
    path = tmp_path / "anchors.yaml"
    path.write_text(text)
    assert load_pipeline(path).stages["f"].config["optim"]["lr"] == 0.001


# -- 13.2 no network at run time ------------------------------------------------------------------

KEY = "00112233445566778899aabbccddeeff"

#: The smallest whole study: synthetic cohort -> 1-epoch fine-tune -> evaluation -> report (CPU, seconds).
TINY = {
    "name": "tiny",
    "output_dir": "out",
    "tracking": {"experiment": "tiny"},
    "stages": {
        "cohort": {"kind": "cohort", "synth": {"kind": "derm", "patients": 30, "seed": 0, "size": 32}},
        "ft": {
            "kind": "finetune",
            "cohort": "cohort",
            "config": {
                "backbone": {"name": "resnet-tiny", "weights": "none"},
                "data": {"batch_size": 16},
                "optim": {"name": "adamw", "lr": 0.003, "epochs": 1, "warmup_epochs": 0},
                "trainer": {"accelerator": "cpu", "progress_bar": False},
            },
        },
        "evaluate": {
            "kind": "evaluate",
            "models": ["ft"],
            "sets": ["test"],
            "subgroups": ["sex"],
            "bootstrap": 0,
            "saliency": 0,
            "min_patients": 2,
        },
        "report": {"kind": "report", "evaluation": "evaluate"},
    },
}

#: Installed in the child interpreter through sitecustomize: every name lookup or connect that is not
#: loopback (or a Unix socket) is written down and refused.
_GUARD = """
import os, sys
_LOOPBACK = {"127.0.0.1", "::1", "localhost", "0.0.0.0", None}
def _guard(event, args):
    host = None
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, (str, bytes)):
            return  # a Unix socket
        host = address[0]
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        host = args[0]
    else:
        return
    if isinstance(host, bytes):
        host = host.decode()
    if host in _LOOPBACK:
        return
    with open(os.environ["NETWORK_LOG"], "a") as f:
        f.write(f"{event} {host}\\n")
    raise OSError(f"network is off in this test ({event} {host})")
sys.addaudithook(_guard)
"""

#: Variables under which MLflow keeps its telemetry quiet by itself (CI, pytest): the child must not have them,
#: or the test would pass without our switch.
_CI_VARS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD")


def _child_env(tmp_path: Path) -> dict[str, str]:
    import os

    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(_GUARD)
    env = {k: v for k, v in os.environ.items() if k not in _CI_VARS and not k.startswith(("MLFLOW_", "XDG_"))}
    env.pop("DO_NOT_TRACK", None)
    env.update(
        HOME=str(tmp_path / "home"),
        NETWORK_LOG=str(tmp_path / "network.log"),
        PYTHONPATH=os.pathsep.join([str(guard), str(REPO)]),
        MEDVISION_PSEUDONYM_KEY=KEY,
    )
    return env


@pytest.mark.slow  # a whole (tiny) pipeline in a fresh interpreter
def test_a_pipeline_run_makes_no_network_connection_and_writes_no_telemetry_id(tmp_path):
    (tmp_path / "home").mkdir()
    pipeline = _pipeline(tmp_path, TINY)
    done = subprocess.run(
        [sys.executable, "-m", "medvision", "run", str(pipeline)],
        cwd=tmp_path,
        env=_child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = tmp_path / "network.log"
    assert not log.exists(), log.read_text()
    assert not (tmp_path / "home" / ".config" / "mlflow").exists()
    assert (tmp_path / "out" / "report" / "report.html").exists()  # the guard did not stop the study itself
    assert "Validating input example" not in done.stderr  # MLflow's per-model INFO line stays out of the terminal


# -- 13.11 unsafe deserialisation -----------------------------------------------------------------


def _tiny_classifier():
    import torch

    from medvision.classifier import Classifier
    from medvision.heads import create_head
    from medvision.models import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("resnet-tiny", weights="none", in_chans=1)
    return Classifier(backbone, create_head("linear", backbone.num_features, 2), ["benign", "malignant"])


class _Payload:
    """Unpickling this writes a marker file: what a tampered checkpoint would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_tampered_checkpoint_is_not_unpickled_when_the_best_model_is_logged(tmp_path):
    import pickle

    import torch
    from torch import nn

    from medvision.tracking import MLflowTracking

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}, "callbacks": _Payload(marker)}, ckpt)
    module = nn.Module()
    module.classifier = _tiny_classifier()
    callback = MLflowTracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "x")
    with pytest.raises(pickle.UnpicklingError):
        callback._log_network(module, ckpt)
    assert not marker.exists()


def test_the_served_model_is_code_not_a_pickle_and_needs_neither_lightning_nor_sklearn(tmp_path):
    import numpy as np
    from mlflow import MlflowClient

    from medvision.tracking import log_classifier
    from medvision.tracking.store import get_or_create_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(get_or_create_experiment(client, "serve")).info.run_id
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_classifier(client, run_id, _tiny_classifier(), (1, 32, 32))
    advice = [str(w.message) for w in caught if "mlflow" in w.filename and issubclass(w.category, UserWarning)]
    assert advice == []  # input example, type hints, pickled python_model: causes fixed, nothing to hide
    model_dir = Path(client.download_artifacts(run_id, "model", str(tmp_path / "dl")))
    assert not [p.name for p in model_dir.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    assert "model_code_path" in mlmodel and "python_model" not in mlmodel
    requirements = (model_dir / "requirements.txt").read_text()
    assert "lightning" not in requirements and "scikit-learn" not in requirements

    # Serving in an interpreter where Lightning and scikit-learn cannot be imported: the model still predicts,
    # and a bad request gets the model's own message.
    np.save(tmp_path / "x.npy", np.full((2, 1, 32, 32), 0.5, np.float32))
    absent = tmp_path / "absent"  # importing any of these fails, as on a host where they are not installed
    for name in ("lightning", "pytorch_lightning", "sklearn"):
        (absent / name).mkdir(parents=True)
        (absent / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this host')")
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np, mlflow.pyfunc
        model = mlflow.pyfunc.load_model({str(model_dir)!r})
        print(model.predict(np.load({str(tmp_path / "x.npy")!r})).shape)
        try:
            model.predict(np.full((1, 1, 32, 32), 2.0, np.float32))
        except Exception as e:
            print(type(e).__name__, e)
        """
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(absent)}  # and medvision from the model's code_paths only
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "(2, 2)"
    assert lines[1].startswith("ModelInputError") and "pixel values must be float32 in [0, 1]" in lines[1]


# -- 13.6 concurrency -----------------------------------------------------------------------------


@pytest.mark.slow  # two tiny pipelines in two fresh interpreters
def test_two_concurrent_runs_on_a_new_store_both_succeed_and_run_each_stage_once(tmp_path):
    from collections import Counter

    from mlflow import MlflowClient

    (tmp_path / "home").mkdir()
    pipeline = _pipeline(tmp_path, TINY)
    env = _child_env(tmp_path)
    env.pop("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "medvision", "run", str(pipeline)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], max_results=100)
    keys = Counter(r.data.tags["medvision.stage_key"] for r in runs if "medvision.stage_key" in r.data.tags)
    assert len(keys) == 4 and set(keys.values()) == {1}, keys  # cohort, ft, evaluate, report: once each
    assert all(r.info.status == "FINISHED" for r in runs)
    trained = [p for p in (tmp_path / "out" / "ft").iterdir() if p.is_dir()]
    assert len(trained) == 1, trained  # one checkpoint folder, written by one training


# -- 13.10 user text printed and plotted literally ------------------------------------------------

HOSTILE_NAMES = ["[/]", "[bold]x", "a$\\frac{$b", "$x^$"]


def test_class_names_with_markup_print_literally_in_the_cohort_card():
    import io

    from rich.console import Console

    from medvision.cohort.card import print_card

    split = {"by_label": {n: 1 for n in HOSTILE_NAMES}, "patients": 4, "images": 4, "by_subgroup": {}}
    card = {
        "name": "c",
        "images": 4,
        "patients": 4,
        "quarantined": 0,
        "manifest_version": 1,
        "manifest_sha256": "0" * 64,
        "classes": HOSTILE_NAMES,
        "counts": {"train": split},
        "subgroups": [],
        "quarantine_reasons": {"[red]odd[/red] file": 1},
    }
    buf = io.StringIO()
    print_card(card, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert all(name in text for name in HOSTILE_NAMES) and "[red]odd[/red] file" in text


def test_class_names_with_mathtext_plot_literally_in_the_report_figures():
    import pandas as pd

    from medvision.report import figures

    counts = pd.DataFrame({"split": ["train"] * 4, "label": HOSTILE_NAMES, "images": [1, 2, 3, 4]})
    uri = figures.cohort_counts(counts, ["train"], HOSTILE_NAMES)
    assert uri.startswith("data:image/png;base64,")


# -- 13.5 atomic outputs on a full disk -----------------------------------------------------------

_FULL_DISK = """
import json, sys
from pathlib import Path
import numpy as np
from medvision._atomic import DiskFullError, atomic_write_text
from medvision.cohort.cache import PreprocessCache
from medvision.cohort.spec import PreprocessSpec

disk = Path(sys.argv[1])
out = {}
cache = PreprocessCache(disk / "cache", PreprocessSpec(size=32, channels=1))
cache.append([("small", np.zeros((1, 32, 32), np.uint8))])
try:
    cache.append([(f"k{i}", np.full((1, 32, 32), i % 251, np.uint8)) for i in range(2000)])  # ~2 MB on a 1 MB disk
except DiskFullError as e:
    out["cache_error"] = str(e)
out["cache_files"] = sorted(p.name for p in (disk / "cache").rglob("*") if p.is_file())
out["cache_len_after_reopen"] = len(PreprocessCache(disk / "cache", PreprocessSpec(size=32, channels=1)))
atomic_write_text(disk / "metrics.json", json.dumps({"old": True}))
try:
    atomic_write_text(disk / "metrics.json", "x" * (3 << 20))
except DiskFullError as e:
    out["metrics_error"] = str(e)
out["metrics"] = (disk / "metrics.json").read_text()
out["files"] = sorted(p.name for p in disk.iterdir())
print(json.dumps(out))
"""


def test_a_full_disk_leaves_no_partial_output_and_names_the_folder(tmp_path):
    import json
    import os

    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "child.py").write_text(_FULL_DISK)
    # A real 1 MB file system, mounted in a private user + mount namespace (no root needed).
    script = f"mount -t tmpfs -o size=1m tmpfs {disk} && exec {sys.executable} {tmp_path / 'child.py'} {disk}"
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert f"disk full at {disk / 'cache'}" in out["cache_error"] and "need ~2 MB" in out["cache_error"]
    assert [f for f in out["cache_files"] if "tmp" in f] == []  # no half-written shard left behind
    assert out["cache_len_after_reopen"] == 1  # the index still names only the complete shard
    assert f"disk full at {disk}" in out["metrics_error"] and "need ~3 MB" in out["metrics_error"]
    assert json.loads(out["metrics"]) == {"old": True}  # the previous file is intact
    assert [f for f in out["files"] if f.startswith(".")] == []


# -- 13.8 the report's identifier guard has something to look for --------------------------------


def test_the_report_guard_recognises_the_cohorts_planted_identifiers_by_fingerprint(synth_cxr_cohort, monkeypatch):
    import json

    from conftest import _TEST_PSEUDONYM_KEY

    from medvision.cohort.fingerprints import FINGERPRINTS_FILE, IdentifierFingerprints
    from medvision.report import ForbiddenValueError, ReportContext
    from medvision.report.guard import check_fingerprints

    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)
    planted = json.loads((synth_cxr_cohort.parent / "source" / "phi_planted.json").read_text())
    stored = (synth_cxr_cohort / FINGERPRINTS_FILE).read_text()
    assert not any(v in stored for values in planted.values() for v in values)  # fingerprints, not identifiers
    fingerprints, why_not = IdentifierFingerprints.for_cohort(synth_cxr_cohort)
    assert fingerprints is not None, why_not

    last, first, _ = planted["patient_names"][0].split("^")
    for leak in (
        f"Study of {planted['patient_ids'][0]}",
        f"accession {planted['accession_numbers'][0].lower()}",
        f"born {planted['birth_dates'][0]}",
        f"{first.title()} {last.title()} (follow-up)",
    ):
        with pytest.raises(ForbiddenValueError, match="field title contains an identifier"):
            check_fingerprints(ReportContext(title=leak), fingerprints)
    # ordinary words, a lone first name and pseudonyms pass
    check_fingerprints(ReportContext(title=f"{first.title()} does not match P-3f9a12 in 2024"), fingerprints)

    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", "ff" * 16)  # another key: fingerprints cannot be checked
    missing, why_not = IdentifierFingerprints.for_cohort(synth_cxr_cohort)
    assert missing is None and "pseudonym key" in why_not


# -- what a user sees -----------------------------------------------------------------------------


def test_the_pipeline_summary_keeps_every_result_whole_in_an_80_column_terminal():
    import io

    from rich.console import Console

    from medvision.pipeline.run import PipelineResult
    from medvision.pipeline.summary import print_summary

    result = PipelineResult(parent_run_id="p" * 32, tracking_uri="sqlite:////data/studies/mlflow.db")
    headline = "val/auroc=0.734, val/knn_acc=0.612, val/ood_auroc=0.811"
    result.rows = [
        {
            "stage": "cohort",
            "kind": "cohort",
            "member": "-",
            "status": "ran",
            "run_id": "0" * 32,
            "seconds": 3.0,
            "result": "53 images, 30 patients, 0 quarantined",
        },
        {
            "stage": "hod",
            "kind": "finetune",
            "member": "label_fraction=0.25",
            "status": "reused",
            "run_id": "1" * 32,
            "seconds": 16.0,
            "result": headline,
        },
        {
            "stage": "report",
            "kind": "report",
            "member": "-",
            "status": "ran",
            "run_id": "2" * 32,
            "seconds": 3.0,
            "result": "/data/studies/out/report/report.html",
        },
    ]
    buf = io.StringIO()
    print_summary(result, Console(file=buf, width=80, color_system=None))
    text = buf.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()[:-3]) <= 80
    for metric in headline.split(", "):
        assert metric in text, metric  # wrapped between metrics, never inside one
    assert "sqlite:////data/studies/mlflow.db" in text  # the URI to copy stays on one line


def test_the_scoring_server_answers_a_bad_request_with_400_and_the_models_own_message(tmp_path):
    import json

    import mlflow.pyfunc
    import numpy as np
    from fastapi.testclient import TestClient
    from mlflow import MlflowClient
    from mlflow.pyfunc import scoring_server

    from medvision.tracking import log_classifier
    from medvision.tracking.served_model import MAX_BATCH
    from medvision.tracking.store import get_or_create_experiment

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(get_or_create_experiment(client, "serve")).info.run_id
    log_classifier(client, run_id, _tiny_classifier(), (1, 32, 32))
    model = mlflow.pyfunc.load_model(client.download_artifacts(run_id, "model", str(tmp_path / "dl")))
    server = TestClient(scoring_server.init(model))  # the app `mlflow models serve` runs

    def post(images: np.ndarray):
        body = json.dumps({"inputs": images.astype(np.float32).tolist()})
        return server.post("/invocations", content=body, headers={"Content-Type": "application/json"})

    bad = post(np.full((1, 1, 32, 32), 255.0))
    assert bad.status_code == 400 and "pixel values must be float32 in [0, 1]" in bad.json()["message"]
    big = post(np.full((MAX_BATCH + 1, 1, 32, 32), 0.5))
    assert big.status_code == 400 and f"at most {MAX_BATCH} images per request" in big.json()["message"]
    ok = post(np.full((2, 1, 32, 32), 0.5))
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2


def test_training_shows_a_rich_bar_in_a_terminal_and_nothing_in_a_log(synth_cxr_cohort, tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from medvision.config import parse_config
    from medvision.engine.trainer import build_trainer
    from medvision.training import FinetuneConfig

    raw = {
        "data": {"cohort_dir": str(synth_cxr_cohort)},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "trainer": {"accelerator": "cpu"},  # progress_bar left at its default
        "output_dir": str(tmp_path / "run"),
    }
    cfg = parse_config(raw, FinetuneConfig)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # a log file, CI
    assert build_trainer(cfg).progress_bar_callback is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal
    assert isinstance(build_trainer(cfg).progress_bar_callback, RichProgressBar)
