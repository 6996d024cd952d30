"""Synthetic chest CT series: one multi-slice series per patient, the finding on 3-10 % of its slices.

What a series-level model must cope with, planted on purpose:

* the label belongs to the series, and the finding (a lung nodule, a sphere of soft tissue) is visible on only a
  few contiguous slices, away from the middle slice more often than not, so a middle-slice model is near chance
  and an average over all slices dilutes it;
* anatomy changes along the table (lung apices to bases, the heart, the aorta) and between patients (body size,
  fat, a vessel tree of their own), so an average over slices varies for reasons unrelated to the finding;
* real geometry: ImagePositionPatient and ImageOrientationPatient of every slice, SliceThickness,
  SpacingBetweenSlices and PixelSpacing; one site scans with a gantry tilt (an oblique stack ordered along its
  normal) and numbers its slices feet first; file names never follow the slice order;
* real CT pixels: signed or unsigned stored values with Rescale Slope/Intercept to Hounsfield units and a window;
* series that must not be trusted (:data:`DEFECTS`): no geometry and repeated InstanceNumber (cannot be
  ordered), a slice missing, a slice doubled, different matrix sizes (resampled), and no geometry but a clean
  InstanceNumber (ordered by it). ``slices_truth.csv`` lists, per written file, its true slice index, whether
  the finding is on it and the series' defect, for tests; the build never reads it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvision.sources.synth.dicom import seeded_uids, write_ct_slice
from medvision.sources.synth.plan import Patient, Site

__all__ = ["DEFECTS", "CtSeries", "plan_defects", "write_series"]

#: Series defects and what the build must do with each: ``quarantine`` the whole case or keep it (``order``:
#: ordered by InstanceNumber; ``resample``: slices of another size resampled to the recipe).
DEFECTS: dict[str, str] = {
    "unorderable": "quarantine",
    "missing-slice": "quarantine",
    "duplicate-position": "quarantine",
    "instance-number-only": "order",
    "mixed-size": "resample",
}
_FOV_MM = 360.0
_WINDOW = (-300.0, 1600.0)
_VESSELS = 20  # centre, width in HU: lung parenchyma and soft tissue both visible


@dataclass(frozen=True)
class CtSeries:
    """The slices one patient's series is drawn with."""

    slices: int
    finding: tuple[int, ...]  # true slice indices (0 = lowest position along the table) showing the nodule
    defect: str | None


def plan_defects(patients: list[Patient], seed: int) -> dict[int, str]:
    """Which patients get which defect: each defect on about 1 % of the series (at least one when there are
    enough patients), drawn from the seed, never two defects on one series."""
    rng = np.random.default_rng([seed, 3])
    n = len(patients)
    per = max(1, round(0.01 * n)) if n >= 2 * len(DEFECTS) else 0
    chosen = rng.permutation(n)[: per * len(DEFECTS)]
    return {int(patients[int(i)].index): d for i, d in zip(chosen, np.repeat(list(DEFECTS), per))}


def write_series(
    folder: Path,
    p: Patient,
    site: Site,
    defect: str | None,
    slices: int,
    size: int,
    seed: int,
    phi: dict[str, set[str]],
    truth: csv.DictWriter,
    images_root: Path,
) -> tuple[str, CtSeries]:
    """Draw and write one patient's series into ``folder``; return its Series Instance UID and what was drawn."""
    rng = np.random.default_rng([seed, 1, p.index])
    case = np.random.default_rng(int(rng.integers(2**62)))
    n = int(round(slices * rng.uniform(0.85, 1.15)))
    anatomy = _Anatomy.draw(case, size)
    finding = _finding(case, n, anatomy) if p.label == "nodule" else None
    series = CtSeries(n, tuple(finding.slices) if finding else (), defect)
    uids = seeded_uids("ct-series", seed, p.index, 0)
    # File names never follow the slice order: a shuffled counter.
    names = rng.permutation(n)
    stack = _Stack.draw(site, n, rng)
    skip, doubled, odd_size = _defective_slices(defect, n, rng)
    written = 0
    for k in range(n):
        if k == skip:
            continue
        hu = _draw_slice(anatomy, finding, site, k, n, case_seed=int(case.integers(2**62)), rng=rng)
        side = size * 3 // 4 if k in odd_size else size
        copies = 2 if k == doubled else 1
        for copy in range(copies):
            number = (n - k if site.feet_first else k + 1) if defect != "unorderable" else 1
            geometry = stack.at(k) if defect not in ("unorderable", "instance-number-only") else None
            stem = f"i{int(names[written]) if copy == 0 else n:05d}"
            path = folder / f"{stem}.dcm"
            write_ct_slice(
                path,
                _resize(hu, side),
                p,
                site,
                uids,
                k + copy * 10_000,
                number,
                geometry,
                (_FOV_MM / side, stack.spacing),
                _WINDOW,
                rng,
                phi,
            )
            truth.writerow(
                {
                    "relpath": path.relative_to(images_root).as_posix(),
                    "slice_index": k,
                    "finding": int(finding is not None and k in finding.slices),
                    "defect": defect or "",
                }
            )
            written += copy == 0
    return uids[1], series


@dataclass(frozen=True)
class _Stack:
    """Where a series' slices lie in patient space: an axial stack, tilted about the x axis by the site's gantry
    tilt (so the slices are ordered along the normal, not along z), its origin jittered per patient."""

    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray
    origin: np.ndarray
    spacing: float

    @staticmethod
    def draw(site: Site, n: int, rng: np.random.Generator) -> _Stack:
        spacing, tilt = site.slice_mm, np.deg2rad(site.tilt)
        row_dir = np.array([1.0, 0.0, 0.0])
        col_dir = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
        normal = np.cross(row_dir, col_dir)
        origin = np.array([-_FOV_MM / 2, -_FOV_MM / 2, -spacing * n / 2]) + rng.normal(0, 20, 3)
        return _Stack(row_dir, col_dir, normal, origin, spacing)

    def at(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """ImagePositionPatient and ImageOrientationPatient of slice ``k``."""
        return self.origin + k * self.spacing * self.normal, np.r_[self.row_dir, self.col_dir]


def _defective_slices(defect: str | None, n: int, rng: np.random.Generator) -> tuple[int, int, set[int]]:
    """The slices a defect touches: the one left out (``missing-slice``), the one written twice
    (``duplicate-position``) and those stored on a smaller matrix (``mixed-size``); -1 / empty when the series does
    not have that defect. The draws happen only for the defect, so a clean series' random stream is unchanged."""
    skip = int(rng.integers(n // 4, 3 * n // 4)) if defect == "missing-slice" else -1
    doubled = int(rng.integers(n // 4, 3 * n // 4)) if defect == "duplicate-position" else -1
    odd_size = set(rng.choice(n, size=max(1, n // 8), replace=False).tolist()) if defect == "mixed-size" else set()
    return skip, doubled, odd_size


@dataclass(frozen=True)
class _Anatomy:
    """One patient's chest in normalised coordinates (x, y in [-1, 1], t in [0, 1] along the table)."""

    body: tuple[float, float, float]  # half-width, half-height, vertical offset
    fat: float
    lungs: tuple[float, float, float, float]  # t start, t end, x radius, y radius (as shares of the body)
    heart: tuple[float, float]  # t start, size
    vessels: np.ndarray  # (K, 6): angle, radius share, radius, drift amplitude, drift frequency, phase
    contrast: float  # HU of contrast-filled vessels and the heart
    size: int

    @staticmethod
    def draw(c: np.random.Generator, size: int) -> _Anatomy:
        a = c.uniform(0.72, 0.9)
        vessels = np.column_stack(
            [
                c.uniform(0, 2 * np.pi, _VESSELS),
                np.sqrt(c.uniform(0.02, 0.8, _VESSELS)),
                c.uniform(0.01, 0.025, _VESSELS),
                c.uniform(0.0, 0.1, _VESSELS),
                c.uniform(1, 4, _VESSELS),
                c.uniform(0, 2 * np.pi, _VESSELS),
            ]
        )
        return _Anatomy(
            body=(a, a * c.uniform(0.62, 0.75), c.uniform(-0.05, 0.05)),
            fat=c.uniform(0.03, 0.12),
            lungs=(c.uniform(0.0, 0.12), c.uniform(0.88, 1.0), c.uniform(0.3, 0.36), c.uniform(0.55, 0.7)),
            heart=(c.uniform(0.4, 0.55), c.uniform(0.8, 1.2)),
            vessels=vessels,
            contrast=float(c.choice([45.0, 160.0])),
            size=size,
        )

    def lung_shape(self, t: float) -> float:
        """Lung cross-section scale at table position ``t`` (0 at the apices and below the bases)."""
        lo, hi = self.lungs[:2]
        u = np.clip((t - lo) / (hi - lo), 0, 1)
        return float(np.sin(np.pi * u) ** 0.6)

    def lung_centres(self) -> list[tuple[float, float]]:
        a, b, y0 = self.body
        return [(-0.5 * a, y0 - 0.05 * b), (0.5 * a, y0 - 0.05 * b)]


@dataclass(frozen=True)
class _Finding:
    slices: tuple[int, ...]
    centre: tuple[float, float]
    radius: float
    hu: float
    middle: float  # slice index of the sphere's centre (a half index for an even count)


def _finding(c: np.random.Generator, n: int, anatomy: _Anatomy) -> _Finding:
    """A nodule on 3-10 % of the slices (at least one), at a height where the lungs are wide, wholly inside one lung
    (a nodule hidden in soft tissue would be a label without a finding)."""
    count = max(1, int(round(c.uniform(0.03, 0.10) * n)))
    lo, hi = anatomy.lungs[:2]
    first_ok, last_ok = int(np.ceil((lo + 0.2 * (hi - lo)) * n)), int(np.floor((hi - 0.2 * (hi - lo)) * n))
    start = int(c.integers(first_ok, max(first_ok + 1, last_ok - count + 1)))
    slices = tuple(range(start, min(n, start + count)))
    scale = min(anatomy.lung_shape((k + 0.5) / n) for k in slices)
    a, b, _ = anatomy.body
    rx, ry = anatomy.lungs[2] * a * scale, anatomy.lungs[3] * b * scale
    radius = c.uniform(0.35, 0.5) * min(rx, ry)
    room = 0.9 * (1 - radius / min(rx, ry))  # the offset (as a share of the lung's radii) that keeps it inside
    side = int(c.integers(2))
    cx, cy = anatomy.lung_centres()[side]
    angle, offset = c.uniform(0, 2 * np.pi), c.uniform(0.0, 1.0) * room
    centre = (cx + offset * rx * np.cos(angle), cy + offset * ry * np.sin(angle))
    return _Finding(slices, centre, radius, c.uniform(0, 80), (slices[0] + slices[-1]) / 2)


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(x / (2 * width))


def _draw_slice(
    anatomy: _Anatomy,
    finding: _Finding | None,
    site: Site,
    k: int,
    n: int,
    case_seed: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Slice ``k`` of ``n`` in Hounsfield units (``size`` x ``size`` float)."""
    size = anatomy.size
    g = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(g, g, indexing="ij")
    t = (k + 0.5) / n
    a, b, y0 = anatomy.body
    width = 0.5 / size
    ell = 1 - (x / a) ** 2 - ((y - y0) / b) ** 2
    body = _soft(ell, width * 4)
    inner = _soft(1 - (x / (a - anatomy.fat)) ** 2 - ((y - y0) / (b - anatomy.fat)) ** 2, width * 4)
    hu = -1000 + body * 900 + inner * 140  # air, fat (-100), soft tissue (+40)
    # The mediastinum first (heart, aorta), then the lungs around it: the heart never bulges into a lung field.
    lo = anatomy.heart[0]
    if t > lo:
        s = np.sin(np.pi * min(1.0, (t - lo) / (1.05 - lo))) * anatomy.heart[1]
        hx, hy = 0.3 * a * s + 1e-3, 0.4 * b * s + 1e-3
        heart = _soft(1 - ((x - 0.08 * a) / hx) ** 2 - ((y - y0 + 0.1 * b) / hy) ** 2, width * 3)
        hu = hu * (1 - heart) + heart * anatomy.contrast
    aorta = _soft(0.06 - np.hypot(x + 0.08 * a, y - y0 - 0.35 * b), width)
    hu = hu * (1 - aorta) + aorta * anatomy.contrast
    scale = anatomy.lung_shape(t)
    lung = np.zeros_like(x)
    if scale > 0.05:
        rx, ry = anatomy.lungs[2] * a * scale, anatomy.lungs[3] * b * scale
        for cx, cy in anatomy.lung_centres():
            lung = np.maximum(lung, _soft(1 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2, width * 3))
    texture = np.random.default_rng(case_seed).normal(0, 1, x.shape)
    hu = hu * (1 - lung) + lung * (-860 + 25 * texture)
    vessels = np.zeros_like(x)
    for angle, share, radius, amp, freq, phase in anatomy.vessels:
        centres = anatomy.lung_centres()
        cx, cy = centres[int(angle > np.pi)]
        r = share * scale * anatomy.lungs[2] * a + amp * np.sin(freq * 2 * np.pi * t + phase)
        vx, vy = cx + r * np.cos(angle), cy + r * np.sin(angle) * anatomy.lungs[3] / anatomy.lungs[2]
        vessels = np.maximum(vessels, _soft(radius - np.hypot(x - vx, y - vy), width))
    # Small vessels are thinner than a voxel: partial volume leaves them a few hundred HU above the lung.
    hu = hu + lung * vessels * (anatomy.contrast * 0.5 + 300)
    spine = np.hypot(x, y - y0 - 0.72 * b)
    hu = np.where(spine < 0.09, np.where(spine < 0.06, 250.0, 700.0), hu)
    if finding is not None and k in finding.slices:
        half = len(finding.slices) / 2 + 0.5
        r = finding.radius * np.sqrt(max(0.0, 1 - ((k - finding.middle) / half) ** 2))
        nodule = _soft(r - np.hypot(x - finding.centre[0], y - finding.centre[1]), width)
        hu = hu * (1 - nodule) + nodule * finding.hu
    hu = hu * site.gain + rng.normal(0, site.noise, hu.shape)
    return hu


def _resize(hu: np.ndarray, side: int) -> np.ndarray:
    """A slice reconstructed on another matrix (nearest neighbour: the stored values stay integers)."""
    if hu.shape[0] == side:
        return hu
    idx = np.minimum((np.arange(side) + 0.5) * hu.shape[0] / side, hu.shape[0] - 1).astype(int)
    return hu[np.ix_(idx, idx)]
