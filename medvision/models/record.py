"""The frozen record that travels with every set of backbone weights.

Preprocessing is derived from the weights, never retyped: a checkpoint was trained with one input size,
channel count and mean/std, and the only safe way to feed it is with exactly those. The record also keeps
where the weights came from (``source``) and, for local files, their SHA-256, so a report can say which bytes
produced a number. It never holds anything about patients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["WeightsRecord", "reduce_channels"]


@dataclass(frozen=True)
class WeightsRecord:
    """What a backbone's weights are and how its inputs must be prepared.

    Attributes:
        name: the backbone name the weights belong to (a medvision registry name or a timm model name).
        source: where the weights were loaded from: ``none``, ``hub:<timm tag>``, ``file:<path>`` or
            ``mlflow:<uri>``.
        sha256: hex digest of the local weight file, ``None`` for hub or random weights.
        input_size: ``(C, H, W)`` the backbone expects.
        in_chans: number of input channels (``input_size[0]``).
        mean, std: per-channel normalisation applied inside ``Backbone.forward`` to ``[0, 1]`` inputs.
        licence: licence of the upstream weights when known.
        num_classes_upstream: size of the upstream classifier the weights were trained with, when known.
    """

    name: str
    source: str
    sha256: str | None
    input_size: tuple[int, int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    licence: str | None = None
    num_classes_upstream: int | None = None

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(
                f"WeightsRecord for {self.name!r}: mean {self.mean} and std {self.std} must have one value per "
                f"input channel (in_chans={self.in_chans})"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"WeightsRecord for {self.name!r}: std values must be positive, got {self.std}")
        if self.input_size[0] != self.in_chans:
            raise ValueError(
                f"WeightsRecord for {self.name!r}: input_size {self.input_size} disagrees with in_chans={self.in_chans}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        for key in ("input_size", "mean", "std"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "weights record") -> WeightsRecord:
        """Rebuild a record saved by :meth:`to_dict`; unknown or missing fields name ``where``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown weights-record fields {unknown}; expected only {sorted(known)}")
        missing = sorted(known - {"licence", "num_classes_upstream"} - set(data))
        if missing:
            raise ValueError(f"{where}: weights record lacks fields {missing}; re-save it with save_backbone()")
        values = dict(data)
        values["input_size"] = tuple(int(v) for v in values["input_size"])
        values["mean"] = tuple(float(v) for v in values["mean"])
        values["std"] = tuple(float(v) for v in values["std"])
        return cls(**values)

    def with_channels(self, in_chans: int) -> WeightsRecord:
        """The same record for a stem adapted to ``in_chans`` channels (see :func:`reduce_channels`)."""
        if in_chans == self.in_chans:
            return self
        return replace(
            self,
            in_chans=in_chans,
            input_size=(in_chans, *self.input_size[1:]),
            mean=reduce_channels(self.mean, in_chans),
            std=reduce_channels(self.std, in_chans),
        )


def reduce_channels(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    """Per-channel statistics for a stem with ``in_chans`` channels.

    One channel: the average. timm's ``adapt_input_conv`` sums the RGB filters for a one-channel stem, which
    equals feeding the grey image copied into R, G and B exactly when the RGB statistics are equal (BiT, ViT
    augreg and SigLIP all use 0.5) and approximately otherwise. Any other count tiles the values cyclically,
    matching how timm tiles the filters.
    """
    if in_chans < 1:
        raise ValueError(f"in_chans must be at least 1, got {in_chans}")
    if in_chans == len(values):
        return tuple(values)
    if in_chans == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(in_chans))
