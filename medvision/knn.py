"""1-nearest-neighbour accuracy of frozen embeddings (cosine similarity): one definition for two uses.

Self-supervised training monitors it (``val/knn_acc``) and evaluation ranks backbones by its leave-one-out form
(method spec §5), so both must count a hit the same way.

The contrastive loss says little about whether the representation separates the classes clinicians care
about, and it is not comparable across temperatures or batch sizes. The 1-NN accuracy (cosine similarity)
of labelled validation images against labelled training images is cheap, needs no training, and rises as
the representation improves; it picks the kept epoch (``val/knn_acc``). With no reference set it falls
back to leave-one-out among the query images (also the ranking score of the method spec §5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knn_accuracy"]


def knn_accuracy(
    query: Tensor,
    query_labels: Tensor,
    reference: Tensor | None = None,
    reference_labels: Tensor | None = None,
    chunk_size: int = 2048,
) -> float:
    """1-NN accuracy with cosine similarity.

    Args:
        query: ``(Q, D)`` embeddings to classify.
        query_labels: ``(Q,)`` their integer labels.
        reference: ``(R, D)`` labelled embeddings to search; ``None``: leave-one-out among the queries
            (each query's nearest *other* query).
        reference_labels: ``(R,)`` labels of ``reference``.
        chunk_size: query rows compared at once (memory is ``chunk_size x R``).

    Returns:
        The share of queries whose nearest neighbour has their label; ``nan`` without queries (or with
        fewer than two for leave-one-out).

    Raises:
        ValueError: shapes do not match, or only one of ``reference`` / ``reference_labels`` is given.
    """
    if (reference is None) != (reference_labels is None):
        raise ValueError("give both reference and reference_labels, or neither (leave-one-out)")
    if query.ndim != 2 or query_labels.shape != (query.shape[0],):
        raise ValueError(
            f"query must be (Q, D) with (Q,) labels, got {tuple(query.shape)} and {tuple(query_labels.shape)}"
        )
    q = F.normalize(query.float(), dim=1)
    if reference is None or reference_labels is None:  # both None (checked above): leave-one-out
        if q.shape[0] < 2:
            return float("nan")
        ref, ref_labels = q, query_labels
    else:
        if reference.ndim != 2 or reference_labels.shape != (reference.shape[0],) or reference.shape[1] != q.shape[1]:
            raise ValueError(
                f"reference must be (R, {q.shape[1]}) with (R,) labels, got {tuple(reference.shape)} "
                f"and {tuple(reference_labels.shape)}"
            )
        if q.shape[0] == 0 or reference.shape[0] == 0:
            return float("nan")
        ref, ref_labels = F.normalize(reference.float(), dim=1), reference_labels
    ref_labels = ref_labels.to(q.device)
    hits = 0
    for start in range(0, q.shape[0], chunk_size):  # bounded memory: chunk_size x R similarities at a time
        sim = q[start : start + chunk_size] @ ref.T
        if reference is None:  # leave the query itself out
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, start + rows] = float("-inf")
        nearest = sim.argmax(dim=1)
        hits += int((ref_labels[nearest] == query_labels[start : start + chunk_size].to(q.device)).sum())
    return hits / q.shape[0]
