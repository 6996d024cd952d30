"""Conformal prediction sets calibrated on validation patients: split conformal with an adaptive score (APS or
RAPS), marginal or Mondrian (per true class, per subgroup or site, or an intersection), and their coverage.

**The promise** (split conformal: Vovk, Gammerman & Shafer 2005; Angelopoulos & Bates 2023, "A gentle introduction
to conformal prediction"). If the validation (calibration) patients and a new patient are exchangeable draws from
one population, the set C(x) of a random image x of the new patient holds its true class with probability at least
``target`` = 1 - α; with one image per patient and a score without ties, at most 1 - α + 1/(n + 1) for n
calibration patients. A *Mondrian* conformal predictor (Vovk, Lindsay, Nouretdinov & Gammerman 2003, "Mondrian
confidence machine"; Vovk et al. 2005) calibrates separately inside each category κ of a taxonomy, and promises the
same coverage within every category: for every true class (label-conditional), every sex, every site. A category
without enough calibration patients gets q̂ = +∞, i.e. every class: the honest answer of the finite-sample rule,
not a failure.

**Patients, not images.** Images of one patient are not independent draws, so the exchangeable units are patients
(hierarchical exchangeability: patients are i.i.d., a patient's images exchangeable among themselves). Each
calibration image gets the weight 1/m_j (m_j: images of its patient j in the category) and the threshold is the
hierarchical conformal quantile (Lee, Barber & Willett 2023, "Distribution-free inference with hierarchical data",
HCP; the "CDF pooling" of Dunn, Wasserman & Ramdas 2023):

    q̂ = inf{ t : Σ_j (1/m_j) Σ_i 1[s_ji <= t] >= (1 - α)(n + 1) },   q̂ = +∞ when (1 - α)(n + 1) > n,

which is the usual ⌈(n + 1)(1 - α)⌉-th smallest score when every patient has one image. Coverage, set size and
singleton rate are reported with the same weights (each patient counts once, its images share the weight), with
intervals from the one patient-level bootstrap (:mod:`medvision.evaluation.bootstrap`).

**Scores** (lower = the label conforms better). For an image with class probabilities p, o(y) the rank of label y
(1 = most probable; ties by class index) and u ~ U(0, 1) drawn once per image:

    APS  (Romano, Sesia & Candès 2020, "Classification with valid and adaptive coverage", NeurIPS):
         s(x, y, u) = Σ_{y': o(y') < o(y)} p_y' + u · p_y
    RAPS (Angelopoulos, Bates, Malik & Jordan 2021, "Uncertainty sets for image classifiers using conformal
         prediction", ICLR):
         s(x, y, u) = APS + λ · max(o(y) - k_reg, 0)

and C(x) = {y : s(x, y, u) <= q̂_κ(x, y)}. The random u makes coverage exact rather than conservative; a fixed seed
reproduces every set. ``randomized=False`` takes u = 1 (deterministic APS): the same guarantee with larger sets, and
an empty set where the top class alone exceeds q̂.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> def draw(n):
    ...     p = rng.dirichlet(np.ones(3) * 0.5, n)
    ...     y = np.array([rng.choice(3, p=row) for row in p])
    ...     return p, pd.DataFrame({"label_idx": y, "patient_id": np.arange(n), "sex": rng.choice(["F", "M"], n)})
    >>> p_val, val = draw(400); p_test, test = draw(400)
    >>> predictors = fit_conformal(p_val, val, target=0.9, mondrian=["sex"])
    >>> sorted(predictors)
    ['marginal', 'sex']
    >>> table = conformal_table(predictors, p_test, test, set_name="test", attributes=["sex"], n_resamples=200)
    >>> row = table.query("method == 'marginal' and attribute == 'all'").iloc[0]
    >>> bool(0.85 < row.coverage < 0.95), row.guarantee
    (True, 'holds')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medvision.evaluation._checks import as_1d, as_2d, same_length
from medvision.evaluation._groups import ALL, LABEL, PATIENT, attribute_columns, iter_groups, masked_patient_weights
from medvision.evaluation.bootstrap import Bootstrap, patient_weights

__all__ = [
    "SCORES",
    "EXCHANGEABLE_SETS",
    "ConformalClassifier",
    "conformal_scores",
    "hierarchical_quantile",
    "fit_conformal",
    "coverage_table",
    "conformal_table",
]

#: Conformity scores a :class:`ConformalClassifier` computes.
SCORES = ("aps", "raps")
#: Evaluation sets drawn from the same patient population as validation (the promise applies there). Held-out
#: sites and conditions are not: the assumption behind the guarantee fails there by design.
EXCHANGEABLE_SETS = frozenset({"val", "test"})
#: Taxonomy name for label-conditional (per true class) calibration; the others name subgroup columns.
CLASS = "class"
_TOL = 1e-9  # float slack in (1 - α)(n + 1): 0.9 * 100 must mean 90


def conformal_scores(
    y_prob: object, u: object | None = None, *, score: str = "aps", penalty: float = 0.01, k_reg: int = 1
) -> np.ndarray:
    """APS or RAPS conformity score of every label of every image (see the module docstring), shape (n, K).

    Args:
        y_prob: (n, K) class probabilities (rows sum to one).
        u: (n,) uniform draws in [0, 1], one per image; ``None``: u = 1 (deterministic APS).
        score: ``aps`` or ``raps``.
        penalty, k_reg: RAPS' λ and k_reg (ignored for APS).
    """
    p = as_2d(y_prob, "y_prob")
    if score not in SCORES:
        raise ValueError(f"unknown conformity score {score!r}; choose one of {', '.join(SCORES)}.")
    n, k = p.shape
    uu = np.ones(n) if u is None else as_1d(u, "u", float)
    if len(uu) != n or (uu < 0).any() or (uu > 1).any():
        raise ValueError(f"`u` must hold {n} values in [0, 1] (one uniform draw per image).")
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    above_sorted = np.cumsum(sorted_p, axis=1) - sorted_p  # mass of the labels ranked above
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(k), (n, k)), axis=1)  # 0-based o(y) - 1
    s = np.take_along_axis(above_sorted, rank, axis=1) + uu[:, None] * p
    if score == "raps":
        s = s + penalty * np.maximum(rank + 1 - k_reg, 0)
    return s


def hierarchical_quantile(scores: object, groups: object, target: float) -> float:
    """The conformal threshold q̂ of ``scores`` with every patient weighing one (module docstring).

    Returns ``inf`` when there are too few patients for the target: (1 - α)(n + 1) > n.
    """
    s = as_1d(scores, "scores", float)
    g = as_1d(groups, "groups")
    same_length(scores=s, groups=g)
    if not 0 < target < 1:
        raise ValueError(f"`target` must lie in (0, 1); got {target}.")
    n = len(np.unique(g))
    need = target * (n + 1) - _TOL
    if need > n:
        return float("inf")
    order = np.argsort(s, kind="stable")
    cumulative = np.cumsum(patient_weights(g)[order])
    return float(s[order][np.searchsorted(cumulative, need)])


class ConformalClassifier:
    """Split conformal prediction sets, marginal or Mondrian, calibrated on validation patients.

    Args:
        target: coverage 1 - α promised in every category (*default* 0.9).
        score: ``aps`` (*default*) or ``raps``.
        class_conditional: calibrate per true class (label-conditional Mondrian); combines with ``categories``.
        randomized: draw u ~ U(0, 1) per image (exact coverage); ``False``: u = 1.
        penalty, k_reg: RAPS' λ and k_reg.
        seed: seeds the draws of u; calibration and prediction use independent streams.

    Attributes:
        thresholds_: DataFrame, one row per calibrated category: ``category``, ``label`` (class index, or -1 when
            not class-conditional), ``n_patients``, ``n_images``, ``threshold`` (q̂; ``inf``: every class).
        n_classes_: number of classes K.
        mondrian_: whether categories were given to ``fit``.

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.7, 0.2, 0.1]] * 20); y = np.zeros(20, int)
        >>> cc = ConformalClassifier(target=0.8, randomized=False).fit(p, y)
        >>> cc.predict_set(p[:1]).astype(int).tolist()
        [[1, 0, 0]]
    """

    def __init__(
        self,
        target: float = 0.9,
        score: str = "aps",
        class_conditional: bool = False,
        randomized: bool = True,
        penalty: float = 0.01,
        k_reg: int = 1,
        seed: int = 0,
    ) -> None:
        self.target = target
        self.score = score
        self.class_conditional = class_conditional
        self.randomized = randomized
        self.penalty = penalty
        self.k_reg = k_reg
        self.seed = seed

    def scores(self, y_prob: object, u: object | None = None, stream: int = 1) -> np.ndarray:
        """Conformity scores (n, K) with this predictor's score; ``u`` defaults to the seeded draws of ``stream``."""
        n = len(as_2d(y_prob, "y_prob"))
        if u is None and self.randomized:
            u = np.random.default_rng([self.seed, stream]).random(n)
        return conformal_scores(y_prob, u, score=self.score, penalty=self.penalty, k_reg=self.k_reg)

    def fit(
        self,
        y_prob: object,
        y_true: object,
        groups: object | None = None,
        categories: object | None = None,
        u: object | None = None,
    ) -> ConformalClassifier:
        """Calibrate on validation images.

        Args:
            y_prob: (n, K) validation probabilities.
            y_true: (n,) true class indices 0..K-1.
            groups: patient id per image (``None``: every image its own patient).
            categories: Mondrian category per image (e.g. the site); ``None``: no attribute taxonomy.
            u: explicit uniform draws (n,) instead of the seeded ones (for reproducing sets by hand).
        """
        p = as_2d(y_prob, "y_prob")
        k = p.shape[1]
        y = as_1d(y_true, "y_true")
        if not np.isin(y, np.arange(k)).all():
            raise ValueError(f"`y_true` must hold class indices 0..{k - 1}: calibrate on labelled inlier images.")
        y = y.astype(int)
        g = np.arange(len(y)) if groups is None else as_1d(groups, "groups")
        cats = None if categories is None else as_1d(categories, "categories").astype(str)
        same_length(y_prob=p, y_true=y, groups=g, **({} if cats is None else {"categories": cats}))
        if not 0 < self.target < 1:
            raise ValueError(f"`target` must lie in (0, 1); got {self.target}.")
        s = self.scores(p, u, stream=0)[np.arange(len(y)), y]
        cat_key = np.full(len(y), ALL, dtype=object) if cats is None else cats.astype(object)
        label_key = y if self.class_conditional else np.full(len(y), -1)
        rows = []
        for cat in sorted(set(cat_key.tolist())):
            for label in sorted(set(label_key[cat_key == cat].tolist())):
                m = (cat_key == cat) & (label_key == label)
                rows.append(
                    {
                        "category": cat,
                        "label": int(label),
                        "n_patients": len(np.unique(g[m])),
                        "n_images": int(m.sum()),
                        "threshold": hierarchical_quantile(s[m], g[m], self.target),
                    }
                )
        self.thresholds_ = pd.DataFrame(rows, columns=["category", "label", "n_patients", "n_images", "threshold"])
        self.n_classes_ = k
        self.mondrian_ = cats is not None
        return self

    @classmethod
    def from_thresholds(
        cls, thresholds: pd.DataFrame, n_classes: int, *, target: float, score: str, randomized: bool, seed: int
    ) -> ConformalClassifier:
        """A predictor calibrated earlier, rebuilt from its :attr:`thresholds_` (as an evaluation records them), so
        new cases get the sets validation fixed without the validation images (``predict --evaluation``)."""
        cc = cls(
            target=target,
            score=score,
            class_conditional=bool((thresholds["label"] >= 0).any()),
            randomized=randomized,
            seed=seed,
        )
        cc.thresholds_ = thresholds[["category", "label", "n_patients", "n_images", "threshold"]].reset_index(drop=True)
        cc.n_classes_ = n_classes
        cc.mondrian_ = bool((thresholds["category"] != ALL).any())
        return cc

    def predict_set(self, y_prob: object, categories: object | None = None, u: object | None = None) -> np.ndarray:
        """Prediction sets as a boolean (n, K) matrix: entry (i, y) is True when label y is in image i's set.

        A category (or, class-conditionally, a class) absent from calibration gets every label: nothing was
        calibrated there, so nothing can be ruled out.
        """
        if not hasattr(self, "thresholds_"):
            raise RuntimeError("ConformalClassifier is not fitted; call fit(val_probs, val_labels, ...) first.")
        p = as_2d(y_prob, "y_prob")
        n, k = p.shape
        if k != self.n_classes_:
            raise ValueError(f"`y_prob` has {k} classes but the predictor was calibrated on {self.n_classes_}.")
        if self.mondrian_ and categories is None:
            raise ValueError("this predictor is Mondrian: pass `categories` (one per image) to predict_set.")
        cats = np.full(n, ALL, dtype=object) if not self.mondrian_ else as_1d(categories, "categories").astype(str)
        same_length(y_prob=p, categories=cats)
        return self.scores(p, u, stream=1) <= self._thresholds(cats, k)

    def calibrated(self, n: int, categories: object | None = None) -> np.ndarray:
        """Per image (``n`` of them): whether any of its classes has a finite threshold. An image without one gets
        every class in its set whatever the model says (too few calibration patients in its category): its set
        carries no information, and its coverage of 100% proves nothing."""
        cats = np.full(n, ALL, dtype=object) if not self.mondrian_ else as_1d(categories, "categories").astype(str)
        return np.isfinite(self._thresholds(cats, self.n_classes_)).any(axis=1)

    def _thresholds(self, cats: np.ndarray, k: int) -> np.ndarray:
        """The (n, K) threshold of every image's every class (``inf`` where nothing was calibrated)."""
        table = {(r.category, r.label): r.threshold for r in self.thresholds_.itertuples()}
        thresholds = np.full((len(cats), k), np.inf)
        for cat in set(cats.tolist()):
            rows = cats == cat
            if self.class_conditional:
                thresholds[rows] = [table.get((cat, y), np.inf) for y in range(k)]
            else:
                thresholds[rows] = table.get((cat, -1), np.inf)
        return thresholds


def fit_conformal(
    y_prob: object,
    frame: pd.DataFrame,
    *,
    target: float = 0.9,
    mondrian: Sequence[str] = (),
    score: str = "aps",
    randomized: bool = True,
    seed: int = 0,
) -> dict[str, ConformalClassifier]:
    """One calibrated predictor per taxonomy: ``marginal`` always, then each entry of ``mondrian``.

    Args:
        y_prob: (n, K) validation probabilities of the inlier images.
        frame: the validation predictions table (``label_idx``, ``patient_id`` and the subgroup columns).
        target, score, randomized: as :class:`ConformalClassifier` (the fields of the ``conformal`` settings).
        mondrian: taxonomies: ``class`` (per true class), a subgroup column (``sex``, ``site``), or an
            intersection ``a*b`` of them (``class*site``: per class within each site).
        seed: the evaluation seed.
    """
    y = frame[LABEL].to_numpy()
    g = frame[PATIENT].to_numpy()
    out: dict[str, ConformalClassifier] = {}
    for name in ["marginal", *mondrian]:
        parts = [] if name == "marginal" else name.split("*")
        attrs = [a for a in parts if a != CLASS]
        cats = attribute_columns(frame, ["*".join(attrs)]).iloc[:, 0].to_numpy() if attrs else None
        cc = ConformalClassifier(target, score, class_conditional=CLASS in parts, randomized=randomized, seed=seed)
        out[name] = cc.fit(y_prob, y, g, cats)
    return out


def coverage_table(
    prediction_sets: object,
    y_true: object,
    groups: object,
    *,
    target: float,
    features: pd.DataFrame | None = None,
    classes: Sequence[str] | None = None,
    promised: Sequence[str] = (),
    exchangeable: bool = True,
    min_patients: int = 20,
    bootstrap: Bootstrap | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    calibrated: object | None = None,
) -> pd.DataFrame:
    """Coverage (with a patient-level bootstrap interval), mean set size, singleton and empty rates: for the whole
    set, each subgroup in ``features`` and, when ``classes`` is given, each true class.

    Args:
        prediction_sets: boolean (n, K) sets.
        y_true: true class index per image (-1 or any value outside 0..K-1: never covered, e.g. a held-out
            condition the model has no class for).
        groups: patient id per image.
        target: the promised coverage.
        features: one column per subgroup attribute, one row per image (:func:`attribute_columns`).
        classes: class names; adds one row per true class (attribute ``class``).
        promised: the attributes of the Mondrian taxonomy the sets were calibrated with (``["sex", "site"]`` for
            ``sex*site``, ``["class"]`` for label-conditional). A row carries the promise when its attributes are
            among them (its group is then a union of calibrated categories); the ``all`` row always does.
        exchangeable: whether these patients are exchangeable with the validation patients.
        min_patients: smaller groups are flagged ``few_patients`` and get no metrics.
        bootstrap: a :class:`Bootstrap` over ``groups`` to share resamples with other tables.
        calibrated: per image, whether its set had a finite threshold (:meth:`ConformalClassifier.calibrated`);
            ``None``: every image's had.

    Returns:
        One row per group: ``attribute``, ``group``, ``n_patients``, ``n_images``, ``flag``, ``target``,
        ``coverage`` / ``coverage_low`` / ``coverage_high``, ``shortfall`` (target - coverage: how far it missed),
        ``mean_set_size``, ``singleton_rate``, ``empty_rate``, and ``guarantee``:

        - ``holds``: exchangeable and promised, and the interval reaches the target;
        - ``below_target``: exchangeable and promised, but the whole interval is below the target: evidence that
          these patients are not exchangeable with validation after all;
        - ``not_promised``: a subgroup the sets were not calibrated per (marginal sets promise the average only);
        - ``does_not_carry_over``: not exchangeable with validation (a held-out site or condition): the promise
          does not apply, ``shortfall`` shows how far it missed;
        - ``vacuous``: no image of the group had a calibrated threshold (too few calibration patients): every set
          holds every class, so its coverage proves nothing and the sets carry no information;
        - empty for a flagged group.
    """
    sets = np.asarray(prediction_sets, dtype=bool)
    if sets.ndim != 2:
        raise ValueError(f"`prediction_sets` must be a boolean (n, K) matrix; got shape {sets.shape}.")
    y = as_1d(y_true, "y_true")
    g = as_1d(groups, "groups")
    same_length(prediction_sets=sets, y_true=y, groups=g)
    n = len(sets)
    fitted = np.ones(n, bool) if calibrated is None else np.asarray(calibrated, dtype=bool)
    same_length(prediction_sets=sets, calibrated=fitted)
    covered = _covered(sets, y)
    size = sets.sum(axis=1).astype(float)
    boot = bootstrap or Bootstrap(g, n_resamples=max(n_resamples, 1), seed=seed)
    if boot.n_images != n:
        raise ValueError(f"`bootstrap` covers {boot.n_images} images but there are {n}.")
    per_class = [] if classes is None else [(CLASS, str(c), y == i) for i, c in enumerate(classes)]
    rows = []
    for grp in iter_groups(g, features, min_patients, per_class):
        row: dict[str, object] = {"attribute": grp.attribute, "group": grp.group, **grp.counts, "target": target}
        if not grp.flag:
            cov = _coverage(grp.mask, g, covered, size, boot, target)
            promise = _is_promised(grp.attribute, promised)
            verdict = _verdict(exchangeable, promise, cov["coverage"], cov["coverage_high"], target)
            row.update(cov, guarantee=verdict if fitted[grp.mask].any() else "vacuous")
        rows.append(row)
    out = pd.DataFrame(rows).reindex(columns=_COVERAGE_COLUMNS)
    out["guarantee"] = out["guarantee"].astype(object).where(out["guarantee"].notna(), "")
    return out


_COVERAGE_COLUMNS = [
    "attribute", "group", "n_patients", "n_images", "flag", "target", "coverage", "coverage_low", "coverage_high",
    "shortfall", "mean_set_size", "singleton_rate", "empty_rate", "guarantee",
]  # fmt: skip


def _covered(sets: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per image: whether its set holds its true class. A label outside ``0..K-1`` (a held-out condition the
    model has no class for) is never covered: no set can contain a class the model does not have."""
    n, k = sets.shape
    inlier = np.isin(y, np.arange(k))
    covered = np.zeros(n, bool)
    covered[inlier] = sets[np.flatnonzero(inlier), y[inlier].astype(int)]
    return covered


def _is_promised(attribute: str, promised: Sequence[str]) -> bool:
    """Whether a row carries the calibration promise. A Mondrian category's promise carries to any union of its
    categories (sex from sex*site), so a row is promised when its attributes are among the taxonomy's; the
    ``all`` row always is (every taxonomy promises the average)."""
    return attribute == ALL or set(attribute.split("*")) <= {*promised}


def _coverage(
    mask: np.ndarray, g: np.ndarray, covered: np.ndarray, size: np.ndarray, boot: Bootstrap, target: float
) -> dict[str, float]:
    """Patient-weighted coverage (with its interval), mean set size, singleton and empty rates within ``mask``."""
    w = masked_patient_weights(g, mask)
    ci = boot.ratio_ci(covered * w, w, mask=mask)

    def mean(v: np.ndarray) -> float:
        return float(np.dot(v[mask], w[mask]) / w[mask].sum())

    return {
        "coverage": ci.point,
        "coverage_low": ci.low,
        "coverage_high": ci.high,
        "shortfall": target - ci.point,
        "mean_set_size": mean(size),
        "singleton_rate": mean(size == 1),
        "empty_rate": mean(size == 0),
    }


def _verdict(exchangeable: bool, promised: bool, value: float, high: float, target: float) -> str:
    if not exchangeable:
        return "does_not_carry_over"
    if not promised:
        return "not_promised"
    reach = high if np.isfinite(high) else value
    return "below_target" if reach < target else "holds"


def conformal_table(
    predictors: Mapping[str, ConformalClassifier],
    y_prob: object,
    frame: pd.DataFrame,
    *,
    set_name: str,
    attributes: Sequence[str] = (),
    classes: Sequence[str] | None = None,
    exchangeable: bool | None = None,
    min_patients: int = 20,
    bootstrap: Bootstrap | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Every predictor of :func:`fit_conformal` on one evaluation set: :func:`coverage_table` rows with the
    ``method`` (taxonomy) and ``set`` in front.

    Args:
        predictors: taxonomy name -> fitted predictor.
        y_prob, frame: the set's probabilities and predictions table (``label_idx``, ``patient_id``, subgroups).
        set_name: ``test``, ``site_ood``, ...; decides ``exchangeable`` when that is ``None``
            (:data:`EXCHANGEABLE_SETS`).
        attributes: subgroup columns (and ``a*b`` intersections) to report rows for.
        classes: class names, for one row per true class.
    """
    exch = set_name in EXCHANGEABLE_SETS if exchangeable is None else exchangeable
    features = attribute_columns(frame, attributes) if attributes else None
    y = frame[LABEL].to_numpy()
    g = frame[PATIENT].to_numpy()
    boot = bootstrap or Bootstrap(g, n_resamples=max(n_resamples, 1), seed=seed)
    parts = []
    for name, predictor in predictors.items():
        taxonomy = [] if name == "marginal" else name.split("*")
        attrs = [a for a in taxonomy if a != CLASS]
        cats = attribute_columns(frame, ["*".join(attrs)]).iloc[:, 0].to_numpy() if attrs else None
        sets = predictor.predict_set(y_prob, cats)
        table = coverage_table(
            sets,
            y,
            g,
            target=predictor.target,
            features=features,
            classes=classes,
            promised=taxonomy,
            exchangeable=exch,
            min_patients=min_patients,
            bootstrap=boot,
            calibrated=predictor.calibrated(len(sets), cats),
        )
        table.insert(0, "set", set_name)
        table.insert(0, "method", name)
        parts.append(table)
    return pd.concat(parts, ignore_index=True)
