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
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from medvision._atomic import private_dir, write_all
from medvision.cohort.cache import PreprocessCache
from medvision.cohort.card import CARD_FILE, BuildStats, CaseSizes, CaseStats, CohortCard, build_card
from medvision.cohort.cases import assign_cases, case_keys
from medvision.cohort.cohort import CASE_COLUMNS, LEADING_COLUMNS
from medvision.cohort.decode import fill_cache
from medvision.cohort.fingerprints import write_fingerprints
from medvision.cohort.identifiers import CohortBuildError, check_copied_values, check_paths, identifier_set
from medvision.cohort.index import IndexedFile, IndexLimits, Rejected, index_files, list_entries
from medvision.cohort.labels import join_labels
from medvision.cohort.logscrub import Scrubber, scrubbed_output
from medvision.cohort.named_values import check_heldout_sets_not_empty, check_named_values, facts_from_rows
from medvision.cohort.normalise import UNKNOWN, age_band, category, given, sex, site
from medvision.cohort.progress import counting
from medvision.cohort.pseudonym import Pseudonymizer, default_key_file, key_fingerprint, resolve_key
from medvision.cohort.spec import CohortSpec, SpecError, load_spec
from medvision.cohort.splits import assign_splits
from medvision.io import PHOTO_SUFFIXES, readers

__all__ = ["CohortBuildError", "build_cohort"]

log = logging.getLogger("medvision.cohort")


def build_cohort(spec: CohortSpec | str | Path, out: str | Path, *, new_key: bool = False) -> CohortCard:
    """Build (or rebuild) a cohort into ``out`` and return its card (the content of cohort.json).

    Rebuilding is cheap: files whose content and preprocessing are unchanged are not decoded again. A rebuild over
    a cohort made with another pseudonym key is refused unless ``new_key`` (every pseudonym and split would change).
    The new manifest, quarantine list and card are written completely before any of the old ones is replaced.

    Raises:
        SpecError: the spec or the labels CSV cannot be used.
        CohortBuildError: identifiers in paths, values or the name, no images at all, another key, a full disk.
    """
    if not isinstance(spec, CohortSpec):
        spec = load_spec(spec)
    out = Path(out).expanduser().resolve()
    root = Path(spec.images)
    if not root.is_dir():
        raise SpecError(f"images folder {root} does not exist (key 'images' of cohort {spec.name})")
    key, key_source = resolve_key(spec.pseudonym_key_file, out)
    fingerprint = key_fingerprint(key)
    _check_same_key(out, fingerprint, new_key)
    pseudo = Pseudonymizer(key)
    scrubber = Scrubber(roots=[root], withhold_paths=not spec.record_paths)
    t0 = time.perf_counter()

    with scrubbed_output(scrubber):
        entries, indexed, rejected = _index(root, spec, scrubber)
        warnings_ = _kind_warnings(indexed, spec)
        t_index = time.perf_counter() - t0
        labelled, label_stats, rejected = _labelled_rows(indexed, rejected, spec, pseudo, scrubber)
        t1 = time.perf_counter()
        rows, rejected, decoded, copies, cases = _decode(labelled, rejected, root, out, spec, scrubber, entries)
        t_decode = time.perf_counter() - t1

    if "images_without_label" in label_stats:  # each instance once, however many copies of it were found
        label_stats["images_without_label"] = int(labelled.loc[~labelled["relpath"].isin(copies), "label"].isna().sum())
    manifest, classes = _manifest(rows, spec, pseudo)
    warnings_ += _untrained_class_warnings(manifest, classes)
    quarantine = _quarantine_frame(rejected, entries, spec, scrubber)
    _check_every_file_accounted(entries, rows, quarantine, spec)

    build = BuildStats(
        files=len(entries),
        index_seconds=round(t_index, 3),
        decode_seconds=round(t_decode, 3),
        decoded_now=decoded,
        from_cache=int(len(rows) - decoded),
    )
    card = build_card(
        manifest,
        quarantine,
        spec,
        classes,
        label_stats,
        key_source,
        key_fingerprint=fingerprint,
        warnings=warnings_,
        build=build,
        cases=None if cases is None else _case_stats(manifest, spec, cases),
    )
    write_all(
        [
            (out / "manifest.parquet", int(manifest.memory_usage(deep=True).sum()), _parquet(manifest)),
            (out / "quarantine.csv", 200 * (len(quarantine) + 1), lambda p: quarantine.to_csv(p, index=False)),
            card.staged(out / CARD_FILE),
        ],
        private=True,
    )
    write_fingerprints(out, rows, key)  # lets the report's PHI guard recognise identifiers it never sees
    log.info(
        "cohort %s: %d images, %d quarantined, manifest %s",
        spec.name,
        len(manifest),
        len(quarantine),
        card.manifest_sha256[:12],
    )
    return card


# --- phases --------------------------------------------------------------------------------------


def _index(root: Path, spec: CohortSpec, scrubber: Scrubber) -> tuple[list[str], list[IndexedFile], list[Rejected]]:
    """Every entry under the images folder (sorted), the image files' headers, and what was left out (and why)."""
    files, left_out = list_entries(root)
    entries = sorted([*files, *(r.relpath for r in left_out)])
    log.info("indexing %d files under the images folder", len(files))
    indexed: list[IndexedFile] = []
    rejected: list[Rejected] = list(left_out)
    with counting("indexing", len(files)) as advance:
        for item in index_files(root, files, spec.workers, IndexLimits(spec.max_megapixels, _kinds(spec)), scrubber):
            advance(1)
            if isinstance(item, IndexedFile):
                indexed.append(item)
            else:
                rejected.append(item)
    if not indexed:
        raise CohortBuildError(_no_images(root, entries, rejected))
    return entries, indexed, rejected


def _labelled_rows(
    indexed: list[IndexedFile], rejected: list[Rejected], spec: CohortSpec, pseudo: Pseudonymizer, scrubber: Scrubber
) -> tuple[pd.DataFrame, dict, list[Rejected]]:
    """One row per image instance with its labels; before any pixel is decoded, the checks that can stop a build
    (values the spec names, identifiers in paths and copied values) and the scrubber learns every identifier."""
    rows = _instances(indexed, spec.frames)
    labels, label_stats = join_labels(rows, spec.labels)
    rows = pd.concat([rows, labels], axis=1)
    rows, rejected = _drop_excluded(rows, rejected)
    _check_study_values(rows, spec, pseudo)
    scrubber.add_identifiers(identifier_set(rows))
    check_paths(rows, spec, str(spec.images))
    check_copied_values(rows, spec)
    return rows, label_stats, rejected


def _decode(
    rows: pd.DataFrame,
    rejected: list[Rejected],
    root: Path,
    out: Path,
    spec: CohortSpec,
    scrubber: Scrubber,
    entries: list[str],
) -> tuple[pd.DataFrame, list[Rejected], int, set[str], dict | None]:
    """Decode every instance into the cache (every copy of a duplicated one too), then keep one copy per SOP
    Instance UID: the first *readable* one, and group what is kept into cases (:func:`_cases`). Returns the rows
    kept, every rejection, how many were decoded now, the files left out as copies of a kept instance, and what
    the card says about cases (``None`` for ``unit: image``)."""
    labelled = rows
    private_dir(out)  # the cohort identifies no one by name, but it holds patients' images: owner-only
    cache = PreprocessCache(out / "cache", spec.preprocess)
    cache.remove_temporaries()
    uid_of = dict(zip(rows["relpath"], rows["sop_uid"].map(given)))
    with counting("decoding", len(uid_of)) as advance:
        rows, decode_rejects, decoded_keys = fill_cache(rows, root, cache, spec, scrubber, advance)
    failed = {r.relpath: r for r in decode_rejects}
    rows, duplicates, unreadable = _unique_instances(rows, failed, uid_of, {f: i for i, f in enumerate(entries)})
    for relpath, kept in unreadable.items():  # an unreadable copy of an instance that has a readable one
        reason = f"{failed[relpath].reason}; a readable copy of the same instance, file #{kept}, is kept"
        failed[relpath] = Rejected(relpath, "decode", reason)
    copies = {d.relpath for d in duplicates} | set(unreadable)
    rows, whole_cases, cases = _cases(rows, labelled, copies, spec, entries)
    decoded = int(rows["cache_key"].isin(decoded_keys).sum())
    return rows, [*rejected, *failed.values(), *duplicates, *whole_cases], decoded, copies, cases


def _manifest(rows: pd.DataFrame, spec: CohortSpec, pseudo: Pseudonymizer) -> tuple[pd.DataFrame, list[str]]:
    """The public manifest (pseudonyms, splits, label indices) and the classes in the head's order."""
    manifest = _public_manifest(rows, spec, pseudo)
    manifest = assign_splits(manifest, spec.splits).drop(columns="given_split")
    check_heldout_sets_not_empty(spec, manifest["split"].value_counts().to_dict())
    classes = _classes(manifest, spec)
    manifest["label_idx"] = manifest["label"].map({c: i for i, c in enumerate(classes)}).fillna(-1).astype("int64")
    return _order_columns(manifest), classes


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


def _cases(
    rows: pd.DataFrame, labelled: pd.DataFrame, copies: set[str], spec: CohortSpec, entries: list[str]
) -> tuple[pd.DataFrame, list[Rejected], dict | None]:
    """Group the decoded instances into cases of ``spec.unit`` and order them. A case is kept whole or not at all:
    one with an instance that could not be decoded (and has no readable copy), that cannot be ordered, or whose
    instances disagree on the label is quarantined whole, each of its remaining files with the case's reason.

    Runs after decoding and de-duplication, so a second copy of a slice is not mistaken for a doubled slice, and
    an unreadable copy of a slice whose other copy is kept does not cost its case.
    """
    if spec.unit == "image":
        return rows, [], None
    number = {f: i for i, f in enumerate(entries)}
    key_of = dict(zip(labelled["relpath"], case_keys(labelled, spec.unit, _raw_patient(labelled))))
    culprit: dict[str, str] = {}  # case key -> its first file that could not be decoded
    for lost in sorted(set(labelled["relpath"]) - set(rows["relpath"]) - copies, key=number.__getitem__):
        culprit.setdefault(key_of[lost], lost)
    broken = rows["relpath"].map(key_of).isin(culprit)
    gone = rows[broken].drop_duplicates("relpath")
    rejected = [
        Rejected(
            r,
            "case",
            f"{spec.unit} quarantined whole: file #{number[culprit[key_of[r]]]} of it could not be decoded (see its "
            "row); a case is kept whole or not at all",
        )
        for r in gone["relpath"]
    ]
    assigned = assign_cases(rows[~broken], spec.unit, _raw_patient(rows[~broken]))
    lost_rows = assigned.rejected_rows.drop_duplicates("relpath")
    rejected += [
        Rejected(r, "case", f"{spec.unit} quarantined whole: {why}")
        for r, why in zip(lost_rows["relpath"], lost_rows["case_reason"])
    ]
    facts = {"notes": assigned.notes, "quarantined_cases": len(assigned.rejected) + len(culprit)}
    return assigned.rows, rejected, facts


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


def _case_stats(m: pd.DataFrame, spec: CohortSpec, facts: dict) -> CaseStats:
    """What the card says about cases: how many (per split, beside the instances), how they were ordered, what
    was resampled, and how many were quarantined whole (their files are in quarantine.csv with the reason)."""
    per_case = m.drop_duplicates("case_id")
    sizes = m.groupby("case_id").size()
    return CaseStats(
        unit=spec.unit,
        cases=int(len(per_case)),
        instances=int(len(m)),
        instances_per_case=CaseSizes(
            min=int(sizes.min()) if len(sizes) else 0,
            median=float(sizes.median()) if len(sizes) else 0.0,
            max=int(sizes.max()) if len(sizes) else 0,
        ),
        by_split={str(k): int(v) for k, v in per_case["split"].value_counts().sort_index().items()},
        by_label={str(k): int(v) for k, v in per_case["label"].fillna("(unlabelled)").value_counts().items()},
        ordering={str(k): int(v) for k, v in per_case["case_ordering"].value_counts().sort_index().items()},
        notes=facts.get("notes", {}),
        quarantined_cases=int(facts.get("quarantined_cases", 0)),
    )


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


def _unique_instances(
    rows: pd.DataFrame, failed: Iterable[str], uid_of: dict[str, str | None], number: dict[str, int]
) -> tuple[pd.DataFrame, list[Rejected], dict[str, int]]:
    """One file per SOP Instance UID: a second path to the same instance would repeat its image_id (and could put
    one image in two splits). The first *readable* copy in the sorted listing is kept: when the first copy is
    corrupt (pydicom's ``badVR.dcm`` beside six readable copies), keeping it by path alone lost the instance.

    Args:
        rows: the instances that decoded.
        failed: the files that did not.
        uid_of: every decoded or failed file's SOP Instance UID (``None`` for photos).
        number: each entry's number in the sorted listing.

    Returns:
        The rows kept; the other readable copies, as duplicates naming the kept file; and each unreadable copy of
        a kept instance -> the kept file's number (it stays quarantined with its own decoding reason).
    """
    keep: dict[str, str] = {}
    for relpath in sorted(set(rows["relpath"]), key=number.__getitem__):
        uid = uid_of[relpath]
        if uid and uid not in keep:
            keep[uid] = relpath
    duplicates = [
        Rejected(r, "index", f"duplicate SOP Instance UID: the same DICOM instance as file #{number[keep[u]]} (kept)")
        for r in sorted(set(rows["relpath"]), key=number.__getitem__)
        if (u := uid_of[r]) and keep[u] != r
    ]
    unreadable = {r: number[keep[u]] for r in failed if (u := uid_of[r]) and u in keep}
    dropped = {d.relpath for d in duplicates}
    return rows[~rows["relpath"].isin(dropped)], duplicates, unreadable


def _no_images(root: Path, entries: list[str], rejected: list[Rejected]) -> str:
    supported = "DICOM (any file name), " + ", ".join(sorted(PHOTO_SUFFIXES))
    common = pd.Series([r.reason for r in rejected]).value_counts()
    why = f"; most common reason: {common.index[0]} ({int(common.iloc[0])} files)" if len(common) else ""
    return f"no images found under {root} ({len(entries)} other file(s){why}; supported: {supported})"


def _untrained_class_warnings(manifest: pd.DataFrame, classes: list[str]) -> list[str]:
    """A class (an abstention class too) with no training image is an output the model never learns to give: a
    small cohort's patient-level split can put all of a rare class's patients in test. Said on the card, with where
    its images went, rather than found in the report. Multi-label cohorts' ``label`` joins the positive names (not
    a class), so they are not checked here."""
    if any(c.startswith("label__") for c in manifest.columns):
        return []
    train = manifest.loc[manifest["split"] == "train", "label"].value_counts()
    texts = []
    for name in classes:
        if train.get(name, 0) == 0:
            where = manifest.loc[manifest["label"] == name, "split"].value_counts()
            went = ", ".join(f"{int(n)} in {split}" for split, n in where.items())
            texts.append(
                f"class {name!r} has no training image ({went}): the model cannot learn it. Add patients of it, "
                "change splits.seed or the split fractions, or leave it out (splits.heldout_conditions)."
            )
            log.warning(texts[-1])
    return texts


def _kind_warnings(indexed: list[IndexedFile], spec: CohortSpec) -> list[str]:
    """Photos inside a DICOM tree are often viewer screenshots (burned-in names); without a patient column each
    would become a patient of its own. Counted per instance (copies of one DICOM instance once)."""
    instances = {given(f.sop_uid) or f.relpath: f for f in indexed}
    kinds = pd.Series([f.kind for f in instances.values()]).value_counts()
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
