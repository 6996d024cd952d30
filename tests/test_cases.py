"""Cases: slices ordered by where they are (not by their names), and series that cannot be trusted refused whole."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medvision.cohort.cases import SliceGeometry, UnorderableSeries, assign_cases, order_series

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _stack(n: int, spacing: float = 2.5, tilt_deg: float = 0.0, origin=(10.0, -20.0, 100.0)) -> list[SliceGeometry]:
    t = np.deg2rad(tilt_deg)
    row, col = np.array([1.0, 0, 0]), np.array([0, np.cos(t), -np.sin(t)])
    normal = np.cross(row, col)
    return [
        SliceGeometry(
            tuple(np.asarray(origin) + k * spacing * normal),
            tuple(np.r_[row, col]),
            instance_number=k + 1,
            rows=32,
            columns=32,
            file=f"f{k}",
        )
        for k in range(n)
    ]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 40),
    spacing=st.floats(0.5, 8.0),
    tilt=st.floats(-25.0, 25.0),
    seed=st.integers(0, 2**31),
)
def test_any_shuffle_of_a_tilted_stack_comes_back_in_position_order(n, spacing, tilt, seed):
    stack = _stack(n, spacing, tilt)
    perm = np.random.default_rng(seed).permutation(n)
    o = order_series([stack[i] for i in perm])
    assert [int(perm[i]) for i in o.order] == list(range(n))
    assert o.method == "position"
    assert o.spacing == pytest.approx(spacing, rel=1e-6)
    assert np.allclose(np.diff(o.positions), spacing)


def test_position_wins_over_instance_number_counted_feet_first():
    stack = [
        SliceGeometry(s.position, s.orientation, instance_number=10 - k, file=s.file) for k, s in enumerate(_stack(10))
    ]
    o = order_series(stack[::-1])
    assert [stack[::-1][i].file for i in o.order] == [f"f{k}" for k in range(10)]


def test_a_missing_slice_refuses_the_series_and_says_where():
    stack = _stack(12)
    del stack[5]
    with pytest.raises(UnorderableSeries, match=r"missing slice\(s\): a gap of 5.00 mm .* spacing is 2.50 mm"):
        order_series(stack)


def test_a_doubled_slice_refuses_the_series():
    stack = _stack(8)
    stack.append(SliceGeometry(stack[3].position, AXIAL, instance_number=99, file="dup"))
    with pytest.raises(UnorderableSeries, match="duplicate slice positions"):
        order_series(stack)


def test_a_localizer_in_the_series_refuses_it():
    stack = _stack(8)
    stack.append(SliceGeometry((0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 0.0, -1.0), instance_number=1, file="scout"))
    with pytest.raises(UnorderableSeries, match="different ImageOrientationPatient"):
        order_series(stack)


def test_without_geometry_instance_number_orders_and_the_fallback_is_noted():
    stack = [SliceGeometry(instance_number=k, slice_spacing=3.0, file=f"f{k}") for k in (4, 2, 3, 1)]
    o = order_series(stack)
    assert [stack[i].instance_number for i in o.order] == [1, 2, 3, 4]
    assert o.method == "instance_number" and o.spacing == 3.0 and o.positions is None
    assert "ordered by InstanceNumber" in o.notes[0]


@pytest.mark.parametrize(
    ("numbers", "match"),
    [((1, 1, 1), "InstanceNumber repeats"), ((1, None, 3), "lack InstanceNumber"), ((1, 2, 4), "jumps from 2 to 4")],
)
def test_without_geometry_a_bad_instance_number_refuses_the_series(numbers, match):
    with pytest.raises(UnorderableSeries, match=match):
        order_series([SliceGeometry(instance_number=v, file=f"f{i}") for i, v in enumerate(numbers)])


def test_mixed_matrix_sizes_are_kept_and_noted():
    stack = _stack(4)
    stack[2] = SliceGeometry(stack[2].position, AXIAL, instance_number=3, rows=24, columns=24, file="f2")
    o = order_series(stack)
    assert o.order == [0, 1, 2, 3] and "resampled" in o.notes[0]


def _rows(stacks: dict[tuple[str, str, str], list[SliceGeometry]], labels: dict[str, str]) -> pd.DataFrame:
    records = []
    for (patient, study, series), stack in stacks.items():
        for s in stack:
            records.append(
                {
                    "relpath": f"{series}/{s.file}",
                    "frame": 0,
                    "patient": patient,
                    "study_uid": study,
                    "series_uid": series,
                    "position": s.position,
                    "orientation": s.orientation,
                    "instance_number": s.instance_number,
                    "slice_spacing": None,
                    "slice_thickness": None,
                    "rows": 32,
                    "columns": 32,
                    "label": labels.get(series),
                }
            )
    return pd.DataFrame(records).sample(frac=1.0, random_state=0)  # any listing order


def test_cases_group_by_unit_keep_each_series_in_order_and_reject_whole_cases():
    broken = _stack(6)
    del broken[3]
    stacks = {
        ("p1", "st1", "se1"): _stack(5),
        ("p1", "st1", "se2"): _stack(3, origin=(0.0, 0.0, -50.0)),
        ("p2", "st2", "se3"): broken,
        ("p3", "st3", "se4"): _stack(4),
    }
    rows = _rows(stacks, {"se1": "nodule", "se2": "nodule", "se3": "normal", "se4": "normal"})
    series = assign_cases(rows, "series", rows["patient"])
    assert set(series.rejected) == {"p2|st2|se3"} and "missing slice" in series.rejected["p2|st2|se3"]
    assert len(series.rejected_rows) == 5 and (series.rejected_rows["case_reason"].str.contains("gap")).all()
    kept = series.rows
    assert kept["case_key"].nunique() == 3
    for _, case in kept.groupby("case_key"):
        assert case["instance_index"].tolist() == list(range(len(case)))
        assert case["slice_position"].is_monotonic_increasing
    study = assign_cases(rows, "study", rows["patient"]).rows
    one = study[study["case_key"] == "p1|st1"]
    assert one["series_uid"].tolist() == ["se1"] * 5 + ["se2"] * 3 and one["instance_index"].tolist() == list(range(8))
    image = assign_cases(rows, "image", rows["patient"])
    assert image.rows["case_key"].nunique() == len(rows) and not image.rejected


def test_a_case_whose_instances_disagree_on_the_label_is_refused():
    rows = _rows({("p1", "st1", "se1"): _stack(3)}, {"se1": "nodule"})
    rows.loc[rows.index[0], "label"] = "normal"
    out = assign_cases(rows, "series", rows["patient"])
    assert "different labels" in out.rejected["p1|st1|se1"] and out.rows.empty
