"""medvision: pretrained vision backbones turned into medical-imaging models a clinical team can trust."""

from medvision._offline import disable_phone_home, quiet_library_banners

disable_phone_home()  # before any submodule imports MLflow, albumentations or huggingface_hub
quiet_library_banners()  # Lightning's cloud advertisements and device banners stay out of every log

from medvision._version import __version__  # noqa: E402

__all__ = ["__version__"]
