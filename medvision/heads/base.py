"""The head contract: what every classification head returns and answers.

A head sits on a backbone's pooled embedding ``phi`` (``(B, in_features)``) and turns it into
task predictions. The training engine, metrics and OOD code only ever see this contract, so a
new head (a different loss, a different way of producing probabilities) plugs in without
touching them. Settings are a pydantic model per head with ``extra="forbid"``: a typo in a
pipeline YAML fails when the head is built, naming the option, rather than being ignored.

A head also declares what the code around it must not guess from its name: the options the cohort decides
(:meth:`Head.options_for_cohort`, e.g. HOD's number of abstention classes), the name its built-in OOD score
is reported under (:attr:`Head.ood_score_name`) and whether it reads bags of instances (:attr:`Head.takes_bags`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from medvision.errors import InputError

__all__ = ["CohortShape", "Head", "HeadConfigError", "HeadOptions", "HeadOutput"]


class HeadConfigError(InputError):
    """A head was asked for with a bad name, size or option; the message says which and what to do."""


class CohortShape(Protocol):
    """What a head may read from the cohort it is sized for (a data module answers it)."""

    @property
    def num_inlier_classes(self) -> int: ...

    @property
    def num_outlier_classes(self) -> int: ...


class HeadOptions(BaseModel):
    """Base of every head's option model: unknown keys are errors and a built head's options are fixed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class HeadOutput:
    """What a head's forward pass returns.

    Attributes:
        logits: ``(B, num_outputs)``. Raw logits for the linear and HOD heads. For HET / HET-XL
            they are derived from the Monte-Carlo averaged probabilities so that the usual
            activation of ``logits`` gives back ``probs``: ``log p`` (softmax variant) or
            ``log p - log(1 - p)`` (sigmoid variant), with ``p`` clipped to ``[1e-7, 1 - 1e-7]``.
        probs: ``(B, num_classes)`` probabilities over the task classes the user predicts.
        ood_score: ``(B,)``, higher means more likely out of distribution; ``None`` when the
            head has no built-in score (post-hoc scores live with the OOD detectors).
    """

    logits: Tensor
    probs: Tensor
    ood_score: Tensor | None = None


class Head(nn.Module):
    """Base class of the classification heads.

    Subclasses set ``Options`` (a :class:`HeadOptions` model) and implement :meth:`forward` and
    :meth:`loss`. Construction validates sizes and options, so ``SomeHead(512, 3, typo=1)``
    raises :class:`HeadConfigError` naming ``typo``.

    Attributes:
        name: the registry name (set by :func:`medvision.heads.register_head`).
        in_features: size of the embedding the head reads.
        num_classes: task classes the user predicts (for HOD: the K inlier classes).
        num_outputs: logits produced (for HOD: K + M).
        multilabel: whether targets are ``(B, L)`` 0/1 vectors rather than class indices.
        options: the validated options.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[HeadOptions]] = HeadOptions
    #: Options the cohort decides (:meth:`options_for_cohort` fills them in), so a config may leave them out.
    cohort_options: ClassVar[frozenset[str]] = frozenset()
    #: The detector name ``HeadOutput.ood_score`` is reported under in OOD tables; ``None``: no built-in score.
    ood_score_name: ClassVar[str | None] = None
    #: Whether the head reads bags of instance embeddings ``(B, N, D)`` with a mask (a series-, study- or
    #: patient-level case): a cohort whose unit is not ``image`` needs such a head.
    takes_bags: ClassVar[bool] = False

    @classmethod
    def options_for_cohort(cls, options: Mapping[str, Any], cohort: CohortShape) -> dict[str, Any]:
        """``options`` with what the cohort decides filled in; the default head takes nothing from it.

        Raises:
            HeadConfigError: the options contradict the cohort (the message says which to change).
        """
        return dict(options)

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__()
        label = self.name or type(self).__name__
        for field, value in (("in_features", in_features), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HeadConfigError(f"head {label!r}: {field} must be a positive integer, got {value!r}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.options = _validate_options(label, self.Options, options)
        self.num_outputs = num_classes
        self.multilabel = False

    def forward(self, features: Tensor) -> HeadOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, out: HeadOutput, target: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Mean training loss of ``out`` against ``target`` (``(B,)`` int64 or ``(B, L)`` 0/1 float)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        base = f"in_features={self.in_features}, num_classes={self.num_classes}"
        return f"{base}, {opts}" if opts else base

    # -- helpers shared by the heads -------------------------------------------------------------

    def _check_features(self, features: Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"head {self.name!r} expects features of shape (B, {self.in_features}), got "
                f"{tuple(features.shape)}; pass the backbone's pooled embedding"
            )

    def _check_target(self, target: Tensor, num_targets: int) -> Tensor:
        """Validate ``target`` for this head and return it in the dtype the loss needs.

        Multi-class heads take class indices in ``[0, num_targets)``; multi-label heads take a
        ``(B, num_targets)`` 0/1 tensor (returned as float).
        """
        if self.multilabel:
            if target.ndim != 2 or target.shape[1] != num_targets:
                raise ValueError(
                    f"head {self.name!r} is multi-label: target must be (B, {num_targets}) 0/1 values, "
                    f"got shape {tuple(target.shape)}"
                )
            return target.float()
        if target.ndim != 1 or target.dtype.is_floating_point or target.dtype == torch.bool:
            raise ValueError(
                f"head {self.name!r} is multi-class: target must be (B,) integer class indices, got "
                f"shape {tuple(target.shape)} dtype {target.dtype}; for 0/1 label vectors use a "
                "multi-label head"
            )
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_targets):
            raise ValueError(
                f"head {self.name!r}: target class indices must lie in [0, {num_targets}), got "
                f"min {int(target.min())}, max {int(target.max())}"
            )
        return target.long()


def _validate_options(label: str, model: type[HeadOptions], options: dict[str, Any]) -> HeadOptions:
    try:
        return model(**options)
    except ValidationError as err:
        valid = ", ".join(model.model_fields) or "(none)"
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                close = difflib.get_close_matches(where, list(model.model_fields), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown option {where!r}{hint}")
            elif where:
                problems.append(f"option {where!r}: {e['msg']}")
            else:
                problems.append(e["msg"].removeprefix("Value error, "))
        raise HeadConfigError(f"head {label!r}: {'; '.join(problems)}. Valid options: {valid}") from None
