"""Abstention with risk control: refer what the model is unsure of (or what looks out of distribution), with the
referral threshold chosen on validation so that the risk on the cases it *answers* is at most α with probability at
least 1 - δ over the draw of the validation patients.

**Method: Learn then Test** (Angelopoulos, Bates, Candès, Jordan & Lei 2021, "Learn then Test: calibrating
predictive algorithms to achieve risk control"). The rule answers an image when its confidence c(x) = max_k p_k
is at least λ (and, optionally, its OOD score is at most τ). LTT tests, for each candidate λ, the null hypothesis
H_λ : R(λ) > α and returns a λ̂ among the rejected ones; controlling the family-wise error at δ gives the
(α, δ)-risk-control guarantee

    P( R(λ̂) <= α ) >= 1 - δ.

* **p-values.** The loss is binary, so the exact binomial tail is a valid p-value (LTT's binomial p-value, used
  for selective classification in Angelopoulos & Bates 2023, "A gentle introduction to conformal prediction"): with
  n(λ) units at risk and k(λ) of them failing, p(λ) = P(Binomial(n(λ), α) <= k(λ)).
* **Family-wise control: fixed-sequence testing** (LTT). Candidates (the validation confidences) are ordered from
  the most cautious (highest λ: fewest answers) down; they are tested at level δ in that order, and testing stops
  at the first λ not rejected. λ̂ is the last rejected, i.e. the lowest threshold (most answers) certified.
  Thresholds at which even zero failures could not reach p <= δ (n(λ) < log δ / log(1 - α)) are skipped before
  testing (the gentle introduction's example likewise skips thresholds that answer too few cases); that choice
  looks at confidences only, never at labels. When no λ is certified every case is referred (``feasible_`` is
  False).
* **Why not conformal risk control** (Angelopoulos, Bates, Fisch, Lei & Schuster 2022)? CRC picks
  λ̂ = inf{λ : n/(n + 1) · R̂_n(λ) + B/(n + 1) <= α} for a loss bounded by B and monotone in λ, and bounds the
  *expected* loss E[L(λ̂)] <= α. The error among answered cases is a ratio (errors / answered), not the mean of a
  monotone per-case loss, so CRC does not apply to it; LTT covers both risks with one, stronger, promise (a bound
  that holds with probability 1 - δ, not only on average).

**Patients, not images.** The units are patients, so images of one patient need not be independent:

* ``on="error"``: a patient is *answered* when at least one of its images is answered, and *fails* when at least
  one answered image is wrong. R(λ) = P(a failure | answered), the share of answered patients given a wrong
  answer; n(λ) = answered validation patients, k(λ) = those with a wrong answered image. Conditionally on which
  patients are answered, their failures are i.i.d. Bernoulli(R(λ)), so the binomial p-value is exact. With one
  image per patient this is the error rate among accepted cases; with several it bounds the per-image rate.
* ``on="miss"``: among patients with an image of the ``positive`` class, R(λ) = P(an answered positive image is
  called something else), the miss rate of the positive class; n = those patients, k(λ) = those missed.

**OOD.** With an OOD score (higher = more out of distribution; HOD's p_out, -MSP, energy, ...), a case is also
referred when its score exceeds τ. τ is fixed on a third of the validation patients (seeded): the conformal
quantile (:func:`~medvision.evaluation.conformal.hierarchical_quantile`) at 1 - ``ood_rate``, so an in-distribution
patient's image is referred as OOD with probability at most ``ood_rate``. λ is then certified by LTT on the other
two thirds with τ applied, which keeps the LTT guarantee exact (τ does not depend on them).

**Where the promise ends.** The guarantee assumes the evaluated patients are exchangeable with the validation ones.
A held-out site or condition is not: :func:`abstention_table` says so and reports how far the risk went over α.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> p = rng.dirichlet(np.ones(2) * 0.3, 3000); y = (rng.random(3000) < p[:, 1]).astype(int)
    >>> rule = RiskControlledAbstention(alpha=0.05, delta=0.1).fit(p, y, groups=np.arange(3000))
    >>> bool(rule.feasible_), bool(0.5 < rule.threshold_ < 1)
    (True, True)
    >>> answered = ~rule.refer(p)
    >>> bool((p[answered].argmax(1) != y[answered]).mean() <= 0.05)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import binom

from medvision.evaluation._checks import as_1d, as_2d, same_length
from medvision.evaluation._groups import (
    ALL,
    LABEL,
    PATIENT,
    Group,
    attribute_columns,
    carriers,
    iter_groups,
    masked_patient_weights,
    patient_max,
)
from medvision.evaluation.bootstrap import Bootstrap
from medvision.evaluation.conformal import EXCHANGEABLE_SETS, hierarchical_quantile

__all__ = ["RISKS", "RiskControlledAbstention", "abstention_table"]

#: What the risk is about: errors among answered cases, or misses of the positive class.
RISKS = ("error", "miss")
_OOD_SHARE = 1 / 3  # share of validation patients that fix the OOD threshold (the rest certify λ)


class RiskControlledAbstention:
    """Referral rule ``refer = confidence < λ̂ or ood_score > τ̂`` with λ̂ certified by Learn then Test.

    Args:
        alpha: the promised bound on the risk (*default* 0.05).
        delta: the chance the promise fails over validation draws (*default* 0.1): P(R(λ̂) <= α) >= 1 - δ.
        on: ``error`` (errors among answered patients) or ``miss`` (misses of the ``positive`` class).
        positive: class index of the positive class (``on="miss"``).
        ood_rate: share of in-distribution cases an OOD score may refer (when an OOD score is given to ``fit``).
        seed: seeds the validation split between the OOD threshold and the LTT certification.

    Attributes:
        threshold_: λ̂, the confidence below which a case is referred (``inf``: everything is referred).
        ood_threshold_: τ̂, the OOD score above which a case is referred; ``None`` when fitted without one.
        feasible_: whether some λ was certified.
        n_patients_: patients that certified λ (answered-or-not for ``error``, positive patients for ``miss``).
        tests_: DataFrame of the tested sequence: ``threshold``, ``n_units``, ``n_failures``, ``risk``,
            ``p_value``, ``rejected``.
    """

    def __init__(
        self,
        alpha: float = 0.05,
        delta: float = 0.1,
        on: str = "error",
        positive: int = 0,
        ood_rate: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.alpha = alpha
        self.delta = delta
        self.on = on
        self.positive = positive
        self.ood_rate = ood_rate
        self.seed = seed

    def fit(
        self, y_prob: object, y_true: object, groups: object | None = None, ood_score: object | None = None
    ) -> RiskControlledAbstention:
        """Fix τ̂ (when ``ood_score`` is given) and certify λ̂ on validation images of inlier classes.

        Args:
            y_prob: (n, K) validation probabilities.
            y_true: true class indices 0..K-1.
            groups: patient id per image (``None``: one patient per image).
            ood_score: OOD score per image, higher = more out of distribution.
        """
        self._check_settings()
        p = as_2d(y_prob, "y_prob")
        y = as_1d(y_true, "y_true")
        if not np.isin(y, np.arange(p.shape[1])).all():
            raise ValueError(f"`y_true` must hold class indices 0..{p.shape[1] - 1}: fit on labelled inlier images.")
        g = np.arange(len(y)) if groups is None else as_1d(groups, "groups")
        ood = None if ood_score is None else as_1d(ood_score, "ood_score", float)
        same_length(y_prob=p, y_true=y, groups=g, **({} if ood is None else {"ood_score": ood}))
        ltt = np.ones(len(y), bool)
        self.ood_threshold_: float | None = None
        if ood is not None:
            patients = np.unique(g)
            rng = np.random.default_rng(self.seed)
            held = rng.permutation(patients)[: int(np.ceil(len(patients) * _OOD_SHARE))]
            ltt = ~np.isin(g, held)
            self.ood_threshold_ = hierarchical_quantile(ood[~ltt], g[~ltt], 1 - self.ood_rate)
        eligible = np.ones(len(y), bool) if ood is None else ood <= self.ood_threshold_
        conf = np.where(eligible, p.max(axis=1), -np.inf)[ltt]
        self._certify(conf, p.argmax(axis=1)[ltt], y[ltt].astype(int), g[ltt])
        return self

    @classmethod
    def from_thresholds(cls, threshold: float | None, ood_threshold: float | None) -> RiskControlledAbstention:
        """A rule certified earlier, rebuilt from λ̂ (``None``: nothing certified, everything referred) and τ̂, as an
        evaluation records them, to refer new cases (``predict --evaluation``)."""
        rule = cls()
        rule.threshold_ = np.inf if threshold is None else float(threshold)
        rule.ood_threshold_ = ood_threshold
        return rule

    def refer(self, y_prob: object, ood_score: object | None = None) -> np.ndarray:
        """Boolean per image: True = referred to a clinician, False = the model's answer is used."""
        if not hasattr(self, "threshold_"):
            raise RuntimeError("RiskControlledAbstention is not fitted; call fit(val_probs, val_labels, ...) first.")
        p = as_2d(y_prob, "y_prob")
        refer = p.max(axis=1) < self.threshold_
        if self.ood_threshold_ is not None:
            if ood_score is None:
                raise ValueError("this rule was fitted with an OOD score: pass `ood_score` to refer() as well.")
            ood = as_1d(ood_score, "ood_score", float)
            same_length(y_prob=p, ood_score=ood)
            refer |= ood > self.ood_threshold_
        return refer

    def _check_settings(self) -> None:
        if self.on not in RISKS:
            raise ValueError(f"`on` must be one of {', '.join(RISKS)}; got {self.on!r}.")
        for name in ("alpha", "delta", "ood_rate"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"`{name}` must lie in (0, 1); got {getattr(self, name)}.")

    def _certify(self, conf: np.ndarray, y_pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> None:
        """Fixed-sequence LTT over the validation confidences (module docstring)."""
        wrong = y_pred != y
        grid = np.unique(conf[np.isfinite(conf)])[::-1]
        if self.on == "error":
            _, answered_at = patient_max(g, conf)  # a patient is answered for every λ <= this
            _, failed_at = patient_max(g, np.where(wrong, conf, -np.inf))
            n = len(answered_at) - np.searchsorted(np.sort(answered_at), grid, side="left")
        else:
            pos = y == self.positive
            _, failed_at = patient_max(g[pos], np.where(wrong[pos], conf[pos], -np.inf))
            n = np.full(len(grid), len(failed_at))  # every positive patient is at risk, whatever λ
        k = len(failed_at) - np.searchsorted(np.sort(failed_at), grid, side="left")
        n_min = np.log(self.delta) / np.log(1 - self.alpha)
        keep = n >= n_min
        grid, n, k = grid[keep], n[keep], k[keep]
        p_value = binom.cdf(k, n, self.alpha)
        failed = np.flatnonzero(p_value > self.delta)
        stop = failed[0] if len(failed) else len(grid)
        self.tests_ = pd.DataFrame(
            {
                "threshold": grid,
                "n_units": n,
                "n_failures": k,
                "risk": np.divide(k, n, out=np.full(len(n), np.nan), where=n > 0),
                "p_value": p_value,
                "rejected": np.arange(len(grid)) < stop,
            }
        )
        self.feasible_ = bool(stop > 0)
        self.threshold_ = float(grid[stop - 1]) if stop > 0 else float("inf")
        self.n_patients_ = len(np.unique(g if self.on == "error" else g[y == self.positive]))


def abstention_table(
    rule: RiskControlledAbstention,
    y_prob: object,
    frame: pd.DataFrame,
    *,
    set_name: str,
    ood_score: object | None = None,
    attributes: Sequence[str] = (),
    exchangeable: bool | None = None,
    min_patients: int = 20,
    bootstrap: Bootstrap | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """What the fitted rule does on one evaluation set, for the whole set and each subgroup.

    Rates weight every patient equally (its images share one unit), like the coverage tables; the risks are the
    patient-level quantities the rule was certified on. Intervals are patient-level bootstrap percentiles.

    Args:
        rule: the fitted rule.
        y_prob, frame: the set's probabilities and predictions table (``label_idx``: -1 or an abstention class for
            images the model has no class for, which count as wrong when answered; ``patient_id``; subgroups).
        set_name: decides ``exchangeable`` when that is ``None`` (``val`` and ``test`` are exchangeable).
        ood_score: the same OOD score the rule was fitted with.
        attributes: subgroup columns (``a*b`` intersections) to report rows for.

    Returns:
        One row per group: ``set``, ``attribute``, ``group``, ``n_patients``, ``n_images``, ``flag``, ``on``,
        ``alpha``, ``threshold``, ``ood_threshold``, ``referral_rate`` (+ ``_low``/``_high``), ``accepted_error``
        (+ CI; share of answered patients with a wrong answer), ``miss_rate`` (+ CI; share of positive patients
        missed), ``risk`` / ``risk_low`` / ``risk_high`` (the controlled one of the two), ``excess`` (risk - α;
        > 0: over the promise), and ``guarantee``: ``holds``, ``above_alpha`` (exchangeable, yet the whole
        interval is above α), ``not_promised`` (a subgroup: LTT promises the whole population only),
        ``does_not_carry_over`` (a held-out site or condition), or empty for a flagged row (``few_patients``;
        ``nothing_answered`` / ``no_positives`` when the controlled risk is undefined).
    """
    p = as_2d(y_prob, "y_prob")
    y = frame[LABEL].to_numpy()
    g = frame[PATIENT].to_numpy()
    same_length(y_prob=p, frame=y)
    exch = set_name in EXCHANGEABLE_SETS if exchangeable is None else exchangeable
    refer = rule.refer(p, ood_score)
    wrong = p.argmax(axis=1) != y
    answered_wrong = ~refer & wrong
    positive = y == rule.positive
    boot = bootstrap or Bootstrap(g, n_resamples=max(n_resamples, 1), seed=seed)
    features = attribute_columns(frame, attributes) if attributes else None
    rows = []
    for grp in iter_groups(g, features, min_patients):
        rates = None if grp.flag else _group_rates(grp.mask, g, refer, answered_wrong, positive, boot)
        rows.append(_abstention_row(rule, set_name, grp, rates, exch))
    out = pd.DataFrame(rows).reindex(columns=_COLUMNS)
    out["guarantee"] = out["guarantee"].astype(object).where(out["guarantee"].notna(), "")
    return out


def _abstention_row(
    rule: RiskControlledAbstention,
    set_name: str,
    grp: Group,
    rates: dict[str, float] | None,
    exchangeable: bool,
) -> dict[str, object]:
    """One group's row: the rule it describes, the group's size, and for an unflagged group (``rates`` given) its
    rates and the controlled risk with its verdict. Every row repeats the rule so a table read alone says what
    was promised."""
    row: dict[str, object] = {
        "set": set_name,
        "attribute": grp.attribute,
        "group": grp.group,
        **grp.counts,
        "on": rule.on,
        "alpha": rule.alpha,
        "threshold": rule.threshold_,
        "ood_threshold": rule.ood_threshold_,
    }
    if rates is not None:
        row.update(rates)
        row.update(_controlled_risk(rule, rates, exchangeable, grp.attribute == ALL))
    return row


def _controlled_risk(
    rule: RiskControlledAbstention, rates: dict[str, float], exchangeable: bool, whole_set: bool
) -> dict[str, object]:
    """The row's columns for the one risk the rule controls (accepted error or miss rate), read from the group's
    rates, and the verdict on the promise. The rule fixes which rate that is, so the table names it ``risk``
    whatever it is; an undefined risk (nothing answered, no positives) flags the row instead of guessing."""
    key = "accepted_error" if rule.on == "error" else "miss_rate"
    risk = rates[key]
    if np.isnan(risk):
        return {"flag": "nothing_answered" if rule.on == "error" else "no_positives"}
    return {
        "risk": risk,
        "risk_low": rates[f"{key}_low"],
        "risk_high": rates[f"{key}_high"],
        "excess": risk - rule.alpha,
        "guarantee": _verdict(exchangeable, whole_set, rates[f"{key}_low"], rule.alpha),
    }


_COLUMNS = [
    "set", "attribute", "group", "n_patients", "n_images", "flag", "on", "alpha", "threshold", "ood_threshold",
    "referral_rate", "referral_rate_low", "referral_rate_high", "accepted_error", "accepted_error_low",
    "accepted_error_high", "miss_rate", "miss_rate_low", "miss_rate_high", "risk", "risk_low", "risk_high",
    "excess", "guarantee",
]  # fmt: skip


def _group_rates(
    mask: np.ndarray,
    g: np.ndarray,
    refer: np.ndarray,
    answered_wrong: np.ndarray,
    positive: np.ndarray,
    boot: Bootstrap,
) -> dict[str, float]:
    """Referral rate (patient-weighted images), accepted error and miss rate (patient shares), with intervals."""
    w = masked_patient_weights(g, mask)
    carrier = carriers(g, mask)
    answered = _per_patient_any(g, mask & ~refer)
    failed = _per_patient_any(g, mask & answered_wrong)
    pos_patient = _per_patient_any(g, mask & positive)
    missed = _per_patient_any(g, mask & positive & answered_wrong)
    out: dict[str, float] = {}
    for name, num, den in (
        ("referral_rate", refer * w, w),
        ("accepted_error", carrier & failed, carrier & answered),
        ("miss_rate", carrier & missed, carrier & pos_patient),
    ):
        ci = boot.ratio_ci(num, den, mask=mask)
        out.update({name: ci.point, f"{name}_low": ci.low, f"{name}_high": ci.high})
    return out


def _per_patient_any(g: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Per image: whether any image of its patient has ``event``."""
    ids, inverse = np.unique(g, return_inverse=True)
    hit = np.zeros(len(ids), bool)
    hit[inverse[event]] = True
    return hit[inverse]


def _verdict(exchangeable: bool, whole_set: bool, low: float, alpha: float) -> str:
    if not exchangeable:
        return "does_not_carry_over"
    if not whole_set:
        return "not_promised"
    return "above_alpha" if np.isfinite(low) and low > alpha else "holds"
