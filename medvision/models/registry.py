"""The table of named backbones: what a name means, separate from which weights fill it.

A registered name says what a model is (``bit-m-r50x1``, ``softmoe-vit-b16``) and maps to a timm architecture
plus the timm pretrained tag that ``weights="hub"`` loads, so architecture and checkpoint stay apart (the timm
convention). Families declare their members as a small table in :mod:`medvision.models.zoo`; registering a name
twice is an error rather than a silent override. Any timm model name (optionally with its ``.tag``) passes
through unchanged, so the registry never stands between a user and timm.

Other distributions add names through the ``medvision.backbones`` entry point group (:mod:`medvision.plugins`): an
entry point names a :class:`BackboneSpec`, a list of them, or a module that calls :func:`register_backbones` when
imported; the first lookup in a process adopts them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any

import timm
from torch import nn

from medvision.models.errors import UnknownBackboneError
from medvision.plugins import BACKBONES, PluginError, load_group

if TYPE_CHECKING:
    from medvision.models.moe import MoEConfig
    from medvision.models.packaged import WeightsPackage

__all__ = [
    "BackboneSpec",
    "UnknownBackboneError",
    "get_backbone_spec",
    "list_backbones",
    "load_backbone_plugins",
    "register_backbones",
]

_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_REGISTRY: dict[str, BackboneSpec] = {}
_adopted = False


@dataclass(frozen=True)
class BackboneSpec:
    """One named backbone.

    Attributes:
        name: registry name, ``family-variant-size`` in lower case.
        arch: timm architecture the model is built from.
        description: one line saying what the model is and what it was pretrained on.
        hub_tag: timm pretrained tag loaded by ``weights="hub"``; ``None`` when the hub has no such weights.
        arch_kwargs: keyword arguments for timm (or ``builder``) that shape this variant.
        moe: mixture-of-experts layout applied to the ViT blocks, ``None`` for dense models.
        builder: builds the timm module when timm's keyword arguments cannot express the variant (tiny BiT).
        tiny: a CI-sized variant with random weights only, used by the conformance tests.
        no_hub_reason: said to the user who asks for hub weights that do not exist.
        package: a pip package that ships this name's pretrained weights; when set, the default
            ``weights="hub"`` loads them from the installed package instead of the network.
    """

    name: str
    arch: str
    description: str
    hub_tag: str | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    moe: MoEConfig | None = None
    builder: Callable[..., nn.Module] | None = None
    tiny: bool = False
    no_hub_reason: str | None = None
    package: WeightsPackage | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch_kwargs", MappingProxyType(dict(self.arch_kwargs)))

    @property
    def hub_name(self) -> str | None:
        """``arch.tag`` as timm spells a pretrained checkpoint, or ``None`` without hub weights."""
        return f"{self.arch}.{self.hub_tag}" if self.hub_tag else None


def register_backbones(*specs: BackboneSpec) -> None:
    """Add a family's table of variants to the registry.

    Raises:
        ValueError: a name is malformed or already registered (nothing of the call is registered then).
    """
    seen: set[str] = set()
    for spec in specs:
        if not _NAME.match(spec.name):
            raise ValueError(f"backbone name {spec.name!r} must be lower-case words joined by '-', like 'bit-m-r50x1'")
        if spec.name in _REGISTRY or spec.name in seen:
            raise ValueError(f"backbone {spec.name!r} is already registered; pick another name")
        seen.add(spec.name)
    for spec in specs:
        _REGISTRY[spec.name] = spec


def load_backbone_plugins() -> None:
    """Adopt the backbones of the ``medvision.backbones`` entry points (once per process).

    Raises:
        medvision.plugins.PluginError: a plugin that fails to import, or an object that is not a BackboneSpec.
    """
    global _adopted
    if _adopted:
        return
    _adopted = True  # before loading: a plugin module that registers itself may look a name up while importing
    try:
        for name, obj in load_group(BACKBONES):
            if isinstance(obj, ModuleType):
                continue  # importing it registered its table
            given = list(obj) if isinstance(obj, list | tuple) else [obj]
            specs = [s for s in given if isinstance(s, BackboneSpec)]
            if len(specs) != len(given):
                raise PluginError(
                    f"the {BACKBONES} entry point {name!r} gives {obj!r}; it must name a BackboneSpec or a list of them"
                )
            register_backbones(*(s for s in specs if _REGISTRY.get(s.name) is not s))
    except BaseException:
        _adopted = False
        raise


def list_backbones(*, tiny: bool | None = None) -> list[str]:
    """Registered backbone names, sorted; ``tiny=True`` keeps only the CI-sized ones, ``False`` drops them."""
    load_backbone_plugins()
    return sorted(n for n, s in _REGISTRY.items() if tiny is None or s.tiny == tiny)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec behind a registry name, or a pass-through spec for a timm model name (``arch[.tag]``).

    Raises:
        UnknownBackboneError: neither a registered name nor a timm model; lists the closest names.
    """
    load_backbone_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    arch, _, tag = name.partition(".")
    if timm.is_model(arch):
        return _timm_passthrough(name, arch, tag)
    candidates = list(_REGISTRY) + timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone {name!r}.{hint} `medvision weights list` (in Python, list_backbones()) shows "
        "medvision's names; any timm model name (timm.list_models()) also works."
    )


def _timm_passthrough(name: str, arch: str, tag: str) -> BackboneSpec:
    if tag:
        if name not in timm.list_pretrained(arch + ".*"):
            tags = [t.partition(".")[2] for t in timm.list_pretrained(arch)]
            raise UnknownBackboneError(f"timm has no weights tagged {tag!r} for {arch!r}; known tags: {tags}")
        hub_tag: str | None = tag
    else:
        cfg = timm.models.get_pretrained_cfg(arch)
        has_source = cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file)
        hub_tag = cfg.tag if cfg is not None and has_source and cfg.tag else None
    return BackboneSpec(
        name=name,
        arch=arch,
        description=f"timm model {name}",
        hub_tag=hub_tag,
        no_hub_reason=None if hub_tag else f"timm publishes no pretrained weights for {arch!r}",
    )
