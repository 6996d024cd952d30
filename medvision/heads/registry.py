"""Heads by name: ``create_head("hod", 768, 7, num_outlier_classes=3)``.

A pipeline YAML names its head and options; this module turns the name into a class. Each head
module registers itself with :func:`register_head`, so the registry (and the conformance tests
that run over it) always lists every head the package ships.

Heads of other distributions arrive through the ``medvision.heads`` entry point group
(:mod:`medvision.plugins`): an entry point names a :class:`Head` subclass, registered under the entry
point's name unless its module already decorated it, or a module that registers heads when imported.
The first lookup in a process adopts them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from medvision.plugins import HEADS, PluginError, load_group

from .base import Head, HeadConfigError

__all__ = ["create_head", "get_head_class", "list_heads", "load_head_plugins", "ood_score_names", "register_head"]

_HEADS: dict[str, type[Head]] = {}
_adopted = False
H = TypeVar("H", bound=type[Head])


def register_head(name: str) -> Callable[[H], H]:
    """Class decorator that registers a :class:`Head` subclass under ``name``.

    Raises:
        HeadConfigError: if ``name`` is already taken (two heads with one name would make a
            pipeline's meaning depend on import order).
    """

    def decorate(cls: H) -> H:
        if name in _HEADS:
            raise HeadConfigError(
                f"head name {name!r} is already registered by {_HEADS[name].__qualname__}; pick another name"
            )
        if not (isinstance(cls, type) and issubclass(cls, Head)):
            raise TypeError(f"register_head({name!r}) decorates Head subclasses, got {cls!r}")
        cls.name = name
        _HEADS[name] = cls
        return cls

    return decorate


def load_head_plugins() -> None:
    """Adopt the heads of the ``medvision.heads`` entry points (once per process).

    Raises:
        medvision.plugins.PluginError: a plugin that fails to import, or an object that is not a Head subclass.
    """
    global _adopted
    if _adopted:
        return
    _adopted = True  # before loading: a plugin module that registers itself may look a name up while importing
    try:
        for name, obj in load_group(HEADS):
            if isinstance(obj, ModuleType) or obj in _HEADS.values():
                continue  # its module registered it (the decorator) on import
            if not (isinstance(obj, type) and issubclass(obj, Head)):
                raise PluginError(f"the {HEADS} entry point {name!r} gives {obj!r}; it must name a Head subclass")
            register_head(name)(obj)
    except BaseException:
        _adopted = False
        raise


def list_heads() -> list[str]:
    """Names of every registered head, sorted."""
    load_head_plugins()
    return sorted(_HEADS)


def ood_score_names() -> list[str]:
    """The names the heads' built-in OOD scores are reported under (``hod``), sorted."""
    load_head_plugins()
    return sorted({cls.ood_score_name for cls in _HEADS.values() if cls.ood_score_name})


def get_head_class(name: str) -> type[Head]:
    """The class registered as ``name``.

    Raises:
        HeadConfigError: for an unknown name, suggesting the closest registered names.
    """
    load_head_plugins()
    try:
        return _HEADS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_HEADS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise HeadConfigError(f"unknown head {name!r}.{hint} Registered heads: {', '.join(list_heads())}") from None


def create_head(name: str, in_features: int, num_classes: int, **options: Any) -> Head:
    """Build the head registered as ``name``.

    Args:
        name: registry name, one of :func:`list_heads`.
        in_features: size of the backbone embedding the head reads.
        num_classes: task classes (for ``"hod"``: the K inlier classes).
        **options: the head's own options, validated by its pydantic model.

    Returns:
        The head, an ``nn.Module`` honouring the :class:`Head` contract.

    Raises:
        HeadConfigError: unknown name, bad size, or an unknown / invalid option (named).

    Example:
        >>> import torch
        >>> head = create_head("linear", 16, 3, label_smoothing=0.1)
        >>> head(torch.zeros(2, 16)).probs.shape
        torch.Size([2, 3])
    """
    return get_head_class(name)(in_features, num_classes, **options)
