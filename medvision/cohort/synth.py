"""Synthetic DICOM cohorts: chest X-rays (``cxr``) and dermatology photographs (``derm``).

Every later stage (indexing, pseudonyms, splits, SSL, OOD screening, subgroup audits) needs data with
the awkward properties of a real archive, and tests may not touch real patients or the network. So a
cohort written here plants each property on purpose:

* real DICOM (pydicom): 12-bit grayscale with Rescale Slope/Intercept and a window, MONOCHROME1 stored
  inverted so the *displayed* image is unchanged, RLE Lossless, a few multi-frame objects; RGB VL
  Photographic objects, and for ``derm`` plain JPEG/PNG photos joined through the labels CSV;
* class patterns a small CNN learns in about a minute at 64 px, made imperfect by noise and faint cases;
* patients with 2-4 views of one underlying chest/lesion (positive pairs for MICLe, see the method spec);
* three sites with their own institution, manufacturer, intensity/noise shift and class priors;
* sex, age and (``derm``) skin type with missing values, and a planted performance gap: the pattern is
  fainter and noisier for age 80+ (``cxr``) and skin types 5-6 (``derm``), so a subgroup audit finds it;
* three rare conditions (about 3 % each): one becomes a training outlier class, two are held out;
* fake PHI in the headers (names, MRNs, birth dates, accession numbers, referring physicians), all listed
  in ``phi_planted.json`` so tests can prove that no later output carries them.

Everything is a function of ``seed``: numpy generators only, UIDs derived from the seed, fixed dates,
no wall-clock time, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_ROOT_UID, UID, RLELossless

__all__ = ["CLASSES", "Kind", "synthesize"]

Kind = Literal["derm", "cxr"]

#: Class names per kind: the common classes first, then the three rare conditions. In the written spec the
#: first rare one is a training outlier condition and the other two are held out (never trained on).
CLASSES: dict[str, tuple[str, ...]] = {
    "cxr": ("normal", "pneumonia", "effusion", "nodule", "pneumothorax", "cardiomegaly"),
    "derm": ("nevus", "melanoma", "bcc", "sek", "vascular", "dermatofibroma", "psoriasis"),
}
_N_RARE = 3
_MULTI_SHARE = 0.35  # patients with 2-4 images
_MULTIFRAME_SHARE = 0.03  # cxr images stored as a 3-frame object
_HARD_FAINT, _HARD_NOISE = 0.45, 0.03  # the planted subgroup gap: pattern amplitude and extra noise


@dataclass(frozen=True)
class _Site:
    """One acquisition site. Fields not used by a kind keep their defaults."""

    folder: str
    institution: str
    manufacturer: str
    model: str
    share: float  # of patients
    priors: tuple[float, ...]  # per class, in CLASSES order
    gamma: float  # intensity shift: display ** gamma * gain
    gain: float
    noise: float
    modality: str = "XC"
    rescale: tuple[float, float] = (1.0, 0.0)  # slope, intercept (cxr)
    mono1: float = 0.0  # share of images stored MONOCHROME1 (cxr)
    rle: float = 0.0  # share of DICOM files stored RLE Lossless
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour cast (derm)
    photo: float = 0.0  # share of images written as plain photos (derm)
    photo_format: str = "jpg"
    skin: tuple[float, ...] = (0.15, 0.35, 0.25, 0.13, 0.08, 0.04)  # Fitzpatrick 1-6 (derm)


_SITES: dict[str, tuple[_Site, ...]] = {
    "cxr": (
        _Site("site-a", "Northfield General Hospital", "Acme Radiography", "AR-400 DR", 0.45,
              (0.55, 0.25, 0.11, 0.03, 0.03, 0.03), 1.0, 1.0, 0.025, "DX", (1.0, -1024.0), 0.1, 0.3),
        _Site("site-b", "Lakeside Community Hospital", "Borealis Medical", "BM CR-12", 0.35,
              (0.35, 0.40, 0.16, 0.03, 0.03, 0.03), 0.8, 0.95, 0.045, "CR", (0.5, 0.0), 0.7, 0.1),
        _Site("site-c", "Harbor Valley Clinic", "Cygnus Imaging", "CX-9", 0.20,
              (0.45, 0.20, 0.26, 0.03, 0.03, 0.03), 1.25, 1.05, 0.035, "DX", (2.0, -2048.0), 0.2, 0.5),
    ),
    "derm": (
        _Site("site-a", "Northfield Dermatology Centre", "Dermaview Imaging", "DV-2", 0.45,
              (0.40, 0.12, 0.22, 0.17, 0.03, 0.03, 0.03), 1.0, 1.0, 0.02, rle=0.15),
        _Site("site-b", "Lakeside Skin Clinic", "Phonecam", "PC-11", 0.35,
              (0.25, 0.10, 0.33, 0.23, 0.03, 0.03, 0.03), 0.9, 1.0, 0.04, tint=(1.06, 1.0, 0.9),
              photo=1.0, photo_format="jpg", skin=(0.05, 0.15, 0.25, 0.25, 0.18, 0.12)),
        _Site("site-c", "Harbor Valley Clinic", "Cygnus Imaging", "CX-D", 0.20,
              (0.30, 0.22, 0.22, 0.17, 0.03, 0.03, 0.03), 1.15, 0.95, 0.03, rle=0.2, tint=(0.92, 0.98, 1.06),
              photo=0.5, photo_format="png", skin=(0.12, 0.28, 0.28, 0.16, 0.10, 0.06)),
    ),
}  # fmt: skip
_HELDOUT_SITE = 2  # index into _SITES[kind]

_FAMILY = (
    "DOE",
    "SMITH",
    "JOHNSON",
    "GARCIA",
    "MILLER",
    "DAVIS",
    "RODRIGUEZ",
    "MARTINEZ",
    "HERNANDEZ",
    "LOPEZ",
    "GONZALEZ",
    "WILSON",
    "ANDERSON",
    "THOMAS",
    "TAYLOR",
    "MOORE",
    "JACKSON",
    "PEREZ",
    "THOMPSON",
    "HARRIS",
    "SANCHEZ",
    "CLARK",
    "RAMIREZ",
    "LEWIS",
    "ROBINSON",
    "WALKER",
    "ALLEN",
    "WRIGHT",
    "TORRES",
    "NGUYEN",
    "FLORES",
    "ADAMS",
    "NELSON",
    "CAMPBELL",
    "MITCHELL",
    "ROBERTS",
    "CARTER",
    "PHILLIPS",
    "EVANS",
    "OKAFOR",
    "KOWALSKI",
    "IVANOVA",
    "TANAKA",
    "SCHMIDT",
    "SILVA",
)
_GIVEN = {
    "F": (
        "JANE",
        "MARY",
        "LINDA",
        "SUSAN",
        "KAREN",
        "NANCY",
        "HELEN",
        "SOFIA",
        "AMARA",
        "YUKI",
        "ELENA",
        "PRIYA",
        "GRACE",
        "CHLOE",
        "INGRID",
        "FATIMA",
        "ROSA",
        "HANNA",
    ),
    "M": (
        "JOHN",
        "ROBERT",
        "MICHAEL",
        "DAVID",
        "JAMES",
        "PETER",
        "CARLOS",
        "KENJI",
        "OMAR",
        "LUCAS",
        "ANDREI",
        "RAJESH",
        "SAMUEL",
        "THEO",
        "MATEO",
        "DANIEL",
        "VIKTOR",
        "EMEKA",
    ),
}
_PHYSICIANS = (
    "HUANG^MEI^^DR",
    "OKONKWO^CHIDI^^DR",
    "BERGSTROM^ANNA^^DR",
    "FERREIRA^PAULO^^DR",
    "NAKAMURA^HIRO^^DR",
    "DUBOIS^CLAIRE^^DR",
)
_SKIN_RGB = np.array(
    [
        (0.96, 0.84, 0.76),
        (0.92, 0.76, 0.64),
        (0.84, 0.64, 0.50),
        (0.70, 0.50, 0.36),
        (0.52, 0.36, 0.25),
        (0.36, 0.24, 0.17),
    ]
)
_SOP = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "MF": "1.2.840.10008.5.1.4.1.1.7.3",
    "XC": "1.2.840.10008.5.1.4.1.1.77.1.4",
}


@dataclass(frozen=True)
class _Patient:
    index: int
    site: int
    label: str
    n_images: int
    sex: str  # "F", "M" or "" (missing)
    age: int
    skin: int  # Fitzpatrick 1-6 (derm); the truth, used for rendering
    skin_known: bool
    study: date
    birth: date
    name: str
    mrn: str
    accession: str
    physician: str

    @property
    def hard(self) -> bool:
        """The planted subgroup with the fainter, noisier pattern."""
        return self.skin >= 5 if self.skin else self.age >= 80


def synthesize(out: Path, kind: Kind, patients: int, seed: int, size: int = 64) -> Path:
    """Write a synthetic cohort source folder and return the path of its ``cohort.yaml``.

    Layout: ``images/<site>/s<patient>/i<image>.dcm`` (and ``images/<site>/photos/i<image>.jpg|png`` for
    derm), ``labels.csv``, ``cohort.yaml`` (relative paths; loads with
    :func:`medvision.cohort.spec.load_spec`) and ``phi_planted.json``. Names are opaque counters, never PHI.

    Args:
        out: a folder that does not exist yet or is empty.
        kind: ``"cxr"`` (DX/CR grayscale, CSV joined on SOPInstanceUID) or ``"derm"`` (VL Photographic
            RGB plus photos, CSV joined on the file stem, with patient/site/sex/age/skin-type columns).
        patients: number of patients; about 1.6 images each (35 % have 2-4 images).
        seed: everything written is a function of it.
        size: image width and height in pixels.

    Returns:
        The path of the written ``cohort.yaml``.

    Raises:
        ValueError: unknown ``kind``, ``patients`` < 1 or ``size`` outside 16-1024.
        FileExistsError: ``out`` exists and is not empty.

    Example (needs real files, a run or the network, so it is shown, not run)::

            spec = synthesize(Path("/tmp/synth-cxr"), "cxr", patients=200, seed=0)
    """
    if kind not in CLASSES:
        raise ValueError(f"kind must be one of {sorted(CLASSES)}, got {kind!r}")
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    if not 16 <= size <= 1024:
        raise ValueError(f"size must lie in 16..1024 pixels, got {size}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; remove it or choose a new folder for the synthetic cohort")
    sites = _SITES[kind]
    plan = _plan(kind, patients, seed)
    rows: list[dict[str, object]] = []
    phi: dict[str, set[str]] = {
        k: set() for k in ("patient_names", "patient_ids", "birth_dates", "accession_numbers", "referring_physicians")
    }
    counter = 0
    for p in plan:
        site = sites[p.site]
        rng = np.random.default_rng([seed, 1, p.index])  # views, noise and file formats of this patient
        case_seed = int(rng.integers(2**62))  # the underlying chest/lesion, shared by all views
        for k in range(p.n_images):
            counter += 1
            stem = f"i{counter:06d}"
            if kind == "derm":
                pixels = _view(kind, p, site, case_seed, rng, size)
                photo = rng.random() < site.photo
                rel = (
                    f"{site.folder}/photos/{stem}.{site.photo_format}"
                    if photo
                    else f"{site.folder}/s{p.index:04d}/{stem}.dcm"
                )
                path = out / "images" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                if photo:
                    Image.fromarray(pixels).save(path, quality=90)
                else:
                    _write_derm(path, pixels, p, site, k, _uids(kind, seed, p.index, k), rng, phi)
                rows.append(
                    {
                        "image": stem,
                        "patient_id": p.mrn,
                        "diagnosis": p.label,
                        "site": site.institution,
                        "sex": p.sex,
                        "age": p.age,
                        "fitzpatrick": p.skin if p.skin_known else "",
                    }
                )
                phi["patient_ids"].add(p.mrn)
            else:
                frames = 3 if rng.random() < _MULTIFRAME_SHARE else 1
                pixels = np.stack([_view(kind, p, site, case_seed, rng, size) for _ in range(frames)])
                path = out / "images" / site.folder / f"s{p.index:04d}" / f"{stem}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                uids = _uids(kind, seed, p.index, k)
                _write_cxr(path, pixels, p, site, k, uids, rng, phi)
                rows.append({"sop_instance_uid": uids[2], "label": p.label, "_site": site.institution})
    labels_present = {str(r.get("label", r.get("diagnosis"))) for r in rows}
    sites_present = {str(r.get("_site", r.get("site"))) for r in rows}
    _write_csv(out / "labels.csv", [{k: v for k, v in r.items() if k != "_site"} for r in rows])
    (out / "phi_planted.json").write_text(
        json.dumps({k: sorted(v) for k, v in phi.items()}, indent=1, sort_keys=True) + "\n"
    )
    spec = out / "cohort.yaml"
    spec.write_text(_spec_text(kind, patients, seed, size, labels_present, sites_present))
    return spec


# --- who the patients are -----------------------------------------------------------------------------------


def _allocate(n: int, probs: tuple[float, ...], guarantee: tuple[int, ...] = ()) -> np.ndarray:
    """Exact counts summing to ``n`` (largest remainder); each index in ``guarantee`` gets at least one."""
    raw = n * np.asarray(probs) / sum(probs)
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    if n >= 2 * len(probs):
        for i in guarantee:
            if counts[i] == 0:
                counts[np.argmax(counts)] -= 1
                counts[i] = 1
    return counts


def _plan(kind: str, patients: int, seed: int) -> list[_Patient]:
    """Site, class and demographics of every patient; class counts per site follow the site's priors."""
    rng = np.random.default_rng([seed, 0])
    classes, sites = CLASSES[kind], _SITES[kind]
    rare = tuple(range(len(classes) - _N_RARE, len(classes)))
    pairs = []
    for s, n_site in enumerate(_allocate(patients, tuple(site.share for site in sites))):
        for c, n in enumerate(_allocate(int(n_site), sites[s].priors, rare)):
            pairs += [(s, classes[c])] * int(n)
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    mrns = rng.choice(9_000_000, size=patients, replace=False) + 1_000_000
    accessions = rng.choice(9_000_000, size=patients, replace=False) + 1_000_000
    plan = []
    for i, (s, label) in enumerate(pairs):
        n_images = int(rng.choice([2, 3, 4], p=[0.5, 0.3, 0.2])) if rng.random() < _MULTI_SHARE else 1
        true_sex = "F" if rng.random() < 0.5 else "M"
        sex = "" if rng.random() < (0.1 if kind == "derm" else 0.06) else true_sex
        if kind == "cxr":
            age = int(rng.integers(2, 18)) if rng.random() < 0.05 else int(rng.integers(18, 96))
            skin, skin_known = 0, False
        else:
            age = int(rng.integers(18, 91))
            skin = int(rng.choice(6, p=sites[s].skin)) + 1
            skin_known = bool(rng.random() >= 0.12)
        study = date(int(rng.integers(2016, 2023)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
        bm, bd = int(rng.integers(1, 13)), int(rng.integers(1, 29))
        birth = date(study.year - age - ((bm, bd) > (study.month, study.day)), bm, bd)
        middle = chr(ord("A") + int(rng.integers(26)))
        given = _GIVEN[true_sex][int(rng.integers(len(_GIVEN[true_sex])))]
        name = f"{_FAMILY[int(rng.integers(len(_FAMILY)))]}^{given}^{middle}"
        plan.append(
            _Patient(
                i,
                s,
                label,
                n_images,
                sex,
                age,
                skin,
                skin_known,
                study,
                birth,
                name,
                f"MRN{mrns[i]}",
                f"ACC{accessions[i]}",
                _PHYSICIANS[int(rng.integers(len(_PHYSICIANS)))],
            )
        )
    return plan


# --- drawing ------------------------------------------------------------------------------------------------


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """A smooth step from 0 (x << 0) to 1 (x >> 0); tanh form, so no overflow warnings."""
    return 0.5 + 0.5 * np.tanh(x / (2 * width))


def _field(c: np.random.Generator, u: np.ndarray, v: np.ndarray, waves: int, freq: float) -> np.ndarray:
    """A smooth random texture of about unit variance: plane waves around ``freq`` radians per unit.

    It is evaluated in the case's own coordinates, so every view of one case shows the same texture.
    """
    ang, ph = c.uniform(0, 2 * np.pi, waves), c.uniform(0, 2 * np.pi, waves)
    f = freq * c.uniform(0.6, 1.4, waves)
    phase = u[..., None] * (f * np.cos(ang)) + v[..., None] * (f * np.sin(ang)) + ph
    return np.cos(phase).sum(-1) * np.sqrt(2.0 / waves)


def _view(kind: str, p: _Patient, site: _Site, case_seed: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One acquisition of the patient's case: a random pose and exposure, then the site's shift and noise.

    Returns float display intensities in [0, 1] (cxr, H x W) or uint8 RGB (derm, H x W x 3).
    """
    t = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(t, t, indexing="ij")
    if kind == "cxr":
        rot, scale, shift = rng.normal(0, 0.05), rng.uniform(0.92, 1.08), rng.uniform(-0.05, 0.05, 2)
    else:
        rot, scale, shift = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.25), rng.uniform(-0.12, 0.12, 2)
    cr, sr = np.cos(rot), np.sin(rot)
    u = (cr * x + sr * y) / scale - shift[0]
    v = (-sr * x + cr * y) / scale - shift[1]
    c = np.random.default_rng(case_seed)
    strength, faint = c.uniform(0.35, 1.0), (_HARD_FAINT if p.hard else 1.0)
    noise = site.noise + (_HARD_NOISE if p.hard else 0.0)
    if kind == "cxr":
        img = _chest(p.label, c, u, v, strength * faint)
        img = np.clip(img, 0, 1) ** site.gamma * site.gain * rng.uniform(0.93, 1.07)
        return np.clip(img + rng.normal(0, noise, img.shape), 0, 1)
    skin = _SKIN_RGB[p.skin - 1] * c.uniform(0.95, 1.05, 3)
    img = _lesion(p.label, c, u, v, skin, (0.55 + 0.45 * strength) * faint)
    light = (1 + 0.1 * (rng.normal() * x + rng.normal() * y)) * rng.uniform(0.9, 1.1)
    img = img * light[..., None] * np.asarray(site.tint) * rng.uniform(0.95, 1.05, 3)
    for _ in range(int(rng.choice(3, p=[0.6, 0.25, 0.15]))):  # hairs: dark lines in image coordinates
        a, x0, y0 = rng.uniform(0, np.pi), rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8)
        dist = np.abs((x - x0) * np.sin(a) - (y - y0) * np.cos(a))
        img = img * (1 - 0.6 * np.exp(-((dist / 0.012) ** 2)))[..., None]
    img = np.clip(img, 0, 1) ** site.gamma * site.gain + rng.normal(0, noise, img.shape)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _chest(label: str, c: np.random.Generator, u: np.ndarray, v: np.ndarray, amp: float) -> np.ndarray:
    """A frontal chest radiograph (bright = dense) in case coordinates, with the class's finding."""
    body = _soft(1 - (u / 0.92) ** 2 - ((v - 0.1) / 1.15) ** 2, 0.08)
    img = 0.06 + 0.5 * body + 0.12 * _soft(0.08 - np.abs(u), 0.02) * body
    texture = _field(c, u, v, 10, 9.0)
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (5.5 * v + 0.8 * u**2))
    centres = (-c.uniform(0.34, 0.40), c.uniform(0.34, 0.40))
    lungs = [_soft(1 - ((u - cx) / 0.27) ** 2 - ((v + 0.02) / c.uniform(0.5, 0.58)) ** 2, 0.08) for cx in centres]
    lung = np.maximum(*lungs)
    img = img - lung * (0.32 - 0.03 * texture - 0.05 * ribs)
    heart_rx = c.uniform(0.36, 0.46) if label == "cardiomegaly" else c.uniform(0.2, 0.28)
    img = img + 0.2 * _soft(1 - ((u - 0.08) / heart_rx) ** 2 - ((v - 0.26) / 0.22) ** 2, 0.06)
    side = int(c.integers(2))
    cx, sgn = centres[side], (-1, 1)[side]
    if label == "pneumonia":  # patchy consolidations
        patchy = 0.75 + 0.25 * _field(c, u, v, 8, 20.0)
        for _ in range(int(c.integers(1, 4))):
            s = int(c.integers(2))
            bx, by, sig = centres[s] + c.uniform(-0.12, 0.12), c.uniform(-0.3, 0.35), c.uniform(0.08, 0.15)
            blob = np.exp(-((u - bx) ** 2 + (v - by) ** 2) / (2 * sig**2))
            img = img + amp * 0.4 * blob * patchy * lungs[s]
    elif label == "effusion":  # fluid at the lung base, meniscus rising laterally
        for s in (side, 1 - side) if c.random() < 0.4 else (side,):
            level, lx, ls = c.uniform(0.15, 0.4), centres[s], (-1, 1)[s]
            fluid = _soft(v - 0.55 + level + 0.3 * ls * (u - lx), 0.03)
            img = img + amp * 0.4 * fluid * lungs[s]
    elif label == "nodule":  # one small sharp round opacity
        nx, ny, r = cx + c.uniform(-0.1, 0.1), c.uniform(-0.3, 0.2), c.uniform(0.05, 0.08)
        img = img + amp * 0.45 * _soft(r - np.hypot(u - nx, v - ny), 0.012)
    elif label == "pneumothorax":  # lateral lung without markings, edged by the pleural line
        edge = cx + sgn * c.uniform(0.0, 0.12)
        region = lungs[side] * _soft(sgn * (u - edge), 0.015)
        img = img - amp * region * (0.14 - 0.03 * texture - 0.05 * ribs)
        img = img + amp * 0.25 * lungs[side] * np.exp(-(((u - edge) / 0.015) ** 2))
    return img


def _lesion(
    label: str, c: np.random.Generator, u: np.ndarray, v: np.ndarray, skin: np.ndarray, alpha: float
) -> np.ndarray:
    """A skin lesion (H x W x 3, linear RGB) in case coordinates, blended into skin with opacity ``alpha``."""
    base = skin * (1 + 0.05 * _field(c, u, v, 8, 2.0))[..., None]
    theta = np.arctan2(v, u)

    def shape(radius: float, irregular: float, aspect: float = 1.0, edge: float = 0.04) -> np.ndarray:
        rot = c.uniform(0, np.pi)
        uu, vv = u * np.cos(rot) + v * np.sin(rot), (v * np.cos(rot) - u * np.sin(rot)) * aspect
        border = (
            1
            + irregular * sum(c.uniform(0.3, 1) * np.cos(k * theta + c.uniform(0, 2 * np.pi)) for k in range(2, 6)) / 2
        )
        return _soft(1 - np.hypot(uu, vv) / (radius * border), edge)

    col = np.empty(u.shape + (3,))
    if label == "nevus":
        r = c.uniform(0.3, 0.48)
        mask = shape(r, c.uniform(0, 0.1))
        col[:] = np.array([0.42, 0.26, 0.16]) * c.uniform(0.85, 1.15)
        col *= (1 - 0.15 * np.clip(1 - np.hypot(u, v) / r, 0, 1))[..., None]
    elif label == "melanoma":
        mask = shape(c.uniform(0.4, 0.62), c.uniform(0.12, 0.3), edge=0.025)
        f = _field(c, u + c.uniform(-0.1, 0.1), v, 10, 5.0)
        col[:] = (0.28, 0.17, 0.11)
        col[f > 0.5] = (0.08, 0.06, 0.06)
        col[f < -0.6] = (0.38, 0.42, 0.52)
    elif label == "bcc":
        r = c.uniform(0.3, 0.5)
        mask = shape(r, c.uniform(0.02, 0.12))
        col[:] = (0.86, 0.58, 0.58)
        col += (0.12 * np.exp(-(((np.hypot(u, v) - 0.9 * r) / 0.03) ** 2)))[..., None]  # pearly rim
        for _ in range(int(c.integers(2, 5))):  # telangiectasia
            angle, x0, y0 = c.uniform(0, np.pi), c.uniform(-r, r) / 2, c.uniform(-r, r) / 2
            line = np.exp(-((((u - x0) * np.sin(angle) - (v - y0) * np.cos(angle)) / 0.014) ** 2))[..., None]
            col = col * (1 - line) + np.array([0.72, 0.12, 0.18]) * line
    elif label == "sek":
        mask = shape(c.uniform(0.34, 0.52), c.uniform(0.02, 0.1), aspect=c.uniform(1.3, 1.7), edge=0.015)
        col[:] = np.array([0.46, 0.33, 0.2]) * c.uniform(0.85, 1.1)
        col *= (1 + 0.35 * _field(c, u, v, 12, 22.0))[..., None]  # cerebriform surface
        for _ in range(int(c.integers(4, 9))):  # milia-like cysts
            d = _soft(0.04 - np.hypot(u - c.uniform(-0.3, 0.3), v - c.uniform(-0.2, 0.2)), 0.008)[..., None]
            col = col * (1 - d) + np.array([0.95, 0.92, 0.85]) * d
    elif label == "vascular":  # lobules of red-purple
        mask = np.zeros(u.shape)
        for _ in range(int(c.integers(3, 7))):
            cx, cy, r = c.uniform(-0.25, 0.25), c.uniform(-0.25, 0.25), c.uniform(0.1, 0.18)
            mask = np.maximum(mask, _soft(1 - np.hypot(u - cx, v - cy) / r, 0.04))
        col[:] = (0.62, 0.08, 0.22) if c.random() < 0.5 else (0.42, 0.08, 0.35)
    elif label == "dermatofibroma":  # brown ring around a white scar-like centre
        r = c.uniform(0.25, 0.38)
        mask = shape(r, c.uniform(0, 0.08))
        centre = _soft(0.5 * r - np.hypot(u, v), 0.02)[..., None]
        col[:] = (0.48, 0.32, 0.22)
        col = col * (1 - centre) + np.array([0.92, 0.86, 0.82]) * centre
    else:  # psoriasis: a large salmon plaque with silvery scale
        mask = shape(c.uniform(0.8, 1.1), c.uniform(0.1, 0.25))
        col[:] = (0.86, 0.44, 0.40)
        col[_field(c, u, v, 14, 18.0) > 0.4] = (0.9, 0.9, 0.88)
    a = (alpha * mask)[..., None]
    return base * (1 - a) + col * a


# --- writing ------------------------------------------------------------------------------------------------


def _uids(kind: str, seed: int, patient: int, image: int) -> tuple[str, str, str]:
    """Study, series and SOP instance UIDs under pydicom's root, derived from the seed only.

    ``generate_uid(prefix=None)`` ignores its entropy sources (it returns a random UUID), and a 2.25 UID
    is one long digit run that could spell a planted birth date; short components avoid both.
    """
    h = hashlib.sha256(f"medvision-synth:{kind}:{seed}".encode()).digest()
    a, b = (int.from_bytes(h[i : i + 4], "big") % 9_000_000 + 1_000_000 for i in (0, 4))
    root = f"{PYDICOM_ROOT_UID}{a}.{b}"
    return f"{root}.1.{patient}", f"{root}.2.{patient}.{image}", f"{root}.3.{patient}.{image}"


def _dataset(
    p: _Patient,
    site: _Site,
    sop_class: str,
    modality: str,
    k: int,
    uids: tuple[str, str, str],
    phi: dict[str, set[str]],
) -> Dataset:
    """Patient, study, series and equipment modules, with the fake PHI a real archive would carry."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(uids[2])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uids[2]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids[0], uids[1]
    ds.PatientName, ds.PatientID = p.name, p.mrn
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = p.birth.strftime("%Y%m%d"), p.sex, f"{p.age:03d}Y"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = p.study.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{9 + k:02d}1500"
    ds.AccessionNumber, ds.ReferringPhysicianName = p.accession, p.physician
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", k + 1, 1
    ds.Modality = modality
    ds.InstitutionName, ds.Manufacturer, ds.ManufacturerModelName = site.institution, site.manufacturer, site.model
    for key, value in (
        ("patient_names", p.name),
        ("patient_ids", p.mrn),
        ("accession_numbers", p.accession),
        ("birth_dates", ds.PatientBirthDate),
        ("referring_physicians", p.physician),
    ):
        phi[key].add(value)
    return ds


def _save(ds: Dataset, path: Path, arr: np.ndarray, photometric: str, bits: int, rle: bool) -> None:
    # generate_instance_uid=False everywhere: pydicom's default would draw a random SOPInstanceUID.
    ds.set_pixel_data(arr, photometric, bits, generate_instance_uid=False)
    if rle:
        ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def _write_cxr(
    path: Path,
    frames: np.ndarray,
    p: _Patient,
    site: _Site,
    k: int,
    uids: tuple[str, str, str],
    rng: np.random.Generator,
    phi: dict[str, set[str]],
) -> None:
    """12-bit stored values; rescale + window map them back to the display image, MONOCHROME1 inverted."""
    multi = frames.shape[0] > 1
    ds = _dataset(p, site, _SOP["MF" if multi else site.modality], site.modality, k, uids, phi)
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", ("PA", "AP")[int(rng.random() < 0.3)]
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["DERIVED" if multi else "ORIGINAL", "PRIMARY"]
    if site.modality == "DX" and not multi:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = ["0.139", "0.139"]
    mono1 = rng.random() < site.mono1
    low, span = int(rng.integers(80, 300)), int(rng.integers(3000, 3700))
    stored = np.round(low + (1 - frames if mono1 else frames) * span).astype(np.uint16)
    slope, intercept = site.rescale
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    lo, hi = slope * low + intercept, slope * (low + span) + intercept
    ds.WindowCenter, ds.WindowWidth = f"{(lo + hi) / 2:.1f}", f"{hi - lo:.1f}"
    ds.VOILUTFunction = "LINEAR"
    if multi:
        ds.ConversionType = "WSD"
    _save(
        ds, path, stored if multi else stored[0], "MONOCHROME1" if mono1 else "MONOCHROME2", 12, rng.random() < site.rle
    )


def _write_derm(
    path: Path,
    rgb: np.ndarray,
    p: _Patient,
    site: _Site,
    k: int,
    uids: tuple[str, str, str],
    rng: np.random.Generator,
    phi: dict[str, set[str]],
) -> None:
    ds = _dataset(p, site, _SOP["XC"], "XC", k, uids, phi)
    ds.BodyPartExamined = ("ARM", "BACK", "CHEST", "LEG", "FACE")[int(rng.integers(5))]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ContentQualification = "PRODUCT"
    _save(ds, path, rgb, "RGB", 8, rng.random() < site.rle)


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _spec_text(
    kind: str, patients: int, seed: int, size: int, labels_present: set[str], sites_present: set[str]
) -> str:
    """The cohort spec of a synthetic cohort. It names only held-out sites and conditions that the draw produced
    (a small cohort may lack a rare condition), since a build refuses values its data does not have."""
    classes, site = CLASSES[kind], _SITES[kind][_HELDOUT_SITE]
    labels: dict[str, object]
    if kind == "cxr":
        labels = {
            "csv": "labels.csv",
            "join": "sop_instance_uid",
            "key_column": "sop_instance_uid",
            "label_columns": ["label"],
        }
    else:
        labels = {
            "csv": "labels.csv",
            "join": "stem",
            "key_column": "image",
            "label_columns": ["diagnosis"],
            "patient_column": "patient_id",
            "subgroup_columns": {"skin_type": "fitzpatrick"},
            "site_column": "site",
            "sex_column": "sex",
            "age_column": "age",
        }
    spec = {
        "name": f"synth-{kind}",
        "images": "images",
        "labels": labels,
        "subgroups": {"site_from": "institution", "age_bands": [18, 40, 60, 80]},
        "splits": {
            "seed": seed,
            "heldout_sites": [s for s in [site.institution] if s in sites_present],
            "heldout_conditions": [c for c in classes[-_N_RARE + 1 :] if c in labels_present],
            "outlier_conditions": [c for c in [classes[-_N_RARE]] if c in labels_present],
        },
        "preprocess": {"size": size, "channels": 1 if kind == "cxr" else 3},
    }
    header = (
        f"# Synthetic {kind} cohort: medvision.cohort.synth.synthesize(kind={kind!r}, patients={patients}, "
        f"seed={seed}, size={size}).\n# No real patient: every name, ID and date is fake and listed in "
        "phi_planted.json (keep that file out of any build output).\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False)
