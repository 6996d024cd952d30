"""The two-view augmentations of contrastive pretraining, built with albumentations (see the method spec §2).

SimCLR learns what its augmentations leave unchanged, so the pipeline *is* the inductive bias. Its presets use the
fine-tuning vocabulary (:mod:`medvision.data.augment`: what the images are), much stronger:

* ``photo`` (dermatology photos, fundus, pathology): random resized crop, flip, rotation, colour distortion
  (jitter with probability 0.8 and grey-scaling with 0.2, scaled by ``strength``), Gaussian blur;
* ``radiograph`` (grey projections): crop, flip, rotation, brightness/contrast distortion (up to 0.8), histogram
  equalisation (CLAHE) and elastic deformation; colour jitter makes no sense for one channel.

``auto`` picks ``radiograph`` for one-channel cohorts and radiology modalities, else ``photo``. The old key and
words (``pipeline: rgb | grayscale``) still load, with a warning naming the new ones.

Every call takes an explicit seed: the pair sampler draws one per view from ``(run seed, epoch, position)``,
so a view is the same whichever process, worker or resumed run computes it.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from medvision.config import StrictModel
from medvision.data.augment import RADIOLOGY_MODALITIES, canonical_preset, resolve_preset, run_seeded
from medvision.errors import InputError

__all__ = ["RADIOLOGY_MODALITIES", "AugmentConfig", "TwoViewAugment", "build_pipeline", "resolve_preset"]

#: The two-view presets (fine-tuning's vocabulary, without ``none``: contrastive learning needs two views).
TwoViewPreset = Literal["photo", "radiograph"]


class AugmentConfig(StrictModel):
    """Which preset and how strong; defaults follow SimCLR / REMEDIS."""

    #: ``auto`` (from the cohort's channels and modality), ``photo`` or ``radiograph``.
    preset: Literal["auto", "photo", "radiograph"] = "auto"
    #: Smallest crop area as a share of the image (SimCLR: 0.08).
    crop_scale_min: float = Field(0.08, gt=0.0, le=1.0)
    #: Colour distortion strength s (photo): brightness/contrast/saturation 0.8 s, hue 0.2 s.
    color_strength: float = Field(1.0, ge=0.0)
    #: Largest rotation in degrees either way.
    rotate_limit: float = Field(20.0, ge=0.0, le=180.0)
    #: Probability of a Gaussian blur (photo).
    blur_prob: float = Field(0.5, ge=0.0, le=1.0)
    #: Largest brightness / contrast change (radiograph; the method spec's default is 0.8).
    brightness_contrast: float = Field(0.8, ge=0.0, le=1.0)
    #: Probability of CLAHE histogram equalisation (radiograph).
    equalize_prob: float = Field(0.5, ge=0.0, le=1.0)
    #: Probability of an elastic deformation (radiograph).
    elastic_prob: float = Field(0.3, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _renamed_key(cls, raw: Any) -> Any:
        """``pipeline:`` was this key's old name (deprecated, mapped with a warning)."""
        if isinstance(raw, dict) and "pipeline" in raw and "preset" not in raw:
            warnings.warn(
                "augment.pipeline is now augment.preset (one vocabulary for fine-tuning and pretraining "
                "augmentation); the old key will be removed",
                FutureWarning,
                stacklevel=1,
            )
            raw = {("preset" if k == "pipeline" else k): v for k, v in raw.items()}
        return raw

    @field_validator("preset", mode="before")
    @classmethod
    def _one_vocabulary(cls, v: object) -> object:
        return canonical_preset(v)


def build_pipeline(kind: str, size: int, cfg: AugmentConfig) -> A.Compose:
    """The albumentations pipeline for ``uint8`` HWC images of side ``size``."""
    geometric = [
        A.RandomResizedCrop(size=(size, size), scale=(cfg.crop_scale_min, 1.0), p=1.0),
        A.HorizontalFlip(p=0.5),
        A.Rotate(limit=cfg.rotate_limit, border_mode=cv2.BORDER_REFLECT_101, p=0.5),
    ]
    if kind == "photo":
        s = cfg.color_strength
        photometric = [
            A.ColorJitter(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=min(0.5, 0.2 * s), p=0.8),
            A.ToGray(p=0.2),
            A.GaussianBlur(sigma_limit=(0.1, 2.0), blur_limit=0, p=cfg.blur_prob),
        ]
    elif kind == "radiograph":
        bc = cfg.brightness_contrast
        photometric = [
            A.RandomBrightnessContrast(brightness_limit=bc, contrast_limit=bc, p=0.8),
            A.CLAHE(clip_limit=(1.0, 4.0), tile_grid_size=(4, 4), p=cfg.equalize_prob),
            A.ElasticTransform(
                alpha=size * 0.5, sigma=size * 0.08, border_mode=cv2.BORDER_REFLECT_101, p=cfg.elastic_prob
            ),
        ]
    else:
        raise ValueError(f"augment preset must be 'photo' or 'radiograph', got {kind!r}")
    return A.Compose([*geometric, *photometric])


class TwoViewAugment:
    """Applies one pipeline to ``(C, H, W)`` float images in [0, 1] with an explicit seed per call.

    Args:
        kind: ``photo`` or ``radiograph``.
        size: output side (the cached image side).
        cfg: pipeline settings.
    """

    def __init__(self, kind: str, size: int, cfg: AugmentConfig) -> None:
        self.kind, self.size = kind, size
        self.pipeline = build_pipeline(kind, size, cfg)

    def __call__(self, image: np.ndarray, seed: int) -> torch.Tensor:
        c = image.shape[0]
        if self.kind == "photo" and c != 3:
            raise InputError(f"augment preset 'photo' needs 3-channel images, got {c}; set augment.preset: radiograph")
        if self.kind == "radiograph" and c not in (1, 3):
            raise InputError(f"augment preset 'radiograph' needs 1- or 3-channel images, got {c}")
        chw = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        return torch.from_numpy(run_seeded(self.pipeline, chw, seed).astype(np.float32) / 255.0)
