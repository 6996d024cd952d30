"""The OOD section's words about *which* detector to trust: the frozen-feature guards (kNN and Mahalanobis on the
pretrained backbone's embeddings) and the detector chosen on validation, or why none could be.

``metrics.json`` records the facts (``ood.pretrained``, ``ood.choice``; :mod:`medvision.evaluation.guards`);
this module turns them into the section's fields (:func:`detector_choice_fields`) and display blocks
(:func:`detector_choice_blocks`). The report names a best detector only when validation could choose one: test
never chooses.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from medvision.evaluation.document import OODScreening, PretrainedGuards
from medvision.report._blocks import estimate, para, table
from medvision.report.context import OODSection

__all__ = ["detector_choice_blocks", "detector_choice_fields"]


def detector_choice_fields(ood: OODScreening) -> dict[str, Any]:
    """The :class:`OODSection` fields of the choice and the guards (empty for a ``metrics.json`` before v4)."""
    out: dict[str, Any] = {}
    if ood.pretrained is not None:
        out["guards"] = guards_sentence(ood.pretrained)
    choice = ood.choice
    if choice is not None:
        out["choice"] = choice.reason
        out["chosen"] = choice.chosen if choice.on_validation else None
        if choice.validation:
            out["validation"] = pd.DataFrame([r.model_dump() for r in choice.validation])
    return out


def guards_sentence(g: PretrainedGuards) -> str:
    """What the frozen-feature guards are, or why they are absent."""
    if g.skipped:
        return (
            f"Frozen-feature guards (kNN and Mahalanobis on the pretrained embeddings) were not computed: {g.skipped}"
        )
    return (
        f"Frozen-feature guards: {' and '.join(g.detectors)} score each image on the embeddings of the pretrained "
        f"backbone the model started from ({g.source}), before fine-tuning changed them; knn and mahalanobis score "
        "the fine-tuned embeddings. Fine-tuning can erode what the pretrained features knew about unusual inputs: "
        "compare the two pairs."
    )


def detector_choice_blocks(o: OODSection) -> list[dict]:
    """The guards' sentence, the choice (or why none), and every detector on validation with its interval."""
    blocks = [para(o.guards)] if o.guards else []
    if o.choice:
        blocks.append(para(("Best detector on validation: " if o.chosen else "") + o.choice))
    if o.validation is not None and not o.validation.empty:
        rows = [
            [
                str(r["detector"]) + (" (best on validation)" if str(r["detector"]) == o.chosen else ""),
                estimate(r["auroc"], r["auroc_low"], r["auroc_high"]),
            ]
            for _, r in o.validation.iterrows()
        ]
        blocks.append(
            table(
                "Outlier detection per detector on validation (training outlier conditions; chooses the detector)",
                ["detector", "AUROC (outlier = positive, 95% CI)"],
                rows,
            )
        )
    return blocks
