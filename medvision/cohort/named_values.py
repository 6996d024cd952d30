"""Every value a study names must exist in its data: sites, conditions, abstention classes, subgroups, classes.

A misspelt held-out site builds a cohort with no site-OOD set; a misspelt held-out condition is *trained on*.
Neither fails by itself, so this module compares what a spec (or an evaluation's settings) names with the values
the data holds, after the normalisation the build applies (:mod:`medvision.cohort.normalise`), and fails naming
the value, what exists, and the closest spelling. The same check runs in the build (against the indexed images)
and in ``medvision run --check`` (against the labels CSV, before anything runs).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medvision.cohort.csvfile import read_csv_table
from medvision.cohort.label_rules import apply_label_map, check_columns, filter_rows
from medvision.cohort.normalise import category
from medvision.cohort.spec import CohortSpec, SpecError

if TYPE_CHECKING:
    import pandas as pd

    from medvision.cohort.card import CohortCard

__all__ = [
    "CohortFacts",
    "check_heldout_sets_not_empty",
    "check_named_values",
    "closest",
    "facts_from_card",
    "facts_from_labels",
    "facts_from_rows",
    "unknown_values",
]

#: Subgroup attributes every cohort has (manifest columns derived by the build).
STANDARD_ATTRIBUTES = ("sex", "age_band", "site")


@dataclass(frozen=True)
class CohortFacts:
    """The values a cohort holds, as the build stores them; ``None`` where they are not known yet.

    Attributes:
        labels: every label value (before held-out conditions and abstention classes are set apart).
        sites: every site, or ``None`` when sites come from DICOM headers not yet indexed.
        attributes: subgroup attributes an evaluation may group by.
        heldout_conditions / heldout_sites / outlier_conditions: what the spec sets apart.
        splits: the cohort's non-empty splits, or ``None`` before the build.
    """

    labels: frozenset[str] | None
    sites: frozenset[str] | None
    attributes: tuple[str, ...]
    heldout_conditions: tuple[str, ...] = ()
    heldout_sites: tuple[str, ...] = ()
    outlier_conditions: tuple[str, ...] = ()
    splits: frozenset[str] | None = None
    source: str = "the data"

    @property
    def classes(self) -> list[str] | None:
        """Inlier classes: what a model predicts and ``positive_class`` may name."""
        if self.labels is None:
            return None
        return sorted(self.labels - set(self.heldout_conditions) - set(self.outlier_conditions))


def closest(value: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``value`` (case differences first), for a did-you-mean."""
    choices = [str(c) for c in choices]
    same_case = [c for c in choices if c.lower() == value.lower()]
    if same_case:
        return same_case[0]
    match = difflib.get_close_matches(value.lower(), [c.lower() for c in choices], n=1, cutoff=0.5)
    if match:
        return next(c for c in choices if c.lower() == match[0])
    prefix = [c for c in choices if c[:3].lower() == value[:3].lower()]  # agegroup -> age_band
    return prefix[0] if len(prefix) == 1 else None


def unknown_values(what: str, key: str, named: Iterable[str], existing: Iterable[str], source: str) -> list[str]:
    """One problem line per named value that does not exist, with what exists and the closest match."""
    existing = sorted({str(e) for e in existing})
    lines = []
    for value in named:
        if value in existing:
            continue
        near = closest(str(value), existing)
        shown = ", ".join(existing[:20]) + (f", ... ({len(existing)} in all)" if len(existing) > 20 else "")
        lines.append(
            f"  - {key}: {what} {value!r} does not exist in {source}"
            + (f"; did you mean {near!r}?" if near else ".")
            + f" Existing: {shown or '(none)'}"
        )
    return lines


def check_named_values(spec: CohortSpec, facts: CohortFacts) -> None:
    """Fail unless every site, condition and abstention class ``spec`` names exists in ``facts``.

    Raises:
        SpecError: one line per unknown value (what exists, the closest spelling).
    """
    problems: list[str] = []
    sp = spec.splits
    if facts.labels is not None:
        for key, values in (
            ("splits.heldout_conditions", sp.heldout_conditions),
            ("splits.outlier_conditions", sp.outlier_conditions),
        ):
            problems += unknown_values("label value", key, values, facts.labels, facts.source)
    if facts.sites is not None:
        named = [category(s) for s in sp.heldout_sites]
        problems += unknown_values("site", "splits.heldout_sites", named, facts.sites, facts.source)
    if problems:
        raise SpecError(f"cohort {spec.name}: the spec names values its data does not have:\n" + "\n".join(problems))


def check_heldout_sets_not_empty(spec: CohortSpec, counts: dict[str, int]) -> None:
    """A held-out site or condition that exists but whose set ends up empty (every patient went elsewhere)."""
    empty = []
    if spec.splits.heldout_sites and not counts.get("site_ood"):
        empty.append(f"splits.heldout_sites {list(spec.splits.heldout_sites)}: site_ood is empty")
    if spec.splits.heldout_conditions and not counts.get("condition_ood"):
        empty.append(f"splits.heldout_conditions {list(spec.splits.heldout_conditions)}: condition_ood is empty")
    if empty:
        raise SpecError(
            f"cohort {spec.name}: a held-out set ends up empty ({'; '.join(empty)}); its images were all "
            "assigned elsewhere (a held-out condition's patients go to condition_ood, unlabelled images to "
            "unlabelled). Remove the value or check the labels"
        )


def facts_from_rows(rows: pd.DataFrame, spec: CohortSpec) -> CohortFacts:
    """Facts of the instances a build indexed and labelled (``label`` and ``site`` as the manifest stores them)."""
    return CohortFacts(
        labels=frozenset(str(v) for v in rows["label"].dropna()),
        sites=frozenset(str(v) for v in rows["site"].dropna()),
        attributes=_attributes(spec),
        heldout_conditions=tuple(spec.splits.heldout_conditions),
        heldout_sites=tuple(spec.splits.heldout_sites),
        outlier_conditions=tuple(spec.splits.outlier_conditions),
        source="the indexed images and their labels",
    )


def facts_from_labels(spec: CohortSpec) -> CohortFacts | None:
    """Facts readable from the labels CSV alone (``medvision run --check``); ``None`` without a readable CSV.

    Labels get the spec's row filters and label map; sites are known only when a CSV column gives them.

    Raises:
        SpecError: a column the spec names is not in the CSV (with the closest real name).
    """
    lab = spec.labels
    if lab is None or not lab.csv.is_file():
        return None
    try:
        table = read_csv_table(lab.csv)  # the same reading (BOM, separators) as the build's labels join
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    check_columns(lab, [str(c) for c in table.columns])
    table = table.replace({"": None, "NaN": None, "nan": None, "NA": None})
    table, _, _ = filter_rows(table, lab)
    if len(lab.label_columns) == 1:
        labels, _ = apply_label_map(table[lab.label_columns[0]], lab)
        values = frozenset(str(v) for v in labels.dropna())
    else:
        values = None
    sites = frozenset(category(v) for v in table[lab.site_column]) if lab.site_column else None
    return CohortFacts(
        labels=values,
        sites=sites,
        attributes=_attributes(spec),
        heldout_conditions=tuple(spec.splits.heldout_conditions),
        heldout_sites=tuple(spec.splits.heldout_sites),
        outlier_conditions=tuple(spec.splits.outlier_conditions),
        source=f"labels CSV {lab.csv}",
    )


def facts_from_card(card: CohortCard) -> CohortFacts:
    """Facts of a built cohort, from its card."""
    return CohortFacts(
        labels=card.label_values,
        sites=card.sites,
        attributes=tuple(card.subgroups),
        heldout_conditions=tuple(card.heldout_conditions),
        heldout_sites=tuple(card.heldout_sites),
        outlier_conditions=tuple(card.outlier_conditions),
        splits=card.nonempty_splits,
        source=f"cohort {card.name}",
    )


def _attributes(spec: CohortSpec) -> tuple[str, ...]:
    csv_groups = list(spec.labels.subgroup_columns) if spec.labels else []
    return tuple(dict.fromkeys([*STANDARD_ATTRIBUTES, *csv_groups]))
