"""Classification heads that sit on a backbone embedding: linear, multi-label, HOD, HET, HET-XL, and the
multiple-instance head that pools a bag of instance embeddings first.

Pick one by name with :func:`create_head`; every head honours the :class:`Head` contract
(``forward(features) -> HeadOutput``, ``loss(out, target)``), which is all the training engine,
metrics and OOD code rely on.
"""

from . import het, hetxl, hod, linear, mil  # noqa: F401  (importing registers the heads)
from .base import CohortShape, Head, HeadConfigError, HeadOptions, HeadOutput
from .het import HETHead, HETOptions
from .hetxl import HETXLHead, HETXLOptions
from .hod import HODHead, HODOptions
from .linear import LinearHead, LinearOptions, MultiLabelHead, MultiLabelOptions
from .mil import BagPooling, MILHead, MILOptions
from .registry import create_head, get_head_class, list_heads, load_head_plugins, ood_score_names, register_head

__all__ = [
    "BagPooling",
    "CohortShape",
    "HETHead",
    "HETOptions",
    "HETXLHead",
    "HETXLOptions",
    "HODHead",
    "HODOptions",
    "Head",
    "HeadConfigError",
    "HeadOptions",
    "HeadOutput",
    "LinearHead",
    "LinearOptions",
    "MILHead",
    "MILOptions",
    "MultiLabelHead",
    "MultiLabelOptions",
    "create_head",
    "get_head_class",
    "list_heads",
    "load_head_plugins",
    "ood_score_names",
    "register_head",
]
