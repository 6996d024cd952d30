"""Exports of a trained run into formats that other systems deploy (above tracking and evaluation)."""

from medvision.export.monai_bundle import BUNDLE_SCHEMA, export_monai_bundle

__all__ = ["BUNDLE_SCHEMA", "export_monai_bundle"]
