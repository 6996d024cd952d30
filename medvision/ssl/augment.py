"""The two-view augmentations of contrastive pretraining, built with albumentations (see the method spec §2).

SimCLR learns what its augmentations leave unchanged, so the pipeline *is* the inductive bias:

* ``rgb`` (dermatology photos, fundus, pathology): random resized crop, flip, rotation, colour distortion
  (jitter with probability 0.8 and grey-scaling with 0.2, scaled by ``strength``), Gaussian blur;
* ``grayscale`` (radiographs): crop, flip, rotation, brightness/contrast distortion (up to 0.8), histogram
  equalisation (CLAHE) and elastic deformation; colour jitter makes no sense for one channel.

``auto`` picks ``grayscale`` for one-channel cohorts and radiology modalities, else ``rgb``.

Every call takes an explicit seed: the pair sampler draws one per view from ``(run seed, epoch, position)``,
so a view is the same whichever process, worker or resumed run computes it.
"""

from __future__ import annotations

from typing import Literal

import albumentations as A
import cv2
import numpy as np
import torch
from pydantic import Field

from medvision.config import StrictModel
from medvision.data.augment import RADIOLOGY_MODALITIES, run_seeded

__all__ = ["RADIOLOGY_MODALITIES", "AugmentConfig", "TwoViewAugment", "build_pipeline", "resolve_pipeline"]


class AugmentConfig(StrictModel):
    """Which pipeline and how strong; defaults follow SimCLR / REMEDIS."""

    #: ``auto`` (from the cohort's channels and modality), ``rgb`` or ``grayscale``.
    pipeline: Literal["auto", "rgb", "grayscale"] = "auto"
    #: Smallest crop area as a share of the image (SimCLR: 0.08).
    crop_scale_min: float = Field(0.08, gt=0.0, le=1.0)
    #: Colour distortion strength s (rgb): brightness/contrast/saturation 0.8 s, hue 0.2 s.
    color_strength: float = Field(1.0, ge=0.0)
    #: Largest rotation in degrees either way.
    rotate_limit: float = Field(20.0, ge=0.0, le=180.0)
    #: Probability of a Gaussian blur (rgb).
    blur_prob: float = Field(0.5, ge=0.0, le=1.0)
    #: Largest brightness / contrast change (grayscale; the method spec's default is 0.8).
    brightness_contrast: float = Field(0.8, ge=0.0, le=1.0)
    #: Probability of CLAHE histogram equalisation (grayscale).
    equalize_prob: float = Field(0.5, ge=0.0, le=1.0)
    #: Probability of an elastic deformation (grayscale).
    elastic_prob: float = Field(0.3, ge=0.0, le=1.0)


def resolve_pipeline(choice: str, in_chans: int, modality: str | None = None) -> Literal["rgb", "grayscale"]:
    """The pipeline ``auto`` stands for: grayscale for 1-channel images or radiology modalities."""
    if choice in ("rgb", "grayscale"):
        return choice  # type: ignore[return-value]
    if in_chans == 1 or (modality or "").upper() in RADIOLOGY_MODALITIES:
        return "grayscale"
    return "rgb"


def build_pipeline(kind: str, size: int, cfg: AugmentConfig) -> A.Compose:
    """The albumentations pipeline for ``uint8`` HWC images of side ``size``."""
    geometric = [
        A.RandomResizedCrop(size=(size, size), scale=(cfg.crop_scale_min, 1.0), p=1.0),
        A.HorizontalFlip(p=0.5),
        A.Rotate(limit=cfg.rotate_limit, border_mode=cv2.BORDER_REFLECT_101, p=0.5),
    ]
    if kind == "rgb":
        s = cfg.color_strength
        photometric = [
            A.ColorJitter(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=min(0.5, 0.2 * s), p=0.8),
            A.ToGray(p=0.2),
            A.GaussianBlur(sigma_limit=(0.1, 2.0), blur_limit=0, p=cfg.blur_prob),
        ]
    elif kind == "grayscale":
        bc = cfg.brightness_contrast
        photometric = [
            A.RandomBrightnessContrast(brightness_limit=bc, contrast_limit=bc, p=0.8),
            A.CLAHE(clip_limit=(1.0, 4.0), tile_grid_size=(4, 4), p=cfg.equalize_prob),
            A.ElasticTransform(
                alpha=size * 0.5, sigma=size * 0.08, border_mode=cv2.BORDER_REFLECT_101, p=cfg.elastic_prob
            ),
        ]
    else:
        raise ValueError(f"augment pipeline must be 'rgb' or 'grayscale', got {kind!r}")
    return A.Compose([*geometric, *photometric])


class TwoViewAugment:
    """Applies one pipeline to ``(C, H, W)`` float images in [0, 1] with an explicit seed per call.

    Args:
        kind: ``rgb`` or ``grayscale``.
        size: output side (the cached image side).
        cfg: pipeline settings.
    """

    def __init__(self, kind: str, size: int, cfg: AugmentConfig) -> None:
        self.kind, self.size = kind, size
        self.pipeline = build_pipeline(kind, size, cfg)

    def __call__(self, image: np.ndarray, seed: int) -> torch.Tensor:
        c = image.shape[0]
        if self.kind == "rgb" and c != 3:
            raise ValueError(f"augment pipeline 'rgb' needs 3-channel images, got {c}; set augment.pipeline: grayscale")
        if self.kind == "grayscale" and c not in (1, 3):
            raise ValueError(f"augment pipeline 'grayscale' needs 1- or 3-channel images, got {c}")
        chw = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        return torch.from_numpy(run_seeded(self.pipeline, chw, seed).astype(np.float32) / 255.0)
