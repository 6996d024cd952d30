"""Hostile runs (issue 13.5, run layer): outputs are written atomically, so a full disk leaves no partial file
behind, keeps the previous one intact and names the folder, checked on a real 1 MB file system.

Each test plants the bad input and asserts the behaviour docs/SECURITY.md promises; each failed on the code
before the fix.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services import need

REPO = Path(__file__).resolve().parent.parent


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

    need("userns")
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
