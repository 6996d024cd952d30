"""What an exported bundle runs at prediction time: medvision's readers and preprocessing, from the classifier card.

Why here and not in the bundle's config: a config of MONAI transforms (``LoadImage`` -> resize -> ``/ 255``) is a
second implementation of the cohort build's image handling, and it drifted (it stretched where training padded,
clipped 16-bit PNGs, skipped the luma of RGB photos and globbed ``*.png`` in a folder of DICOM). The bundle's
``inference.json`` names these components instead, so it prepares each file with
:func:`medvision.cohort.recipe.prepare_file` and the recipe in its own ``configs/classifier.json``: exactly what
training saw. Files no medvision reader accepts, or of a kind the model never saw, are refused by name in
``rejected.csv`` beside the predictions (nothing is lost silently).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvision._atomic import atomic_write_text
from medvision.classifier import ClassifierCard
from medvision.cohort.recipe import PreprocessRecipe, prepare_file, screen_folder

__all__ = ["PrepareImaged", "image_datalist", "recipe_of", "write_predictions"]

log = logging.getLogger("medvision.export")


def recipe_of(card_file: str | Path) -> PreprocessRecipe:
    """The preprocessing recipe of the classifier card at ``card_file``.

    Raises:
        ValueError: the card records no recipe (the model was trained before medvision recorded it).
    """
    card = ClassifierCard.read(card_file)
    if card.preprocessing is None:
        raise ValueError(
            f"{card_file} records no preprocessing recipe: the classifier was trained on data that is not a "
            "medvision cohort, or by an older medvision; re-run its fine-tune on a cohort, then export it again"
        )
    return card.preprocessing


def image_datalist(folder: str | Path, card_file: str | Path, rejected_file: str | Path) -> list[dict[str, str]]:
    """Every file under ``folder`` a medvision reader accepts, as MONAI datalist items ``{"image": path}``.

    Each other file is written to ``rejected_file`` (CSV: ``file``, ``reason``) with the cohort build's reason:
    no reader accepts it, its header cannot be read, the model was not trained on its kind, or it declares more
    pixels than the cohort's ``max_megapixels``. The list is sorted by path, so ``predictions.csv`` is too.

    Raises:
        ValueError: ``folder`` holds no file the model can read (the message names how many were refused).
    """
    folder, recipe = Path(folder), recipe_of(card_file)
    if not folder.is_dir():
        raise ValueError(f"dataset_dir {folder} is not a folder; pass --dataset_dir with the images to predict")
    accepted, rejected = screen_folder(folder, recipe)  # the cohort build's own indexing and limits
    items = [{"image": str(folder / rel)} for rel in accepted]
    _write_csv(rejected_file, ["file", "reason"], rejected)
    if rejected:
        log.warning("%d file(s) refused; see %s", len(rejected), rejected_file)
    if not items:
        raise ValueError(
            f"no image the model can read in {folder} ({len(rejected)} file(s) refused, reasons in {rejected_file})"
        )
    return items


class PrepareImaged:
    """A MONAI dictionary transform: ``data[key]`` (a file path) becomes the model's input, ``(C, H, W)`` float32
    in ``[0, 1]``, through :func:`~medvision.cohort.recipe.prepare_file` and the card's recipe."""

    def __init__(self, keys: str | Sequence[str], card_file: str | Path) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.recipe = recipe_of(card_file)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.keys:
            out[key] = torch.from_numpy(prepare_file(data[key], self.recipe))
        return out


def write_predictions(path: str | Path, datalist: list[dict[str, str]], predictions: Any, names: list[str]) -> Path:
    """``predictions.csv``: one row per file (its path), one column per output channel; written atomically."""
    values = np.asarray(predictions, dtype=np.float64)
    if values.shape != (len(datalist), len(names)):
        raise ValueError(f"{values.shape[0]} predictions of {values.shape[1:]} for {len(datalist)} files")
    rows = [[item["image"], *(f"{v:.8g}" for v in row)] for item, row in zip(datalist, values)]
    return _write_csv(path, ["file", *names], rows)


def _write_csv(path: str | Path, header: list[str], rows: list) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())
