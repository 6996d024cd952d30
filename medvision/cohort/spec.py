"""Cohort specification: the one YAML file that says how a folder of images becomes a cohort.

Every default lives here and nowhere else, and unknown keys are rejected (``extra="forbid"``),
so a typo in ``cohorts/NAME.yaml`` fails at load time naming the key, before any file is read.
Relative paths in a spec are resolved against the spec file's folder, so a cohort folder can
be moved or shared as a whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from medvision.cohort.csvfile import csv_header
from medvision.config import ConfigError, StrictModel, explain_validation_error, read_yaml
from medvision.errors import InputError

__all__ = [
    "BUILTIN_COLUMNS",
    "CohortSpec",
    "DicomWebPacs",
    "DimsePacs",
    "FolderOptions",
    "LabelsSpec",
    "PacsQuery",
    "PacsRequestList",
    "PacsSpec",
    "PreprocessSpec",
    "SpecError",
    "SplitSpec",
    "SubgroupSpec",
    "load_pacs_spec",
    "load_spec",
    "spec_from_folder",
]


class _Strict(StrictModel):
    """Config strictness shared with every other medvision config (typos fail, with a did-you-mean); specs are also
    frozen, because a built cohort's card records the spec it was built from."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: Manifest columns the build writes itself (:mod:`medvision.cohort.build`); a CSV subgroup may not take one of
#: these names, or one of the two values would silently win (``--subgroup view=view`` would read DICOM's view).
BUILTIN_COLUMNS = frozenset(
    {
        "image_id", "patient_id", "study_id", "series_id", "relpath", "frame", "split", "label_fraction", "label",
        "label_idx", "kind", "sex", "age_band", "site", "modality", "view", "photometric", "transfer_syntax",
        "height", "width", "channels", "content_sha256", "cache_key", "given_split", "ood_score",
        "case_id", "instance_index", "slice_position", "slice_spacing", "case_ordering",
    }
)  # fmt: skip
#: CSV column names that hold identifiers by their name: never copied into the manifest as a subgroup.
_IDENTIFIER_NAME = re.compile(
    r"^(patient|patient[ _-]?(id|name|number|no)|mrn|medical[ _-]?record.*|accession([ _-]?(number|no))?|"
    r"(birth[ _-]?date|date[ _-]?of[ _-]?birth|dob)|(first|last|given|family)[ _-]?name|name|ssn|"
    r"nhs[ _-]?(number|no))$",
    re.IGNORECASE,
)


class LabelsSpec(_Strict):
    """Where labels come from and how a CSV row finds its image.

    Row filters and a label map turn a raw metadata file into the study's labels without writing a derived CSV
    by hand: ``include``/``exclude`` keep or drop CSV rows by the values of any column (an image whose row is
    dropped is quarantined with the filter as its reason, so every file is still accounted for), and ``map``
    renames label values (merging classes) or, mapped to ``null``, drops a value so its images are unlabelled.
    Both are recorded in the card with the number of rows they touched.
    """

    csv: Path
    #: What identifies an image in the CSV: the DICOM SOPInstanceUID, the path relative to the
    #: images folder, the file name, or the file name without suffix (PAD-UFES-style ``img_id``); or, for labels
    #: that belong to a whole series or study (a radiology report), its Series / Study Instance UID: the row's
    #: values then go to every instance of it.
    join: Literal["sop_instance_uid", "relpath", "filename", "stem", "series_instance_uid", "study_instance_uid"] = (
        "relpath"
    )
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
    #: Keep only CSV rows whose column holds one of the values: ``{modality: [CR, DX]}`` (all columns must match).
    include: dict[str, list[str]] = Field(default_factory=dict)
    #: Drop CSV rows whose column holds one of the values: ``{finding: [todo]}`` (any column matching drops).
    exclude: dict[str, list[str]] = Field(default_factory=dict)
    #: Label values renamed (``{"COVID-19, ARDS": COVID-19}``) or, mapped to ``null``, made unlabelled. Applied
    #: after the filters, to the label column(s) of a multi-class study.
    map: dict[str, str | None] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _subgroups_do_not_shadow(self) -> LabelsSpec:
        for name, column in self.subgroup_columns.items():
            if name in BUILTIN_COLUMNS or name.startswith(("label__", "p:")):
                raise ValueError(
                    f"subgroup name {name!r} (from CSV column {column!r}) is a column the build writes itself "
                    f"(built-in {name!r}); one would silently overwrite the other. Give it another name, e.g. "
                    f"csv_{name}: {column} (--subgroup csv_{name}={column})"
                )
            used = {"labels.key_column": self.key_column, "labels.patient_column": self.patient_column}
            clash = [k for k, c in used.items() if c == column]
            if clash or _IDENTIFIER_NAME.match(column.strip()):
                why = f"it is {clash[0]}" if clash else "its name says it holds identifiers"
                raise ValueError(
                    f"subgroup {name!r} would copy CSV column {column!r} into the manifest, but {why}: identifiers "
                    "never leave the cohort layer. Use the column as labels.patient_column (it is pseudonymised) "
                    "and drop it from the subgroups"
                )
        return self


#: Every split a built cohort can hold (evaluation settings name sets from these).
SPLITS = ("train", "val", "test", "site_ood", "condition_ood", "unlabelled")


class SubgroupSpec(_Strict):
    #: Where "site" comes from in DICOM headers when no CSV column gives it. The default copies InstitutionName
    #: verbatim into the manifest, card, metrics and report, so it reveals which hospital the images come from;
    #: ``institution_pseudonym`` stores a keyed pseudonym of it instead (``H-...``, stable under one key).
    site_from: Literal["institution", "institution_pseudonym", "manufacturer", "institution+manufacturer"] = (
        "institution"
    )
    #: Lower edges of the age bands, in years: [18, 40, 60, 80] gives <18, 18-39, 40-59, 60-79, 80+.
    age_bands: list[int] = Field(default_factory=lambda: [18, 40, 60, 80])

    @field_validator("age_bands")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if v != sorted(set(v)) or any(a <= 0 for a in v):
            raise ValueError("age_bands must be strictly increasing positive ages, e.g. [18, 40, 60, 80]")
        return v


_StratifyColumn = Literal["label", "site"]
_STRATIFY_DEFAULT: tuple[_StratifyColumn, ...] = ("label", "site")


class SplitSpec(_Strict):
    """Patient-level splits. Held-out sites/conditions are removed before train/val/test are drawn."""

    seed: int = 0
    train: float = Field(default=0.7, gt=0, lt=1)
    val: float = Field(default=0.1, gt=0, lt=1)
    test: float = Field(default=0.2, gt=0, lt=1)
    #: Stratify the patient split by these manifest columns (patient-level majority value).
    stratify: list[_StratifyColumn] = Field(default_factory=lambda: list(_STRATIFY_DEFAULT))
    #: Every patient with an image from these sites goes to ``site_ood`` (a test set from an unseen site),
    #: except patients with a held-out condition: they go to ``condition_ood``, because a condition that was
    #: never trained on cannot be scored as an in-distribution class at any site. The card states this rule
    #: and how many images it moved.
    heldout_sites: list[str] = Field(default_factory=list)
    #: Label values that are never trained on: their images go to ``condition_ood``.
    heldout_conditions: list[str] = Field(default_factory=list)
    #: Label values seen in training as outliers (HOD abstention classes); they stay in train/val/test, take
    #: ``label_idx`` K..K+M-1 after the K inlier classes, and are left out of every discrimination metric and
    #: of the inliers of OOD screening (the card, metrics.json and the report say so).
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

    size: int = Field(default=224, ge=8, le=4096)
    channels: Literal[1, 3] = 3
    #: ``stretch`` resizes to a square; ``pad`` keeps the aspect ratio and pads with black.
    fit: Literal["stretch", "pad"] = "stretch"
    #: Storage type of the cached pixels: uint8 (a quarter of the space) or float16.
    dtype: Literal["uint8", "float16"] = "uint8"


class PacsQuery(_Strict):
    """Which studies and series to pull. Keys left out do not restrict; DICOM wildcards (``*``, ``?``) work in
    the descriptions. Patient IDs and accession numbers never go here: they belong in the request CSV."""

    #: Modalities in the study (``ModalitiesInStudy``) and of the pulled series (``Modality``).
    modality: list[str] = Field(default_factory=list)
    #: ``YYYYMMDD-YYYYMMDD`` (either end may be left open) or one ``YYYYMMDD``.
    study_date: str | None = Field(default=None, pattern=r"^(\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8})$")
    study_description: str | None = None
    series_description: str | None = None
    #: ``BodyPartExamined`` of the series, e.g. CHEST.
    body_part: str | None = None

    def is_empty(self) -> bool:
        return not (
            self.modality or self.study_date or self.study_description or self.series_description or self.body_part
        )


class PacsRequestList(_Strict):
    """A CSV listing the studies an ethics board approved: one identifier per row."""

    csv: Path
    column: str
    #: What the column holds; each value becomes one study-level query (ANDed with ``query``).
    key: Literal["AccessionNumber", "StudyInstanceUID", "PatientID"]


class _PacsCommon(_Strict):
    """What every PACS pull needs, whatever the protocol.

    Credentials are never part of a spec: they come from $MEDVISION_PACS_USER + $MEDVISION_PACS_PASSWORD,
    $MEDVISION_PACS_TOKEN, or ``credentials_file`` (a file only the user can read).
    """

    #: The local content-addressed store the instances are pulled into (outside the cohort output);
    #: the cohort's ``images`` defaults to its ``instances`` folder.
    store: Path
    query: PacsQuery = Field(default_factory=PacsQuery)
    request_list: PacsRequestList | None = None
    #: Instances retrieved at once (HTTP requests or DIMSE associations).
    concurrency: int = Field(default=4, ge=1, le=32)
    #: Attempts after the first on timeouts, refused or lost connections and 408/429/5xx answers (exponential
    #: back-off from 0.25 s).
    retries: int = Field(default=3, ge=0, le=10)
    timeout: float = Field(default=30.0, gt=0, description="seconds per request")

    @model_validator(mode="after")
    def _not_everything(self) -> _PacsCommon:
        if self.query.is_empty() and self.request_list is None:
            raise ValueError(
                "pacs needs a query (modality, study_date, ...) or a request_list; an empty "
                "request would pull the whole archive"
            )
        return self

    def resolved(self, fix: Callable[[Path | None], Path | None]) -> Self:
        """Paths made absolute by ``fix`` (see :meth:`CohortSpec.resolved`)."""
        req = self.request_list
        return self.model_copy(
            update={
                "store": fix(self.store),
                "request_list": None if req is None else req.model_copy(update={"csv": fix(req.csv)}),
            }
        )


class DicomWebPacs(_PacsCommon):
    """A pull by DICOMweb (QIDO-RS searches, WADO-RS retrieval)."""

    protocol: Literal["dicomweb"]
    #: DICOMweb base URL (QIDO-RS and WADO-RS), e.g. ``https://pacs.example.org/dicom-web``.
    url: str
    auth: Literal["none", "basic", "bearer"] = "none"
    credentials_file: Path | None = None
    #: TLS certificate verification (DICOMweb over https); a CA bundle file for a hospital's own CA.
    verify_tls: bool = True
    ca_bundle: Path | None = None

    @field_validator("url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("pacs.url must be the DICOMweb base URL (http:// or https://) for protocol dicomweb")
        if "@" in url.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError(
                "pacs.url must not hold credentials; set $MEDVISION_PACS_USER and "
                "$MEDVISION_PACS_PASSWORD (or pacs.credentials_file) instead"
            )
        return url

    def resolved(self, fix: Callable[[Path | None], Path | None]) -> Self:
        base = super().resolved(fix)
        return base.model_copy(
            update={"credentials_file": fix(self.credentials_file), "ca_bundle": fix(self.ca_bundle)}
        )


class DimsePacs(_PacsCommon):
    """A pull by DIMSE (C-FIND, then C-GET on our own association: nothing needs to reach us)."""

    protocol: Literal["dimse"]
    #: The PACS host and port, its AE title, and ours (the PACS must know our AE title).
    host: str
    port: int = Field(ge=1, le=65535)
    called_aet: str = Field(default="ANY-SCP", max_length=16)
    calling_aet: str = Field(default="MEDVISION", max_length=16)

    @model_validator(mode="before")
    @classmethod
    def _no_passwords(cls, raw: object) -> object:
        if isinstance(raw, dict) and ({"auth", "credentials_file"} & set(raw)) and raw.get("auth") != "none":
            raise ValueError(
                "DIMSE has no passwords: the PACS admits our AE title (pacs.calling_aet); remove pacs.auth and "
                "pacs.credentials_file"
            )
        if isinstance(raw, dict) and raw.get("auth") == "none":
            raw = {k: v for k, v in raw.items() if k != "auth"}
        return raw


#: Where a cohort's instances come from when they live in a PACS (``medvision cohort pull``): one model per
#: protocol, chosen by ``protocol``, so each transport receives exactly the fields it needs, validated once.
def _protocol(raw: object) -> object:
    return raw.get("protocol") if isinstance(raw, dict) else getattr(raw, "protocol", None)


PacsSpec = Annotated[
    Annotated[DicomWebPacs, Tag("dicomweb")] | Annotated[DimsePacs, Tag("dimse")],
    Discriminator(
        _protocol,
        custom_error_type="pacs_protocol",
        custom_error_message="pacs.protocol must be dicomweb (with url) or dimse (with host and port)",
    ),
]


class CohortSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    #: The images folder; with a ``pacs`` section it defaults to ``<pacs.store>/instances``.
    images: Path
    #: Pull the images from a PACS first (``medvision cohort pull``); the build then reads the store.
    pacs: PacsSpec | None = None
    labels: LabelsSpec | None = None
    #: Multi-frame objects: the middle frame, the mean of all frames, or one instance per frame.
    frames: Literal["middle", "mean", "all"] = "middle"
    #: What a case (the thing a label, a prediction and a metric belong to) is: one ``image`` (each instance), or
    #: every instance of a DICOM ``series``, a ``study`` or a ``patient``, as one bag in a stable order (slices
    #: along their normal, see :mod:`medvision.cohort.cases`). A case that cannot be ordered, or whose instances
    #: disagree on the label, is quarantined whole; the manifest keeps one row per instance with its ``case_id``.
    unit: Literal["image", "series", "study", "patient"] = "image"
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
    workers: int = Field(default=0, ge=0)
    #: Cap on an image's declared size (columns x rows x frames x samples per pixel, in millions), checked from
    #: the header before any pixel is decoded: a 1 KB file can claim 60000 x 60000 pixels and exhaust memory.
    #: 200 admits a 12-bit 4096 x 4096 mammogram, a 6000 x 4000 RGB photo and a 512 x 512 x 700 CT volume.
    max_megapixels: float = Field(default=200.0, gt=0)
    #: Reader kinds to ingest (``[dicom]``, ``[photo]``); default: every supported kind. ``[dicom]`` keeps viewer
    #: screenshots stored beside DICOM series out of the cohort.
    kinds: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _images_from_store(cls, raw: object) -> object:
        if (
            isinstance(raw, dict)
            and raw.get("images") is None
            and isinstance(raw.get("pacs"), dict)
            and raw["pacs"].get("store") is not None
        ):
            raw = {**raw, "images": Path(raw["pacs"]["store"]) / "instances"}
        return raw

    def resolved(self, base: Path) -> CohortSpec:
        """Paths made absolute against ``base`` (the spec file's folder)."""

        def fix(p: Path | None) -> Path | None:
            return None if p is None else (p if p.is_absolute() else (base / p).resolve())

        upd: dict[str, object] = {"images": fix(self.images), "pseudonym_key_file": fix(self.pseudonym_key_file)}
        if self.labels is not None:
            upd["labels"] = self.labels.model_copy(update={"csv": fix(self.labels.csv)})
        if self.pacs is not None:
            upd["pacs"] = self.pacs.resolved(fix)
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
    #: Sites, label values and abstention classes of the study (see :class:`SplitSpec`).
    heldout_sites: list[str] = Field(default_factory=list)
    heldout_conditions: list[str] = Field(default_factory=list)
    outlier_conditions: list[str] = Field(default_factory=list)
    size: int = Field(default=224, ge=8, le=4096)
    channels: Literal[1, 3] = 3
    #: See :attr:`CohortSpec.record_paths`; the build refuses paths that spell a patient identifier.
    record_paths: bool = True
    #: Cohort name; ``None``: the images folder's name (its parent's for a folder called ``images``).
    name: str | None = None
    #: See :attr:`CohortSpec.kinds`.
    kinds: list[str] | None = None


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
            key_column = csv_header(labels)[0]
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
        "kinds": opts.kinds,
        "preprocess": {"size": opts.size, "channels": opts.channels},
        "splits": {
            "heldout_sites": opts.heldout_sites,
            "heldout_conditions": opts.heldout_conditions,
            "outlier_conditions": opts.outlier_conditions,
        },
    }
    try:
        return CohortSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(explain_validation_error(e, CohortSpec, "options of cohort build")) from e


class SpecError(InputError):
    """A cohort spec that cannot be used; the message names the file and the key (exit code 2)."""


def load_spec(path: str | Path) -> CohortSpec:
    """Load and validate a cohort spec; relative paths are taken from the spec's folder."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text(), str(path))  # safe loader; alias bombs refused before expansion
    except FileNotFoundError as e:
        where = "" if path.is_absolute() else f" (looked for {path.resolve()}: relative to the current directory)"
        raise SpecError(f"{path}: no such cohort spec{where}") from e
    except ConfigError as e:
        raise SpecError(str(e)) from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a cohort spec is a mapping of keys (name, images, labels, splits, ...)")
    try:
        spec = CohortSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(explain_validation_error(e, CohortSpec, f"cohort spec {path}")) from e
    return spec.resolved(path.parent.resolve())


class _PacsFile(_Strict):
    """A PACS request alone (``medvision predict --pacs SPEC``), validated under the key ``pacs`` so that a typo is
    reported exactly as in a cohort spec's ``pacs:`` section (``pacs.qeury: unknown key. Did you mean query?``)."""

    pacs: PacsSpec


def load_pacs_spec(path: str | Path) -> PacsSpec:
    """Load and validate a PACS request file: the mapping a cohort spec holds under ``pacs:`` (or that mapping
    under a ``pacs:`` key), with relative paths taken from the file's folder, as in :func:`load_spec`.

    Raises:
        SpecError: no such file, not a mapping, or a key or value the ``pacs`` section does not accept; raised
            before anything talks to a PACS.
    """
    path = Path(path)
    try:
        raw = read_yaml(path.read_text(), str(path))
    except FileNotFoundError as e:
        raise SpecError(f"{path}: no such PACS request (the pacs section of a cohort spec)") from e
    except ConfigError as e:
        raise SpecError(str(e)) from None
    if isinstance(raw, dict) and set(raw) == {"pacs"}:
        raw = raw["pacs"]
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a PACS request is a mapping of keys (protocol, store, query, ...), as under pacs:")
    try:
        section = _PacsFile.model_validate({"pacs": raw}).pacs
    except ValidationError as e:
        raise SpecError(explain_validation_error(e, _PacsFile, f"PACS request {path}")) from e
    base = path.parent.resolve()
    return section.resolved(lambda p: None if p is None else (p if p.is_absolute() else (base / p).resolve()))
