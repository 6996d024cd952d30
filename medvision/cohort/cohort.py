"""A built cohort folder, opened read-only: the manifest, its card and its cache.

Later stages (datasets, training, evaluation) see a cohort only through this object, so they
never depend on how it was built and never see anything the build kept private.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medvision._documents import DocumentError
from medvision.cohort.cache import PreprocessCache
from medvision.cohort.card import CARD_FILE, CohortCard, manifest_sha256
from medvision.errors import InputError

#: The manifest's identity and task columns, first in every manifest; every other column is an image fact or a
#: subgroup attribute.
LEADING_COLUMNS = (
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
)

#: The columns a cohort built with a ``unit`` other than ``image`` adds (one row per instance still): the
#: pseudonymous case, the instance's place in the case's order, its position along the slice normal (mm), the
#: case's slice spacing (mm) and how the case was ordered (:mod:`medvision.cohort.cases`).
CASE_COLUMNS = ("case_id", "instance_index", "slice_position", "slice_spacing", "case_ordering")

__all__ = ["CASE_COLUMNS", "LEADING_COLUMNS", "Cohort", "CohortOpenError", "open_cohort"]


@dataclass(frozen=True)
class Cohort:
    """A built cohort, read-only. Its facts (classes, inlier count, channels, manifest hash, subgroups, held-out
    sets, the preprocessing recipe) are the card's fields: :attr:`card` is their one declaration."""

    root: Path
    manifest: pd.DataFrame
    card: CohortCard
    cache: PreprocessCache

    # Shorthands for the card's facts (declared there, read here).
    classes = property(lambda self: list(self.card.classes), doc="Inlier classes, then training-outlier conditions.")
    num_inlier_classes = property(lambda self: self.card.num_inlier_classes)
    num_outlier_classes = property(lambda self: self.card.num_outlier_classes)
    in_chans = property(lambda self: self.card.in_chans)
    manifest_sha256 = property(lambda self: self.card.manifest_sha256)
    subgroups = property(lambda self: list(self.card.subgroups))

    unit = property(lambda self: self.card.unit, doc="What a case is: image, series, study or patient.")

    @property
    def label_columns(self) -> list[str]:
        """Multi-label cohorts: the 0/1 label columns; empty for multi-class cohorts."""
        return [c for c in self.manifest.columns if c.startswith("label__")]

    def rows(self, split: str, label_fraction: float | None = None, labelled: bool = True) -> pd.DataFrame:
        """Manifest rows of one split; ``label_fraction`` keeps the nested subset of training patients."""
        m = self.manifest[self.manifest["split"] == split]
        if label_fraction is not None and label_fraction < 1.0:
            declared = self.card.label_fractions
            if not any(abs(label_fraction - f) < 1e-9 for f in declared):
                raise InputError(
                    f"label fraction {label_fraction} was not declared for cohort "
                    f"{self.card.name}; declared: {declared} (splits.label_fractions)"
                )
            m = m[m["label_fraction"] <= label_fraction + 1e-12]
        if labelled:
            m = m[m["label"].notna()]
        return m.reset_index(drop=True)


def open_cohort(root: str | Path) -> Cohort:
    """Open a built cohort, checking that its manifest is the one its card describes.

    Raises:
        FileNotFoundError: not a built cohort.
        CohortOpenError: an unreadable card or manifest, or a manifest whose content hash differs from the card's.
    """
    root = Path(root)
    card_path, manifest_path = root / CARD_FILE, root / "manifest.parquet"
    if not card_path.exists() or not manifest_path.exists():
        raise FileNotFoundError(
            f"{root} is not a built cohort (no cohort.json / manifest.parquet); run `medvision cohort build` first"
        )
    try:
        card = CohortCard.read(card_path)
    except DocumentError as e:
        raise CohortOpenError(str(e)) from None
    try:
        manifest = pd.read_parquet(manifest_path)
    except Exception as e:  # noqa: BLE001 - pyarrow's errors ("Parquet magic bytes not found") say nothing useful
        raise CohortOpenError(f"{manifest_path} cannot be read ({type(e).__name__}); {_REBUILD}") from e
    if manifest_sha256(manifest) != card.manifest_sha256:
        raise CohortOpenError(
            f"{root}: manifest.parquet does not match cohort.json (the card's manifest_sha256 differs: the build was "
            f"interrupted, or a file was edited or copied from another cohort); {_REBUILD}"
        )
    return Cohort(root, manifest, card, PreprocessCache(root / "cache", card.preprocess))


_REBUILD = "rebuild it with `medvision cohort build` (unchanged images come from the cache, so it is quick)"


class CohortOpenError(InputError):
    """A cohort folder whose files are unreadable or do not belong together; never trained or evaluated on."""
