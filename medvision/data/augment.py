"""Training-time augmentation of supervised fine-tuning, built with albumentations.

Augmentation is what lets a pretrained network fine-tune on a few hundred medical images without memorising
them, and what is plausible differs by modality, so the presets are modality-aware:

* ``photo`` (dermatology, fundus, pathology, ImageNet-like pictures): random resized crop, horizontal and vertical
  flips (a skin lesion has no "up"), light colour jitter;
* ``radiograph`` (grey projections): small crop and affine jitter, brightness/contrast; **no flip** unless asked,
  because anatomy has a side (a mirrored chest X-ray puts the heart on the right);
* ``none``; ``auto`` picks ``radiograph`` for one-channel or radiology-modality cohorts, else ``photo``.

Augmentations run on the cache's ``uint8`` pixels before the float conversion (four times less memory traffic
per pixel), and every call takes an explicit seed that the training sampler derives from ``(run seed, epoch,
position)``: a view depends neither on the DataLoader worker that computes it nor on whether the run was resumed.
Evaluation never augments. The same seeded call serves the two-view SimCLR pipelines (``medvision.ssl.augment``).

``photo`` / ``radiograph`` is the one vocabulary of augmentation (fine-tuning presets and pretraining's two-view
pipelines both say what the images are); the pretraining spellings ``rgb`` / ``grayscale`` still load, with a
warning naming the new word (:func:`canonical_preset`).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, field_validator

from medvision.config import StrictModel
from medvision.errors import InputError

if TYPE_CHECKING:
    import albumentations as A

__all__ = [
    "RADIOLOGY_MODALITIES",
    "FinetuneAugmentConfig",
    "SeededAugment",
    "build_preset",
    "canonical_preset",
    "resolve_preset",
    "run_seeded",
]

#: DICOM modalities whose images are grey-level projections or slices.
RADIOLOGY_MODALITIES = frozenset({"CR", "DX", "DR", "MG", "CT", "MR", "PT", "NM", "US", "XA", "RF", "IO", "PX"})

Preset = Literal["photo", "radiograph", "none"]

#: Old spellings → the one vocabulary (pretraining said ``rgb`` / ``grayscale`` for the same two kinds of image).
RENAMED_PRESETS = {"rgb": "photo", "grayscale": "radiograph"}


def canonical_preset(value: object, key: str = "augment.preset") -> object:
    """``value`` in the one vocabulary: an old spelling is mapped, with a warning naming ``key`` and the new word.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     canonical_preset("grayscale")
        'radiograph'
    """
    if isinstance(value, str) and value in RENAMED_PRESETS:
        new = RENAMED_PRESETS[value]
        # FutureWarning, not DeprecationWarning: meant for the person who wrote the YAML, shown by default
        warnings.warn(
            f"{key}: {value!r} is now spelt {new!r} (one vocabulary for fine-tuning and pretraining augmentation); "
            f"write {key}: {new}, the old spelling will be removed",
            FutureWarning,
            stacklevel=1,
        )
        return new
    return value


class FinetuneAugmentConfig(StrictModel):
    """``augment:`` of a fine-tuning config: a preset and the few knobs worth turning."""

    #: ``auto`` (from the cohort's channels and modality), ``photo``, ``radiograph`` or ``none``. Off unless
    #: asked for: a run's result then never changes because a default did (the shipped recipes turn it on).
    preset: Literal["auto", "photo", "radiograph", "none"] = "none"
    #: Mirror images; ``None`` takes the preset's choice (photo: yes, radiograph: no, as anatomy has a side).
    flip: bool | None = None
    #: Smallest crop area as a share of the image; ``None`` takes the preset's (photo 0.35, radiograph 0.8).
    crop_scale_min: float | None = Field(None, gt=0.0, le=1.0)

    @field_validator("preset", mode="before")
    @classmethod
    def _one_vocabulary(cls, v: object) -> object:
        return canonical_preset(v)


def resolve_preset(choice: str, in_chans: int, modality: str | None = None) -> Preset:
    """The preset ``auto`` stands for: ``radiograph`` for 1-channel images or radiology modalities."""
    choice = str(canonical_preset(choice))
    if choice in ("photo", "radiograph", "none"):
        return choice  # type: ignore[return-value]
    if in_chans == 1 or (modality or "").upper() in RADIOLOGY_MODALITIES:
        return "radiograph"
    return "photo"


def build_preset(preset: Preset, size: int, cfg: FinetuneAugmentConfig, in_chans: int) -> A.Compose | None:
    """The albumentations pipeline of ``preset`` for ``(size, size)`` HWC images; ``None`` for ``none``.

    Raises:
        ValueError: ``photo`` on grey images (colour jitter needs three channels), or an unknown preset.
    """
    if preset == "none":
        return None
    # Imported here, not at the top: the configs that import this module are all that the GPU benchmark needs of it,
    # and the offline device kit (scripts/device_kit.py) leaves OpenCV and albumentations out.
    import albumentations as A
    import cv2

    if preset == "photo":
        if in_chans != 3:
            raise InputError(
                f"augment.preset 'photo' needs 3-channel images but the cohort has {in_chans}; "
                "use augment.preset: radiograph (or auto)"
            )
        flip = True if cfg.flip is None else cfg.flip
        steps = [
            A.RandomResizedCrop(size=(size, size), scale=(cfg.crop_scale_min or 0.35, 1.0), p=1.0),
            *([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)] if flip else []),
            A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=0.8),
        ]
    elif preset == "radiograph":
        flip = bool(cfg.flip)
        steps = [
            A.Affine(
                scale=(0.95, 1.05),
                translate_percent=(-0.04, 0.04),
                rotate=(-7, 7),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.7,
            ),
            A.RandomResizedCrop(size=(size, size), scale=(cfg.crop_scale_min or 0.8, 1.0), ratio=(0.9, 1.1), p=1.0),
            *([A.HorizontalFlip(p=0.5)] if flip else []),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.8),
        ]
    else:
        raise ValueError(f"augment.preset must be photo, radiograph or none, got {preset!r}")
    return A.Compose(steps)


def run_seeded(pipeline: A.Compose, chw: np.ndarray, seed: int) -> np.ndarray:
    """Apply ``pipeline`` to a ``(C, H, W)`` array with a fixed seed; returns ``(C, H', W')`` of the same dtype.

    albumentations works on HWC; one-channel images go in as ``(H, W)`` because some OpenCV calls drop a
    trailing singleton axis.
    """
    hwc = np.ascontiguousarray(chw.transpose(1, 2, 0))
    if hwc.shape[2] == 1:
        hwc = hwc[:, :, 0]
    pipeline.set_random_seed(int(seed) % 2**32)
    out = pipeline(image=hwc)["image"]
    if out.ndim == 2:
        out = out[:, :, None]
    return np.ascontiguousarray(out.transpose(2, 0, 1))


class SeededAugment:
    """A resolved preset as a picklable ``(chw array, seed) -> chw array`` for DataLoader workers.

    Args:
        preset: ``photo``, ``radiograph`` or ``none`` (already resolved from ``auto``).
        size: the cached image side (the output keeps it).
        in_chans: channels of the cached images.
        cfg: the knobs of :class:`FinetuneAugmentConfig`.
    """

    def __init__(self, preset: Preset, size: int, in_chans: int, cfg: FinetuneAugmentConfig | None = None) -> None:
        self.preset = preset
        self.pipeline = build_preset(preset, size, cfg or FinetuneAugmentConfig(), in_chans)

    def __call__(self, chw: np.ndarray, seed: int) -> np.ndarray:
        if self.pipeline is None:
            return chw
        return run_seeded(self.pipeline, chw, seed)
