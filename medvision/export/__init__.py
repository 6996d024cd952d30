"""Exports of a trained run into formats that other systems deploy (above tracking and evaluation).

:mod:`medvision.export.serving` is what an exported bundle runs at prediction time (imported here so a bundle's
config can name it as ``medvision.export.serving``).
"""

from medvision.export import serving
from medvision.export.monai_bundle import BUNDLE_SCHEMA, export_monai_bundle

__all__ = ["BUNDLE_SCHEMA", "export_monai_bundle", "serving"]
