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

from medvision._atomic import write_all
from medvision.cohort.cache import PreprocessCache
from medvision.cohort.card import build_card
from medvision.cohort.cases import assign_cases
from medvision.cohort.cohort import CASE_COLUMNS, LEADING_COLUMNS
from medvision.cohort.decode import fill_cache
from medvision.cohort.fingerprints import write_fingerprints
from medvision.cohort.identifiers import CohortBuildError, check_paths, identifier_set
from medvision.cohort.index import IndexedFile, IndexLimits, Rejected, index_files, list_entries
from medvision.cohort.labels import join_labels
from medvision.cohort.logscrub import PATH_WITHHELD, Scrubber, scrubbed_output
from medvision.cohort.named_values import check_heldout_sets_not_empty, check_named_values, facts_from_rows
from medvision.cohort.normalise import UNKNOWN, age_band, category, given, sex, site
from medvision.cohort.progress import counting
from medvision.cohort.pseudonym import Pseudonymizer, default_key_file, key_fingerprint, resolve_key
from medvision.cohort.spec import CohortSpec, SpecError, load_spec
from medvision.cohort.splits import assign_splits
from medvision.io import PHOTO_SUFFIXES, readers

__all__ = ["CohortBuildError", "build_cohort"]

log = logging.getLogger("medvision.cohort")


def build_cohort(spec: CohortSpec | str | Path, out: str | Path, *, new_key: bool = False) -> dict:
    """Build (or rebuild) a cohort into ``out`` and return its card (the content of cohort.json).

    Rebuilding is cheap: files whose content and preprocessing are unchanged are not decoded again. A rebuild over
    a cohort made with another pseudonym key is refused unless ``new_key`` (every pseudonym and split would change).
    The new manifest, quarantine list and card are written completely before any of the old ones is replaced.

    Raises:
        SpecError: the spec or the labels CSV cannot be used.
        CohortBuildError: identifiers in paths or the name, no images at all, another key, a full disk.
    """
    if not isinstance(spec, CohortSpec):
        spec = load_spec(spec)
    out = Path(out).expanduser().resolve()
    root = Path(spec.images)
    if not root.is_dir():
        raise SpecError(f"images folder {root} does not exist (key 'images' of cohort {spec.name})")
    limits = IndexLimits(spec.max_megapixels, _kinds(spec))
    key, key_source = resolve_key(spec.pseudonym_key_file, out)
    fingerprint = key_fingerprint(key)
    _check_same_key(out, fingerprint, new_key)
    pseudo = Pseudonymizer(key)
    scrubber = Scrubber(roots=[root], withhold_paths=not spec.record_paths)
    t0 = time.perf_counter()

    with scrubbed_output(scrubber):
        files, left_out = list_entries(root)
        entries = sorted([*files, *(r.relpath for r in left_out)])
        log.info("indexing %d files under the images folder", len(files))
        indexed: list[IndexedFile] = []
        rejected: list[Rejected] = list(left_out)
        with counting("indexing", len(files)) as advance:
            for item in index_files(root, files, spec.workers, limits):
                advance(1)
                if isinstance(item, IndexedFile):
                    indexed.append(item)
                else:
                    rejected.append(item)
        indexed, duplicates = _unique_instances(indexed, {f: i for i, f in enumerate(entries)})
        rejected += duplicates
        if not indexed:
            raise CohortBuildError(_no_images(root, entries, rejected))
        warnings_ = _kind_warnings(indexed, spec)
        t_index = time.perf_counter() - t0

        rows = _instances(indexed, spec.frames)
        labels, label_stats = join_labels(rows, spec.labels)
        rows = pd.concat([rows, labels], axis=1)
        rows, rejected = _drop_excluded(rows, rejected)
        rows, rejected, cases = _cases(rows, spec, rejected)
        _check_study_values(rows, spec, pseudo)
        scrubber.add_identifiers(identifier_set(rows))
        check_paths(rows, spec, str(root))

        out.mkdir(parents=True, exist_ok=True)
        cache = PreprocessCache(out / "cache", spec.preprocess)
        cache.remove_temporaries()
        t1 = time.perf_counter()
        case_of = dict(zip(rows["relpath"], rows["case_key"])) if spec.unit != "image" else {}
        with counting("decoding", int(rows["relpath"].nunique())) as advance:
            rows, decode_rejects, decoded = fill_cache(rows, root, cache, spec, scrubber, advance)
        rejected += decode_rejects
        rows, rejected = _whole_cases(rows, rejected, decode_rejects, case_of, spec, entries, cases)
        t_decode = time.perf_counter() - t1

    manifest = _public_manifest(rows, spec, pseudo)
    manifest = assign_splits(manifest, spec.splits).drop(columns="given_split")
    check_heldout_sets_not_empty(spec, manifest["split"].value_counts().to_dict())
    classes = _classes(manifest, spec)
    manifest["label_idx"] = manifest["label"].map({c: i for i, c in enumerate(classes)}).fillna(-1).astype("int64")
    manifest = _order_columns(manifest)

    quarantine = _quarantine_frame(rejected, entries, spec, scrubber)
    _check_every_file_accounted(entries, rows, quarantine, spec)

    card = build_card(manifest, quarantine, spec, classes, label_stats, key_source)
    if spec.unit != "image":
        card["cases"] = _case_card(manifest, quarantine, spec, cases)
    card["pseudonym_key_fingerprint"] = fingerprint
    card["warnings"] = warnings_
    if not spec.record_paths:  # the folders' own names may be what identifies a patient
        card["spec"]["images"] = PATH_WITHHELD
        if card["spec"].get("labels"):
            card["spec"]["labels"]["csv"] = Path(card["spec"]["labels"]["csv"]).name
    card["build"] = {
        "files": len(entries),
        "index_seconds": round(t_index, 3),
        "decode_seconds": round(t_decode, 3),
        "decoded_now": decoded,
        "from_cache": int(len(rows) - decoded),
    }
    card_text = json.dumps(card, indent=2, sort_keys=True, default=str)

    def write_card(p: Path) -> None:
        p.write_text(card_text)

    write_all(
        [
            (out / "manifest.parquet", int(manifest.memory_usage(deep=True).sum()), _parquet(manifest)),
            (out / "quarantine.csv", 200 * (len(quarantine) + 1), lambda p: quarantine.to_csv(p, index=False)),
            (out / "cohort.json", len(card_text), write_card),
        ]
    )
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


def _drop_excluded(rows: pd.DataFrame, rejected: list[Rejected]) -> tuple[pd.DataFrame, list[Rejected]]:
    """Images whose CSV row a ``labels.include``/``exclude`` filter dropped: quarantined with the filter as reason."""
    excluded = rows["csv_excluded"].notna()
    rejected = rejected + [
        Rejected(r, "labels", str(why))
        for r, why in rows.loc[excluded, ["relpath", "csv_excluded"]].drop_duplicates("relpath").itertuples(index=False)
    ]
    return rows[~excluded].drop(columns="csv_excluded"), rejected


def _raw_patient(rows: pd.DataFrame) -> pd.Series:
    """Each row's patient identity before pseudonyms: the CSV's patient column, else PatientID, else the file."""
    return pd.Series(
        [
            given(c) or given(p) or "file:" + r
            for c, p, r in zip(rows["csv_patient"], rows["patient_id"], rows["relpath"])
        ],
        index=rows.index,
    )


def _cases(rows: pd.DataFrame, spec: CohortSpec, rejected: list[Rejected]) -> tuple[pd.DataFrame, list[Rejected], dict]:
    """Group instances into cases of ``spec.unit`` and order them; a case that cannot be ordered (or whose
    instances disagree on the label) is quarantined whole, each of its files with the case's reason."""
    if spec.unit == "image":
        return rows, rejected, {}
    assigned = assign_cases(rows, spec.unit, _raw_patient(rows))
    lost = assigned.rejected_rows.drop_duplicates("relpath")
    rejected = rejected + [
        Rejected(r, "case", f"{spec.unit} quarantined whole: {why}")
        for r, why in zip(lost["relpath"], lost["case_reason"])
    ]
    facts = {"notes": assigned.notes, "quarantined_cases": len(assigned.rejected)}
    return assigned.rows, rejected, facts


def _whole_cases(
    rows: pd.DataFrame,
    rejected: list[Rejected],
    decode_rejects: list[Rejected],
    case_of: dict[str, str],
    spec: CohortSpec,
    entries: list[str],
    cases: dict,
) -> tuple[pd.DataFrame, list[Rejected]]:
    """A case one of whose files could not be decoded is dropped whole: a bag is never silently shortened
    (``cases["quarantined_cases"]`` counts it)."""
    if spec.unit == "image" or not decode_rejects:
        return rows, rejected
    number = {f: i for i, f in enumerate(entries)}
    culprit: dict[str, str] = {}
    for r in sorted((r.relpath for r in decode_rejects), key=lambda f: number.get(f, -1)):
        culprit.setdefault(case_of[r], r)
    drop = rows["case_key"].isin(culprit)
    gone = rows[drop].drop_duplicates("relpath")
    rejected = rejected + [
        Rejected(
            r,
            "case",
            f"{spec.unit} quarantined whole: file #{number[culprit[k]]} of it could not be decoded (see its row); "
            "a case is kept whole or not at all",
        )
        for r, k in zip(gone["relpath"], gone["case_key"])
    ]
    cases["quarantined_cases"] = cases.get("quarantined_cases", 0) + len(culprit)
    return rows[~drop], rejected


def _check_study_values(rows: pd.DataFrame, spec: CohortSpec, pseudo: Pseudonymizer) -> None:
    """Before any pixel is decoded: labels exist at all, and every value the spec names exists in the data."""
    if spec.labels is not None and not rows.empty and rows["label"].isna().all():
        raise SpecError(
            f"labels CSV {spec.labels.csv}: no image got a label from column(s) {spec.labels.label_columns} "
            "(every matched row is empty or was mapped away); the cohort would have no class"
        )
    sites = [site(r, spec.subgroups.site_from, pseudo) for _, r in rows.iterrows()]
    check_named_values(spec, facts_from_rows(pd.DataFrame({"label": rows["label"], "site": sites}), spec))


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

    m = pd.DataFrame(index=rows.index)
    m["image_id"] = [pseudo("image", f"{given(r.sop_uid) or r.relpath}#{r.frame}") for r in rows.itertuples()]
    m["patient_id"] = [pseudo("patient", p) for p in _raw_patient(rows)]
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
    m["site"] = [site(r, spec.subgroups.site_from, pseudo) for _, r in rows.iterrows()]
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
    if spec.unit != "image":
        m = _case_columns(m, rows, spec, pseudo)
    return m.reset_index(drop=True)


def _case_columns(m: pd.DataFrame, rows: pd.DataFrame, spec: CohortSpec, pseudo: Pseudonymizer) -> pd.DataFrame:
    """The case of each instance and its place in the case; subgroups become the case's (its first instance's),
    so a case is one row of every table whatever its instances' headers say (a patient's age band over years)."""
    m["case_id"] = [pseudo("case", f"{spec.unit}:{k}") for k in rows["case_key"]]
    m["instance_index"] = rows["instance_index"].astype("int64")
    m["slice_position"] = rows["slice_position"].astype("float64")
    m["slice_spacing"] = rows["slice_spacing"].astype("float64")
    m["case_ordering"] = rows["case_ordering"].astype(str)
    subgroups = ["sex", "age_band", "site", *(spec.labels.subgroup_columns if spec.labels else {})]
    first = m.sort_values(["case_id", "instance_index"]).groupby("case_id")[subgroups].first()
    for column in subgroups:
        m[column] = m["case_id"].map(first[column])
    return m


def _classes(manifest: pd.DataFrame, spec: CohortSpec) -> list[str]:
    """Inlier classes (sorted) then training outlier conditions (spec order): the head's output order."""
    present = set(manifest["label"].dropna())
    outliers = [c for c in spec.splits.outlier_conditions if c in present]
    inliers = sorted(present - set(outliers) - set(spec.splits.heldout_conditions))
    return inliers + outliers


def _order_columns(m: pd.DataFrame) -> pd.DataFrame:
    first = [*LEADING_COLUMNS, *(c for c in CASE_COLUMNS if c in m.columns)]
    return m[[*first, *[c for c in m.columns if c not in first]]]


def _case_card(m: pd.DataFrame, q: pd.DataFrame, spec: CohortSpec, facts: dict) -> dict:
    """What the card says about cases: how many (per split, beside the instances), how they were ordered, what
    was resampled, and how many were quarantined whole (their files are in quarantine.csv with the reason)."""
    per_case = m.drop_duplicates("case_id")
    sizes = m.groupby("case_id").size()
    return {
        "unit": spec.unit,
        "cases": int(len(per_case)),
        "instances": int(len(m)),
        "instances_per_case": {
            "min": int(sizes.min()) if len(sizes) else 0,
            "median": float(sizes.median()) if len(sizes) else 0.0,
            "max": int(sizes.max()) if len(sizes) else 0,
        },
        "by_split": {str(k): int(v) for k, v in per_case["split"].value_counts().sort_index().items()},
        "by_label": {str(k): int(v) for k, v in per_case["label"].fillna("(unlabelled)").value_counts().items()},
        "ordering": {str(k): int(v) for k, v in per_case["case_ordering"].value_counts().sort_index().items()},
        "notes": facts.get("notes", {}),
        "quarantined_cases": int(facts.get("quarantined_cases", 0)),
    }


def _quarantine_frame(
    rejected: list[Rejected], entries: list[str], spec: CohortSpec, scrubber: Scrubber
) -> pd.DataFrame:
    q = pd.DataFrame([asdict(r) for r in rejected], columns=["relpath", "stage", "reason"])
    q["reason"] = q["reason"].map(lambda r: scrubber(str(r)))
    number = {f: i for i, f in enumerate(entries)}
    q.insert(0, "file_number", q["relpath"].map(number).astype("int64"))
    if not spec.record_paths:
        q["relpath"] = "(withheld: record_paths is false; see file_number in the sorted listing)"
    return q.sort_values("file_number").reset_index(drop=True)


def _check_every_file_accounted(files: list[str], rows: pd.DataFrame, q: pd.DataFrame, spec: CohortSpec) -> None:
    """Every entry of the listing is in the manifest or the quarantine list, never both, never neither."""
    in_manifest = set(rows["relpath"])
    quarantined = {files[i] for i in q["file_number"]}
    lost = set(files) - in_manifest - quarantined
    both = in_manifest & quarantined
    if lost or both:  # a bug, not a user error: say so loudly rather than write a cohort that lost files
        raise CohortBuildError(
            f"internal error: {len(lost)} file(s) neither ingested nor quarantined, "
            f"{len(both)} in both; please report this"
        )


def _parquet(frame: pd.DataFrame):
    return lambda path: frame.to_parquet(path, index=False)


def _kinds(spec: CohortSpec) -> frozenset[str] | None:
    if spec.kinds is None:
        return None
    known = {r.kind for r in readers()}
    unknown = sorted(set(spec.kinds) - known)
    if unknown:
        raise SpecError(f"cohort {spec.name}: unknown image kind(s) {unknown} in `kinds`; known: {sorted(known)}")
    return frozenset(spec.kinds)


def _check_same_key(out: Path, fingerprint: str, new_key: bool) -> None:
    """A lost or swapped key would silently re-draw every pseudonym and move patients between splits."""
    try:
        previous = json.loads((out / "cohort.json").read_text()).get("pseudonym_key_fingerprint")
    except (OSError, ValueError):
        return
    if previous is None or previous == fingerprint:
        return
    if not new_key:
        raise CohortBuildError(
            f"{out} holds a cohort built with another pseudonym key (fingerprint {previous}, now {fingerprint}). "
            "Rebuilding with this key would change every patient and image pseudonym and re-draw the splits (a "
            "test patient could move into training). Restore the original key ($MEDVISION_PSEUDONYM_KEY, the "
            f"spec's `pseudonym_key_file`, $MEDVISION_PSEUDONYM_KEY_FILE or {default_key_file()}), build into "
            "another folder, or pass --new-key (`medvision cohort build --new-key`; in Python "
            "build_cohort(..., new_key=True)) to start a new cohort version on purpose."
        )
    log.warning("rebuilding %s with a new pseudonym key: every pseudonym and split changes (--new-key)", out.name)


def _unique_instances(indexed: list[IndexedFile], number: dict[str, int]) -> tuple[list[IndexedFile], list[Rejected]]:
    """One file per SOP Instance UID: a second path to the same instance would repeat its image_id (and could put
    one image in two splits). The first path in the sorted listing is kept."""
    first: dict[str, str] = {}
    kept, dropped = [], []
    for f in indexed:
        uid = given(f.sop_uid)
        if uid and uid in first:
            reason = f"duplicate SOP Instance UID: the same DICOM instance as file #{number[first[uid]]} (kept)"
            dropped.append(Rejected(f.relpath, "index", reason))
            continue
        if uid:
            first[uid] = f.relpath
        kept.append(f)
    return kept, dropped


def _no_images(root: Path, entries: list[str], rejected: list[Rejected]) -> str:
    supported = "DICOM (any file name), " + ", ".join(sorted(PHOTO_SUFFIXES))
    common = pd.Series([r.reason for r in rejected]).value_counts()
    why = f"; most common reason: {common.index[0]} ({int(common.iloc[0])} files)" if len(common) else ""
    return f"no images found under {root} ({len(entries)} other file(s){why}; supported: {supported})"


def _kind_warnings(indexed: list[IndexedFile], spec: CohortSpec) -> list[str]:
    """Photos inside a DICOM tree are often viewer screenshots (burned-in names); without a patient column each
    would become a patient of its own."""
    kinds = pd.Series([f.kind for f in indexed]).value_counts()
    patient_column = spec.labels.patient_column if spec.labels else None
    if spec.kinds is not None or patient_column or "dicom" not in kinds or "photo" not in kinds:
        return []
    text = (
        f"{int(kinds['photo'])} photo file(s) lie beside {int(kinds['dicom'])} DICOM file(s) and no patient column "
        "is given: each photo becomes a patient of its own, and viewer screenshots can show burned-in names. "
        "If they are screenshots, build with `--kinds dicom` (spec key `kinds: [dicom]`); otherwise give the "
        "labels CSV's patient column."
    )
    log.warning(text)
    return [text]
