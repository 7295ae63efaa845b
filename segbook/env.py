"""Where a chapter runs: the profile, the device and the seed.

Every chapter's first code cell calls :func:`setup`, which settles these three
once and prints them on one line, so a reader always knows whether the numbers
below came from the CPU toy run or the GPU run on real VOC2012.
"""
from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PROFILES = ("quick", "full")

_PROFILE_BLURB = {
    "quick": "CPU-sized: toy VOC, random-init backbones, a few small epochs",
    "full": "GPU-sized: real VOC2012, ImageNet-pretrained backbones, paper-like schedule",
}


def seed_everything(seed: int = 0) -> int:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) so a CPU run repeats exactly.

    cuDNN's fastest kernels are not deterministic; we leave them on because a
    reader's GPU run is about speed, while the stored outputs come from the CPU.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return seed


def get_device(prefer: str | None = None) -> torch.device:
    """The best device available: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` (or the ``SEGBOOK_DEVICE`` variable) forces one, which is how the
    tests pin the stored outputs to the CPU on a machine that has a GPU.
    """
    choice = prefer or os.environ.get("SEGBOOK_DEVICE")
    if choice:
        device = torch.device(choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {choice!r} was asked for, but PyTorch sees no CUDA GPU; "
                               "unset SEGBOOK_DEVICE or set it to 'cpu'.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def data_home() -> Path:
    """Where segbook keeps datasets and checkpoints: ``SEGBOOK_DATA`` or ``~/.cache/segbook``."""
    return Path(os.environ.get("SEGBOOK_DATA", Path.home() / ".cache" / "segbook")).expanduser()


def real_voc_available() -> bool:
    """True when a real VOC2012 is already on disk (nothing is downloaded here)."""
    from .data import find_voc_dir  # segbook.data imports this module, so look it up lazily

    return find_voc_dir() is not None


def get_profile(device: torch.device | None = None) -> str:
    """``SEGBOOK_PROFILE`` when set; otherwise ``full`` on CUDA with VOC2012 on disk, else ``quick``."""
    asked = os.environ.get("SEGBOOK_PROFILE", "").strip().lower()
    if asked:
        if asked not in PROFILES:
            raise ValueError(f"SEGBOOK_PROFILE={asked!r} is not a profile; use one of {PROFILES}.")
        return asked
    device = device or get_device()
    return "full" if device.type == "cuda" and real_voc_available() else "quick"


def short_path(path: os.PathLike | str) -> str:
    """A path to print: the home folder as ``~`` so outputs do not depend on the machine."""
    path = Path(path)
    try:
        return "~/" + path.resolve().relative_to(Path.home().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass(frozen=True)
class Setup:
    """What :func:`setup` decided; ``pick`` chooses a per-profile setting."""

    profile: str
    device: torch.device
    seed: int

    @property
    def quick(self) -> bool:
        return self.profile == "quick"

    def pick(self, *, quick, full):
        """``quick`` in the quick profile, ``full`` in the full one (settings, sizes, epochs)."""
        return quick if self.quick else full

    def __str__(self) -> str:
        return f"profile: {self.profile} ({_PROFILE_BLURB[self.profile]}) | device: {self.device.type} | seed: {self.seed}"


def _quiet_notebook() -> None:
    """PNG figures (SVG ones carry random ids) and no noise from libraries we rely on."""
    warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing to configure
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "run_line_magic"):
        try:
            import matplotlib_inline.backend_inline as inline

            inline.set_matplotlib_formats("png")
        except Exception:  # no inline backend (e.g. a terminal IPython)
            pass


def setup(seed: int = 0, *, verbose: bool = True) -> Setup:
    """Choose the profile and device, seed everything, and say so in one line."""
    device = get_device()
    env = Setup(profile=get_profile(device), device=device, seed=seed_everything(seed))
    _quiet_notebook()
    if env.profile == "full" and device.type != "cuda":
        print(f"note: the full profile on {device.type} will be slow; set SEGBOOK_PROFILE=quick for the CPU run.")
    if verbose:
        print(env)
    return env
