"""Which code produced a result: the installed package's version plus, from a checkout, the git commit.

It sits at the bottom of the stack because every layer that writes a result (stage keys, ``metrics.json``, the
report) records it, and the report must show the version that *computed* the numbers, not the one rendering them.
"""

from __future__ import annotations

import hashlib
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["__version__", "code_provenance", "code_version"]

try:
    __version__ = version("medvision")
except PackageNotFoundError:  # a bare source tree on sys.path, never installed
    __version__ = "0+unknown"


#: What a result depends on: the library and the report templates. Tests, docs, benchmarks and recipes are not
#: (a recipe's settings enter each stage key through the stage's own config).
_CODE = ("medvision", "reports")


def code_provenance() -> dict[str, Any]:
    """``{"package", "commit", "dirty", "label", "key"}``: the package version, the git commit when running from a
    checkout (``None`` otherwise), whether tracked code differs from it, the one-line label of all three
    (``0.1.0+abc123def456.dirty-1a2b3c4d``; the diff hash makes two different dirty trees differ too), and the
    ``key`` that stage keys hash: the same but naming the git *trees* of ``medvision/`` and ``reports/`` instead
    of the commit, so a commit that only touches tests or docs reuses every finished stage."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout

    out: dict[str, Any] = {"package": __version__, "commit": None, "dirty": False, "label": __version__}
    out["key"] = __version__
    try:
        commit = git("rev-parse", "--short=12", "HEAD").strip()
        trees = git("rev-parse", *(f"HEAD:{d}" for d in _CODE)).split()
        diff = git("diff", "HEAD", "--", "medvision", "pipelines", "reports")
        code_diff = git("diff", "HEAD", "--", *_CODE)
    except (OSError, subprocess.SubprocessError):
        return out
    if not commit:
        return out
    # Uncommitted edits change the version too, so a stage is never reused across a code change.
    dirty = f".dirty-{hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else ""
    code_dirty = f".dirty-{hashlib.sha256(code_diff.encode()).hexdigest()[:8]}" if code_diff else ""
    tree = hashlib.sha256(" ".join(trees).encode()).hexdigest()[:12]
    out.update(
        commit=commit,
        dirty=bool(diff),
        label=f"{__version__}+{commit}{dirty}",
        key=f"{__version__}+code-{tree}{code_dirty}",
    )
    return out


def code_version() -> str:
    """What stage keys and run identities hash (:func:`code_provenance`'s ``key``): it changes with the library
    or the report templates, not with a commit that touches only tests, docs or benchmarks."""
    return str(code_provenance()["key"])
