"""The on-disk layout of a saved backbone, shared by training, self-supervision, MLflow and ``fetch_weights``.

A saved backbone is two files side by side:

* ``backbone.safetensors`` — the timm model's state dict (no classifier), loadable by plain timm too;
* ``weights_record.json`` — ``{"format", "weights_file", "weights_record", "build"}``: the frozen
  :class:`WeightsRecord` (with the SHA-256 of the weights file) and the build spec that recreates the exact
  architecture (registry name + model kwargs, MoE layout included).

``fetch_weights`` writes the same pair under the names ``<name>.safetensors`` / ``<name>.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch

from medvision._atomic import atomic_path, atomic_write_text
from medvision.models._checkpoint import sha256_file
from medvision.models.errors import WeightsError
from medvision.models.record import WeightsRecord

if TYPE_CHECKING:
    from medvision.models.backbone import Backbone

__all__ = [
    "RECORD_FILE",
    "WEIGHTS_FILE",
    "SavedBackbone",
    "read_saved_backbone",
    "save_backbone",
    "write_weights",
]

WEIGHTS_FILE = "backbone.safetensors"
RECORD_FILE = "weights_record.json"
FORMAT = "medvision.backbone/1"


@dataclass(frozen=True)
class SavedBackbone:
    """What a ``weights_record.json`` (or ``<name>.json``) says about the weights beside it."""

    weights_path: Path
    record: WeightsRecord
    name: str
    model_kwargs: dict[str, Any]


def save_backbone(backbone: Backbone, directory: str | Path) -> Path:
    """Write ``backbone.safetensors`` and ``weights_record.json`` into ``directory`` (created if needed).

    The record keeps the backbone's ``source`` (where its weights started) and gets the SHA-256 of the file
    just written. Log the directory as an MLflow artifact named ``backbone`` and it loads back with
    ``weights="mlflow:runs:/RUN_ID/backbone"``.

    Returns:
        ``directory`` as a Path.

    Example (needs real files, a run or the network, so it is shown, not run)::

            save_backbone(create_backbone("vit-tiny"), tmp_path / "bb")
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_weights(backbone, directory / WEIGHTS_FILE, directory / RECORD_FILE)
    return directory


def write_weights(backbone: Backbone, weights_path: Path, record_path: Path) -> WeightsRecord:
    """Write the weights file and its JSON record; returns the record as written (with SHA-256)."""
    build = {"name": backbone.build_spec["name"], "model_kwargs": backbone.build_spec.get("model_kwargs", {})}
    try:
        json.dumps(build)
    except TypeError as e:
        raise WeightsError(
            f"cannot save backbone {build['name']!r}: its model_kwargs {build['model_kwargs']} are not JSON "
            f"({e}); build it with plain values (numbers, strings, lists) to make it saveable"
        ) from e
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in backbone.model.state_dict().items()}
    with atomic_path(weights_path) as tmp:  # a later load trusts what it finds: whole or absent
        safetensors.torch.save_file(state, str(tmp), metadata={"format": "pt"})
    record = replace(backbone.weights_record, sha256=sha256_file(weights_path))
    payload = {
        "format": FORMAT,
        "weights_file": weights_path.name,
        "weights_record": record.to_dict(),
        "build": build,
    }
    atomic_write_text(record_path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return record


def read_saved_backbone(location: Path) -> SavedBackbone | None:
    """Read the JSON beside saved weights: ``location/weights_record.json`` for a directory, else the
    ``.json`` with the weights file's stem. ``None`` when a weights file has no medvision JSON beside it.

    Raises:
        WeightsError: the JSON is malformed, of another format, or points at a missing weights file.
    """
    record_path = location / RECORD_FILE if location.is_dir() else location.with_suffix(".json")
    if not record_path.is_file():
        if location.is_dir():
            raise WeightsError(
                f"{location} is a directory but not a saved backbone (no {RECORD_FILE}); point file: at a "
                "weights file or at a folder written by save_backbone()"
            )
        return None
    try:
        payload = json.loads(record_path.read_text())
    except ValueError as e:
        raise WeightsError(f"{record_path}: not valid JSON ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if location.is_dir():
            raise WeightsError(f"{record_path}: not a medvision weights record (format must be {FORMAT!r})")
        return None  # a same-named JSON written by another tool: not ours, ignore it
    try:
        record = WeightsRecord.from_dict(payload["weights_record"], where=str(record_path))
        build = payload["build"]
        weights_path = record_path.parent / payload["weights_file"]
        name, kwargs = str(build["name"]), dict(build.get("model_kwargs") or {})
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{record_path}: not a medvision weights record ({e}); re-save with save_backbone()") from e
    if not location.is_dir() and weights_path != location:
        raise WeightsError(f"{record_path} describes {weights_path.name}, not {location.name}")
    if not weights_path.is_file():
        raise WeightsError(f"{record_path} refers to {weights_path.name}, which is missing beside it")
    return SavedBackbone(weights_path=weights_path, record=record, name=name, model_kwargs=kwargs)
