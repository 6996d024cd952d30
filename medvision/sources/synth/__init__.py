"""Synthetic DICOM cohorts: chest X-rays (``cxr``), dermatology photographs (``derm``) and chest CT series
(``ct-series``, see :mod:`medvision.sources.synth.ct`).

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

``plan`` decides who the patients are before any pixel exists, ``pixels`` draws each view and ``dicom``
writes it the way an archive would; this module lays out the folder, the labels CSV and the spec.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from medvision._atomic import atomic_path, atomic_write_text
from medvision.sources.synth.ct import DEFECTS, plan_defects, write_series
from medvision.sources.synth.dicom import seeded_uids, write_cxr, write_derm
from medvision.sources.synth.pixels import draw_view
from medvision.sources.synth.plan import (
    CLASSES,
    HELDOUT_SITE,
    N_RARE,
    SITES,
    UNITS,
    Kind,
    Patient,
    Site,
    plan_patients,
)

__all__ = ["CLASSES", "DEFECTS", "UNITS", "Kind", "synthesize"]

_MULTIFRAME_SHARE = 0.03  # cxr images stored as a 3-frame object


def synthesize(out: Path, kind: Kind, patients: int, seed: int, size: int = 64, slices: int = 40) -> Path:
    """Write a synthetic cohort source folder and return the path of its ``cohort.yaml``.

    Layout: ``images/<site>/s<patient>/i<image>.dcm`` (and ``images/<site>/photos/i<image>.jpg|png`` for
    derm), ``labels.csv``, ``cohort.yaml`` (relative paths; loads with
    :func:`medvision.cohort.spec.load_spec`) and ``phi_planted.json``. Names are opaque counters, never PHI.
    ``ct-series`` also writes ``slices_truth.csv`` (each file's true slice index, finding and series defect).

    Args:
        out: a folder that does not exist yet or is empty.
        kind: ``"cxr"`` (DX/CR grayscale, CSV joined on SOPInstanceUID), ``"derm"`` (VL Photographic
            RGB plus photos, CSV joined on the file stem, with patient/site/sex/age/skin-type columns) or
            ``"ct-series"`` (one CT series per patient, labelled per series: ``unit: series``).
        patients: number of patients; about 1.6 images each (35 % have 2-4 images); one series each for CT.
        seed: everything written is a function of it.
        size: image width and height in pixels.
        slices: ``ct-series`` only: the typical number of slices per series (each series draws +-15 %).

    Returns:
        The path of the written ``cohort.yaml``.

    Raises:
        ValueError: unknown ``kind``, ``patients`` < 1 or ``size`` outside 16-1024.
        FileExistsError: ``out`` exists and is not empty.

    Example (needs real files, a run or the network, so it is shown, not run)::

            spec = synthesize(Path("/tmp/synth-cxr"), "cxr", patients=200, seed=0)
    """
    out = Path(out)
    _check_request(out, kind, patients, size, slices)
    if kind == "ct-series":
        return _synthesize_ct(out, patients, seed, size, slices)
    sites = SITES[kind]
    rows: list[dict[str, object]] = []
    phi = _phi_sets()
    counter = 0
    for p in plan_patients(kind, patients, seed):
        site = sites[p.site]
        rng = np.random.default_rng([seed, 1, p.index])  # views, noise and file formats of this patient
        case_seed = int(rng.integers(2**62))  # the underlying chest/lesion, shared by all views
        for k in range(p.n_images):
            counter += 1
            stem = f"i{counter:06d}"
            if kind == "derm":
                rows.append(_write_derm_view(out, stem, p, site, k, seed, case_seed, rng, size, phi))
            else:
                rows.append(_write_cxr_view(out, stem, p, site, k, seed, case_seed, rng, size, phi))
    labels_present = {str(r.get("label", r.get("diagnosis"))) for r in rows}
    sites_present = {str(r.get("_site", r.get("site"))) for r in rows}
    _write_csv(out / "labels.csv", [{k: v for k, v in r.items() if k != "_site"} for r in rows])
    _write_phi(out, phi)
    spec = out / "cohort.yaml"
    atomic_write_text(spec, _spec_text(kind, patients, seed, size, labels_present, sites_present))
    return spec


def _check_request(out: Path, kind: Kind, patients: int, size: int, slices: int) -> None:
    """Refuse a request before anything is written, so a bad argument never leaves a half-written cohort."""
    if kind not in CLASSES:
        raise ValueError(f"kind must be one of {sorted(CLASSES)}, got {kind!r}")
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    if not 16 <= size <= 1024:
        raise ValueError(f"size must lie in 16..1024 pixels, got {size}")
    if not 8 <= slices <= 1000:
        raise ValueError(f"slices must lie in 8..1000, got {slices}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; remove it or choose a new folder for the synthetic cohort")


def _phi_sets() -> dict[str, set[str]]:
    """The planted-PHI ledger the DICOM writers fill in; ``phi_planted.json`` is written from it."""
    return {
        k: set() for k in ("patient_names", "patient_ids", "birth_dates", "accession_numbers", "referring_physicians")
    }


def _write_phi(out: Path, phi: dict[str, set[str]]) -> None:
    """``phi_planted.json``: every fake identifier written, sorted, so tests can prove no later output carries one."""
    atomic_write_text(
        out / "phi_planted.json", json.dumps({k: sorted(v) for k, v in phi.items()}, indent=1, sort_keys=True) + "\n"
    )


def _write_derm_view(
    out: Path,
    stem: str,
    p: Patient,
    site: Site,
    k: int,
    seed: int,
    case_seed: int,
    rng: np.random.Generator,
    size: int,
    phi: dict[str, set[str]],
) -> dict[str, object]:
    """Write view ``k`` of a derm patient, as a DICOM VL Photographic object or (at the site's rate) a plain
    JPEG/PNG photo, and return its labels-CSV row. Photos carry no header, so the CSV holds the patient's
    facts and is joined on the file stem. Draws from ``rng`` in a fixed order: the same seed, the same bytes."""
    pixels = draw_view("derm", p, site, case_seed, rng, size)
    photo = rng.random() < site.photo
    rel = f"{site.folder}/photos/{stem}.{site.photo_format}" if photo else f"{site.folder}/s{p.index:04d}/{stem}.dcm"
    path = out / "images" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if photo:
        with atomic_path(path) as tmp:  # the temporary keeps the suffix, which names PIL's format
            Image.fromarray(pixels).save(tmp, quality=90)
    else:
        write_derm(path, pixels, p, site, k, seeded_uids("derm", seed, p.index, k), rng, phi)
    phi["patient_ids"].add(p.mrn)
    return {
        "image": stem,
        "patient_id": p.mrn,
        "diagnosis": p.label,
        "site": site.institution,
        "sex": p.sex,
        "age": p.age,
        "fitzpatrick": p.skin if p.skin_known else "",
    }


def _write_cxr_view(
    out: Path,
    stem: str,
    p: Patient,
    site: Site,
    k: int,
    seed: int,
    case_seed: int,
    rng: np.random.Generator,
    size: int,
    phi: dict[str, set[str]],
) -> dict[str, object]:
    """Write view ``k`` of a chest X-ray patient (a few as 3-frame objects) and return its labels-CSV row, joined
    on the SOP Instance UID; ``_site`` is dropped from the CSV and only decides which held-out sites the spec
    may name."""
    frames = 3 if rng.random() < _MULTIFRAME_SHARE else 1
    pixels = np.stack([draw_view("cxr", p, site, case_seed, rng, size) for _ in range(frames)])
    path = out / "images" / site.folder / f"s{p.index:04d}" / f"{stem}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    uids = seeded_uids("cxr", seed, p.index, k)
    write_cxr(path, pixels, p, site, k, uids, rng, phi)
    return {"sop_instance_uid": uids[2], "label": p.label, "_site": site.institution}


def _synthesize_ct(out: Path, patients: int, seed: int, size: int, slices: int) -> Path:
    """One CT series per patient, labelled per series (``labels.csv`` keyed by Series Instance UID)."""
    sites = SITES["ct-series"]
    plan = plan_patients("ct-series", patients, seed)
    defects = plan_defects(plan, seed)
    phi = _phi_sets()
    rows: list[dict[str, object]] = []
    (out / "images").mkdir(parents=True)
    buffer = io.StringIO()  # the slice truth, written whole once every series is
    truth = csv.DictWriter(buffer, ["relpath", "slice_index", "finding", "defect"], lineterminator="\n")
    truth.writeheader()
    for p in plan:
        site = sites[p.site]
        folder = out / "images" / site.folder / f"s{p.index:04d}"
        folder.mkdir(parents=True)
        series_uid, _ = write_series(
            folder, p, site, defects.get(p.index), slices, size, seed, phi, truth, out / "images"
        )
        rows.append({"series_instance_uid": series_uid, "label": p.label, "_site": site.institution})
    atomic_write_text(out / "slices_truth.csv", buffer.getvalue())
    _write_csv(out / "labels.csv", [{k: v for k, v in r.items() if k != "_site"} for r in rows])
    _write_phi(out, phi)
    heldout = sites[HELDOUT_SITE].institution
    spec = {
        "name": "synth-ct-series",
        "images": "images",
        "unit": UNITS["ct-series"],
        "labels": {
            "csv": "labels.csv",
            "join": "series_instance_uid",
            "key_column": "series_instance_uid",
            "label_columns": ["label"],
        },
        "subgroups": {"site_from": "institution", "age_bands": [18, 40, 60, 80]},
        "splits": {
            "seed": seed,
            "heldout_sites": [heldout] if any(r["_site"] == heldout for r in rows) else [],
            "label_fractions": [0.25, 1.0],
        },
        "preprocess": {"size": size, "channels": 1},
    }
    header = (
        f"# Synthetic chest CT series: medvision.sources.synth.synthesize(kind='ct-series', patients={patients}, "
        f"seed={seed}, size={size}, slices={slices}).\n# One series per patient, labelled per series; a few series "
        f"are deliberately defective ({', '.join(DEFECTS)}; see slices_truth.csv).\n# No real patient: every "
        "name, ID and date is fake and listed in phi_planted.json (keep that file out of any build output).\n"
    )
    path = out / "cohort.yaml"
    atomic_write_text(path, header + yaml.safe_dump(spec, sort_keys=False))
    return path


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _spec_text(
    kind: str, patients: int, seed: int, size: int, labels_present: set[str], sites_present: set[str]
) -> str:
    """The cohort spec of a synthetic cohort. It names only held-out sites and conditions that the draw produced
    (a small cohort may lack a rare condition), since a build refuses values its data does not have."""
    classes, site = CLASSES[kind], SITES[kind][HELDOUT_SITE]
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
            "heldout_conditions": [c for c in classes[-N_RARE + 1 :] if c in labels_present],
            "outlier_conditions": [c for c in [classes[-N_RARE]] if c in labels_present],
        },
        "preprocess": {"size": size, "channels": 1 if kind == "cxr" else 3},
    }
    header = (
        f"# Synthetic {kind} cohort: medvision.sources.synth.synthesize(kind={kind!r}, patients={patients}, "
        f"seed={seed}, size={size}).\n# No real patient: every name, ID and date is fake and listed in "
        "phi_planted.json (keep that file out of any build output).\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False)
