"""The linear probe: L2-regularised logistic regression on frozen embeddings, its strength chosen by
patient-grouped cross-validation, written into the head of an ordinary :class:`~medvision.classifier.Classifier`.

Why a convex fit rather than SGD epochs on the head: the probe of a pretrained backbone is a logistic regression,
so it has one optimum per regularisation strength; L-BFGS finds it in seconds from embeddings computed once, and
the only real choice left is ``C``. That choice is made by cross-validation on the *training* split with folds
that never split a patient (images of one patient are correlated; a patient in two folds makes the held-out fold
look easier than new patients are), scored by the held-out log-loss: a proper score, and smooth in ``C`` where
the fold AUROCs of a few patients tie across much of the grid. The validation split is left alone for what comes
after (checkpoints, the ``auto`` recipe's choice); test is never read.

The fitted model is scale-then-logistic (centred, then divided by one scale for every feature by default: see
:func:`_scales`); the scaling is folded into the head's weights (``W' = W / sigma``, ``b' = b - W' mu``), so the
classifier needs no extra module and reproduces scikit-learn's ``predict_proba`` (see ``tests/test_probe.py``).
It is the linear-probe recipe, and the first stage of LP-FT (Kumar et al., ICLR 2022, "Fine-tuning can distort
pretrained features and underperform out-of-distribution"): the probe's weights initialise the head before the
whole network fine-tunes.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 20); x = rng.normal(size=(60, 8)) + y[:, None]
    >>> probe = LogisticProbe(folds=3).fit(x, y, groups=np.arange(60) // 2, num_outputs=3)
    >>> probe.coef_.shape, probe.C_ in probe.c_grid
    ((3, 8), True)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from medvision.heads import Head

# scikit-learn and threadpoolctl are imported where a probe is fitted: the training configs import this module, and
# the GPU benchmark's offline device kit (scripts/device_kit.py) leaves SciPy and scikit-learn out.
if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

__all__ = [
    "ABSENT_LOGIT",
    "DEFAULT_C_GRID",
    "DEFAULT_PATIENCE",
    "SCALINGS",
    "LogisticProbe",
    "probe_layer",
    "probe_supports",
]

#: Inverse L2 strengths tried (half-decades from 1e-4 to 1e2): on features scaled to unit spread this spans "barely
#: moves from the class prior" to "nearly unregularised" for the cohort sizes medvision meets (tens to tens of
#: thousands).
DEFAULT_C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 13))
#: Grid points (half-decades) the C path walks past its best mean held-out loss before it stops.
DEFAULT_PATIENCE = 3
#: How the embeddings are scaled before the L2 fit (see :func:`_scales`).
SCALINGS = ("global", "per-feature")
#: Bias of a logit whose class has no training example: its probability is 0 to float precision, as in
#: scikit-learn, which has no column for such a class.
ABSENT_LOGIT = -1e4
#: Feature matrices smaller than this (rows x dims) are fitted on one BLAS thread.
_THREADED_SIZE = 1_000_000

#: Heads whose logits are exactly ``fc(features)`` (HOD's loss adds a coarse term the probe leaves out: the probe
#: fits ``L_fine``, i.e. HOD with lambda = 0, and fine-tuning then adds the coarse term).
_PROBE_HEADS = frozenset({"linear", "hod"})


class LogisticProbe:
    """Multinomial (binary: logistic) L2 regression with ``C`` chosen by patient-grouped cross-validation.

    Args:
        c_grid: the inverse regularisation strengths to try (ascending after sorting).
        folds: at most this many folds; fewer when the rarest class has fewer patients (at least 2).
        max_iter: L-BFGS iterations per fit.
        class_weight: ``"balanced"`` to weight classes inversely to their frequency (``data.balanced``).
        seed: shuffles the fold assignment of patients.
        scaling: ``global`` (one scale for all features, the default) or ``per-feature`` (standardise each).
        patience: stop the C path after this many grid points without a lower mean held-out loss (``None``: walk
            the whole grid); see :meth:`_path_losses`.

    Attributes (after :meth:`fit`):
        C_: the chosen strength.
        cv_loss_: ``(folds, len(c_grid))`` held-out log-loss of every fold and strength (``NaN`` past the early
            stop).
        folds_: the ``(train, held-out)`` row indices of every fold (no patient in both).
        classes_: the labels seen in training (others get :data:`ABSENT_LOGIT`).
        coef_, intercept_: ``(num_outputs, D)`` and ``(num_outputs,)`` logits weights on the *raw* features.
        estimator_: the final scikit-learn model (on centred, scaled features).
        mean_, scale_: the centring and the scale of every feature.
    """

    def __init__(
        self,
        c_grid: Sequence[float] = DEFAULT_C_GRID,
        folds: int = 5,
        max_iter: int = 1000,
        class_weight: str | None = None,
        seed: int = 0,
        scaling: str = "global",
        patience: int | None = DEFAULT_PATIENCE,
    ) -> None:
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        self.c_grid = sorted(float(c) for c in c_grid)
        self.folds, self.max_iter, self.class_weight, self.seed = folds, max_iter, class_weight, seed
        self.scaling, self.patience = scaling, patience

    def fit(self, x: np.ndarray, y: np.ndarray, groups: Sequence[object], num_outputs: int) -> LogisticProbe:
        """Choose ``C`` by grouped cross-validation, then refit on every row.

        Args:
            x: ``(N, D)`` frozen embeddings.
            y: ``(N,)`` class indices in ``[0, num_outputs)``.
            groups: ``(N,)`` patient of each row (a patient's rows stay in one fold).
            num_outputs: logits of the head the probe fills (HOD: K + M).

        Raises:
            ValueError: fewer than two classes or two patients, or labels outside ``[0, num_outputs)``.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        patients = np.asarray(groups)
        if y.size and (y.min() < 0 or y.max() >= num_outputs):
            raise ValueError(f"probe labels must lie in [0, {num_outputs}); got {y.min()}..{y.max()}")
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(
                f"a linear probe needs training images of at least two classes; these rows hold only "
                f"{self.classes_.tolist()} (raise data.label_fraction, or use recipe: finetune)"
            )
        self.mean_ = x.mean(axis=0)
        self.scale_ = _scales(x, self.scaling)
        z = (x - self.mean_) / self.scale_
        self.folds_ = self._folds(y, patients)
        # Small problems run single-threaded: BLAS threads on matrices of a few hundred rows cost more in
        # hand-offs than they save, and on a loaded machine (CI) they made the fits ten times slower.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1 if z.size < _THREADED_SIZE else None):
            self.cv_loss_ = self._path_losses(z, y)
            # Ties (or a flat curve) go to the strongest regularisation: the first minimum of the ascending grid.
            self.C_ = self.c_grid[int(np.nanargmin(self.cv_loss_.mean(axis=0)))]
            self.estimator_ = self._model(self.C_).fit(z, y)
        self.coef_, self.intercept_ = self._head_weights(num_outputs)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities over :attr:`classes_` (scikit-learn's own output; the head must reproduce it)."""
        return self.estimator_.predict_proba((np.asarray(x, dtype=np.float64) - self.mean_) / self.scale_)

    def to_layer(self, layer: nn.Linear) -> None:
        """Copy the probe into ``layer`` (``num_outputs`` x ``D``), in place."""
        if tuple(layer.weight.shape) != tuple(self.coef_.shape):
            raise ValueError(f"the probe has {self.coef_.shape} weights but the layer {tuple(layer.weight.shape)}")
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(self.coef_, dtype=layer.weight.dtype))
            if layer.bias is not None:
                layer.bias.copy_(torch.as_tensor(self.intercept_, dtype=layer.bias.dtype))

    # -- internals -------------------------------------------------------------------------------

    def _model(self, c: float, warm: bool = False) -> LogisticRegression:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, max_iter=self.max_iter, class_weight=self.class_weight, warm_start=warm)

    def _folds(self, y: np.ndarray, groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Stratified folds of whole patients; as many as the rarest class has patients (2 to ``folds``)."""
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise ValueError("a linear probe needs at least two training patients to cross-validate C")
        rarest = min(len(np.unique(groups[y == c])) for c in self.classes_)
        k = int(np.clip(rarest, 2, min(self.folds, n_groups)))
        from sklearn.model_selection import StratifiedGroupKFold

        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=self.seed)
        with warnings.catch_warnings():  # "least populated class has only n members": expected for rare classes
            warnings.simplefilter("ignore", UserWarning)
            return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y, groups)]

    def _path_losses(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Held-out log-loss of every fold along the ascending C grid, the folds in step, each fold's fit
        warm-started from its previous (stronger) C; the walk stops once the mean loss has not improved for
        :attr:`patience` grid points (``NaN`` beyond).

        Why stop early: the held-out loss of an L2 path falls while the penalty removes variance and rises once it
        stops removing bias, and the weakly regularised end is where L-BFGS needs hundreds of iterations (on
        PneumoniaMNIST embeddings, C >= 1 cost about 70% of the whole path's time, with a minimum at
        C = 0.003; ``benchmarks/probe_fit.py``). Walking on past ``patience`` grid points of rising loss buys nothing
        the minimum can use.
        """
        models = [self._model(self.c_grid[0], warm=True) for _ in self.folds_]
        losses = np.full((len(self.folds_), len(self.c_grid)), np.nan)
        best, since = np.inf, 0
        for i, c in enumerate(self.c_grid):
            losses[:, i] = [self._held_loss(m, c, z, y, tr, te) for m, (tr, te) in zip(models, self.folds_)]
            mean = float(losses[:, i].mean())
            best, since = (mean, 0) if mean < best else (best, since + 1)
            if self.patience is not None and since >= self.patience:
                break
        return losses

    def _held_loss(
        self, model: LogisticRegression, c: float, z: np.ndarray, y: np.ndarray, train: np.ndarray, held: np.ndarray
    ) -> float:
        """One fold's held-out log-loss at strength ``c`` (0 where its training part has one class: it cannot rank
        C)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.metrics import log_loss

        if len(np.unique(y[train])) < 2:
            return 0.0
        model.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(z[train], y[train])
        full = np.zeros((len(held), len(self.classes_)))
        full[:, np.searchsorted(self.classes_, model.classes_)] = model.predict_proba(z[held])
        return float(log_loss(y[held], full, labels=self.classes_))

    def _head_weights(self, num_outputs: int) -> tuple[np.ndarray, np.ndarray]:
        """The fitted model as logits of the raw features, one row per head output."""
        est = self.estimator_
        coef, bias = est.coef_, est.intercept_
        if len(self.classes_) == 2:  # binary: one logit z for the second class = softmax over (0, z)
            coef = np.vstack([np.zeros_like(coef), coef])
            bias = np.array([0.0, bias[0]])
        w = coef / self.scale_
        b = bias - w @ self.mean_
        weights = np.zeros((num_outputs, w.shape[1]))
        biases = np.full(num_outputs, ABSENT_LOGIT)
        weights[self.classes_] = w
        biases[self.classes_] = b
        return weights, biases


def _scales(x: np.ndarray, scaling: str) -> np.ndarray:
    """The divisor of every feature: one for all (``global``: the root-mean-square of the features' standard
    deviations) or each its own (``per-feature``).

    Why ``global`` is the default: a pretrained embedding's geometry is what transfers, and an isotropic L2 penalty
    on it keeps that geometry, so the directions the backbone spread the data along are the cheap ones to use.
    Per-feature standardisation instead gives every coordinate unit variance, including those the backbone left
    (nearly) constant for these images: EfficientNet-Lite0 on 32-px radiographs leaves more than half its 1280
    features with a spread of float noise, and standardising them made that noise as loud as the signal (the
    PneumoniaMNIST probe at 10% of labels: test AUROC 0.849 per-feature against 0.90 global; RESULTS.md).
    """
    sd = x.std(axis=0)
    if scaling == "per-feature":
        sd[sd < 1e-12] = 1.0  # a constant feature carries nothing; keep it finite
        return sd
    rms = float(np.sqrt(np.mean(sd**2)))
    return np.full(x.shape[1], rms if rms > 1e-12 else 1.0)


def probe_layer(head: Head) -> nn.Linear | None:
    """The single linear layer that makes ``head``'s logits, when it has one a probe can fill (softmax heads whose
    logits are ``fc(features)``: ``linear``, ``hod``); ``None`` otherwise (HET / HET-XL add noise, multi-label
    heads want one-vs-rest probes)."""
    fc = getattr(head, "fc", None)
    if head.multilabel or not isinstance(fc, nn.Linear) or head.name not in _PROBE_HEADS:
        return None
    return fc if fc.out_features == head.num_outputs else None


def probe_supports(head_name: str) -> bool:
    """Whether a head of this registry name can take a linear probe (see :func:`probe_layer`)."""
    return head_name in _PROBE_HEADS
