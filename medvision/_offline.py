"""No phone-home: switch off every usage report and update check of the stack before it is imported, and keep the
stack's advertisements and device banners out of the user's log.

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

Lightning also prints, on every ``Trainer`` and every fit, an advertisement for its cloud services ("💡 Tip: For
seamless cloud logging ... try installing litlogger") and a device banner ("GPU available: False, used: False",
"TPU available: ...", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: ..."): seven lines in the demo's log that say nothing
a medvision user can act on (the trainer config names the device). :func:`quiet_library_banners` drops exactly
those records with a filter on the loggers that emit them, set before Lightning is imported (a logger's filters
survive Lightning's own logging set-up); every other Lightning message, warnings included, still shows.
"""

from __future__ import annotations

import logging
import os
import re
import sys

__all__ = ["BANNERS", "PHONE_HOME_OFF", "disable_phone_home", "quiet_library_banners"]

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


#: Messages dropped from the stack's logs, with the loggers that emit them: advertisements and device banners.
BANNERS = re.compile(
    r"\W*Tip: "  # Lightning's "💡 Tip: ... litlogger / litmodels" cloud advertisements
    r"|(GPU|TPU|HPU|IPU) available: "  # Lightning's device banner at every Trainer
    r"|LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: "  # ... and its CUDA device line at every fit
)
_BANNER_LOGGERS = tuple(
    f"{root}.{name}"
    for root in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
    for name in ("utilities.rank_zero", "accelerators.cuda")
)


class _DropBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return BANNERS.match(record.getMessage()) is None


def quiet_library_banners() -> None:
    """Drop :data:`BANNERS` from the loggers that emit them (idempotent)."""
    for name in _BANNER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBanners) for f in logger.filters):
            logger.addFilter(_DropBanners())
