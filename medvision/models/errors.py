"""Errors of the backbone layer; each message names the thing at fault and says what to do."""

from __future__ import annotations

from medvision.errors import InputError

__all__ = ["HubUnavailableError", "UnknownBackboneError", "WeightsError"]


class UnknownBackboneError(InputError):
    """A backbone name that is neither registered in medvision nor a timm model."""


class WeightsError(InputError):
    """Weights that cannot be found, read, or matched to the backbone they were asked for."""


class HubUnavailableError(WeightsError):
    """Hub weights were asked for on a machine that cannot download them (offline or hub unreachable)."""
