"""medvision: pretrained vision backbones turned into medical-imaging models a clinical team can trust."""

from medvision._offline import disable_phone_home

disable_phone_home()  # before any submodule imports MLflow, albumentations or huggingface_hub

from medvision._version import __version__  # noqa: E402

__all__ = ["__version__"]
