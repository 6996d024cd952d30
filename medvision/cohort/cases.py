"""Cases: the bags of instances a series-, study- or patient-level model learns from, in a stable order.

Most cohorts are not one image per case. A CT series is hundreds of slices, a study several series, a visit
several photos, and the label (the radiology report, the biopsy) belongs to the series, the study or the patient.
A cohort spec's ``unit`` says which; this module groups the indexed instances into cases and orders each case:

* ``image``: every instance is a case of its own (the behaviour of a cohort without cases);
* ``series``: the slices of one DICOM series, ordered along the slice normal;
* ``study``: the series of one study, one after the other (by Series Instance UID), each ordered as above;
* ``patient``: every study of one patient (by Study Instance UID), each ordered as above.

Slices are ordered by where they are, not by how they were named: ImagePositionPatient projected on the slice
normal (the cross product of the two ImageOrientationPatient direction cosines), which is what DICOM viewers do
and what survives gantry tilt, oblique stacks and feet-first numbering. Without positions the InstanceNumber
orders them, and the card says so. A series is never silently shortened or reordered by guesswork: one that
cannot be ordered, or whose ordering shows a hole or a doubled slice, is quarantined *as a whole case* with the
reason in words (:class:`UnorderableSeries`). Slices of different matrix sizes are kept: every slice is resampled
to the cohort's preprocessing recipe anyway, and the note says it happened.

Everything here runs inside the cohort layer on raw identifiers (UIDs order series and studies stably); the build
turns the case key into a pseudonym before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import get_args

import numpy as np
import pandas as pd

from medvision.cohort.spec import CohortSpec

__all__ = [
    "UNITS",
    "CaseAssignment",
    "Ordering",
    "SliceGeometry",
    "UnorderableSeries",
    "assign_cases",
    "case_keys",
    "order_series",
]

#: What a case can be; the spec declares the units, once.
UNITS: tuple[str, ...] = get_args(CohortSpec.model_fields["unit"].annotation)

#: Two direction cosines within this of each other are one orientation (about 0.06 degrees).
_ORIENTATION_TOL = 1e-3
#: A step along the normal shorter than this share of the series' typical step is a doubled slice.
_DUPLICATE_SHARE = 0.05
#: A step longer than this many typical steps means slices are missing.
_GAP_FACTOR = 1.5


class UnorderableSeries(ValueError):
    """A series (and so its whole case) cannot be put in a trustworthy slice order; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SliceGeometry:
    """What ordering needs from one instance (one frame of a file), all read from its header."""

    position: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float, float, float] | None = None
    instance_number: int | None = None
    frame: int = 0
    slice_spacing: float | None = None
    slice_thickness: float | None = None
    rows: int = 0
    columns: int = 0
    file: str = ""


@dataclass(frozen=True)
class Ordering:
    """How one series was ordered.

    Attributes:
        order: indices into the slices given, in bag order (increasing position along the normal).
        positions: each slice's position along the normal in mm, in bag order; ``None`` when not ordered by
            position.
        spacing: the typical (median) distance between neighbouring slices in mm, from the positions, else from
            SpacingBetweenSlices / SliceThickness when every slice agrees; ``None`` when unknown.
        method: ``position``, ``instance_number``, ``frame`` (the frames of one multi-frame object) or ``single``.
        notes: what a reader of the card should know (the fallback used, resampled slice sizes).
    """

    order: list[int]
    positions: list[float] | None
    spacing: float | None
    method: str
    notes: tuple[str, ...] = ()


def order_series(slices: Sequence[SliceGeometry]) -> Ordering:
    """Order the slices of one series; raise :class:`UnorderableSeries` when no trustworthy order exists.

    Args:
        slices: the series' instances (one per frame of a multi-frame object), in any order.

    Returns:
        The :class:`Ordering`.

    Raises:
        UnorderableSeries: mixed orientations, slices at one position, a gap where slices are missing, or no
            position and no usable InstanceNumber.

    Example:
        >>> s = [SliceGeometry((0, 0, z), (1, 0, 0, 0, 1, 0), file=f"i{z}.dcm") for z in (5.0, 0.0, 2.5)]
        >>> o = order_series(s)
        >>> o.order, o.positions, o.spacing, o.method
        ([1, 2, 0], [0.0, 2.5, 5.0], 2.5, 'position')
    """
    n = len(slices)
    if n == 0:
        raise ValueError("a series has at least one slice")
    notes = _size_notes(slices)
    if n == 1:
        return Ordering([0], None, _header_spacing(slices), "single", notes)
    if len({s.file for s in slices}) == 1:  # the frames of one multi-frame object: the object's own order
        order = sorted(range(n), key=lambda i: slices[i].frame)
        return Ordering(order, None, _header_spacing(slices), "frame", notes)
    placed = [s.position is not None and s.orientation is not None for s in slices]
    if all(placed):
        return _by_position(slices, notes)
    missing = n - sum(placed)
    why = f"{missing} of {n} slices lack ImagePositionPatient/ImageOrientationPatient"
    return _by_instance_number(slices, why, notes)


def _by_position(slices: Sequence[SliceGeometry], notes: tuple[str, ...]) -> Ordering:
    orientations = np.array([s.orientation for s in slices], dtype=float)
    reference = orientations[0]
    differ = np.abs(orientations - reference).max(axis=1) > _ORIENTATION_TOL
    if differ.any():
        kinds = len({tuple(np.round(o, 3)) for o in orientations})
        raise UnorderableSeries(
            f"slices have {kinds} different ImageOrientationPatient values ({int(differ.sum())} of {len(slices)} "
            "differ from the first): a localizer or a second stack in the series? Split the series or remove the "
            "odd slices"
        )
    normal = np.cross(reference[:3], reference[3:])
    if np.linalg.norm(normal) < 0.5:
        raise UnorderableSeries(
            "ImageOrientationPatient's row and column directions are parallel (a malformed header): the slice "
            "normal is undefined; re-export the series"
        )
    normal = normal / np.linalg.norm(normal)
    along = np.array([s.position for s in slices], dtype=float) @ normal
    # Ties (a doubled slice) are broken by InstanceNumber so the order stays stable; they are refused below.
    order = sorted(range(len(slices)), key=lambda i: (along[i], slices[i].instance_number or 0, i))
    z = along[order]
    steps = np.diff(z)
    typical = float(np.median(steps))
    if typical <= 0:
        raise UnorderableSeries(
            f"most slices share one position along the normal ({z[0]:.2f} mm): two or more acquisitions stacked "
            "in one series; split them into series of their own"
        )
    doubled = np.flatnonzero(steps < _DUPLICATE_SHARE * typical)
    if len(doubled):
        at = ", ".join(f"{z[i]:.2f}" for i in doubled[:3])
        raise UnorderableSeries(
            f"duplicate slice positions: {len(doubled)} pair(s) of slices at the same place along the normal "
            f"(at {at} mm; spacing {typical:.2f} mm), e.g. a repeated acquisition; remove the repeats"
        )
    gaps = np.flatnonzero(steps > _GAP_FACTOR * typical)
    if len(gaps):
        i = int(gaps[0])
        lost = sum(int(round(steps[g] / typical)) - 1 for g in gaps)
        raise UnorderableSeries(
            f"missing slice(s): a gap of {steps[i]:.2f} mm between positions {z[i]:.2f} and {z[i + 1]:.2f} mm where "
            f"the series spacing is {typical:.2f} mm (about {lost} slice(s) missing in {len(gaps)} gap(s)); the "
            "case is not shortened silently: restore the slices or drop the series"
        )
    return Ordering(order, [float(v) for v in z], typical, "position", notes)


def _by_instance_number(slices: Sequence[SliceGeometry], why: str, notes: tuple[str, ...]) -> Ordering:
    numbers = [s.instance_number for s in slices]
    absent = sum(v is None for v in numbers)
    if absent:
        raise UnorderableSeries(
            f"cannot be ordered: {why}, and {absent} lack InstanceNumber; re-export the series with its geometry"
        )
    values = pd.Series(numbers)
    repeated = values[values.duplicated(keep=False)]
    if len(repeated):
        v = int(repeated.iloc[0])
        raise UnorderableSeries(
            f"cannot be ordered: {why}, and InstanceNumber repeats ({v} on {int((values == v).sum())} slices); "
            "re-export the series with its geometry"
        )
    order = sorted(range(len(slices)), key=lambda i: int(numbers[i] or 0))
    ranked = [int(numbers[i] or 0) for i in order]
    jumps = [(a, b) for a, b in zip(ranked, ranked[1:]) if b - a != 1]
    if jumps:
        a, b = jumps[0]
        raise UnorderableSeries(
            f"missing slice(s): {why}, and InstanceNumber jumps from {a} to {b} ({len(jumps)} jump(s)); the case "
            "is not shortened silently: restore the slices or drop the series"
        )
    return Ordering(
        order, None, _header_spacing(slices), "instance_number", (f"ordered by InstanceNumber: {why}", *notes)
    )


def _header_spacing(slices: Sequence[SliceGeometry]) -> float | None:
    """SpacingBetweenSlices, else SliceThickness, when every slice gives the same value."""
    for values in ([s.slice_spacing for s in slices], [s.slice_thickness for s in slices]):
        if all(v is not None and v > 0 for v in values) and len(set(values)) == 1:
            return float(values[0])  # type: ignore[arg-type]
    return None


def _size_notes(slices: Sequence[SliceGeometry]) -> tuple[str, ...]:
    sizes = pd.Series([f"{s.rows}x{s.columns}" for s in slices]).value_counts()
    if len(sizes) < 2:
        return ()
    listed = ", ".join(f"{size} on {n}" for size, n in sizes.items())
    return (f"slice sizes differ ({listed}): each slice is resampled to the cohort's preprocessing size",)


# --- grouping instances into cases ----------------------------------------------------------------------------


@dataclass
class CaseAssignment:
    """The instances with their case, and the cases that could not be ordered.

    Attributes:
        rows: the input rows of every kept case, in (case, instance) order, with ``case_key`` (raw: identifying,
            pseudonymised by the build), ``instance_index`` (0-based position in the bag), ``slice_position``
            (mm along the normal, NaN when not ordered by position), ``slice_spacing`` (mm, NaN when unknown)
            and ``case_ordering`` (how the case was ordered).
        rejected: ``case_key -> reason`` for every case left out; its instances are the input rows whose case
            key is listed (see :attr:`rejected_rows`).
        rejected_rows: the input rows of the rejected cases, with ``case_key`` and ``case_reason``.
        notes: ``note -> number of cases`` (fallbacks and resampling the card should mention).
    """

    rows: pd.DataFrame
    rejected: dict[str, str] = field(default_factory=dict)
    rejected_rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: dict[str, int] = field(default_factory=dict)


def case_keys(rows: pd.DataFrame, unit: str, patient: pd.Series) -> list[str]:
    """The raw (identifying) case key of each row: which bag of ``unit`` an instance belongs to. The build also
    asks it for files that failed to decode, so that their whole case can be quarantined.

    Args:
        rows: one row per instance with ``relpath``, ``frame``, ``study_uid`` and ``series_uid``.
        unit: what a case is.
        patient: the raw patient identity of each row (same index as ``rows``): a case never spans patients.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    files = rows["relpath"].astype(str)
    series = [_uid(s) or f"file:{f}" for s, f in zip(rows["series_uid"], files)]
    study = [_uid(s) or f"file:{f}" for s, f in zip(rows["study_uid"], files)]
    who = [str(p) for p in patient.loc[rows.index]]
    if unit == "image":
        return [f"{f}#{int(fr)}" for f, fr in zip(files, rows["frame"])]
    if unit == "series":
        return [f"{p}|{st}|{se}" for p, st, se in zip(who, study, series)]
    if unit == "study":
        return [f"{p}|{st}" for p, st in zip(who, study)]
    return who


def assign_cases(rows: pd.DataFrame, unit: str, patient: pd.Series) -> CaseAssignment:
    """Group instances into cases of ``unit`` and order each case.

    Args:
        rows: one row per instance with the indexed header columns (``relpath``, ``frame``, ``study_uid``,
            ``series_uid``, ``position``, ``orientation``, ``instance_number``, ``slice_spacing``,
            ``slice_thickness``, ``rows``, ``columns``) and ``label``.
        unit: what a case is.
        patient: the raw patient identity of each row (same index as ``rows``): a case never spans patients.

    Returns:
        A :class:`CaseAssignment`. A case whose instances carry different labels is rejected too: its label
        would be a guess.
    """
    rows = rows.copy()
    rows["case_key"] = case_keys(rows, unit, patient)
    files = rows["relpath"].astype(str)
    rows["_series"] = [_uid(s) or f"file:{f}" for s, f in zip(rows["series_uid"], files)]
    rows["_study"] = [_uid(s) or f"file:{f}" for s, f in zip(rows["study_uid"], files)]
    kept: list[pd.DataFrame] = []
    rejected: dict[str, str] = {}
    notes: dict[str, int] = {}
    for key, case in rows.groupby("case_key", sort=True):
        try:
            ordered = _order_case(case)
        except UnorderableSeries as e:
            rejected[str(key)] = e.reason
            continue
        labels = sorted({str(v) for v in case["label"] if v is not None and v == v})
        if len(labels) > 1:
            rejected[str(key)] = (
                f"the case's instances carry different labels ({', '.join(labels[:4])}): a case has one label; "
                "fix the labels CSV or build with a smaller unit"
            )
            continue
        for note in ordered.attrs.get("notes", ()):
            notes[note] = notes.get(note, 0) + 1
        kept.append(ordered)
    columns = [*rows.columns.drop(["_series", "_study"]), "instance_index", "slice_position", "slice_spacing"]
    columns.append("case_ordering")
    out = pd.concat(kept) if kept else pd.DataFrame(columns=columns)
    out = out.drop(columns=["_series", "_study"], errors="ignore")
    lost = rows[rows["case_key"].isin(rejected)].drop(columns=["_series", "_study"])
    lost = lost.assign(case_reason=lost["case_key"].map(rejected))
    return CaseAssignment(out, rejected, lost, notes)


def _order_case(case: pd.DataFrame) -> pd.DataFrame:
    """One case's rows in bag order: its series by Study then Series Instance UID, each series ordered."""
    parts: list[pd.DataFrame] = []
    methods: set[str] = set()
    notes: list[str] = []
    for _, one in case.groupby(["_study", "_series"], sort=True):
        geometry = [_geometry(r) for r in one.itertuples(index=False)]
        o = order_series(geometry)
        part = one.iloc[o.order].copy()
        part["slice_position"] = o.positions if o.positions is not None else np.nan
        part["slice_spacing"] = np.nan if o.spacing is None else o.spacing
        parts.append(part)
        methods.add(o.method)
        notes += o.notes
    ordered = pd.concat(parts)
    ordered["instance_index"] = np.arange(len(ordered), dtype=np.int64)
    ordered["case_ordering"] = "+".join(sorted(methods))
    ordered.attrs["notes"] = tuple(dict.fromkeys(notes))
    return ordered


def _geometry(r: object) -> SliceGeometry:
    def value(name: str) -> object:
        v = getattr(r, name, None)
        return None if v is None or (isinstance(v, float) and v != v) else v

    def number(name: str, default: float | None = None) -> float | None:
        v = value(name)
        return default if v is None else float(v)  # type: ignore[arg-type]

    instance = number("instance_number")
    return SliceGeometry(
        position=_tuple(value("position"), 3),  # type: ignore[arg-type]
        orientation=_tuple(value("orientation"), 6),  # type: ignore[arg-type]
        instance_number=None if instance is None else int(instance),
        frame=int(number("frame", 0) or 0),
        slice_spacing=number("slice_spacing"),
        slice_thickness=number("slice_thickness"),
        rows=int(number("rows", 0) or 0),
        columns=int(number("columns", 0) or 0),
        file=str(value("relpath") or ""),
    )


def _tuple(value: object, n: int) -> tuple[float, ...] | None:
    """``n`` floats from a header value (a tuple, or a list/array after a parquet round trip); else ``None``."""
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except TypeError:
        return None
    return numbers if len(numbers) == n else None


def _uid(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)
