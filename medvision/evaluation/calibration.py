"""Probabilistic quality: NLL, Brier, ECE, reliability-diagram data, and temperature scaling.

Conventions (see the method spec §1, uncertainty):
- Probabilities are either a (n, K) matrix whose rows sum to one, or, for binary tasks, a (n,) vector of P(y=1)
  that is expanded to ``[1 - p, p]``.
- NLL is the mean of ``-log p_y`` with p clipped to ``[eps, 1]`` (eps = float64 machine epsilon), as scikit-learn's
  ``log_loss``.
- Brier score: mean over samples of ``sum_k (p_k - 1[y = k])^2`` for K classes (Brier 1950, *not* halved). For a
  binary vector of P(y=1) it is the mean of ``(p - y)^2``, which is scikit-learn's ``brier_score_loss`` (and half
  the two-column sum).
- ECE uses the top-label confidence ``max_k p_k`` in 15 equal-width bins (*default*; Guo et al. 2017, eq. 3);
  bin b covers ``(b/M, (b+1)/M]`` with a confidence of exactly 0 put in the first bin. ECE = sum_b (n_b / n) *
  |accuracy_b - confidence_b|.

Per subgroup and per site (:func:`calibration_by_group`): the same ECE and reliability bins inside every group,
with intervals from the one patient-level bootstrap (:func:`batched_ece` evaluates the definition above under every
resample's image weights at once, so the point estimate *is* :func:`expected_calibration_error`). A site that is
calibrated badly can be recalibrated on its own validation patients (:func:`fit_site_temperature`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp, softmax

from medvision.cohort.named_values import closest
from medvision.evaluation._checks import as_1d, as_2d, same_length, sample_weights
from medvision.evaluation._groups import LABEL, PATIENT, attribute_columns, iter_groups
from medvision.evaluation.bootstrap import Bootstrap

__all__ = [
    "nll",
    "brier_score",
    "expected_calibration_error",
    "reliability_diagram",
    "TemperatureScaler",
    "batched_ece",
    "SubgroupCalibration",
    "calibration_by_group",
    "fit_site_temperature",
]

_EPS = np.finfo(np.float64).eps


def _prob_matrix(y_prob: object, name: str = "y_prob") -> np.ndarray:
    p = np.asarray(y_prob.detach().cpu().numpy() if hasattr(y_prob, "detach") else y_prob, dtype=float)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    p = as_2d(p, name)
    if (p < -1e-9).any() or (p > 1 + 1e-9).any():
        raise ValueError(f"`{name}` must hold probabilities in [0, 1]; apply softmax/sigmoid to logits first.")
    return p


def _class_index(y_true: object, k: int) -> np.ndarray:
    y = as_1d(y_true, "y_true")
    if not np.isin(y, np.arange(k)).all():
        raise ValueError(f"`y_true` must hold class indices 0..{k - 1} matching the probability columns.")
    return y.astype(int)


def nll(y_true: object, y_prob: object, sample_weight: object | None = None) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    p = _prob_matrix(y_prob)
    y = _class_index(y_true, p.shape[1])
    w = sample_weights(sample_weight, same_length(y_true=y, y_prob=p))
    py = np.clip(p[np.arange(len(y)), y], _EPS, 1.0)
    return float(np.dot(w, -np.log(py)) / w.sum())


def brier_score(y_true: object, y_prob: object, sample_weight: object | None = None) -> float:
    """Brier score; see the module docstring for the binary vs multi-class convention."""
    raw = np.asarray(y_prob, dtype=float)
    p = _prob_matrix(raw)
    y = _class_index(y_true, p.shape[1])
    w = sample_weights(sample_weight, same_length(y_true=y, y_prob=p))
    onehot = np.eye(p.shape[1])[y]
    per_sample = ((p - onehot) ** 2).sum(axis=1)
    if raw.ndim == 1:
        per_sample = per_sample / 2.0  # (1-p - (1-y))^2 + (p - y)^2 = 2 (p - y)^2
    return float(np.dot(w, per_sample) / w.sum())


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence: ``(b/M, (b+1)/M]`` is bin b, a confidence of exactly 0 goes to bin 0."""
    return np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)


def _binned(y_true: object, y_prob: object, n_bins: int, sample_weight: object | None) -> pd.DataFrame:
    if n_bins < 1:
        raise ValueError(f"`n_bins` must be >= 1; got {n_bins}.")
    p = _prob_matrix(y_prob)
    y = _class_index(y_true, p.shape[1])
    w = sample_weights(sample_weight, same_length(y_true=y, y_prob=p))
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    b = _bin_index(conf, n_bins)
    count = np.bincount(b, weights=w, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=w * conf, minlength=n_bins) / count
        acc = np.bincount(b, weights=w * correct, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1],
            "bin_upper": edges[1:],
            "count": count,
            "confidence": mean_conf,
            "accuracy": acc,
            "gap": acc - mean_conf,
        }
    )


def reliability_diagram(
    y_true: object, y_prob: object, n_bins: int = 15, sample_weight: object | None = None
) -> pd.DataFrame:
    """Per-bin data for a reliability diagram: one row per confidence bin.

    Returns:
        DataFrame with ``bin_lower``, ``bin_upper``, ``count`` (weighted), ``confidence`` (mean top-label
        confidence), ``accuracy`` and ``gap`` = accuracy - confidence; empty bins have count 0 and NaN means.
    """
    return _binned(y_true, y_prob, n_bins, sample_weight)


def expected_calibration_error(
    y_true: object, y_prob: object, n_bins: int = 15, sample_weight: object | None = None
) -> float:
    """Top-label ECE over ``n_bins`` equal-width confidence bins (*default* 15)."""
    table = _binned(y_true, y_prob, n_bins, sample_weight)
    filled = table[table["count"] > 0]
    return float((filled["count"] * filled["gap"].abs()).sum() / filled["count"].sum())


class TemperatureScaler:
    """Temperature scaling (Guo et al. 2017): divide logits by one scalar T > 0 fitted to minimise validation NLL.

    T is optimised as log T with L-BFGS-B and the analytic gradient, so it stays positive without constraints. The
    argmax (and so accuracy) is unchanged; only confidence is rescaled.

    Args:
        init_temperature: starting value of T.
        max_iter: L-BFGS-B iteration limit.

    Attributes:
        temperature_: the fitted T.
        nll_before_: validation NLL at T = 1.
        nll_after_: validation NLL at the fitted T.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 500); logits = 4.0 * (np.eye(3)[y] + rng.normal(size=(500, 3)))
        >>> ts = TemperatureScaler().fit(logits, y)
        >>> ts.temperature_ > 1 and ts.nll_after_ < ts.nll_before_
        True
    """

    def __init__(self, init_temperature: float = 1.0, max_iter: int = 200) -> None:
        self.init_temperature = init_temperature
        self.max_iter = max_iter

    def fit(self, logits: object, y_true: object) -> TemperatureScaler:
        """Fit T on validation logits (n, K) and integer labels (n,)."""
        z = as_2d(logits, "logits")
        y = _class_index(y_true, z.shape[1])
        same_length(logits=z, y_true=y)
        if self.init_temperature <= 0:
            raise ValueError(f"`init_temperature` must be > 0; got {self.init_temperature}.")
        zy = z[np.arange(len(y)), y]

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            a = np.exp(-theta[0])  # a = 1 / T
            value = np.mean(logsumexp(a * z, axis=1) - a * zy)
            d_a = np.mean((softmax(a * z, axis=1) * z).sum(axis=1) - zy)
            return float(value), np.array([-a * d_a])  # d/d(log T) = dNLL/da * da/dlogT, da/dlogT = -a

        res = minimize(
            objective,
            np.array([np.log(self.init_temperature)]),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter},
        )
        self.temperature_ = float(np.exp(res.x[0]))
        self.nll_before_ = objective(np.array([0.0]))[0]
        self.nll_after_ = float(res.fun)
        return self

    def transform(self, logits: object) -> np.ndarray:
        """Logits divided by the fitted temperature."""
        if not hasattr(self, "temperature_"):
            raise RuntimeError("TemperatureScaler is not fitted; call fit(val_logits, val_labels) first.")
        return as_2d(logits, "logits") / self.temperature_

    def predict_proba(self, logits: object) -> np.ndarray:
        """Calibrated class probabilities softmax(logits / T)."""
        return np.exp(log_softmax(self.transform(logits), axis=1))


def batched_ece(confidence: np.ndarray, correct: np.ndarray, weights: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """Top-label ECE (the module's definition) under every row of a (B, n) weight matrix, shape (B,).

    With count_b, correct_b and confidence_b the weighted count, number correct and summed confidence of bin b,
    ``ECE = sum_b |correct_b - confidence_b| / sum_b count_b`` (the same as weighting each bin's
    ``|accuracy_b - mean confidence_b|`` by its share of images). A bootstrap metric for :class:`Bootstrap`.
    """
    conf = np.asarray(confidence, dtype=float)
    onehot = np.eye(n_bins)[_bin_index(conf, n_bins)]
    count = weights @ onehot
    gap = np.abs(weights @ (onehot * np.asarray(correct, float)[:, None]) - weights @ (onehot * conf[:, None]))
    total = count.sum(axis=1)
    out = np.full(len(weights), np.nan)
    np.divide(gap.sum(axis=1), total, out=out, where=total > 0)
    return out


@dataclass(frozen=True)
class SubgroupCalibration:
    """ECE per group and reliability-diagram bins per group, both with patient-level bootstrap intervals.

    Attributes:
        ece: one row per group: ``attribute``, ``group`` (``all``/``all`` first), ``n_patients``, ``n_images``,
            ``flag``, ``ece``, ``ece_low``, ``ece_high``. The bootstrap distribution of ECE sits above the point
            estimate (ECE is biased upwards in small samples), so an interval can exclude it: read the interval
            as the spread, the point as the estimate.
        reliability: one row per non-empty bin of each unflagged group: ``attribute``, ``group``, ``bin_lower``,
            ``bin_upper``, ``count`` (images), ``confidence``, ``accuracy``, ``accuracy_low``, ``accuracy_high``.
    """

    ece: pd.DataFrame
    reliability: pd.DataFrame


def calibration_by_group(
    y_prob: object,
    frame: pd.DataFrame,
    *,
    attributes: list[str] | tuple[str, ...] = (),
    n_bins: int = 15,
    min_patients: int = 20,
    bootstrap: Bootstrap | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> SubgroupCalibration:
    """ECE and reliability bins for the whole set and every subgroup (sex, site, ``a*b``), with patient-level
    bootstrap intervals; groups with fewer than ``min_patients`` patients are flagged and get no numbers.

    Args:
        y_prob: (n, K) probabilities (raw or recalibrated) of inlier images.
        frame: the set's predictions table (``label_idx``, ``patient_id``, subgroup columns).
        attributes: subgroup columns to report; ``site`` gives the per-site table.
        bootstrap: a :class:`Bootstrap` over the set's patients to share resamples with other tables.
    """
    p = _prob_matrix(y_prob)
    y = _class_index(frame[LABEL].to_numpy(), p.shape[1])
    g = frame[PATIENT].to_numpy()
    same_length(y_prob=p, frame=y)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    boot = bootstrap or Bootstrap(g, n_resamples=max(n_resamples, 1), seed=seed)
    features = attribute_columns(frame, list(attributes)) if attributes else None
    bins = _bin_index(conf, n_bins)

    def ece(c: np.ndarray, k: np.ndarray, w: np.ndarray) -> np.ndarray:
        return batched_ece(c, k, w, n_bins)

    ece_rows, bin_rows = [], []
    for grp in iter_groups(g, features, min_patients):
        row: dict[str, object] = {"attribute": grp.attribute, "group": grp.group, **grp.counts}
        if not grp.flag:
            ci = boot.ci(ece, conf, correct, mask=grp.mask)
            row.update(ece=ci.point, ece_low=ci.low, ece_high=ci.high)
            for b in np.unique(bins[grp.mask]):
                in_bin = grp.mask & (bins == b)
                acc = boot.ratio_ci(correct * in_bin, in_bin.astype(float), mask=grp.mask)
                bin_rows.append(
                    {
                        "attribute": grp.attribute,
                        "group": grp.group,
                        "bin_lower": b / n_bins,
                        "bin_upper": (b + 1) / n_bins,
                        "count": int(in_bin.sum()),
                        "confidence": float(conf[in_bin].mean()),
                        "accuracy": acc.point,
                        "accuracy_low": acc.low,
                        "accuracy_high": acc.high,
                    }
                )
        ece_rows.append(row)
    ece_cols = ["attribute", "group", "n_patients", "n_images", "flag", "ece", "ece_low", "ece_high"]
    bin_cols = ["attribute", "group", "bin_lower", "bin_upper", "count", "confidence", "accuracy"]
    return SubgroupCalibration(
        pd.DataFrame(ece_rows).reindex(columns=ece_cols),
        pd.DataFrame(bin_rows).reindex(columns=[*bin_cols, "accuracy_low", "accuracy_high"]),
    )


def fit_site_temperature(logits: object, y_true: object, sites: object, site: str) -> TemperatureScaler:
    """Temperature scaling fitted on one site's images only: recalibration for deployment at that site.

    Pass the *validation* rows (never the rows it will be evaluated on); the scaler then rescales any logits,
    e.g. that site's test images. Probabilities work too: pass ``log(p)``, as the evaluate stage does.

    Raises:
        ValueError: the site has no rows here, naming the sites that do and the closest spelling.
    """
    z = as_2d(logits, "logits")
    s = as_1d(sites, "sites").astype(str)
    y = as_1d(y_true, "y_true")
    same_length(logits=z, y_true=y, sites=s)
    mask = s == site
    if not mask.any():
        existing = sorted(set(s.tolist()))
        close = closest(site, existing)
        hint = f" Did you mean {close!r}?" if close else ""
        raise ValueError(
            f"calibration site {site!r} has no validation images to fit a temperature on.{hint} Sites with "
            f"validation images: {', '.join(existing)}. A held-out site has none: name a site seen in validation."
        )
    return TemperatureScaler().fit(z[mask], y[mask])
