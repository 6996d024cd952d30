"""medvision: pretrained vision backbones turned into medical-imaging models a clinical team can trust."""

from medvision._version import __version__

__all__ = ["__version__"]
