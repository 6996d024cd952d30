"""The cohort card (``cohort.json``): what a built cohort holds, for whom, what was left out, and how its images
were prepared; as a typed document (:class:`CohortCard`) and as tables a person reads (:func:`print_card`).

The card is the one declaration of a cohort's facts: datasets, training, evaluation and the report read its
fields (classes, inlier count, channels, manifest hash, subgroups, held-out sets), never keys of a dict.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medvision._documents import Document
from medvision.cohort.logscrub import PATH_WITHHELD
from medvision.cohort.normalise import category
from medvision.cohort.recipe import PreprocessRecipe
from medvision.cohort.spec import CohortSpec, PreprocessSpec

__all__ = [
    "CARD_FILE",
    "MANIFEST_VERSION",
    "BuildStats",
    "CaseSizes",
    "CaseStats",
    "CohortCard",
    "LabelStats",
    "SplitCounts",
    "build_card",
    "manifest_sha256",
    "print_card",
    "study_rules",
]

MANIFEST_VERSION = 1
CARD_FILE = "cohort.json"
UNLABELLED = "(unlabelled)"

_ORDER = ["train", "val", "test", "site_ood", "condition_ood", "unlabelled"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitCounts(_Part):
    """One split: images, patients, images per label, and images per subgroup value and label."""

    images: int
    patients: int
    by_label: dict[str, int]
    #: ``{attribute: {value: {label: images}}}``
    by_subgroup: dict[str, dict[str, dict[str, int]]] = Field(default_factory=dict)


class LabelStats(_Part):
    """What the labels join did (absent when the cohort has no labels CSV)."""

    csv_rows: int | None = None
    csv_rows_without_image: int | None = None
    images_without_label: int | None = None
    csv_rows_excluded: int | None = None
    #: Images each ``labels.map`` rule touched.
    label_map: dict[str, int] | None = None


class BuildStats(_Part):
    """How long the build took and how much came from the cache."""

    files: int
    index_seconds: float
    decode_seconds: float
    decoded_now: int
    from_cache: int


class CaseSizes(_Part):
    """Instances per case: smallest, median, largest."""

    min: int
    median: float
    max: int


class CaseStats(_Part):
    """What a cohort of series, studies or patients holds as cases (absent for ``unit: image``): how many (per
    split and label, beside the instances), how they were ordered, what was resampled, and how many were
    quarantined whole (their files are in quarantine.csv with the reason)."""

    unit: str
    cases: int
    instances: int
    instances_per_case: CaseSizes
    by_split: dict[str, int]
    by_label: dict[str, int]
    #: ``{ordering method: cases}`` (``position``, ``instance_number``, ...).
    ordering: dict[str, int]
    #: ``{note: cases}``: fallbacks and resampling a reader should know about.
    notes: dict[str, int] = Field(default_factory=dict)
    quarantined_cases: int = 0


class CohortCard(Document):
    """``cohort.json``: written by the build (:func:`build_card`, staged with the manifest), read by
    :func:`medvision.cohort.cohort.open_cohort` and everything above it through :class:`~medvision.cohort.Cohort`.

    ``classes`` lists the inlier classes, then the training-outlier conditions (index i is ``label_idx == i``).
    """

    document: ClassVar[str] = "cohort card (cohort.json)"
    remedy: ClassVar[str] = "rebuild the cohort with `medvision cohort build` (unchanged images come from the cache)"

    schema_version: Literal[1] = 1
    name: str
    manifest_version: int
    manifest_sha256: str
    images: int
    patients: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    classes: list[str]
    num_inlier_classes: int
    class_counts: dict[str, int]
    outlier_conditions: list[str]
    heldout_conditions: list[str]
    heldout_sites: list[str]
    label_fractions: list[float]
    subgroups: list[str]
    counts: dict[str, SplitCounts]
    labels: LabelStats
    rules: list[str]
    warnings: list[str] = Field(default_factory=list)
    #: Where the pseudonym key came from, and its fingerprint (a rebuild with another key is refused).
    pseudonym_key: str
    pseudonym_key_fingerprint: str | None = None
    build: BuildStats | None = None
    #: Cases of a series-, study- or patient-level cohort; ``None`` when every image is its own case.
    cases: CaseStats | None = None
    #: The spec the cohort was built from (JSON; paths withheld when ``record_paths`` is false).
    spec: dict[str, Any]

    @classmethod
    def upgrade(cls, raw: dict[str, Any]) -> dict[str, Any]:
        # Cards written before the version field had exactly this layout.
        if "schema_version" not in raw and raw.get("manifest_version") == MANIFEST_VERSION:
            raw["schema_version"] = 1
        return raw

    # -- the facts every later stage reads -------------------------------------------------------

    @property
    def inlier_classes(self) -> list[str]:
        """What a model predicts (the first ``num_inlier_classes`` of :attr:`classes`)."""
        return self.classes[: self.num_inlier_classes]

    @property
    def num_outlier_classes(self) -> int:
        return len(self.classes) - self.num_inlier_classes

    @property
    def preprocess(self) -> PreprocessSpec:
        """The cache's geometry and storage (the spec's ``preprocess`` section)."""
        return PreprocessSpec.model_validate(self.spec["preprocess"])

    @property
    def in_chans(self) -> int:
        return int(self.preprocess.channels)

    @property
    def recipe(self) -> PreprocessRecipe:
        """How a file became one of this cohort's training images (recorded in every classifier trained on it)."""
        spec = self.spec
        return PreprocessRecipe.from_spec(
            self.preprocess, spec.get("frames", "middle"), spec.get("kinds"), spec.get("max_megapixels")
        )

    @property
    def label_values(self) -> frozenset[str]:
        """Every label value in the cohort (held-out conditions and abstention classes included)."""
        return frozenset(k for c in self.counts.values() for k in c.by_label if k != UNLABELLED)

    @property
    def sites(self) -> frozenset[str]:
        return frozenset(v for c in self.counts.values() for v in c.by_subgroup.get("site", {}))

    @property
    def unit(self) -> str:
        """What one case is: ``image`` (every image its own case), ``series``, ``study`` or ``patient``."""
        return "image" if self.cases is None else self.cases.unit

    @property
    def nonempty_splits(self) -> frozenset[str]:
        return frozenset(s for s, c in self.counts.items() if c.images)


def _splits(card: CohortCard) -> list[str]:
    present = list(card.counts)
    return [s for s in _ORDER if s in present] + sorted(set(present) - set(_ORDER))


def print_card(card: CohortCard, console: Console | None = None) -> None:
    """Print the card as rich tables. Every name in it (cohort, class, subgroup value, reason) is user text and
    is escaped, so a class called ``[/]`` prints as typed instead of being read as rich markup (which raised)."""
    console = console or Console()
    splits = _splits(card)
    _print_header(card, console)
    _print_label_table(card, splits, console)
    for attr in card.subgroups:
        _print_subgroup_table(card, splits, attr, console)
    _print_notes(card, console)


def _print_header(card: CohortCard, console: Console) -> None:
    console.print(
        f"[bold]Cohort {escape(card.name)}[/bold]  {card.images} images, {card.patients} patients, "
        f"{card.quarantined} quarantined  (manifest v{card.manifest_version} "
        f"sha256 {card.manifest_sha256[:12]})"
    )
    if card.cases is not None:
        _print_cases(card.cases, console)
    outl, counts = card.outlier_conditions, card.class_counts
    named = [f"{c} ({counts[c]})" if c in counts else c for c in card.classes]
    console.print(
        f"classes: {', '.join(named)}" + (f"  (training outliers: {', '.join(outl)})" if outl else ""), markup=False
    )
    if card.heldout_conditions or card.heldout_sites:
        held = f"conditions {card.heldout_conditions or '-'}; sites {card.heldout_sites or '-'}"
        console.print(escape(f"held out: {held}"))


def _print_cases(cases: CaseStats, console: Console) -> None:
    size = cases.instances_per_case
    console.print(
        f"cases: {cases.cases} {cases.unit} case(s) of {cases.instances} instances "
        f"({size.min}-{size.max} per case, median {size.median:g}); per split "
        + ", ".join(f"{k} {v}" for k, v in cases.by_split.items())
        + f"; ordered by {', '.join(f'{k} ({v})' for k, v in cases.ordering.items())}; "
        f"{cases.quarantined_cases} quarantined whole",
        markup=False,
    )
    for note, n in cases.notes.items():
        console.print(f"  {note} ({n} case(s))", markup=False)


def _print_label_table(card: CohortCard, splits: list[str], console: Console) -> None:
    t = Table(title="Images per split and label")
    t.add_column("label")
    for s in splits:
        t.add_column(s, justify="right")
    labels = sorted({lab for s in splits for lab in card.counts[s].by_label})
    for lab in labels:
        t.add_row(escape(lab), *[str(card.counts[s].by_label.get(lab, 0)) for s in splits])
    t.add_row("[bold]patients[/bold]", *[str(card.counts[s].patients) for s in splits])
    t.add_row("[bold]images[/bold]", *[str(card.counts[s].images) for s in splits])
    console.print(t)


def _print_subgroup_table(card: CohortCard, splits: list[str], attr: str, console: Console) -> None:
    t = Table(title=escape(f"Images per split by {attr}"))
    t.add_column(escape(attr))
    for s in splits:
        t.add_column(s, justify="right")
    values = sorted({v for s in splits for v in card.counts[s].by_subgroup.get(attr, {})})
    for v in values:
        t.add_row(escape(v), *[str(sum(card.counts[s].by_subgroup.get(attr, {}).get(v, {}).values())) for s in splits])
    console.print(t)


def _print_notes(card: CohortCard, console: Console) -> None:
    """Quarantine reasons, build warnings, the study rules and what the labels join left unmatched."""
    if card.quarantine_reasons:
        t = Table(title="Quarantined files (see quarantine.csv)")
        t.add_column("reason")
        t.add_column("files", justify="right")
        for reason, n in sorted(card.quarantine_reasons.items(), key=lambda kv: -kv[1]):
            t.add_row(escape(reason), str(n))
        console.print(t)
    for warning in card.warnings:
        console.print(escape(f"warning: {warning}"), style="yellow")
    for rule in card.rules:
        console.print(f"rule: {rule}", markup=False)
    lab = card.labels
    if lab.csv_rows_without_image or lab.images_without_label:
        console.print(
            f"labels: {lab.csv_rows_without_image or 0} CSV rows match no image; "
            f"{lab.images_without_label or 0} images have no label (kept as unlabelled)"
        )


def manifest_sha256(manifest: pd.DataFrame) -> str:
    """Content hash of a manifest, independent of parquet library versions."""
    ordered = manifest.sort_values("image_id").reset_index(drop=True)
    return hashlib.sha256(ordered.to_csv(index=False).encode()).hexdigest()


def build_card(
    m: pd.DataFrame,
    q: pd.DataFrame,
    spec: CohortSpec,
    classes: list[str],
    label_stats: dict,
    key_source: str,
    *,
    key_fingerprint: str | None = None,
    warnings: list[str] | None = None,
    build: BuildStats | None = None,
    cases: CaseStats | None = None,
) -> CohortCard:
    """The card of a built manifest ``m`` and quarantine list ``q`` (the build's only writer of the card).

    When ``spec.record_paths`` is false the images folder and the labels CSV's folder are withheld: the folders'
    own names may be what identifies a patient.
    """
    subgroup_cols = (
        ["sex", "age_band", "site", *spec.labels.subgroup_columns] if spec.labels else ["sex", "age_band", "site"]
    )
    outliers = [c for c in spec.splits.outlier_conditions if c in classes]
    return CohortCard(
        class_counts={str(k): int(v) for k, v in m["label"].dropna().value_counts().sort_index().items()},
        rules=study_rules(m, spec, label_stats),
        name=spec.name,
        manifest_version=MANIFEST_VERSION,
        manifest_sha256=manifest_sha256(m),
        images=len(m),
        patients=int(m["patient_id"].nunique()),
        quarantined=len(q),
        quarantine_reasons={str(k): int(v) for k, v in q["reason"].value_counts().items()},
        classes=classes,
        num_inlier_classes=len(classes) - len(outliers),
        outlier_conditions=outliers,
        heldout_conditions=list(spec.splits.heldout_conditions),
        heldout_sites=list(spec.splits.heldout_sites),
        label_fractions=sorted(set(spec.splits.label_fractions) | {1.0}),
        subgroups=subgroup_cols,
        counts={str(split): _split_counts(g, subgroup_cols) for split, g in m.groupby("split", sort=True)},
        labels=LabelStats.model_validate(label_stats),
        pseudonym_key=key_source,
        pseudonym_key_fingerprint=key_fingerprint,
        warnings=list(warnings or []),
        build=build,
        cases=cases,
        spec=_recorded_spec(spec),
    )


def _split_counts(g: pd.DataFrame, subgroup_cols: list[str]) -> SplitCounts:
    def by_label(rows: pd.DataFrame) -> dict[str, int]:
        return {str(k): int(v) for k, v in rows["label"].fillna(UNLABELLED).value_counts().sort_index().items()}

    return SplitCounts(
        images=len(g),
        patients=int(g["patient_id"].nunique()),
        by_label=by_label(g),
        by_subgroup={col: {str(val): by_label(gg) for val, gg in g.groupby(col, sort=True)} for col in subgroup_cols},
    )


def _recorded_spec(spec: CohortSpec) -> dict[str, Any]:
    recorded: dict[str, Any] = spec.model_dump(mode="json")
    if not spec.record_paths:  # the folders' own names may be what identifies a patient
        recorded["images"] = PATH_WITHHELD
        if recorded.get("labels"):
            recorded["labels"]["csv"] = str(spec.labels.csv.name) if spec.labels else None
    return recorded


def study_rules(m: pd.DataFrame, spec: CohortSpec, label_stats: dict) -> list[str]:
    """The rules that decided what each evaluation set holds, as sentences with the number of images they touched.

    Said in the card (and so in the report) because each one changes what a metric measures.
    """
    sp, rules = spec.splits, []
    if sp.heldout_sites and sp.heldout_conditions:
        sites = {category(s) for s in sp.heldout_sites}
        moved = int(((m["site"].isin(sites)) & (m["split"] == "condition_ood")).sum())
        rules.append(
            f"patients of a held-out site ({', '.join(sp.heldout_sites)}) with a held-out condition "
            f"({', '.join(sp.heldout_conditions)}) go to condition_ood, not site_ood: {moved} image(s)"
        )
    if sp.heldout_conditions:
        other = int(((m["split"] == "condition_ood") & ~m["label"].isin(sp.heldout_conditions)).sum())
        if other:
            rules.append(
                f"condition_ood also holds {other} other image(s) of its patients; they are not scored as outliers"
            )
    if sp.outlier_conditions:
        shown = m[m["label"].isin(sp.outlier_conditions) & m["split"].isin(["val", "test", "site_ood"])]
        by_split = ", ".join(f"{k} {v}" for k, v in shown["split"].value_counts().sort_index().items()) or "none"
        rules.append(
            f"abstention classes ({', '.join(sp.outlier_conditions)}) are trained on as outliers (label_idx after "
            f"the inlier classes) and left out of every discrimination metric and of the OOD inliers ({by_split})"
        )
    lab = spec.labels
    if lab is not None and (lab.include or lab.exclude):
        rules.append(
            f"labels CSV rows filtered (include {lab.include or '-'}, exclude {lab.exclude or '-'}): "
            f"{label_stats.get('csv_rows_excluded', 0)} row(s) dropped, their images quarantined"
        )
    if lab is not None and lab.map:
        touched = label_stats.get("label_map") or {}
        parts = [
            f"{k!r} -> {'(unlabelled)' if v is None else repr(v)} ({touched.get(k, 0)})" for k, v in lab.map.items()
        ]
        rules.append(f"label values mapped: {'; '.join(parts)}")
    return rules
