"""Stage keys follow the code that computes results, not every commit: a commit that only touches tests or docs
must reuse a team's finished stages, and one that touches the library must not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_PRINT = "from medvision._version import code_provenance as c; p = c(); print(p['key'], p['label'])"


def _git(repo: Path, *args: str) -> None:
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "-C", str(repo), *ident, *args], check=True, capture_output=True)


def _versions(repo: Path) -> tuple[str, str]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-c", _PRINT], env=env, cwd=repo, capture_output=True, text=True, check=True)
    key, label = out.stdout.split()
    return key, label


def test_the_stage_key_version_changes_with_the_library_not_with_tests_or_docs(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--local", str(REPO), str(clone)], check=True)
    # the module under test as it is in this working tree, committed in the clone
    (clone / "medvision" / "_version.py").write_text((REPO / "medvision" / "_version.py").read_text())
    _git(clone, "commit", "-qam", "the version module under test", "--allow-empty")
    key, label = _versions(clone)
    assert ".dirty" not in key

    (clone / "tests" / "NOTES.md").write_text("How to add a test.\n")
    (clone / "README.md").write_text((clone / "README.md").read_text() + "\nA note.\n")
    _git(clone, "add", "-A")
    _git(clone, "commit", "-qm", "tests and docs only")
    key2, label2 = _versions(clone)
    assert key2 == key and label2 != label  # same code, new commit: the report still names the commit

    init = clone / "medvision" / "__init__.py"
    init.write_text(init.read_text() + "\n# a library change\n")
    key3, _ = _versions(clone)
    assert key3 != key and ".dirty-" in key3  # an uncommitted library edit changes it too
    _git(clone, "commit", "-qam", "library change")
    key4, _ = _versions(clone)
    assert key4 not in (key, key3)
