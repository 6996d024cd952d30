"""The base of every part of ``metrics.json``: a pydantic model that refuses keys it does not declare.

Its own module because the parts live in two modules, :mod:`~medvision.evaluation.document` (the document and what
every model is measured on) and :mod:`~medvision.evaluation.trust_document` (the trust record), and the document
imports the trust record: the base cannot live in either without a cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Part"]


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
