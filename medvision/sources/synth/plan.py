"""Who the synthetic patients are: sites, class priors, demographics and the fake PHI each one carries.

Drawn from ``seed`` before any pixel exists, so the cohort's composition (class counts per site, the rare
conditions, the planted hard subgroup) does not depend on image size or on how the images are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

import numpy as np

__all__ = ["CLASSES", "HELDOUT_SITE", "UNITS", "N_RARE", "SITES", "Kind", "Patient", "Site", "plan_patients"]

Kind = Literal["derm", "cxr", "ct-series"]

#: Class names per kind: the common classes first, then the three rare conditions. In the written spec the
#: first rare one is a training outlier condition and the other two are held out (never trained on).
CLASSES: dict[str, tuple[str, ...]] = {
    "cxr": ("normal", "pneumonia", "effusion", "nodule", "pneumothorax", "cardiomegaly"),
    "derm": ("nevus", "melanoma", "bcc", "sek", "vascular", "dermatofibroma", "psoriasis"),
    "ct-series": ("normal", "nodule"),
}
#: What one case of each kind's cohort is (its spec's ``unit``): a CT series is labelled as a whole.
UNITS: dict[str, str] = {"cxr": "image", "derm": "image", "ct-series": "series"}
N_RARE = 3
#: Kinds without rare conditions (a binary series-level task).
_NO_RARE = frozenset({"ct-series"})
_MULTI_SHARE = 0.35  # patients with 2-4 images


@dataclass(frozen=True)
class Site:
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
    slice_mm: float = 0.0  # distance between slices (ct-series)
    tilt: float = 0.0  # gantry tilt in degrees: an oblique stack, ordered along its normal (ct-series)
    feet_first: bool = False  # InstanceNumber counts down the table (ct-series)


SITES: dict[str, tuple[Site, ...]] = {
    "cxr": (
        Site("site-a", "Northfield General Hospital", "Acme Radiography", "AR-400 DR", 0.45,
             (0.55, 0.25, 0.11, 0.03, 0.03, 0.03), 1.0, 1.0, 0.025, "DX", (1.0, -1024.0), 0.1, 0.3),
        Site("site-b", "Lakeside Community Hospital", "Borealis Medical", "BM CR-12", 0.35,
             (0.35, 0.40, 0.16, 0.03, 0.03, 0.03), 0.8, 0.95, 0.045, "CR", (0.5, 0.0), 0.7, 0.1),
        Site("site-c", "Harbor Valley Clinic", "Cygnus Imaging", "CX-9", 0.20,
             (0.45, 0.20, 0.26, 0.03, 0.03, 0.03), 1.25, 1.05, 0.035, "DX", (2.0, -2048.0), 0.2, 0.5),
    ),
    "derm": (
        Site("site-a", "Northfield Dermatology Centre", "Dermaview Imaging", "DV-2", 0.45,
             (0.40, 0.12, 0.22, 0.17, 0.03, 0.03, 0.03), 1.0, 1.0, 0.02, rle=0.15),
        Site("site-b", "Lakeside Skin Clinic", "Phonecam", "PC-11", 0.35,
             (0.25, 0.10, 0.33, 0.23, 0.03, 0.03, 0.03), 0.9, 1.0, 0.04, tint=(1.06, 1.0, 0.9),
             photo=1.0, photo_format="jpg", skin=(0.05, 0.15, 0.25, 0.25, 0.18, 0.12)),
        Site("site-c", "Harbor Valley Clinic", "Cygnus Imaging", "CX-D", 0.20,
             (0.30, 0.22, 0.22, 0.17, 0.03, 0.03, 0.03), 1.15, 0.95, 0.03, rle=0.2, tint=(0.92, 0.98, 1.06),
             photo=0.5, photo_format="png", skin=(0.12, 0.28, 0.28, 0.16, 0.10, 0.06)),
    ),
    # CT: gain scales attenuation (HU) as a different kVp would, noise is in HU, rescale maps stored values to HU.
    "ct-series": (
        Site("site-a", "Northfield General Hospital", "Acme Tomography", "AT-64", 0.45, (0.6, 0.4),
             1.0, 1.0, 12.0, "CT", (1.0, -1024.0), slice_mm=2.5),
        Site("site-b", "Lakeside Community Hospital", "Borealis Medical", "BM-CT128", 0.35, (0.55, 0.45),
             1.0, 1.04, 18.0, "CT", (1.0, 0.0), slice_mm=3.0, tilt=12.0, feet_first=True),
        Site("site-c", "Harbor Valley Clinic", "Cygnus Imaging", "CY-16", 0.20, (0.6, 0.4),
             1.0, 0.96, 25.0, "CT", (0.5, -1024.0), slice_mm=5.0),
    ),
}  # fmt: skip
HELDOUT_SITE = 2  # index into SITES[kind]

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


@dataclass(frozen=True)
class Patient:
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


def plan_patients(kind: str, patients: int, seed: int) -> list[Patient]:
    """Site, class and demographics of every patient; class counts per site follow the site's priors."""
    rng = np.random.default_rng([seed, 0])
    classes, sites = CLASSES[kind], SITES[kind]
    n_rare = 0 if kind in _NO_RARE else N_RARE
    rare = tuple(range(len(classes) - n_rare, len(classes)))
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
        if kind == "ct-series":
            n_images = 1  # one series per patient
        true_sex = "F" if rng.random() < 0.5 else "M"
        sex = "" if rng.random() < (0.1 if kind == "derm" else 0.06) else true_sex
        if kind != "derm":
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
            Patient(
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
