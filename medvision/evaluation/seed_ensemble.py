"""Seed ensembles: a finetune stage's members that differ only in their seed, averaged into one model.

A deep ensemble of the same recipe trained from different seeds is the simplest reliable gain in accuracy,
calibration and OOD detection (Lakshminarayanan et al. 2017); a sweep ``sweep: {seed: [0, 1, 2]}`` already trains
the members. Here they become *one model* of the evaluation, scored like any other (operating point, temperature,
calibration, OOD detectors, conformal sets and referral), because a clinician deploys the ensemble, not a member.

How the members' outputs combine, row by row:

* probabilities: the mean (the ensemble's prediction);
* logits: the mean (what energy and max-logit read);
* the head's OOD score: the mean (for HOD heads exactly ``p_out`` of the averaged distribution, being linear in it);
* embeddings: **concatenated**, not averaged: independently trained networks' feature spaces share no coordinates,
  so the feature-space detectors (Mahalanobis, kNN) read the members' features side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medvision.errors import InputError
from medvision.evaluation.predict import Predictions

__all__ = ["SeedGroup", "combine_members", "mean_predictions", "seed_groups"]

#: Model facts that may differ between the members of one seed ensemble.
_PER_MEMBER = frozenset({"run_id", "name", "member", "seed"})


@dataclass(frozen=True)
class SeedGroup:
    """One seed ensemble: its model name, its members' model names and its facts as a model of the evaluation."""

    name: str
    members: list[str]
    model: dict[str, Any] = field(default_factory=dict)


def seed_groups(models: list[dict[str, Any]], names: list[str]) -> list[SeedGroup]:
    """The seed ensembles among ``models`` (named ``names``): models of one stage whose facts agree except for the
    seed, at least two distinct seeds. Named ``<stage>-seed-ensemble`` (``-2``, ``-3``... when a stage has several).

    Raises:
        InputError: an ensemble's name is already a model's.
    """
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(models):
        key = tuple(sorted((k, repr(v)) for k, v in m.items() if k not in _PER_MEMBER))
        groups.setdefault(key, []).append(i)
    out: list[SeedGroup] = []
    per_stage: dict[str, int] = {}
    for idx in groups.values():
        seeds = {models[i].get("seed") for i in idx}
        if len(idx) < 2 or len(seeds) < len(idx) or None in seeds:
            continue
        first = models[idx[0]]
        stage = str(first.get("stage") or "model")
        per_stage[stage] = per_stage.get(stage, 0) + 1
        name = f"{stage}-seed-ensemble" + (f"-{per_stage[stage]}" if per_stage[stage] > 1 else "")
        if name in names:
            raise InputError(
                f"the seed ensemble of {', '.join(names[i] for i in idx)} would be named {name!r}, which is already "
                "a model of this evaluation; rename that model or turn seed_ensemble off"
            )
        facts = {k: v for k, v in first.items() if k not in _PER_MEMBER}
        model = {**facts, "run_id": first["run_id"], "member": "seed-ensemble", "seed": None}
        out.append(SeedGroup(name, [names[i] for i in idx], model))
    return out


def mean_predictions(parts: list[Predictions]) -> Predictions:
    """The members' predictions of the same rows as one model's (see the module docstring for each output).

    Raises:
        ValueError: the members predicted different images or in another order.
    """
    base = parts[0]
    for p in parts[1:]:
        if list(p.frame["image_id"]) != list(base.frame["image_id"]):
            raise ValueError("seed-ensemble members predicted different images; they must share the cohort's rows")
    probs = np.mean([p.probs for p in parts], axis=0)
    logits = np.mean([p.logits for p in parts], axis=0)
    embeddings = np.concatenate([p.embeddings for p in parts], axis=1)
    member_ood = [p.ood_score for p in parts if p.ood_score is not None]
    has_ood = len(member_ood) == len(parts)
    ood = np.mean(member_ood, axis=0) if has_ood else None
    frame = base.frame.copy()
    for j, col in enumerate(c for c in frame.columns if c.startswith("p:")):
        frame[col] = probs[:, j].astype(np.float64)
    if ood is not None:
        frame["ood_score"] = ood
    elif "ood_score" in frame.columns:
        frame = frame.drop(columns="ood_score")
    names = {p.ood_score_name for p in parts}
    return Predictions(frame, logits, probs, embeddings, ood, names.pop() if has_ood and len(names) == 1 else None)


def combine_members(
    member_preds: Mapping[str, Mapping[str, Predictions]], members: list[str]
) -> dict[str, Predictions]:
    """Each set every member predicted, combined (:func:`mean_predictions`)."""
    sets = [s for s in member_preds[members[0]] if all(s in member_preds[m] for m in members)]
    return {s: mean_predictions([member_preds[m][s] for m in members]) for s in sets}
