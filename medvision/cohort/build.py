"""Build a cohort: index -> join labels -> decode into the cache -> pseudonymise -> split -> write.

Outputs in ``out``: ``manifest.parquet`` (one row per image instance, public columns only),
``quarantine.csv`` (every file not ingested, with its reason), ``cohort.json`` (the card: counts,
classes, the manifest's content hash, the spec) and ``cache/``. Every input file lands in exactly
one of manifest and quarantine; identifiers are used for pseudonyms and checks, then dropped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from medvision.cohort.cache import PreprocessCache
from medvision.cohort.card import build_card
from medvision.cohort.decode import fill_cache
from medvision.cohort.fingerprints import write_fingerprints
from medvision.cohort.identifiers import CohortBuildError, check_paths, identifier_set, scrub
from medvision.cohort.index import IndexedFile, Rejected, index_files, list_files
from medvision.cohort.labels import join_labels
from medvision.cohort.normalise import UNKNOWN, age_band, category, given, sex, site
from medvision.cohort.pseudonym import Pseudonymizer, resolve_key
from medvision.cohort.spec import CohortSpec, SpecError, load_spec
from medvision.cohort.splits import assign_splits

__all__ = ["CohortBuildError", "build_cohort"]

log = logging.getLogger("medvision.cohort")


def build_cohort(spec: CohortSpec | str | Path, out: str | Path) -> dict:
    """Build (or rebuild) a cohort into ``out`` and return its card (the content of cohort.json).

    Rebuilding is cheap: files whose content and preprocessing are unchanged are not decoded again.
    """
    if not isinstance(spec, CohortSpec):
        spec = load_spec(spec)
    out = Path(out).expanduser().resolve()
    root = Path(spec.images)
    if not root.is_dir():
        raise SpecError(f"images folder {root} does not exist (key 'images' of cohort {spec.name})")
    key, key_source = resolve_key(spec.pseudonym_key_file, out)
    out.mkdir(parents=True, exist_ok=True)
    pseudo = Pseudonymizer(key)
    t0 = time.perf_counter()

    files = list_files(root)
    log.info("indexing %d files under the images folder", len(files))
    indexed: list[IndexedFile] = []
    rejected: list[Rejected] = []
    for item in index_files(root, files, spec.workers):
        (indexed if isinstance(item, IndexedFile) else rejected).append(item)
    t_index = time.perf_counter() - t0

    rows = _instances(indexed, spec.frames)
    labels, label_stats = join_labels(rows, spec.labels)
    rows = pd.concat([rows, labels], axis=1)
    check_paths(rows, spec)

    cache = PreprocessCache(out / "cache", spec.preprocess)
    t1 = time.perf_counter()
    rows, decode_rejects, decoded = fill_cache(rows, root, cache, spec)
    rejected += decode_rejects
    t_decode = time.perf_counter() - t1

    manifest = _public_manifest(rows, spec, pseudo)
    manifest = assign_splits(manifest, spec.splits).drop(columns="given_split")
    classes = _classes(manifest, spec)
    manifest["label_idx"] = manifest["label"].map({c: i for i, c in enumerate(classes)}).fillna(-1).astype("int64")
    manifest = _order_columns(manifest)

    quarantine = _quarantine_frame(rejected, files, spec, identifier_set(rows))
    _check_every_file_accounted(files, rows, quarantine, spec)

    manifest.to_parquet(out / "manifest.parquet", index=False)
    quarantine.to_csv(out / "quarantine.csv", index=False)
    card = build_card(manifest, quarantine, spec, classes, label_stats, key_source)
    card["build"] = {
        "files": len(files),
        "index_seconds": round(t_index, 3),
        "decode_seconds": round(t_decode, 3),
        "decoded_now": decoded,
        "from_cache": int(len(rows) - decoded),
    }
    (out / "cohort.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
    write_fingerprints(out, rows, key)  # lets the report's PHI guard recognise identifiers it never sees
    log.info(
        "cohort %s: %d images, %d quarantined, manifest %s",
        spec.name,
        len(manifest),
        len(quarantine),
        card["manifest_sha256"][:12],
    )
    return card


# --- steps ---------------------------------------------------------------------------------------


def _instances(indexed: list[IndexedFile], policy: str) -> pd.DataFrame:
    """One row per image instance: a file, or one frame of it under the ``all`` policy."""
    records = []
    for f in indexed:
        if policy == "all" and f.frames > 1:
            frames = list(range(f.frames))
        elif policy == "mean" and f.frames > 1:
            frames = [-1]
        else:
            frames = [f.frames // 2]
        for fr in frames:
            records.append({**asdict(f), "frame": fr})
    cols = [*IndexedFile.__dataclass_fields__, "frame"]
    return pd.DataFrame.from_records(records, columns=cols)


def _public_manifest(rows: pd.DataFrame, spec: CohortSpec, pseudo: Pseudonymizer) -> pd.DataFrame:
    """Identifiers become pseudonyms; everything else identifying is dropped here."""

    def patient_of(r: pd.Series) -> str:
        raw = given(r["csv_patient"]) or given(r["patient_id"])
        return pseudo("patient", str(raw)) if raw else pseudo("patient", "file:" + r["relpath"])

    m = pd.DataFrame(index=rows.index)
    m["image_id"] = [pseudo("image", f"{given(r.sop_uid) or r.relpath}#{r.frame}") for r in rows.itertuples()]
    m["patient_id"] = rows.apply(patient_of, axis=1)
    m["study_id"] = [pseudo("study", given(s) or "file:" + p) for s, p in zip(rows["study_uid"], rows["relpath"])]
    m["series_id"] = [pseudo("series", given(s) or "file:" + p) for s, p in zip(rows["series_uid"], rows["relpath"])]
    m["relpath"] = rows["relpath"] if spec.record_paths else None
    m["frame"] = rows["frame"].astype("int64")
    m["kind"] = rows["kind"]
    m["label"] = rows["label"]
    m["given_split"] = rows["csv_split"]
    for c in [c for c in rows.columns if c.startswith("label__")]:
        m[c] = rows[c]
    m["sex"] = [sex(c if c is not None else h) for c, h in zip(rows["csv_sex"], rows["sex"])]
    m["age_band"] = [
        age_band(c if c is not None else h, spec.subgroups.age_bands) for c, h in zip(rows["csv_age"], rows["age"])
    ]
    m["site"] = rows.apply(lambda r: site(r, spec.subgroups.site_from), axis=1)
    for c in [c for c in rows.columns if c.startswith("sub__")]:
        m[c.removeprefix("sub__")] = rows[c].map(category)
    m["modality"] = rows["modality"].fillna(UNKNOWN)
    m["view"] = rows["view"].fillna(UNKNOWN)
    m["photometric"] = rows["photometric"].fillna(UNKNOWN)
    m["transfer_syntax"] = rows["transfer_syntax"]
    m["height"] = rows["rows"].astype("int64")
    m["width"] = rows["columns"].astype("int64")
    m["channels"] = rows["channels"].astype("int64")
    m["content_sha256"] = rows["content_sha256"]
    m["cache_key"] = rows["cache_key"]
    return m.reset_index(drop=True)


def _classes(manifest: pd.DataFrame, spec: CohortSpec) -> list[str]:
    """Inlier classes (sorted) then training outlier conditions (spec order): the head's output order."""
    present = set(manifest["label"].dropna())
    outliers = [c for c in spec.splits.outlier_conditions if c in present]
    inliers = sorted(present - set(outliers) - set(spec.splits.heldout_conditions))
    return inliers + outliers


_FIRST = [
    "image_id",
    "patient_id",
    "study_id",
    "series_id",
    "relpath",
    "frame",
    "split",
    "label_fraction",
    "label",
    "label_idx",
]


def _order_columns(m: pd.DataFrame) -> pd.DataFrame:
    return m[[*_FIRST, *[c for c in m.columns if c not in _FIRST]]]


def _quarantine_frame(
    rejected: list[Rejected], files: list[str], spec: CohortSpec, identifiers: set[str]
) -> pd.DataFrame:
    q = pd.DataFrame([asdict(r) for r in rejected], columns=["relpath", "stage", "reason"])
    q["reason"] = q["reason"].map(lambda r: scrub(str(r), identifiers))
    number = {f: i for i, f in enumerate(files)}
    q.insert(0, "file_number", q["relpath"].map(number).astype("int64"))
    if not spec.record_paths:
        q["relpath"] = "(withheld: record_paths is false; see file_number in the sorted listing)"
    return q.sort_values("file_number").reset_index(drop=True)


def _check_every_file_accounted(files: list[str], rows: pd.DataFrame, q: pd.DataFrame, spec: CohortSpec) -> None:
    in_manifest = set(rows["relpath"])
    quarantined = {files[i] for i in q["file_number"]}
    lost = set(files) - in_manifest - quarantined
    both = in_manifest & quarantined
    if lost or both:  # a bug, not a user error: say so loudly rather than write a cohort that lost files
        raise CohortBuildError(
            f"internal error: {len(lost)} file(s) neither ingested nor quarantined, "
            f"{len(both)} in both; please report this"
        )
