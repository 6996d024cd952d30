"""Hostile runs (issue 13.2, run layer): a whole pipeline run makes no network connection and MLflow writes no
telemetry id, checked in a child interpreter whose audit hook refuses every non-loopback lookup or connect.

Each test plants the bad input and asserts the behaviour docs/SECURITY.md promises; each failed on the code
before the fix.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from tiny_pipeline import TINY, _child_env, _pipeline


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
