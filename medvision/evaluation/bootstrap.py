"""Patient-level (clustered) non-parametric bootstrap, vectorised over resamples.

Images of one patient are correlated, so resampling images treats them as independent evidence and gives
intervals that are too narrow. We resample *patients* with replacement (see the method spec §10; Field & Welsh 2007
on the cluster bootstrap): each resample is a row of patient draws; an image's weight in that resample is the
number of times its patient was drawn. Metrics are then evaluated for all resamples at once from the weight matrix
(no Python loop over resamples), and because one ``Bootstrap`` holds one resample matrix, every metric, subgroup
and model evaluated with it sees the same resamples -- so differences (model A - B, subgroup - overall) have
intervals too: subtract two results.

Example:
    >>> import numpy as np
    >>> from medvision.evaluation.bootstrap import Bootstrap
    >>> rng = np.random.default_rng(0)
    >>> patients = np.repeat(np.arange(50), 2)
    >>> y = rng.integers(0, 2, 100); score = y + rng.normal(size=100)
    >>> boot = Bootstrap(patients, n_resamples=200, seed=0)
    >>> res = boot.ci("auroc", y, score)
    >>> res.low <= res.point <= res.high
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medvision.evaluation import _weighted
from medvision.evaluation._checks import as_1d

__all__ = [
    "Bootstrap",
    "BootstrapResult",
    "BATCHED_METRICS",
    "patient_weights",
    "register_batched_metric",
    "resolve_metric",
]

BatchedMetric = Callable[..., np.ndarray]
"""``fn(*arrays, weights) -> (B,)``: a metric evaluated under each row of a (B, n) weight matrix."""

BATCHED_METRICS: dict[str, BatchedMetric] = {}
_TOKENS = itertools.count()


def register_batched_metric(name: str) -> Callable[[BatchedMetric], BatchedMetric]:
    """Register a batched metric under ``name``; registering a taken name is an error."""

    def deco(fn: BatchedMetric) -> BatchedMetric:
        if name in BATCHED_METRICS:
            raise ValueError(f"batched metric {name!r} is already registered; pick another name.")
        BATCHED_METRICS[name] = fn
        return fn

    return deco


register_batched_metric("auroc")(_weighted.batched_auroc)
register_batched_metric("accuracy")(_weighted.batched_accuracy)
register_batched_metric("sensitivity")(_weighted.batched_sensitivity)
register_batched_metric("specificity")(_weighted.batched_specificity)
register_batched_metric("mean")(_weighted.batched_mean)


@register_batched_metric("ratio")
def batched_ratio(numerator: np.ndarray, denominator: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum(w * numerator) / sum(w * denominator)`` per row of ``weights`` (NaN where the denominator is 0).

    With ``denominator = patient_weights(groups)`` and ``numerator = value * denominator`` this is the
    patient-weighted mean (every patient counts once, its images share that weight); with per-patient indicators
    carried by one image of each patient it is a share of patients, e.g. of answered patients with an error.
    """
    num, den = weights @ np.asarray(numerator, float), weights @ np.asarray(denominator, float)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def patient_weights(groups: object) -> np.ndarray:
    """``1 / m_j`` for every image of patient ``j`` (``m_j`` its number of images): each patient weighs 1 in all.

    The weight the conformal and risk-control estimands give an image (a random image of a random patient), so a
    patient photographed ten times does not count ten times.
    """
    _, inverse, counts = np.unique(as_1d(groups, "groups"), return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def resolve_metric(metric: str | BatchedMetric) -> BatchedMetric:
    """Return the batched metric for a registered name, or ``metric`` itself when it is callable."""
    if callable(metric):
        return metric
    if metric not in BATCHED_METRICS:
        raise KeyError(f"unknown batched metric {metric!r}; registered: {sorted(BATCHED_METRICS)}.")
    return BATCHED_METRICS[metric]


@dataclass(frozen=True)
class BootstrapResult:
    """A point estimate with its percentile interval and the per-resample values behind it.

    Subtracting two results computed with the same ``Bootstrap`` gives the interval of the difference, because the
    replicates are paired resample by resample.
    """

    point: float
    low: float
    high: float
    confidence: float
    replicates: np.ndarray = field(repr=False)
    token: int = field(repr=False)

    def __sub__(self, other: BootstrapResult) -> BootstrapResult:
        if not isinstance(other, BootstrapResult):
            return NotImplemented
        if other.token != self.token:
            raise ValueError("cannot pair results from different Bootstrap objects; evaluate both with the same one.")
        reps = self.replicates - other.replicates
        low, high = percentile_interval(reps, self.confidence)
        return BootstrapResult(self.point - other.point, low, high, self.confidence, reps, self.token)

    def as_dict(self) -> dict[str, float]:
        """Point, low and high as plain floats (for a DataFrame row)."""
        return {"point": self.point, "low": self.low, "high": self.high}


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """Equal-tailed percentile interval of the finite replicates (NaN when none are finite)."""
    reps = np.asarray(replicates, dtype=float)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(reps, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


class Bootstrap:
    """One seeded matrix of patient-level resamples, reused for every metric evaluated with it.

    Args:
        groups: patient id of each image (any hashable values); images of one patient are resampled together.
        n_resamples: number of resamples B (*default* 1000, see the method spec §10).
        seed: seed of the generator that draws the resamples.
        confidence: coverage of the percentile interval (*default* 0.95).
        max_chunk: at most this many weight-matrix entries are held at once (resamples are processed in chunks), so
            memory stays bounded for large test sets.

    Attributes:
        patient_draws: (B, n_patients) int32, the patients drawn in each resample (codes into ``patient_ids``).
        patient_counts: (B, n_patients) int32, how often each patient was drawn in each resample.
        image_patient: (n_images,) code of each image's patient.

    Raises:
        ValueError: when ``groups`` is empty or ``n_resamples`` / ``confidence`` are out of range.
    """

    def __init__(
        self,
        groups: object,
        n_resamples: int = 1000,
        seed: int = 0,
        confidence: float = 0.95,
        max_chunk: int = 4_000_000,
    ) -> None:
        g = as_1d(groups, "groups")
        if g.size == 0:
            raise ValueError("`groups` is empty; pass one patient id per image.")
        if n_resamples < 1:
            raise ValueError(f"`n_resamples` must be >= 1; got {n_resamples}.")
        if not 0 < confidence < 1:
            raise ValueError(f"`confidence` must lie in (0, 1); got {confidence}.")
        self.n_resamples = int(n_resamples)
        self.seed = seed
        self.confidence = float(confidence)
        self.max_chunk = int(max_chunk)
        self.patient_ids, self.image_patient = np.unique(g, return_inverse=True)
        n_p = len(self.patient_ids)
        rng = np.random.default_rng(seed)
        self.patient_draws = rng.integers(0, n_p, size=(self.n_resamples, n_p), dtype=np.int32)
        flat = self.patient_draws + (np.arange(self.n_resamples, dtype=np.int64)[:, None] * n_p)
        counts = np.bincount(flat.ravel(), minlength=self.n_resamples * n_p)
        self.patient_counts = counts.reshape(self.n_resamples, n_p).astype(np.int32)
        self._token = next(_TOKENS)

    @property
    def n_images(self) -> int:
        return len(self.image_patient)

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

    def resample_indices(self, b: int) -> np.ndarray:
        """Image indices of resample ``b`` (each drawn patient contributes all its images), for reference loops."""
        order = np.argsort(self.image_patient, kind="stable")
        starts = np.searchsorted(self.image_patient[order], np.arange(self.n_patients + 1))
        return np.concatenate([order[starts[p] : starts[p + 1]] for p in self.patient_draws[b]])

    def weights(self, rows: slice = slice(None), mask: np.ndarray | None = None) -> np.ndarray:
        """Image weights (b, n) for resample ``rows``, restricted to images in ``mask`` when given."""
        img = self.image_patient if mask is None else self.image_patient[mask]
        return self.patient_counts[rows][:, img].astype(float)

    def replicates(self, metric: str | BatchedMetric, *arrays: object, mask: np.ndarray | None = None) -> np.ndarray:
        """The metric under every resample, shape (B,); ``mask`` restricts to a subset of images (a subgroup)."""
        fn = resolve_metric(metric)
        arrs, mask = self._prepare(arrays, mask)
        n = len(arrs[0]) if arrs else self.n_images
        step = max(1, self.max_chunk // max(n, 1))
        out = [fn(*arrs, self.weights(slice(i, i + step), mask)) for i in range(0, self.n_resamples, step)]
        return np.concatenate(out)

    def point(self, metric: str | BatchedMetric, *arrays: object, mask: np.ndarray | None = None) -> float:
        """The metric on the original sample (every image weight 1)."""
        fn = resolve_metric(metric)
        arrs, _ = self._prepare(arrays, mask)
        return float(fn(*arrs, np.ones((1, len(arrs[0]))))[0])

    def ci(self, metric: str | BatchedMetric, *arrays: object, mask: np.ndarray | None = None) -> BootstrapResult:
        """Point estimate and percentile interval of ``metric(*arrays)``.

        Args:
            metric: a registered name (``auroc``, ``accuracy``, ``sensitivity``, ``specificity``, ``mean``) or a
                batched callable ``fn(*arrays, weights) -> (B,)``.
            *arrays: per-image arrays in the order the metric expects (e.g. ``y_true, y_score``).
            mask: boolean per-image selection (a subgroup); resamples are still the shared patient draws.
        """
        reps = self.replicates(metric, *arrays, mask=mask)
        low, high = percentile_interval(reps, self.confidence)
        return BootstrapResult(self.point(metric, *arrays, mask=mask), low, high, self.confidence, reps, self._token)

    def ratio_ci(self, numerator: object, denominator: object, mask: np.ndarray | None = None) -> BootstrapResult:
        """``ci("ratio", numerator, denominator, mask=mask)``, computed from per-patient sums.

        A resample's weighted sum over images is its patient counts times the per-patient sums, so the (B, n)
        image-weight matrix is never built: the tables that report many groups (coverage, referral, reliability
        bins) stay fast at 1000 resamples. Same resamples, same values up to float summation order.
        """
        arrs, mask = self._prepare((numerator, denominator), mask)
        patients = self.image_patient if mask is None else self.image_patient[mask]
        num = np.bincount(patients, weights=arrs[0].astype(float), minlength=self.n_patients)
        den = np.bincount(patients, weights=arrs[1].astype(float), minlength=self.n_patients)
        if not hasattr(self, "_float_counts"):  # cast once: an int matrix times floats is cast on every product
            self._float_counts = self.patient_counts.astype(float)
        top, bottom = self._float_counts @ num, self._float_counts @ den  # two matrix-vector products: the fastest
        reps = np.full(self.n_resamples, np.nan)
        np.divide(top, bottom, out=reps, where=bottom > 0)
        total = den.sum()
        point = float(num.sum() / total) if total > 0 else float("nan")
        low, high = percentile_interval(reps, self.confidence)
        return BootstrapResult(point, low, high, self.confidence, reps, self._token)

    def _prepare(
        self, arrays: tuple[object, ...], mask: np.ndarray | None
    ) -> tuple[list[np.ndarray], np.ndarray | None]:
        arrs = [np.asarray(a) for a in arrays]
        for i, a in enumerate(arrs):
            if len(a) != self.n_images:
                raise ValueError(
                    f"array #{i} passed to the bootstrap has {len(a)} rows but `groups` has {self.n_images}; "
                    "pass one row per image, in the same order as `groups`."
                )
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (self.n_images,):
                raise ValueError(f"`mask` must be a boolean vector of length {self.n_images}; got {mask.shape}.")
            arrs = [a[mask] for a in arrs]
        return arrs, mask
