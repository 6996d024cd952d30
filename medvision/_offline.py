"""No phone-home: switch off every usage report and update check of the stack before it is imported.

Why here: a hospital runs medvision on machines that must not talk to the internet, and a tool that leaves
the building on its own (MLflow's usage telemetry resolved two hosts and wrote an installation id to
``~/.config/mlflow/telemetry.json`` on every run) is a finding in any security review. The switches are
environment variables read when each library is *imported*, so they are set from ``medvision/__init__.py``,
which runs before any of our modules and therefore before any library we import: the ``medvision`` command,
``python -m medvision``, a notebook's ``import medvision...`` and the served pyfunc model (its code imports
medvision) all pass through it.

A variable already set by the operator is respected (``setdefault``), so an explicit opt-in stays possible.
What is *not* switched off: downloads the user asks for (``weights: hub``, ``medvision weights fetch``) and the
tracking server the config names; both are the user's own choice of network (see docs/SECURITY.md).
"""

from __future__ import annotations

import os
import sys

__all__ = ["PHONE_HOME_OFF", "disable_phone_home"]

#: Environment switches, each with the library that reads it.
PHONE_HOME_OFF: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # mlflow >= 3.2 usage telemetry (+ installation id file)
    "DO_NOT_TRACK": "true",  # the cross-tool convention, honoured by mlflow and others
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub (timm's hub downloads) usage pings
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations' PyPI version check at import
    "WANDB_MODE": "disabled",  # in case a Lightning logger pulls wandb in
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # not network, but a bar per download floods logs
}


def disable_phone_home() -> None:
    """Set :data:`PHONE_HOME_OFF` (keeping values the operator set); if MLflow was imported before us, make it
    re-read the telemetry switch so its client is dropped."""
    for name, value in PHONE_HOME_OFF.items():
        os.environ.setdefault(name, value)
    telemetry = sys.modules.get("mlflow.telemetry")
    if telemetry is not None:
        telemetry.set_telemetry_client()
