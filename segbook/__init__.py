"""segbook: the tested code behind the segbook chapters on semantic segmentation.

Chapters import from here; each module holds one idea (``upsample``, ``data``,
``metrics``, ``models``, ``train``, ``viz``).
"""
from .env import Setup, data_home, get_device, get_profile, seed_everything, setup

__version__ = "0.1.0"
__all__ = ["Setup", "data_home", "get_device", "get_profile", "seed_everything", "setup", "__version__"]
