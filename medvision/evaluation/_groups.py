"""The rows every "per set and per subgroup" table of the trust modules shares: the whole set, then one row per
group of each attribute (``sex``, ``site``, an intersection ``sex*site``), each with its patient count and a flag.

Conventions are :class:`~medvision.evaluation.subgroups.SubgroupFrame`'s (see the method spec §10): a missing value
is the group ``unknown`` (counts add up), and a group with fewer than ``min_patients`` patients is kept but flagged
``few_patients`` and gets no metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medvision.evaluation.bootstrap import patient_weights

__all__: list[str] = []

ALL = "all"
UNKNOWN = "unknown"
SEP = " & "
#: Frame columns the trust modules read (the evaluate stage's predictions tables, ``docs/metrics.md``).
LABEL, PATIENT = "label_idx", "patient_id"


@dataclass(frozen=True)
class Group:
    """One row of a per-group table: which images, how many patients, and why it has no metrics (if so)."""

    attribute: str
    group: str
    mask: np.ndarray
    n_patients: int
    flag: str

    @property
    def counts(self) -> dict[str, object]:
        return {"n_patients": self.n_patients, "n_images": int(self.mask.sum()), "flag": self.flag}


def attribute_columns(frame: pd.DataFrame, attributes: Sequence[str]) -> pd.DataFrame:
    """One string column per attribute (``a*b``: the two values joined by ``" & "``); missing values ``unknown``.

    Raises:
        ValueError: an attribute (or part of an intersection) that is not a column of ``frame``.
    """
    missing = sorted({p for a in attributes for p in a.split("*") if p not in frame.columns})
    if missing:
        raise ValueError(
            f"attribute(s) {missing} are not columns of the predictions table (columns: {list(frame.columns)}); "
            "name manifest subgroup columns such as sex, age_band or site."
        )
    out = pd.DataFrame(index=frame.index)
    for attr in attributes:
        parts = [frame[p].astype("string").fillna(UNKNOWN).astype(str) for p in attr.split("*")]
        col = parts[0]
        for extra in parts[1:]:
            col = col + SEP + extra
        out[attr] = col.to_numpy()
    return out.reset_index(drop=True)


def iter_groups(
    patients: np.ndarray,
    features: pd.DataFrame | None,
    min_patients: int,
    extra: Sequence[tuple[str, str, np.ndarray]] = (),
) -> Iterator[Group]:
    """The whole set (``all``/``all``, never flagged), then every (attribute, value) group, then ``extra`` masks."""
    n = len(patients)
    yield Group(ALL, ALL, np.ones(n, bool), len(np.unique(patients)), "")
    rows: list[tuple[str, str, np.ndarray]] = []
    if features is not None:
        for attr in features.columns:
            col = features[attr].to_numpy()
            rows += [(attr, str(v), col == v) for v in sorted(set(col.tolist()))]
    for attr, value, mask in [*rows, *extra]:
        n_p = len(np.unique(patients[mask]))
        yield Group(attr, value, mask, n_p, "few_patients" if n_p < min_patients else "")


def masked_patient_weights(patients: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Patient weights computed within ``mask`` (``1 / m_j`` over the patient's images in the mask), 0 outside."""
    w = np.zeros(len(patients))
    if mask.any():
        w[mask] = patient_weights(patients[mask])
    return w


def carriers(patients: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Boolean: the first image (in row order) of every patient within ``mask``; a patient-level indicator placed
    on its carrier image is counted once per patient by the image-weighted bootstrap."""
    out = np.zeros(len(patients), bool)
    idx = np.flatnonzero(mask)
    _, first = np.unique(patients[idx], return_index=True)
    out[idx[first]] = True
    return out


def patient_max(patients: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique patients and the maximum of ``values`` over each patient's images (``-inf`` stays ``-inf``)."""
    ids, inverse = np.unique(patients, return_inverse=True)
    out = np.full(len(ids), -np.inf)
    np.maximum.at(out, inverse, values)
    return ids, out
