"""Cohort specification: the one YAML file that says how a folder of images becomes a cohort.

Every default lives here and nowhere else, and unknown keys are rejected (``extra="forbid"``),
so a typo in ``cohorts/NAME.yaml`` fails at load time naming the key, before any file is read.
Relative paths in a spec are resolved against the spec file's folder, so a cohort folder can
be moved or shared as a whole.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from medvision.config import ConfigError, StrictModel, explain_validation_error, read_yaml

__all__ = [
    "CohortSpec",
    "FolderOptions",
    "LabelsSpec",
    "PreprocessSpec",
    "SpecError",
    "SplitSpec",
    "SubgroupSpec",
    "load_spec",
    "spec_from_folder",
]


class _Strict(StrictModel):
    """Config strictness shared with every other medvision config (typos fail, with a did-you-mean); specs are also
    frozen, because a built cohort's card records the spec it was built from."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelsSpec(_Strict):
    """Where labels come from and how a CSV row finds its image."""

    csv: Path
    #: What identifies an image in the CSV: the DICOM SOPInstanceUID, the path relative to the
    #: images folder, the file name, or the file name without suffix (PAD-UFES-style ``img_id``).
    join: Literal["sop_instance_uid", "relpath", "filename", "stem"] = "relpath"
    key_column: str = Field(description="CSV column holding the join key")
    #: One column: multi-class labels (any values). Several columns: multi-label, each 0/1.
    label_columns: list[str] = Field(min_length=1)
    #: CSV column with the patient identifier; required for photos, optional for DICOM
    #: (PatientID is used otherwise). It is pseudonymised like any patient id.
    patient_column: str | None = None
    #: Subgroup attributes taken from CSV columns: ``{name in the manifest: CSV column}``.
    subgroup_columns: dict[str, str] = Field(default_factory=dict)
    #: A CSV column that names the acquisition site (overrides the DICOM-derived site).
    site_column: str | None = None
    #: CSV columns for sex and age when the headers lack them (photos).
    sex_column: str | None = None
    age_column: str | None = None
    #: A CSV column holding a given split (``train``/``val``/``test``), e.g. an official benchmark
    #: split; it replaces the drawn patient split (held-out sites and conditions still apply).
    split_column: str | None = None


class SubgroupSpec(_Strict):
    #: Where "site" comes from in DICOM headers when no CSV column gives it.
    site_from: Literal["institution", "manufacturer", "institution+manufacturer"] = "institution"
    #: Lower edges of the age bands, in years: [18, 40, 60, 80] gives <18, 18-39, 40-59, 60-79, 80+.
    age_bands: list[int] = Field(default_factory=lambda: [18, 40, 60, 80])

    @field_validator("age_bands")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if v != sorted(set(v)) or any(a <= 0 for a in v):
            raise ValueError("age_bands must be strictly increasing positive ages, e.g. [18, 40, 60, 80]")
        return v


class SplitSpec(_Strict):
    """Patient-level splits. Held-out sites/conditions are removed before train/val/test are drawn."""

    seed: int = 0
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    #: Stratify the patient split by these manifest columns (patient-level majority value).
    stratify: list[Literal["label", "site"]] = Field(default_factory=lambda: ["label", "site"])
    #: Every image from these sites goes to ``site_ood`` (a test set from an unseen site).
    heldout_sites: list[str] = Field(default_factory=list)
    #: Label values that are never trained on: their images go to ``condition_ood``.
    heldout_conditions: list[str] = Field(default_factory=list)
    #: Label values seen in training as outliers (HOD abstention classes); they stay in train/val/test.
    outlier_conditions: list[str] = Field(default_factory=list)
    #: Nested shares of training patients (stratified); 1.0 is always included.
    label_fractions: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0])

    @model_validator(mode="after")
    def _check(self) -> SplitSpec:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        if any(not 0 < f <= 1 for f in self.label_fractions):
            raise ValueError("label_fractions must lie in (0, 1]")
        both = set(self.heldout_conditions) & set(self.outlier_conditions)
        if both:
            raise ValueError(f"{sorted(both)} cannot be both held out and a training outlier condition")
        return self


class PreprocessSpec(_Strict):
    """What the cache stores. Any change here gives a new cache key, so no stale image is ever read."""

    size: int = Field(224, ge=8, le=4096)
    channels: Literal[1, 3] = 3
    #: ``stretch`` resizes to a square; ``pad`` keeps the aspect ratio and pads with black.
    fit: Literal["stretch", "pad"] = "stretch"
    #: Storage type of the cached pixels: uint8 (a quarter of the space) or float16.
    dtype: Literal["uint8", "float16"] = "uint8"


class CohortSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    images: Path
    labels: LabelsSpec | None = None
    #: Multi-frame objects: the middle frame, the mean of all frames, or one instance per frame.
    frames: Literal["middle", "mean", "all"] = "middle"
    subgroups: SubgroupSpec = Field(default_factory=SubgroupSpec)
    splits: SplitSpec = Field(default_factory=SplitSpec)
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    #: Record each image's path (relative to ``images``) in the manifest. Set false when folder or
    #: file names carry patient identifiers: the build refuses to write such paths otherwise.
    record_paths: bool = True
    #: File with the secret key for pseudonyms. Default: $MEDVISION_PSEUDONYM_KEY, else
    #: ~/.config/medvision/pseudonym.key (created on first use). Must lie outside the output folder.
    pseudonym_key_file: Path | None = None
    #: Header-indexing and decoding processes; 0 = one per CPU core.
    workers: int = Field(0, ge=0)

    def resolved(self, base: Path) -> CohortSpec:
        """Paths made absolute against ``base`` (the spec file's folder)."""

        def fix(p: Path | None) -> Path | None:
            return None if p is None else (p if p.is_absolute() else (base / p).resolve())

        upd: dict[str, object] = {"images": fix(self.images), "pseudonym_key_file": fix(self.pseudonym_key_file)}
        if self.labels is not None:
            upd["labels"] = self.labels.model_copy(update={"csv": fix(self.labels.csv)})
        return self.model_copy(update=upd)


class FolderOptions(_Strict):
    """A cohort from an image folder and a labels CSV without writing a spec: the defaults of
    ``medvision cohort build --images``, of a pipeline's ``folder:`` source and of :func:`spec_from_folder`, declared
    once here. Everything else takes :class:`CohortSpec`'s defaults."""

    labels: Path | None = None
    #: CSV column that identifies the image; ``None``: the CSV's first column.
    key_column: str | None = None
    #: What the key column holds (see :attr:`LabelsSpec.join`).
    join: Literal["sop_instance_uid", "relpath", "filename", "stem"] = "stem"
    label_column: str = "label"
    patient_column: str | None = None
    #: Subgroup attributes from CSV columns: ``{name in the manifest: CSV column}``.
    subgroups: dict[str, str] = Field(default_factory=dict)
    sex_column: str | None = None
    age_column: str | None = None
    site_column: str | None = None
    size: int = Field(224, ge=8, le=4096)
    channels: Literal[1, 3] = 3
    #: See :attr:`CohortSpec.record_paths`; the build refuses paths that spell a patient identifier.
    record_paths: bool = True
    #: Cohort name; ``None``: the images folder's name (its parent's for a folder called ``images``).
    name: str | None = None


def spec_from_folder(images: Path, options: FolderOptions | None = None, **kwargs: object) -> CohortSpec:
    """A spec with defaults for everything but the folder and the CSV columns (``cohort build --images``).

    Options come as a :class:`FolderOptions` or as its keywords (``labels=..., join="filename"``).
    """
    try:
        opts = options or FolderOptions.model_validate(kwargs)
    except ValidationError as e:
        raise SpecError(explain_validation_error(e, FolderOptions, "options of cohort build")) from e
    images = Path(images).expanduser().resolve()
    lab = None
    if opts.labels is not None:
        labels = Path(opts.labels).expanduser().resolve()
        key_column = opts.key_column
        if key_column is None:
            with open(labels, newline="") as fh:
                header = next(csv.reader(fh), [])
            if not header:
                raise SpecError(f"labels CSV {labels} is empty")
            key_column = header[0]
        lab = {
            "csv": labels,
            "join": opts.join,
            "key_column": key_column,
            "label_columns": [opts.label_column],
            "patient_column": opts.patient_column,
            "subgroup_columns": opts.subgroups,
            "sex_column": opts.sex_column,
            "age_column": opts.age_column,
            "site_column": opts.site_column,
        }
    default_name = images.parent.name if images.name in ("images", "imgs", "dicom") else images.name
    raw = {
        "name": opts.name or default_name or "cohort",
        "images": images,
        "labels": lab,
        "record_paths": opts.record_paths,
        "preprocess": {"size": opts.size, "channels": opts.channels},
    }
    try:
        return CohortSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(explain_validation_error(e, CohortSpec, "options of cohort build")) from e


class SpecError(ValueError):
    """A cohort spec that cannot be used; the message names the file and the key."""


def load_spec(path: str | Path) -> CohortSpec:
    """Load and validate a cohort spec; relative paths are taken from the spec's folder."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text(), str(path))  # safe loader; alias bombs refused before expansion
    except FileNotFoundError as e:
        raise SpecError(f"{path}: no such cohort spec") from e
    except ConfigError as e:
        raise SpecError(str(e)) from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a cohort spec is a mapping of keys (name, images, labels, splits, ...)")
    try:
        spec = CohortSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(explain_validation_error(e, CohortSpec, f"cohort spec {path}")) from e
    return spec.resolved(path.parent.resolve())
