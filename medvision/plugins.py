"""Extensions from other distributions: entry points, loaded once per process, in every process that needs them.

A package extends medvision by declaring entry points in its own ``pyproject.toml``; nothing in medvision changes::

    [project.entry-points."medvision.readers"]
    nifti = "medvision_nifti:NiftiReader"      # a Reader class or instance (or a module that registers one)

    [project.entry-points."medvision.backbones"]
    my-vit = "my_models:SPECS"                 # a BackboneSpec, or a list of them

    [project.entry-points."medvision.heads"]
    evidential = "my_heads:EvidentialHead"     # a Head subclass, registered under the entry point's name

    [project.entry-points."medvision.stages"]
    deploy = "my_stages:DeployKind"            # a StageKind

Each registry (:mod:`medvision.io.registry`, :mod:`medvision.models.registry`, :mod:`medvision.heads.registry`,
:mod:`medvision.pipeline.kinds`) adopts its own group the first time it is asked for a name, so a fresh process
(a ``spawn`` or ``forkserver`` worker, which inherits nothing from its parent) sees the same extensions as the
parent. This module only imports the entry points; it knows nothing of the registries above it, which is why each
group's meaning is written down here and enforced there.

Loading is once per group per process. A broken plugin fails with :class:`PluginError` naming the distribution
and the entry point, never with a bare ``ImportError`` from somewhere inside it.
"""

from __future__ import annotations

import functools
import threading
from importlib import metadata
from typing import Any

from medvision.errors import MedvisionError

__all__ = ["BACKBONES", "GROUPS", "HEADS", "READERS", "STAGES", "PluginError", "load_all", "load_group"]

READERS = "medvision.readers"
BACKBONES = "medvision.backbones"
HEADS = "medvision.heads"
STAGES = "medvision.stages"
GROUPS = (READERS, BACKBONES, HEADS, STAGES)

_loaded: dict[str, list[tuple[str, object]]] = {}
_lock = threading.RLock()


class PluginError(MedvisionError):
    """An installed extension could not be loaded; the message names its distribution and entry point."""


def load_group(group: str) -> list[tuple[str, object]]:
    """``(entry point name, loaded object)`` for every entry point of ``group``, imported once per process.

    A plugin module that registers itself on import may look its own registry up while it is being imported; the
    group is marked loaded before its entry points are imported, so that lookup does not load it again.

    Raises:
        PluginError: an entry point that cannot be imported (named, with the distribution that declares it).
    """
    with _lock:
        if group in _loaded:
            return _loaded[group]
        found: list[tuple[str, object]] = []
        _loaded[group] = found
        for ep in sorted(_installed().select(group=group), key=lambda e: e.name):
            try:
                found.append((ep.name, ep.load()))
            except Exception as e:  # noqa: BLE001 - any failure inside a plugin's import is the plugin's
                del _loaded[group]  # a fixed plugin loads on the next try
                dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
                raise PluginError(
                    f"the {group} entry point {ep.name!r} = {ep.value!r} (from {dist}) failed to load: "
                    f"{type(e).__name__}: {e}. Fix or uninstall that package (pip uninstall {dist})"
                ) from e
        return found


@functools.cache
def _installed() -> Any:
    """Every installed entry point, read once per process (a scan of all distributions' metadata; ``EntryPoints``
    from Python 3.12, ``SelectableGroups`` before: both ``select(group=...)``)."""
    return metadata.entry_points()


def load_all() -> None:
    """Import every medvision entry point now (the command line does, so a broken plugin fails before any work)."""
    for group in GROUPS:
        load_group(group)
