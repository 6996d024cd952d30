"""Where the report templates and shipped recipes are: the checkout's ``reports/`` and ``pipelines/`` folders when
running from source, else the copies the wheel carries as ``medvision._templates`` / ``medvision._pipelines``
(pyproject.toml maps those folders into the wheel, so the repository keeps its designed top level)."""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["pipelines_dir", "templates_dir"]

_CHECKOUT = Path(__file__).resolve().parent.parent


def _locate(checkout_relpath: str, package: str) -> Path:
    here = _CHECKOUT / checkout_relpath
    if here.is_dir():
        return here
    # a data folder without __init__.py is a namespace package: its one __path__ entry is the folder
    return Path(next(iter(importlib.import_module(package).__path__)))


def templates_dir() -> Path:
    """The report templates (``report.html.j2``, ``report.css``)."""
    return _locate("reports/templates", "medvision._templates")


def pipelines_dir() -> Path:
    """The shipped pipeline recipes (``demo.yaml``, ``transfer-*.yaml``, ...)."""
    return _locate("pipelines", "medvision._pipelines")
