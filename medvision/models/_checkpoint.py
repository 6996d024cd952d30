"""Reading weight files and fitting them to a timm model, with errors that say which keys are wrong.

Checkpoints come in many wrappings: plain state dicts, ``{"state_dict": ...}`` from Lightning, ``{"model":
...}`` from timm/DeiT training scripts, keys prefixed by the module that held the backbone (``module.``,
``backbone.model.``), classifier heads of the upstream task, three-channel stems for one-channel data, and
BiT/ViT ``.npz`` files from the original JAX releases. This module unwraps all of them into the backbone's own
keys and refuses anything else loudly.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from timm.models import adapt_input_conv
from torch import Tensor, nn

from medvision.models.errors import WeightsError
from medvision.models.moe import MoELayer

__all__ = ["load_state", "load_weights_file", "read_state_dict", "sha256_file"]

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "module")
_SHOW = 5  # keys named in an error message


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so multi-gigabyte checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint, unwrapping ``state_dict``/``model`` nesting.

    Raises:
        WeightsError: missing file, unsupported suffix, unpicklable content or no tensors inside.
    """
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; check the path given after 'file:'")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError for corrupt headers
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e
    if suffix not in TORCH_SUFFIXES:
        raise WeightsError(
            f"{path}: unsupported weights format {suffix!r}; use .safetensors, {', '.join(TORCH_SUFFIXES)} "
            "or a BiT/ViT .npz"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise WeightsError(
            f"{path}: cannot be read as a plain torch state dict ({e}). Re-save it as a state dict "
            "(torch.save(model.state_dict(), ...)) or as .safetensors"
        ) from e
    while isinstance(obj, dict):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if wrapper is None or any(isinstance(v, Tensor) for v in obj.values()):
            break
        obj = obj[wrapper]
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise WeightsError(f"{path}: holds no tensors (found {type(obj).__name__}); expected a model state dict")
    return tensors


def load_weights_file(model: nn.Module, path: Path, name: str) -> int | None:
    """Load a weights file into ``model`` in place and return the upstream classifier size, if it had one.

    Classifier heads are dropped, a three-channel stem is adapted to the model's channels with timm's
    ``adapt_input_conv`` (summing the filters for one channel), and anything else that does not match raises.

    Raises:
        WeightsError: naming the file, the backbone and a few of the missing / unexpected / mismatched keys.
    """
    if path.suffix.lower() == ".npz":
        return _load_npz(model, path, name)
    return load_state(model, read_state_dict(path), path, name)


def load_state(model: nn.Module, state: dict[str, Tensor], path: Path, name: str) -> int | None:
    """:func:`load_weights_file` for tensors already read from ``path`` (named in errors only)."""
    state = _strip_wrapper_prefix(state, set(model.state_dict()))
    filter_fn = _timm_filter(model)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as e:  # the family's own converter choked: the file is not for this architecture
            raise WeightsError(f"{path}: timm could not convert it for backbone {name!r} ({e})") from e
    upstream_classes = _drop_classifier(state, model)
    _adapt_stem(state, model)
    _check_keys(state, model, path, name)
    model.load_state_dict(state, strict=True)
    return upstream_classes


def _strip_wrapper_prefix(state: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Remove the prefix (``module.``, ``backbone.model.``...) under which a wrapper saved the backbone."""
    best, best_hits = "", sum(k in model_keys for k in state)
    if best_hits == len(model_keys):
        return state
    anchors = sorted(model_keys)[:16]
    prefixes = {k[: -len(a)] for k in state for a in anchors if k.endswith("." + a)}
    for prefix in prefixes:
        hits = sum(k.startswith(prefix) and k[len(prefix) :] in model_keys for k in state)
        if hits > best_hits:
            best, best_hits = prefix, hits
    if not best:
        return state
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}


def _timm_filter(model: nn.Module):
    """The checkpoint converter timm ships for this family (ViT: position-embedding resampling etc.)."""
    module = sys.modules.get(type(model).__module__)
    if module is None or not module.__name__.startswith("timm."):
        return None
    return getattr(module, "checkpoint_filter_fn", None)


def _cfg_names(model: nn.Module, key: str) -> tuple[str, ...]:
    value = (getattr(model, "pretrained_cfg", None) or {}).get(key)
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _drop_classifier(state: dict[str, Tensor], model: nn.Module) -> int | None:
    model_keys = set(model.state_dict())
    classes = None
    for head in _cfg_names(model, "classifier"):
        weight = state.get(f"{head}.weight")
        if weight is not None and f"{head}.weight" not in model_keys:
            classes = int(weight.shape[0])
        for key in [k for k in state if (k == head or k.startswith(head + ".")) and k not in model_keys]:
            del state[key]
    return classes


def _adapt_stem(state: dict[str, Tensor], model: nn.Module) -> None:
    own = model.state_dict()
    for conv in _cfg_names(model, "first_conv"):
        key = f"{conv}.weight"
        if key not in state or key not in own:
            continue
        weight, target = state[key], own[key]
        if weight.ndim == 4 and weight.shape[1] != target.shape[1] and weight.shape[0] == target.shape[0]:
            state[key] = adapt_input_conv(target.shape[1], weight, base_chans=weight.shape[1])


def _check_keys(state: dict[str, Tensor], model: nn.Module, path: Path, name: str) -> None:
    own = model.state_dict()
    for key in own:  # BatchNorm counters are bookkeeping, not weights; many exporters leave them out
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {_few(keys)})")
    has_moe = any(isinstance(m, MoELayer) for m in model.modules())
    if has_moe and any(k.endswith(".mlp.fc1.weight") for k in unexpected):
        hint = (
            "this looks like a dense checkpoint: build the dense backbone from it and call "
            "medvision.models.upcycle(...) to turn it into a mixture of experts"
        )
    else:
        hint = (
            f"check that the file holds weights for {name!r} built with the same model_kwargs "
            "(img_size, patch_size, depth, moe, ...)"
        )
    raise WeightsError(f"{path} does not fit backbone {name!r}: {'; '.join(parts)}. {hint}")


def _few(keys: Iterable[str]) -> str:
    keys = list(keys)
    more = f", ... {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _load_npz(model: nn.Module, path: Path, name: str) -> int | None:
    """Original JAX ``.npz`` (BiT, ViT) through the model family's timm loader."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; check the path given after 'file:'")
    if any(isinstance(m, MoELayer) for m in model.modules()):
        raise WeightsError(
            f"{path}: .npz files hold dense weights; load them into the dense backbone and call upcycle()"
        )
    load_pretrained = getattr(model, "load_pretrained", None)
    if not callable(load_pretrained):
        raise WeightsError(
            f"{path}: timm has no .npz loader for {type(model).__name__} (backbone {name!r}); convert the "
            "file to a PyTorch state dict or .safetensors first"
        )
    try:
        with torch.no_grad():
            load_pretrained(str(path))
    except (KeyError, ValueError, RuntimeError, OSError) as e:
        raise WeightsError(f"{path}: not a .npz checkpoint for backbone {name!r} ({e})") from e
    with np.load(str(path), allow_pickle=False) as arrays:
        heads = [k for k in arrays.files if k.endswith(("head/conv2d/kernel", "head/kernel"))]
        return int(arrays[heads[0]].shape[-1]) if heads else None
