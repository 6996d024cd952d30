"""Build a cohort: index -> join labels -> decode into the cache -> pseudonymise -> split -> write.

Outputs in ``out``: ``manifest.parquet`` (one row per image instance, public columns only),
``quarantine.csv`` (every file not ingested, with its reason), ``cohort.json`` (the card: counts,
classes, the manifest's content hash, the spec) and ``cache/``. Every input file lands in exactly
one of manifest and quarantine; identifiers are used for pseudonyms and checks, then dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from medvision.cohort.index import IndexedFile, Rejected, index_files, list_files, worker_count
from medvision.cohort.pseudonym import Pseudonymizer, resolve_key
from medvision.cohort.spec import CohortSpec, LabelsSpec, SpecError, load_spec
from medvision.cohort.splits import assign_splits
from medvision.data.cache import PreprocessCache, entry_key
from medvision.data.preprocess import preprocess
from medvision.data.reader import ImageReadError, read_image

__all__ = ["MANIFEST_VERSION", "CohortBuildError", "build_cohort", "manifest_sha256"]

log = logging.getLogger("medvision.cohort")

MANIFEST_VERSION = 1
UNKNOWN = "unknown"
SHARD_SIZE = 512


class CohortBuildError(RuntimeError):
    """The cohort cannot be built as specified; the message says what to change."""


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
    labels, label_stats = _join_labels(rows, spec.labels)
    rows = pd.concat([rows, labels], axis=1)
    _check_paths(rows, spec)

    cache = PreprocessCache(out / "cache", spec.preprocess)
    t1 = time.perf_counter()
    rows, decode_rejects, decoded = _fill_cache(rows, root, cache, spec)
    rejected += decode_rejects
    t_decode = time.perf_counter() - t1

    manifest = _public_manifest(rows, spec, pseudo)
    manifest = assign_splits(manifest, spec.splits).drop(columns="given_split")
    classes = _classes(manifest, spec)
    manifest["label_idx"] = manifest["label"].map({c: i for i, c in enumerate(classes)}).fillna(-1).astype("int64")
    manifest = _order_columns(manifest)

    quarantine = _quarantine_frame(rejected, files, spec, _identifier_set(rows))
    _check_every_file_accounted(files, rows, quarantine, spec)

    manifest.to_parquet(out / "manifest.parquet", index=False)
    quarantine.to_csv(out / "quarantine.csv", index=False)
    card = _card(manifest, quarantine, spec, classes, label_stats, key_source)
    card["build"] = {"files": len(files), "index_seconds": round(t_index, 3), "decode_seconds": round(t_decode, 3),
                     "decoded_now": decoded, "from_cache": int(len(rows) - decoded)}
    (out / "cohort.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
    log.info("cohort %s: %d images, %d quarantined, manifest %s", spec.name, len(manifest),
             len(quarantine), card["manifest_sha256"][:12])
    return card


def manifest_sha256(manifest: pd.DataFrame) -> str:
    """Content hash of a manifest, independent of parquet library versions."""
    ordered = manifest.sort_values("image_id").reset_index(drop=True)
    return hashlib.sha256(ordered.to_csv(index=False).encode()).hexdigest()


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


def _join_labels(rows: pd.DataFrame, spec: LabelsSpec | None) -> tuple[pd.DataFrame, dict]:
    cols = ["label", "csv_patient", "csv_sex", "csv_age", "csv_site", "csv_split"]
    if spec is None:
        return pd.DataFrame({c: pd.Series([None] * len(rows), dtype=object) for c in cols}, index=rows.index), {}
    try:
        table = pd.read_csv(spec.csv, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise SpecError(f"labels CSV {spec.csv} does not exist (key labels.csv)") from None
    needed = [spec.key_column, *spec.label_columns, *spec.subgroup_columns.values()]
    needed += [c for c in (spec.patient_column, spec.site_column, spec.sex_column, spec.age_column,
                           spec.split_column) if c]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise SpecError(f"labels CSV {spec.csv} lacks column(s) {missing}; it has {list(table.columns)}")
    table = table.replace({"": None, "NaN": None, "nan": None, "NA": None})
    dup = table[spec.key_column].duplicated()
    if dup.any():
        raise SpecError(f"labels CSV {spec.csv}: {int(dup.sum())} duplicate value(s) in key column "
                        f"'{spec.key_column}' (first at CSV line {int(np.argmax(dup.to_numpy())) + 2})")
    table = table.set_index(spec.key_column)
    keys = {
        "sop_instance_uid": rows["sop_uid"],
        "relpath": rows["relpath"],
        "filename": rows["relpath"].map(lambda p: Path(p).name),
        "stem": rows["relpath"].map(lambda p: Path(p).stem),
    }[spec.join]
    matched = table.reindex(keys.to_numpy())
    matched.index = rows.index
    if len(spec.label_columns) == 1:
        label = matched[spec.label_columns[0]]
    else:  # multi-label: the positive label names joined, for stratification and the card
        flags = matched[spec.label_columns].apply(pd.to_numeric, errors="coerce")
        label = flags.apply(lambda r: None if r.isna().all() else "|".join(
            c for c in spec.label_columns if r[c] == 1) or "none", axis=1)
    out = pd.DataFrame({
        "label": label.astype(object).where(label.notna(), None),
        "csv_patient": matched[spec.patient_column] if spec.patient_column else None,
        "csv_sex": matched[spec.sex_column] if spec.sex_column else None,
        "csv_age": matched[spec.age_column] if spec.age_column else None,
        "csv_site": matched[spec.site_column] if spec.site_column else None,
        "csv_split": matched[spec.split_column] if spec.split_column else None,
    }, index=rows.index)
    if spec.split_column:
        bad = set(out["csv_split"].dropna()) - {"train", "val", "test"}
        if bad:
            raise SpecError(f"labels CSV {spec.csv}: column '{spec.split_column}' (labels.split_column) may only "
                            f"hold train/val/test, found {sorted(bad)[:5]}")
    for name, col in spec.subgroup_columns.items():
        out[f"sub__{name}"] = matched[col]
    if len(spec.label_columns) > 1:
        for c in spec.label_columns:
            out[f"label__{c}"] = pd.to_numeric(matched[c], errors="coerce")
    used = set(keys.dropna())
    stats = {"csv_rows": len(table), "csv_rows_without_image": int(len(set(table.index) - used)),
             "images_without_label": int(out["label"].isna().sum())}
    if stats["csv_rows_without_image"]:
        log.warning("%d labels CSV rows match no image (join on %s)", stats["csv_rows_without_image"], spec.join)
    return out, stats


def _identifier_tokens(row: pd.Series) -> list[str]:
    toks = [row.get("patient_id"), row.get("csv_patient"), row.get("accession_number")]
    name = row.get("patient_name") or ""
    toks += [part for part in str(name).replace(" ", "^").split("^")]
    return [str(t).lower() for t in toks if t is not None and len(str(t)) >= 3]


def _check_paths(rows: pd.DataFrame, spec: CohortSpec) -> None:
    """Refuse to write relative paths that spell out a patient's identifiers."""
    if not spec.record_paths or rows.empty:
        return
    leaks = _count_leaks(rows)
    if leaks:
        raise CohortBuildError(
            f"{leaks} image path(s) contain a patient identifier (PatientID, PatientName or the labels CSV's "
            "patient column) in a folder or file name. The manifest records relative paths, so it would carry "
            "them. Set `record_paths: false` in the cohort spec (`--no-record-paths` on the command line; "
            "paths are then kept out of every output), "
            "or rename the folders."
        )


def _count_leaks(rows: pd.DataFrame) -> int:
    n = 0
    for _, row in rows.iterrows():
        path = row["relpath"].lower()
        if any(t in path for t in _identifier_tokens(row)):
            n += 1
    return n


def _decode_init(existing: set[str]) -> None:
    global _EXISTING
    _EXISTING = existing


_EXISTING: set[str] = set()


def _decode_file(root: str, relpath: str, frames: list[int], params) -> list[tuple[int, str, str, object]]:
    """Hash a file, then decode the frames whose cache entry is missing. Never raises."""
    path = Path(root) / relpath
    try:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        return [(fr, "", "", f"file could not be read: {e.strerror}") for fr in frames]
    results = []
    for fr in frames:
        key = entry_key(sha, fr, params)
        if key in _EXISTING:
            results.append((fr, sha, key, None))
            continue
        try:
            img = read_image(path, frame="mean" if fr == -1 else fr)
            results.append((fr, sha, key, preprocess(img.pixels, params)))
        except ImageReadError as e:
            results.append((fr, sha, key, e.reason + (f" ({e.hint})" if e.hint else "")))
        except Exception as e:  # noqa: BLE001 - a decoder bug must quarantine one file, not stop the build
            # The exception's text may quote header values, so only its type is kept.
            results.append((fr, sha, key, f"unexpected decoding error ({type(e).__name__}); please report it"))
    return results


def _fill_cache(rows: pd.DataFrame, root: Path, cache: PreprocessCache, spec: CohortSpec):
    by_file: dict[str, list[int]] = {}
    for relpath, frame in zip(rows["relpath"], rows["frame"]):
        by_file.setdefault(relpath, []).append(int(frame))
    jobs = list(by_file.items())
    sha_of: dict[tuple[str, int], tuple[str, str]] = {}
    failures: dict[str, str] = {}
    pending: list[tuple[str, np.ndarray]] = []
    decoded = 0
    for relpath, results in zip([j[0] for j in jobs], _run_decode(jobs, root, cache, spec)):
        for fr, sha, key, payload in results:
            if isinstance(payload, str):
                failures.setdefault(relpath, payload)
                continue
            sha_of[(relpath, fr)] = (sha, key)
            if payload is not None:
                pending.append((key, payload))
                decoded += 1
            if len(pending) >= SHARD_SIZE:
                cache.append(pending, save_index=False)
                pending = []
    cache.append(pending)  # and write the cache index once, naming every shard of this build
    rejects = [Rejected(r, "decode", reason) for r, reason in sorted(failures.items())]
    keep = ~rows["relpath"].isin(failures)
    rows = rows[keep].copy()
    pairs = [sha_of[(r, int(f))] for r, f in zip(rows["relpath"], rows["frame"])]
    rows["content_sha256"] = [p[0] for p in pairs]
    rows["cache_key"] = [p[1] for p in pairs]
    return rows, rejects, decoded


def _run_decode(jobs, root: Path, cache: PreprocessCache, spec: CohortSpec) -> Iterator[list]:
    n = worker_count(spec.workers)
    existing = cache.keys()
    if n == 1 or len(jobs) < 32:
        _decode_init(existing)
        for relpath, frames in jobs:
            yield _decode_file(str(root), relpath, frames, spec.preprocess)
        return
    with ProcessPoolExecutor(n, initializer=_decode_init, initargs=(existing,)) as pool:
        yield from pool.map(_decode_file, [str(root)] * len(jobs), [j[0] for j in jobs], [j[1] for j in jobs],
                            [spec.preprocess] * len(jobs), chunksize=max(1, len(jobs) // (n * 16)))


def _sex(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    v = str(value).strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}.get(v, v or UNKNOWN)


def _age_band(value: object, edges: list[int]) -> str:
    try:
        age = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return UNKNOWN
    if math.isnan(age) or age < 0:
        return UNKNOWN
    if age < edges[0]:
        return f"<{edges[0]}"
    for lo, hi in zip(edges, edges[1:]):
        if lo <= age < hi:
            return f"{lo}-{hi - 1}"
    return f"{edges[-1]}+"


def _category(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    s = str(value).strip()
    if not s:
        return UNKNOWN
    try:
        f = float(s)
        if f.is_integer():
            return str(int(f))
    except ValueError:
        pass
    return s


def _site(row: pd.Series, how: str) -> str:
    if row.get("csv_site") is not None:
        return _category(row["csv_site"])
    parts = {"institution": [row["institution"]], "manufacturer": [row["manufacturer"]],
             "institution+manufacturer": [row["institution"], row["manufacturer"]]}[how]
    parts = [str(p) for p in parts if p]
    return "/".join(parts) if parts else UNKNOWN


def _given(value: object) -> str:
    """A header value, or "" when absent: photos have no UIDs, and pandas turns missing ones into NaN (truthy)."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _public_manifest(rows: pd.DataFrame, spec: CohortSpec, pseudo: Pseudonymizer) -> pd.DataFrame:
    """Identifiers become pseudonyms; everything else identifying is dropped here."""
    def patient_of(r: pd.Series) -> str:
        raw = _given(r["csv_patient"]) or _given(r["patient_id"])
        return pseudo("patient", str(raw)) if raw else pseudo("patient", "file:" + r["relpath"])

    m = pd.DataFrame(index=rows.index)
    m["image_id"] = [pseudo("image", f"{_given(r.sop_uid) or r.relpath}#{r.frame}") for r in rows.itertuples()]
    m["patient_id"] = rows.apply(patient_of, axis=1)
    m["study_id"] = [pseudo("study", _given(s) or "file:" + p) for s, p in zip(rows["study_uid"], rows["relpath"])]
    m["series_id"] = [pseudo("series", _given(s) or "file:" + p) for s, p in zip(rows["series_uid"], rows["relpath"])]
    m["relpath"] = rows["relpath"] if spec.record_paths else None
    m["frame"] = rows["frame"].astype("int64")
    m["kind"] = rows["kind"]
    m["label"] = rows["label"]
    m["given_split"] = rows["csv_split"]
    for c in [c for c in rows.columns if c.startswith("label__")]:
        m[c] = rows[c]
    m["sex"] = [_sex(c if c is not None else h) for c, h in zip(rows["csv_sex"], rows["sex"])]
    m["age_band"] = [_age_band(c if c is not None else h, spec.subgroups.age_bands)
                     for c, h in zip(rows["csv_age"], rows["age"])]
    m["site"] = rows.apply(lambda r: _site(r, spec.subgroups.site_from), axis=1)
    for c in [c for c in rows.columns if c.startswith("sub__")]:
        m[c.removeprefix("sub__")] = rows[c].map(_category)
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


_FIRST = ["image_id", "patient_id", "study_id", "series_id", "relpath", "frame", "split", "label_fraction",
          "label", "label_idx"]


def _order_columns(m: pd.DataFrame) -> pd.DataFrame:
    return m[[*_FIRST, *[c for c in m.columns if c not in _FIRST]]]


def _identifier_set(rows: pd.DataFrame) -> set[str]:
    toks: set[str] = set()
    for _, row in rows.iterrows():
        toks.update(_identifier_tokens(row))
        toks.update(str(v).lower() for v in (row.get("birth_date"), row.get("sop_uid"), row.get("study_uid"))
                    if v)
    return toks


def _scrub(text: str, identifiers: set[str], lengths: list[int] | None = None) -> str:
    """Library messages can quote header values; no identifier we know of survives into a reason.

    Every substring of the message as long as some identifier is looked up in the set, so a message costs
    the same however many identifiers the cohort has (looping over the identifiers made the quarantine
    quadratic: more files bring both more identifiers and more quarantined files). Overlapping hits are
    redacted as one span. ``lengths``: the distinct identifier lengths, longest first (computed if absent).
    """
    if lengths is None:
        lengths = sorted({len(t) for t in identifiers}, reverse=True)
    low, spans = text.lower(), []
    for i in range(len(low)):
        n = next((n for n in lengths if low[i : i + n] in identifiers), 0)  # the longest identifier at i
        if n and spans and i <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], i + n)
        elif n:
            spans.append([i, i + n])
    for start, end in reversed(spans):
        text = text[:start] + "[redacted]" + text[end:]
    return text


def _quarantine_frame(rejected: list[Rejected], files: list[str], spec: CohortSpec,
                      identifiers: set[str]) -> pd.DataFrame:
    q = pd.DataFrame([asdict(r) for r in rejected], columns=["relpath", "stage", "reason"])
    lengths = sorted({len(t) for t in identifiers}, reverse=True)
    q["reason"] = q["reason"].map(lambda r: _scrub(str(r), identifiers, lengths))
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
        raise CohortBuildError(f"internal error: {len(lost)} file(s) neither ingested nor quarantined, "
                               f"{len(both)} in both; please report this")


def _card(m: pd.DataFrame, q: pd.DataFrame, spec: CohortSpec, classes: list[str], label_stats: dict,
          key_source: str) -> dict:
    subgroup_cols = ["sex", "age_band", "site", *spec.labels.subgroup_columns] if spec.labels else \
        ["sex", "age_band", "site"]
    counts: dict = {}
    for split, g in m.groupby("split", sort=True):
        entry = {"images": len(g), "patients": int(g["patient_id"].nunique()),
                 "by_label": {str(k): int(v) for k, v in g["label"].fillna("(unlabelled)").value_counts()
                              .sort_index().items()}}
        entry["by_subgroup"] = {
            col: {str(val): {str(lab): int(n) for lab, n in gg["label"].fillna("(unlabelled)").value_counts()
                             .sort_index().items()} for val, gg in g.groupby(col, sort=True)}
            for col in subgroup_cols
        }
        counts[str(split)] = entry
    return {
        "name": spec.name,
        "manifest_version": MANIFEST_VERSION,
        "manifest_sha256": manifest_sha256(m),
        "images": len(m),
        "patients": int(m["patient_id"].nunique()),
        "quarantined": len(q),
        "quarantine_reasons": {str(k): int(v) for k, v in q["reason"].value_counts().items()},
        "classes": classes,
        "num_inlier_classes": len(classes) - len([c for c in spec.splits.outlier_conditions if c in classes]),
        "outlier_conditions": [c for c in spec.splits.outlier_conditions if c in classes],
        "heldout_conditions": spec.splits.heldout_conditions,
        "heldout_sites": spec.splits.heldout_sites,
        "label_fractions": sorted(set(spec.splits.label_fractions) | {1.0}),
        "subgroups": subgroup_cols,
        "counts": counts,
        "labels": label_stats,
        "pseudonym_key": key_source,
        "spec": json.loads(spec.model_dump_json()),
    }
