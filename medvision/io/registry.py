"""The ordered list of readers that both indexing and decoding consult.

One list for both paths is the point: a file indexed as DICOM is decoded as DICOM. Order matters - the first reader
whose ``can_read`` says yes owns the file - so photos (by suffix, unless the content says DICOM) come before DICOM,
which accepts anything else because legacy DICOM files have neither a preamble nor a suffix.

Readers of other distributions arrive through the ``medvision.readers`` entry point group (:mod:`medvision.plugins`):
the first lookup in a process adopts them, ahead of the built-ins. That is what makes them reach every process -
the cohort build's ``spawn`` / ``forkserver`` workers start with an empty copy of this module, and
:func:`load_reader_plugins` is their pool initializer. :func:`register_reader` called at run time is the Python
caller's way: it changes this process (and the ``fork`` workers it starts) only.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import cast

from medvision.io.dicom import DicomReader
from medvision.io.photo import PhotoReader
from medvision.io.reader import Frame, ImageHeader, ImageReadError, LoadedImage, Reader
from medvision.plugins import READERS, PluginError, load_group

__all__ = ["load_reader_plugins", "read_header", "read_image", "reader_for", "readers", "register_reader"]

_READERS: list[Reader] = [PhotoReader(), DicomReader()]
_adopted = False


def register_reader(reader: Reader, *, first: bool = True) -> None:
    """Add a format. ``first`` (the default) puts it before the built-ins so it can claim files they would take."""
    if first:
        _READERS.insert(0, reader)
    else:
        _READERS.insert(len(_READERS) - 1, reader)  # the DICOM catch-all stays last


def load_reader_plugins() -> None:
    """Adopt the readers of the ``medvision.readers`` entry points (once per process).

    An entry point names a reader instance, a reader class (built with no arguments) or a module that calls
    :func:`register_reader` when imported. The worker pools of the cohort build run this as their initializer.

    Raises:
        medvision.plugins.PluginError: a plugin that fails to import, or an object that is not a reader.
    """
    global _adopted
    if _adopted:
        return
    _adopted = True  # before loading: a plugin module that registers itself may call readers() while importing
    try:
        for name, obj in load_group(READERS):
            if isinstance(obj, ModuleType):
                continue  # importing it registered what it has
            cls = obj if isinstance(obj, type) else type(obj)
            if any(type(r) is cls for r in _READERS):
                continue  # its own module registered it on import: once is enough
            reader = obj() if isinstance(obj, type) else obj
            if not all(callable(getattr(reader, m, None)) for m in ("can_read", "read_header", "read")):
                raise PluginError(
                    f"the {READERS} entry point {name!r} gives {obj!r}, which is not a reader (it needs kind, "
                    "can_read, read_header and read; see medvision.io.Reader)"
                )
            register_reader(cast(Reader, reader))
    except BaseException:
        _adopted = False
        raise


def readers() -> tuple[Reader, ...]:
    """The registry in lookup order."""
    load_reader_plugins()
    return tuple(_READERS)


def reader_for(path: str | Path) -> Reader:
    """The first registered reader that claims ``path``."""
    load_reader_plugins()
    path = Path(path)
    for reader in _READERS:
        if reader.can_read(path):
            return reader
    raise ImageReadError(path, "no reader accepts this file", "see medvision.io.readers() for the supported formats")


def read_header(path: str | Path) -> ImageHeader:
    """Header of any supported file, through the same reader that :func:`read_image` would use."""
    return reader_for(path).read_header(Path(path))


def read_image(path: str | Path, frame: Frame = "middle") -> LoadedImage:
    """Read any supported file (DICOM by content, photos by suffix) into the common contract."""
    return reader_for(path).read(Path(path), frame=frame)
