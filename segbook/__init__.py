"""segbook: the tested code behind the segbook chapters on semantic segmentation.

One idea per module or package: ``env`` (profile, device, seed), ``upsample``,
``data``, ``metrics``, ``models``, ``train``, ``viz``.
"""
from .env import Setup, get_device, get_profile, seed_everything, setup
from .settings import data_home

__version__ = "0.1.0"
__all__ = ["Setup", "data_home", "get_device", "get_profile", "seed_everything", "setup", "__version__"]
