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


def code_provenance() -> dict[str, Any]:
    """``{"package", "commit", "dirty", "label"}``: the package version, the git commit when running from a
    checkout (``None`` otherwise), whether tracked code differs from it, and the one-line label of all three
    (``0.1.0+abc123def456.dirty-1a2b3c4d``; the diff hash makes two different dirty trees differ too)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout

    out: dict[str, Any] = {"package": __version__, "commit": None, "dirty": False, "label": __version__}
    try:
        commit = git("rev-parse", "--short=12", "HEAD").strip()
        diff = git("diff", "HEAD", "--", "medvision", "pipelines", "reports")
    except (OSError, subprocess.SubprocessError):
        return out
    if not commit:
        return out
    # Uncommitted edits change the version too, so a stage is never reused across a code change.
    dirty = f".dirty-{hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else ""
    out.update(commit=commit, dirty=bool(diff), label=f"{__version__}+{commit}{dirty}")
    return out


def code_version() -> str:
    """The one-line label of :func:`code_provenance` (what stage keys hash)."""
    return str(code_provenance()["label"])
