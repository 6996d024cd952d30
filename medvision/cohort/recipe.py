"""The preprocessing recipe: how an image file became a model's input, recorded with the model.

Why a record: a model only works on inputs prepared the way its training images were. The recipe travels in the
classifier card (:class:`medvision.classifier.ClassifierCard`), and export, serving and any later prediction path
call :func:`prepare_file`, which runs the cohort build's own steps (the reader registry, then
:func:`~medvision.cohort.preprocess.preprocess`, then the cache's storage type) - one implementation, so a bundle
can never stretch where training padded, divide a 16-bit PNG by 255 or skip the luma of an RGB photo.

The steps, in order (each is the build's; the fields name them so a reader of the card knows what was done):

1. *read* (``intensity``): DICOM through its display pipeline (Modality LUT -> VOI LUT or the first window ->
   MONOCHROME1 inverted, scaled by each step's output range); photos upright (EXIF), 8-bit / 255, 16-bit / 65535,
   alpha dropped. Every reader returns ``(C, H, W)`` in ``[0, 1]``.
2. *frames*: the middle frame, or the mean of all frames, of a multi-frame object.
3. *channels*: RGB to grey by ITU-R BT.601 luma; grey to RGB by repetition.
4. *geometry* (``size``, ``fit``, ``interpolation``): a square of ``size``, stretched or padded with black;
   area averaging when shrinking, bilinear when growing.
5. *storage*: rounded to ``uint8`` (or ``float16``), as the cache stores it, then back to float32 in ``[0, 1]``.

Normalisation (the backbone's mean/std) is not part of it: it is inside the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict

from medvision.cohort.index import IndexLimits, Rejected, index_files, list_entries
from medvision.cohort.preprocess import preprocess
from medvision.cohort.spec import PreprocessSpec
from medvision.config import StrictModel
from medvision.io import ImageReadError, read_header, read_image, reader_for

__all__ = ["PreprocessRecipe", "from_storage", "prepare_file", "screen_folder"]


class PreprocessRecipe(StrictModel):
    """What :func:`prepare_file` does to a file (see the module docstring for each step)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int
    channels: Literal[1, 3]
    fit: Literal["stretch", "pad"]
    storage: Literal["uint8", "float16"]
    frames: Literal["middle", "mean", "all"] = "middle"
    #: The reader kinds the cohort ingested (``dicom``, ``photo``, ...); ``None``: every registered kind.
    kinds: list[str] | None = None
    #: The cap on a file's declared size the cohort was built with (``max_megapixels``), checked from the header
    #: before any pixel is decoded; ``None``: no cap.
    max_megapixels: float | None = None
    # The fixed steps, named so the card says what was done (a later recipe may offer choices here).
    intensity: Literal["display"] = "display"
    colour_to_grey: Literal["bt601-luma"] = "bt601-luma"
    interpolation: Literal["area-down-bilinear-up"] = "area-down-bilinear-up"
    value_range: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def from_spec(
        cls,
        spec: PreprocessSpec,
        frames: Literal["middle", "mean", "all"] = "middle",
        kinds: list[str] | None = None,
        max_megapixels: float | None = None,
    ) -> PreprocessRecipe:
        """The recipe of a cohort built with ``spec`` (its ``preprocess`` section, ``frames``, ``kinds`` and
        ``max_megapixels``)."""
        return cls(
            size=spec.size,
            channels=spec.channels,
            fit=spec.fit,
            storage=spec.dtype,
            frames=frames,
            kinds=kinds,
            max_megapixels=max_megapixels,
        )

    @property
    def spec(self) -> PreprocessSpec:
        """The cohort ``preprocess`` section this recipe runs."""
        return PreprocessSpec(size=self.size, channels=self.channels, fit=self.fit, dtype=self.storage)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


def from_storage(stored: np.ndarray) -> np.ndarray:
    """The cache's storage type back to float32 in ``[0, 1]`` (``uint8`` / 255; ``float16`` widened)."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / 255.0
    return stored.astype(np.float32)


def prepare_file(path: str | Path, recipe: PreprocessRecipe) -> np.ndarray:
    """One file as the model's input: ``(channels, size, size)`` float32 in ``[0, 1]``, exactly as training saw it.

    Raises:
        ImageReadError: no reader accepts the file, its kind is not one the cohort ingested, a multi-frame file
            for a model trained on every frame separately, or the reader's own errors (naming the file).
    """
    path = Path(path)
    reader = reader_for(path)
    if recipe.kinds is not None and reader.kind not in recipe.kinds:
        raise ImageReadError(
            path,
            f"a {reader.kind} file, but the model was trained on {', '.join(recipe.kinds)} images only",
            f"convert it to {recipe.kinds[0]}, or train on a cohort that includes {reader.kind} images",
        )
    frame: Literal["middle", "mean"] = "mean" if recipe.frames == "mean" else "middle"
    if recipe.frames == "all" and read_header(path).frames > 1:
        raise ImageReadError(
            path,
            "a multi-frame object, but the model was trained on every frame as its own image (frames: all)",
            "split the frames into single-frame files and predict each",
        )
    pixels = read_image(path, frame=frame).pixels
    return from_storage(preprocess(pixels, recipe.spec))


def screen_folder(folder: str | Path, recipe: PreprocessRecipe) -> tuple[list[str], list[tuple[str, str]]]:
    """The files under ``folder`` the cohort build would ingest for this recipe, and every other entry with the
    build's own reason (no reader, unreadable header, a kind the model was not trained on, over the size cap).

    Only paths and reasons leave this function: the headers (which may hold identifiers) stay in the cohort layer.
    """
    folder = Path(folder)
    files, left_out = list_entries(folder)
    limits = IndexLimits(recipe.max_megapixels, frozenset(recipe.kinds) if recipe.kinds is not None else None)
    accepted: list[str] = []
    rejected = [(r.relpath, r.reason) for r in left_out]
    for item in index_files(folder, sorted(files), workers=1, limits=limits):
        if isinstance(item, Rejected):
            rejected.append((item.relpath, item.reason))
        else:
            accepted.append(item.relpath)
    return accepted, rejected
