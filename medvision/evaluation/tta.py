"""Test-time augmentation: the deterministic views of an image a classifier's predictions are averaged over.

A model fine-tuned with random flips and crops has learnt to answer the same on those views; averaging its
outputs over a fixed set of them is a cheap, training-free ensemble (Krizhevsky et al. 2012's ten crops; for
medical images e.g. Wang et al. 2019, where it also sharpens the uncertainty estimate). The views come from the
one augmentation vocabulary of :mod:`medvision.data.augment`, made deterministic:

* ``photo``: the image, mirrored left-right, upside-down and both (a skin lesion or a fundus has no side);
* ``radiograph``: **never mirrored** unless ``flip: true`` is asked for (a mirrored chest X-ray puts the heart on
  the right: a picture of no patient), but cropped: the full image and five crops (centre and corners) of
  ``crop_scale`` of the side, resized back, the deterministic counterpart of training's mild crops.

Each view is an albumentations pipeline run on the cache's ``uint8`` pixels, exactly where training augments
(:class:`~medvision.data.dataset.CohortDataset`'s ``augment``), so an evaluated view is one the network could
have seen in training. :func:`~medvision.evaluation.predict.predict_rows` averages probabilities, logits, embeddings
and the head's OOD score over the views, so calibration, operating points, OOD detectors and the trust section all
read the augmented predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import numpy as np

from medvision.cohort.cohort import Cohort
from medvision.data.augment import resolve_preset, run_seeded
from medvision.evaluation.settings import TTASettings

__all__ = ["TTAViews", "View", "cohort_views", "tta_views"]


@dataclass(frozen=True)
class View:
    """One deterministic view: a name for the record and an albumentations pipeline (``None``: the image as is).

    Called as a :class:`~medvision.data.dataset.CohortDataset` ``augment``: ``(chw array, seed) -> chw array``;
    the seed is ignored (every transform has ``p=1`` and no random parameter).
    """

    name: str
    pipeline: A.Compose | None = None

    def __call__(self, chw: np.ndarray, seed: int = 0) -> np.ndarray:
        return chw if self.pipeline is None else run_seeded(self.pipeline, chw, 0)


@dataclass(frozen=True)
class TTAViews:
    """The views of one evaluation: what was asked for, the preset it resolved to, and the views themselves."""

    requested: str
    preset: str
    views: tuple[View, ...]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.views]

    @property
    def active(self) -> bool:
        """More than the plain image: predictions are averaged over views."""
        return len(self.views) > 1


def tta_views(settings: TTASettings, size: int, in_chans: int, modality: str | None = None) -> TTAViews:
    """The views ``settings`` stand for on ``(size, size)`` images of ``in_chans`` channels.

    ``auto`` resolves as training's presets do (:func:`~medvision.data.augment.resolve_preset`): ``radiograph`` for
    one-channel images or a radiology modality, else ``photo``. The plain image is always the first view.
    """
    preset = resolve_preset(settings.preset, in_chans, modality)
    if preset == "none":
        return TTAViews(settings.preset, preset, (View("identity"),))
    flip = settings.flip if settings.flip is not None else preset == "photo"
    crops = settings.crops if settings.crops is not None else ("five" if preset == "radiograph" else "none")
    # a photo is mirrored both ways (no side, no up); a radiograph asked to flip only left-right (no up either)
    flips: list[tuple[str, list[A.BasicTransform]]] = [("identity", [])]
    if flip:
        flips.append(("hflip", [A.HorizontalFlip(p=1.0)]))
        if preset == "photo":
            flips += [("vflip", [A.VerticalFlip(p=1.0)]), ("hvflip", [A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)])]
    windows: list[tuple[str, list[A.BasicTransform]]] = [("full", [])]
    side = max(1, round(settings.crop_scale * size))
    far, mid = size - side, (size - side) // 2
    corners = {"center": (mid, mid), "top_left": (0, 0), "top_right": (far, 0), "bottom_left": (0, far)}
    corners["bottom_right"] = (far, far)
    chosen = [] if crops == "none" else ["center"] if crops == "center" else list(corners)
    for where in chosen:
        x, y = corners[where]
        windows.append(
            (f"crop_{where}", [A.Crop(x_min=x, y_min=y, x_max=x + side, y_max=y + side), A.Resize(size, size)])
        )
    views = []
    for flip_name, flip_steps in flips:
        for window_name, window_steps in windows:
            steps = [*window_steps, *flip_steps]
            name = "+".join(n for n in (flip_name, window_name) if n not in ("identity", "full")) or "identity"
            views.append(View(name, A.Compose(steps) if steps else None))
    return TTAViews(settings.preset, preset, tuple(views))


def cohort_views(settings: TTASettings, cohort: Cohort) -> TTAViews:
    """:func:`tta_views` on ``cohort``'s cached images (their size, channels and most common modality, as
    training resolves ``augment.preset: auto``)."""
    manifest = cohort.manifest
    modality = None
    if "modality" in manifest.columns and manifest["modality"].notna().any():
        modality = str(manifest["modality"].mode().iloc[0])
    return tta_views(settings, int(cohort.cache.params.size), int(cohort.card.in_chans), modality)
