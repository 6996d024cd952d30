"""Input checks shared by the evaluation modules: turn array-likes into numpy and fail with a message that names
the offending argument and says what to do."""

from __future__ import annotations

import numpy as np

__all__: list[str] = []


def as_1d(x: object, name: str, dtype: type | None = None) -> np.ndarray:
    """Return ``x`` as a 1-D numpy array (torch tensors and lists accepted)."""
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D (one value per image); got shape {arr.shape}; select one column.")
    return arr


def as_2d(x: object, name: str, dtype: type | None = float) -> np.ndarray:
    """Return ``x`` as a 2-D numpy array of shape (n_samples, n_columns)."""
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (n_samples, n_classes); got shape {arr.shape}.")
    return arr


def same_length(**arrays: np.ndarray) -> int:
    """Check that every array has the same first dimension and return it."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs disagree on the number of samples: {lengths}; pass one row per image in each.")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"inputs {sorted(lengths)} are empty; there is nothing to evaluate.")
    return n


def binary_labels(y_true: object, name: str = "y_true") -> np.ndarray:
    """Return 0/1 labels as bool, refusing anything that is not binary."""
    y = as_1d(y_true, name)
    values = np.unique(y)
    if not np.isin(values, [0, 1]).all():
        raise ValueError(f"`{name}` must hold binary labels 0/1 (or False/True); found values {values[:10].tolist()}.")
    return y.astype(bool)


def sample_weights(sample_weight: object | None, n: int) -> np.ndarray:
    """Return per-sample weights (ones when ``None``), checking shape and sign."""
    if sample_weight is None:
        return np.ones(n)
    w = as_1d(sample_weight, "sample_weight", float)
    if len(w) != n:
        raise ValueError(f"`sample_weight` has {len(w)} entries but there are {n} samples.")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("`sample_weight` must be finite and non-negative.")
    return w
