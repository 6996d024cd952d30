"""Subgroup performance with patient-level bootstrap intervals: a frame in fairlearn's ``MetricFrame`` shape.

For each sensitive attribute (sex, age band, skin type, site, ...) and each requested intersection, every group
gets patient and image counts, each metric with a percentile interval, and its gap to the overall value with an
interval; ``difference()`` gives the largest between-group difference per attribute with an interval. One
``Bootstrap`` (one resample matrix) serves every group and metric, so gaps and differences are paired
(see the method spec §1 and §10).

Groups with fewer than ``min_patients`` patients, with a single class in ``y_true``, or (binary ``y_true``) with fewer
than ``min_positives`` patients holding a positive image or ``min_negatives`` holding a negative one, are kept in the
table but flagged, their metrics and intervals are NaN, and they are left out of gap summaries (see the method spec
§10): a number from such a group is noise, and a "worst group" chosen among noisy groups says nothing about the
model. The positive and negative minimums matter because a group of many patients with a single positive case has
an AUROC that is the rank of that one case, and a percentile interval over resamples that happen to draw it looks
tight while it says nothing; a gap whose interval "excludes zero" there is not evidence of anything.

Missing attribute values are reported as the group ``"unknown"`` rather than dropped, so the counts always add up.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> n = 400; patients = np.arange(n) // 2
    >>> y = rng.integers(0, 2, n); score = y + rng.normal(size=n)
    >>> sf = pd.DataFrame({"sex": np.where(patients % 2 == 0, "F", "M")})
    >>> frame = SubgroupFrame(metrics={"auroc": "auroc"}, y_true=y, y_pred=score, sensitive_features=sf,
    ...                       groups=patients, n_resamples=200)
    >>> list(frame.by_group.index)
    [('sex', 'F'), ('sex', 'M')]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medvision.evaluation._checks import as_1d, same_length
from medvision.evaluation.bootstrap import BatchedMetric, Bootstrap, BootstrapResult, resolve_metric

__all__ = ["SubgroupFrame", "UNKNOWN", "flag_words"]

UNKNOWN = "unknown"
_SEP = " & "


class SubgroupFrame:
    """Per-group metrics with bootstrap intervals, gaps to overall and worst-vs-best differences.

    Args:
        metrics: name -> batched metric (a registered name such as ``"auroc"``/``"accuracy"`` or a callable
            ``fn(y_true, y_pred, weights) -> (B,)``).
        y_true: true labels per image.
        y_pred: predictions or scores per image, as the metrics expect (scores for ``auroc``).
        sensitive_features: one column per attribute, one row per image (DataFrame, Series or mapping).
        groups: patient id per image (the bootstrap resamples patients).
        intersections: tuples of attribute names to cross, e.g. ``[("sex", "age_band")]``.
        min_patients: groups with fewer patients are flagged (*default* 20).
        min_positives, min_negatives: with a binary ``y_true`` (0/1 or bool), groups where fewer patients hold a
            positive (negative) image are flagged ``few_positives`` (``few_negatives``) (*default* 5 each); with
            other labels only ``single_class`` applies.
        n_resamples, seed, confidence: bootstrap settings, used when ``bootstrap`` is not given.
        bootstrap: an existing ``Bootstrap`` over ``groups`` to share resamples with other models/frames.

    Attributes:
        overall: DataFrame indexed by metric: ``value``, ``low``, ``high``.
        by_group: DataFrame indexed by (attribute, group): counts (``n_patients``, ``n_images``, ``n_positive`` and
            ``n_negative``: patients holding a positive / negative image, ``None`` unless ``y_true`` is binary),
            ``flag``, one column per metric (point values), the fairlearn ``MetricFrame.by_group`` shape.
    """

    def __init__(
        self,
        *,
        metrics: Mapping[str, str | BatchedMetric],
        y_true: object,
        y_pred: object,
        sensitive_features: pd.DataFrame | pd.Series | Mapping,
        groups: object,
        intersections: Sequence[Sequence[str]] = (),
        min_patients: int = 20,
        min_positives: int = 5,
        min_negatives: int = 5,
        n_resamples: int = 1000,
        seed: int = 0,
        confidence: float = 0.95,
        bootstrap: Bootstrap | None = None,
    ) -> None:
        if not metrics:
            raise ValueError("`metrics` is empty; pass e.g. {'auroc': 'auroc'}.")
        self.metrics = {name: resolve_metric(m) for name, m in metrics.items()}
        self.y_true = np.asarray(y_true)
        self.y_pred = np.asarray(y_pred)
        g = as_1d(groups, "groups")
        sf = _features_frame(sensitive_features, intersections)
        same_length(y_true=self.y_true, y_pred=self.y_pred, groups=g, sensitive_features=sf)
        self.min_patients = int(min_patients)
        self.min_positives, self.min_negatives = int(min_positives), int(min_negatives)
        self.sensitive_features = sf
        if bootstrap is None:
            bootstrap = Bootstrap(g, n_resamples=n_resamples, seed=seed, confidence=confidence)
        elif bootstrap.n_images != len(g):
            raise ValueError(f"`bootstrap` covers {bootstrap.n_images} images but there are {len(g)}.")
        self.bootstrap = bootstrap
        self._overall = {m: bootstrap.ci(fn, self.y_true, self.y_pred) for m, fn in self.metrics.items()}
        self._rows = self._compute_groups()

    # -- results ------------------------------------------------------------------------------------------------
    @property
    def overall(self) -> pd.DataFrame:
        return pd.DataFrame(
            {m: {"value": r.point, "low": r.low, "high": r.high} for m, r in self._overall.items()}
        ).T.rename_axis("metric")

    @property
    def by_group(self) -> pd.DataFrame:
        cols = ["n_patients", "n_images", "n_positive", "n_negative", "flag", *self.metrics]
        rows = {
            key: {**info["counts"], **{m: r.point for m, r in info["results"].items()}}
            for key, info in self._rows.items()
        }
        df = pd.DataFrame.from_dict(rows, orient="index")[cols]
        df.index = pd.MultiIndex.from_tuples(df.index, names=["attribute", "group"])
        return df

    def table(self) -> pd.DataFrame:
        """Long form for reports: one row per (attribute, group, metric) with interval and gap-to-overall interval."""
        records = []
        for (attr, grp), info in self._rows.items():
            for m, r in info["results"].items():
                gap = _nan_result(r) if info["counts"]["flag"] else r - self._overall[m]
                records.append(
                    {
                        "attribute": attr,
                        "group": grp,
                        "metric": m,
                        **info["counts"],
                        "value": r.point,
                        "low": r.low,
                        "high": r.high,
                        "gap": gap.point,
                        "gap_low": gap.low,
                        "gap_high": gap.high,
                    }
                )
        return pd.DataFrame.from_records(records).set_index(["attribute", "group", "metric"])

    def difference(self) -> pd.DataFrame:
        """Largest between-group difference per attribute and metric, over unflagged groups only.

        ``difference = value(max_group) - value(min_group)`` (fairlearn's ``difference()`` convention, >= 0); the
        two groups are chosen on the point estimates and the interval comes from their paired replicates. For a
        higher-is-better metric ``min_group`` is the worst group. NaN with ``n_groups < 2``.
        """
        records = []
        for attr in self.sensitive_features.columns:
            keys = [k for k in self._rows if k[0] == attr and not self._rows[k]["counts"]["flag"]]
            for m in self.metrics:
                res = {k[1]: self._rows[k]["results"][m] for k in keys}
                res = {grp: r for grp, r in res.items() if np.isfinite(r.point)}
                rec = {
                    "attribute": attr,
                    "metric": m,
                    "n_groups": len(res),
                    "max_group": None,
                    "min_group": None,
                    "difference": np.nan,
                    "low": np.nan,
                    "high": np.nan,
                }
                if len(res) >= 2:
                    hi = max(res, key=lambda k: res[k].point)
                    lo = min(res, key=lambda k: res[k].point)
                    d = res[hi] - res[lo]
                    rec.update(max_group=hi, min_group=lo, difference=d.point, low=d.low, high=d.high)
                records.append(rec)
        return pd.DataFrame.from_records(records).set_index(["attribute", "metric"])

    # -- machinery ----------------------------------------------------------------------------------------------
    def _compute_groups(self) -> dict[tuple[str, str], dict]:
        boot, rows = self.bootstrap, {}
        img_patient = boot.image_patient
        binary = set(np.unique(self.y_true).tolist()) <= {0, 1}
        for attr in self.sensitive_features.columns:
            col = self.sensitive_features[attr].to_numpy()
            for value in sorted(set(col.tolist())):
                mask = col == value
                counts = self._counts(mask, img_patient, binary)
                if counts["flag"]:
                    results = {m: _nan_result(self._overall[m]) for m in self.metrics}
                else:
                    results = {m: boot.ci(fn, self.y_true, self.y_pred, mask=mask) for m, fn in self.metrics.items()}
                rows[(attr, value)] = {"counts": counts, "results": results}
        return rows

    def _counts(self, mask: np.ndarray, img_patient: np.ndarray, binary: bool) -> dict[str, object]:
        """Patients, images, patients with a positive / negative image, and the flags these counts raise."""
        n_pat = len(np.unique(img_patient[mask]))
        n_pos = n_neg = None
        flags = []
        if n_pat < self.min_patients:
            flags.append("few_patients")
        if len(np.unique(self.y_true[mask])) < 2:
            flags.append("single_class")
        if binary:
            positive = self.y_true.astype(bool)
            n_pos = len(np.unique(img_patient[mask & positive]))
            n_neg = len(np.unique(img_patient[mask & ~positive]))
            if not flags:  # a group flagged already says enough ("3 patients"), without "1 positive" beside it
                short = {"few_positives": n_pos < self.min_positives, "few_negatives": n_neg < self.min_negatives}
                flags += [f for f, is_short in short.items() if is_short]
        return {
            "n_patients": n_pat,
            "n_images": int(mask.sum()),
            "n_positive": n_pos,
            "n_negative": n_neg,
            "flag": ";".join(flags),
        }


def flag_words(flag: object, n_patients: object = None, n_positive: object = None, n_negative: object = None) -> str:
    """A group's ``flag`` (``;``-joined ``few_patients``, ``single_class``, ``few_positives``, ``few_negatives``) in
    plain words, with the counts that raised it when known; ``""`` for a usable group.

    Example:
        >>> flag_words("few_positives", 40, 1, 39)
        'only 1 patient with a positive case: no estimate or interval'
    """
    codes = [c.strip() for c in str(flag or "").split(";") if c.strip()]
    if not codes:
        return ""
    pos, neg = _count(n_positive), _count(n_negative)
    single = "no positive case" if pos == 0 else "no negative case" if neg == 0 else "one outcome only"
    words = {
        "few_patients": _only(n_patients, "", "too few patients"),
        "single_class": single,
        "few_positives": _only(n_positive, " with a positive case", "too few positive cases"),
        "few_negatives": _only(n_negative, " with a negative case", "too few negative cases"),
    }
    return "; ".join(words.get(c, c.replace("_", " ")) for c in codes) + ": no estimate or interval"


def _only(n: object, what: str, unknown: str) -> str:
    k = _count(n)
    return unknown if k is None else f"only {k} patient{'' if k == 1 else 's'}{what}"


def _count(n: object) -> int | None:
    try:
        v = float(n)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else int(v)


def _nan_result(like: BootstrapResult) -> BootstrapResult:
    nan = float("nan")
    return BootstrapResult(nan, nan, nan, like.confidence, np.full_like(like.replicates, np.nan), like.token)


def _features_frame(sensitive_features: object, intersections: Sequence[Sequence[str]]) -> pd.DataFrame:
    if isinstance(sensitive_features, pd.Series):
        sf = sensitive_features.to_frame(sensitive_features.name or "group")
    else:
        sf = pd.DataFrame(sensitive_features)
    sf = sf.reset_index(drop=True).astype(object)
    sf = sf.where(sf.notna(), UNKNOWN).astype(str)
    for combo in intersections:
        combo = list(combo)
        missing = [c for c in combo if c not in sf.columns]
        if missing or len(combo) < 2:
            raise ValueError(
                f"intersection {combo} must name >= 2 attributes from {list(sf.columns)}; unknown: {missing}."
            )
        sf[_SEP.join(combo)] = sf[combo].agg(_SEP.join, axis=1)
    return sf
