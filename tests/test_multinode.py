"""Multi-node launch, tested on one machine: ``torchrun --nnodes 2`` runs ``medvision finetune`` as two nodes.

Two torchrun agents (node ranks 0 and 1, one process each, gloo, static rendezvous on 127.0.0.1) must train
exactly like Lightning's own two-process launch on one node with the same seed: one MLflow run, one set of
checkpoints, and bit-identical final weights. The run shows that ranks, node counts (``num_nodes: auto``),
rank-0-only side effects and the distributed sampler are all read from torchrun's environment.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

# Lightning's own launcher (devices: 2) in a fresh interpreter: the single-node reference.
SINGLE_NODE_DRIVER = textwrap.dedent(
    """
    import sys
    from medvision.config import load_config
    from medvision.training import FinetuneConfig, finetune

    finetune(load_config(sys.argv[1], FinetuneConfig))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(cohort: Path, tmp_path: Path, name: str, trainer: dict) -> Path:
    raw = {
        "data": {"cohort_dir": str(cohort), "batch_size": 4, "label_fraction": 0.1},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "head": {"name": "linear"},
        "optim": {"name": "sgd", "lr": 0.01, "epochs": 2, "warmup_epochs": 0.5},
        "trainer": {"accelerator": "cpu", "progress_bar": False, "strategy": "ddp", **trainer},
        "output_dir": str(tmp_path / name),
        "seed": 5,
        "resume": "never",
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / name}.db", "experiment": "multinode"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _env() -> dict[str, str]:
    # OMP_NUM_THREADS=1: four processes share the runner's cores; oversubscription only slows them down.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _torchrun_two_nodes(cfg: Path, cwd: Path) -> list[subprocess.Popen]:
    port = _free_port()
    common = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        "--max-restarts",
        "0",
    ]
    procs = []
    for node_rank in (0, 1):
        with (cwd / f"node{node_rank}.log").open("w") as log:  # the child keeps its own copy of the handle
            cmd = [*common, "--node-rank", str(node_rank), "-m", "medvision.cli", "finetune", str(cfg)]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=cwd))
    return procs


def _one_finished_run(db: str) -> str:
    client = MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("multinode").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    assert runs[0].info.status == "FINISHED"
    return runs[0].info.run_id


def test_two_nodes_under_torchrun_train_exactly_like_two_processes_on_one_node(synth_cxr_cohort, tmp_path):
    multi_cfg = _config(synth_cxr_cohort, tmp_path, "two-nodes", {"devices": 1, "num_nodes": "auto"})
    single_cfg = _config(synth_cxr_cohort, tmp_path, "one-node", {"devices": 2, "num_nodes": 1})

    # Both launches run concurrently (the runner has two cores; each job mostly waits on the other's ranks).
    nodes = _torchrun_two_nodes(multi_cfg, tmp_path)
    script = tmp_path / "single_node.py"
    script.write_text(SINGLE_NODE_DRIVER)
    try:  # generous timeouts: it takes ~30 s, but a machine shared with other jobs can slow it tenfold
        single = subprocess.run(
            [sys.executable, str(script), str(single_cfg)],
            capture_output=True,
            text=True,
            timeout=900,
            env=_env(),
            cwd=tmp_path,
        )
        codes = [p.wait(timeout=900) for p in nodes]
    finally:
        for p in nodes:  # a hung rendezvous must not outlive the test
            if p.poll() is None:
                p.kill()
    logs = [(tmp_path / f"node{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert single.returncode == 0, single.stderr[-3000:]

    # Each node ran one process of a two-process world: node 0 holds global rank 0, node 1 global rank 1.
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs[0] and "Starting with 2 processes" in logs[0]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]

    # one MLflow run, with both epochs, recorded by rank 0 only
    db = f"sqlite:///{tmp_path / 'two-nodes'}.db"
    run_id = _one_finished_run(db)
    client = MlflowClient(db)
    assert sorted(m.step for m in client.get_metric_history(run_id, "val/auroc")) == [0, 1]
    # every rank learned the run id from rank 0 (node 1 prints the same run)
    assert f"MLflow run {run_id}" in logs[0] and f"MLflow run {run_id}" in logs[1]
    _one_finished_run(f"sqlite:///{tmp_path / 'one-node'}.db")

    # one set of checkpoints: last.ckpt and the best epoch, written once (no per-node copies or versions)
    ckpts = sorted(p.name for p in (tmp_path / "two-nodes" / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts and ckpts[0].startswith("best-epoch="), ckpts

    # the same seed gives the same weights whichever way the two ranks were launched
    a = torch.load(tmp_path / "two-nodes" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "one-node" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] > 0
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
