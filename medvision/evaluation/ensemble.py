"""Building deep ensembles for low-data transfer: rank backbones cheaply, then select fine-tuned runs greedily.

See the method spec §5. Backbones are ranked by leave-one-out 1-nearest-neighbour accuracy (cosine similarity) on
their frozen features of the downstream training set -- a cheap proxy for fine-tuned accuracy. Ensembles are built
by greedy forward selection *with replacement* (Caruana et al. 2004): repeatedly add the run that most lowers the
validation cross-entropy of the averaged probabilities; a run may be added again (that up-weights it); stop at the
size limit (*default* 5) or when no addition improves.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 1, 0, 1])
    >>> probs = {"a": np.array([[.9, .1], [.2, .8], [.6, .4], [.5, .5]]), "b": np.full((4, 2), 0.5)}
    >>> greedy_ensemble(probs, y).members
    ['a']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from medvision.evaluation._checks import as_1d, as_2d, same_length
from medvision.evaluation.calibration import nll
from medvision.knn import knn_accuracy

__all__ = ["EnsembleSelection", "greedy_ensemble", "knn_rank_backbones"]


@dataclass(frozen=True)
class EnsembleSelection:
    """Result of greedy selection.

    Attributes:
        members: selected run names in the order added (a name may repeat).
        history: validation NLL after each addition (same length as ``members``).
    """

    members: list[str]
    history: list[float]

    @property
    def weights(self) -> pd.Series:
        """Each selected run's weight in the average (its multiplicity / ensemble size)."""
        return pd.Series(self.members).value_counts(normalize=True, sort=False).rename("weight")

    def predict_proba(self, probs_by_name: Mapping[str, object]) -> np.ndarray:
        """Average the selected runs' probabilities (with multiplicity) on new data."""
        return np.mean([as_2d(probs_by_name[m], m) for m in self.members], axis=0)


def greedy_ensemble(probs_by_name: Mapping[str, object], y_true: object, max_size: int = 5) -> EnsembleSelection:
    """Greedy forward selection with replacement on validation NLL of the averaged probabilities.

    Args:
        probs_by_name: run name -> validation probabilities (n, K).
        y_true: validation class indices (n,).
        max_size: largest ensemble (*default* 5, counting repeats).

    Raises:
        ValueError: when no runs are given or their shapes disagree.
    """
    if not probs_by_name:
        raise ValueError("`probs_by_name` is empty; pass validation probabilities of at least one run.")
    if max_size < 1:
        raise ValueError(f"`max_size` must be >= 1; got {max_size}.")
    probs = {name: as_2d(p, f"probs_by_name[{name!r}]") for name, p in probs_by_name.items()}
    shapes = {name: p.shape for name, p in probs.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"runs disagree on the probability shape: {shapes}.")
    y = as_1d(y_true, "y_true")
    same_length(y_true=y, probs=next(iter(probs.values())))
    members: list[str] = []
    history: list[float] = []
    total = np.zeros_like(next(iter(probs.values())))
    best = np.inf
    while len(members) < max_size:
        k = len(members) + 1
        scores = {name: nll(y, (total + p) / k) for name, p in probs.items()}
        name = min(scores, key=scores.__getitem__)  # first in input order among equals
        if scores[name] >= best:
            break
        best = scores[name]
        members.append(name)
        history.append(best)
        total = total + probs[name]
    return EnsembleSelection(members, history)


def knn_rank_backbones(features_by_name: Mapping[str, object], labels: object, chunk_size: int = 2048) -> pd.DataFrame:
    """Rank backbones by leave-one-out 1-NN accuracy (cosine similarity) on frozen training-set features.

    Args:
        features_by_name: backbone name -> features (n, D_name) of the same n training images.
        labels: class label per image (n,).
        chunk_size: rows of the similarity matrix held at once.

    Returns:
        DataFrame indexed by backbone with ``loo_1nn_accuracy`` and ``rank`` (1 = best), best first.
    """
    if not features_by_name:
        raise ValueError("`features_by_name` is empty; pass frozen features of at least one backbone.")
    y = as_1d(labels, "labels")
    if len(y) < 2:
        raise ValueError("leave-one-out needs at least 2 labelled images.")
    acc = {}
    labels_t = torch.as_tensor(pd.factorize(y)[0])
    for name, feats in features_by_name.items():
        x = as_2d(feats, f"features_by_name[{name!r}]")
        same_length(labels=y, features=x)
        acc[name] = knn_accuracy(torch.as_tensor(x, dtype=torch.float32), labels_t, chunk_size=chunk_size)
    df = pd.DataFrame({"loo_1nn_accuracy": pd.Series(acc)}).rename_axis("backbone")
    df = df.sort_values("loo_1nn_accuracy", ascending=False, kind="stable")
    df["rank"] = np.arange(1, len(df) + 1)
    return df
