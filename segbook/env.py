"""Where a chapter runs: the profile, the device and the random seed, each decided here and nowhere else.

Every chapter's first code cell calls :func:`setup`, which prints all three on
one line, so a reader knows whether the numbers below came from the CPU toy run
or the GPU run on VOC2012.
"""
from __future__ import annotations

import random
import warnings

import numpy as np
import torch

from .settings import asked_device, asked_profile, data_home, short_path

__all__ = ["PROFILES", "PROFILE_DESCRIPTIONS", "Setup", "data_home", "get_device", "get_profile",
           "profile_downgraded", "real_voc_available", "seed_everything", "setup", "short_path"]

PROFILES = ("quick", "full")
PROFILE_DESCRIPTIONS = {  # what each profile is, for the set-up page and the docs
    "quick": "the toy VOC set, random-init backbones, a few small epochs on a CPU",
    "full": "real VOC2012, ImageNet-pretrained backbones, a longer GPU schedule",
}
_PROFILE_TAG = {"quick": "toy VOC, random-init backbones", "full": "VOC2012, pretrained backbones"}  # setup's line

_downgraded: str | None = None  # why this process left the full profile for quick, once that happened


def seed_everything(seed: int = 0) -> int:
    """Seed Python, NumPy and PyTorch so a CPU run repeats exactly (cuDNN's fast, non-deterministic kernels stay on)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def get_device(prefer: str | torch.device | None = None, *, given_as: str = "get_device(prefer=...)",
               local_rank: int | None = None) -> torch.device:
    """The best device available: CUDA, then Apple's MPS, then the CPU; ``prefer`` or ``SEGBOOK_DEVICE`` forces one.

    A forced device that is not there is an error naming where the choice came
    from (``given_as``, e.g. the CLI's ``--device``). With ``local_rank`` (a torchrun
    process) ``cuda`` means GPU ``local_rank``; a device that cannot work that way is
    refused here, not in the first collective.
    """
    choice = prefer or asked_device()
    if not choice:
        device = torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    else:
        device = _checked(choice, given_as if prefer else "SEGBOOK_DEVICE",
                          f"pass another {given_as} or leave it out" if prefer else
                          "unset SEGBOOK_DEVICE or set it to 'cpu'")
    return device if local_rank is None else _rank_device(device, local_rank)


def _checked(choice: str | torch.device, origin: str, fix: str) -> torch.device:
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise ValueError(f"device {choice!r} (asked for with {origin}) is not a device name; "
                         "use cpu, cuda, cuda:1 or mps.") from None
    choice = str(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {choice!r} was asked for with {origin}, but PyTorch sees no CUDA GPU; {fix}.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {choice!r} was asked for with {origin}, but PyTorch sees "
                           f"{torch.cuda.device_count()} CUDA GPU(s); {fix}.")
    if device.type == "mps" and not _mps_available():
        raise RuntimeError(f"device {choice!r} was asked for with {origin}, but PyTorch sees no MPS device; {fix}.")
    return device


def _rank_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of torchrun's process ``local_rank`` on its machine: the CPU, or GPU ``local_rank``."""
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"device {str(device)!r} cannot train under torchrun: torch.distributed has no backend "
                         "for it; use cuda (one GPU per process) or cpu.")
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} "
                           "GPU(s): start torchrun with --nproc_per_node at most the number of GPUs.")
    if device.index is not None and device.index != local_rank:
        raise ValueError(f"device {str(device)!r} under torchrun: each process uses GPU LOCAL_RANK (here "
                         f"{local_rank}); pass plain 'cuda', and choose the GPUs with CUDA_VISIBLE_DEVICES.")
    return torch.device("cuda", local_rank)


def real_voc_available() -> bool:
    """True when a real VOC2012 is already on disk (nothing is downloaded here)."""
    from .data import find_voc_dir  # here, not on top: ``import segbook`` should not load the data stack

    return find_voc_dir() is not None


def profile_downgraded() -> str | None:
    """Why the full profile was left for quick in this process, or None if it was not."""
    return _downgraded


def _downgrade(reason: str) -> None:
    """Leave the full profile for quick, for the rest of the process, saying why in one line (once)."""
    global _downgraded
    if _downgraded is None:
        print(f"full profile unavailable: {reason}; using the quick profile")
        _downgraded = reason


def get_profile(device: torch.device | None = None, *, asked: str | None = None) -> str:
    """The profile of this process: ``asked``, else ``SEGBOOK_PROFILE``, else ``full`` on CUDA with VOC2012 on disk.

    When ``full`` is asked for but the GPU or the data is missing, one line says so
    and every later call returns ``quick``, so the quick profile's asserts hold in
    every later cell.
    """
    if _downgraded is not None:
        return "quick"
    asked = (asked or asked_profile() or "").strip().lower()
    if asked and asked not in PROFILES:
        raise ValueError(f"profile {asked!r} (SEGBOOK_PROFILE or setup(profile=...)) is not a profile; "
                         f"use one of {PROFILES}.")
    if asked == "quick":
        return "quick"
    device = device or get_device()
    missing = (f"no CUDA GPU (device: {device.type})" if device.type != "cuda" else
               None if real_voc_available() else
               "no VOC2012 on disk (setup(download_voc=True) fetches it, or set SEGBOOK_VOC_ROOT)")
    if asked == "full" and missing:
        _downgrade(missing)
    return "full" if not missing else "quick"


class Setup:
    """What :func:`setup` decided; ``pick`` chooses a per-profile setting."""

    def __init__(self, profile: str, device: torch.device, seed: int) -> None:
        self.profile, self.device, self.seed = profile, device, seed

    @property
    def quick(self) -> bool:
        return self.profile == "quick"

    def pick(self, *, quick, full):
        """``quick`` in the quick profile, ``full`` in the full one (settings, sizes, epochs)."""
        return quick if self.quick else full

    def __repr__(self) -> str:
        return f"Setup(profile={self.profile!r}, device={self.device!r}, seed={self.seed})"

    def __str__(self) -> str:
        return f"profile: {self.profile} ({_PROFILE_TAG[self.profile]}) | device: {self.device.type} | seed: {self.seed}"


def quiet_notebook() -> None:
    """PNG figures (SVG ones carry random ids) and no noise from libraries we rely on."""
    warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
    try:
        import matplotlib_inline.backend_inline as inline
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing to configure
        return
    if get_ipython() is not None:
        try:
            inline.set_matplotlib_formats("png")
        except Exception:  # no inline backend (e.g. a terminal IPython)
            pass


def setup(seed: int = 0, profile: str | None = None, download_voc: bool = False, *, verbose: bool = True) -> Setup:
    """Choose the profile and device, seed everything, and say so in one short line.

    A reader switches profile here: ``setup(profile="full", download_voc=True)`` on a
    GPU fetches VOC2012 (about 2 GB, once); when the GPU or the data cannot be had,
    one line says so and the chapter runs the quick profile.
    """
    device = get_device()
    asked = (profile or asked_profile() or "").strip().lower() or None
    if asked == "full" and download_voc and device.type == "cuda" and not real_voc_available():
        from .data import download_voc2012  # here, not on top: ``import segbook`` should not load the data stack
        try:
            download_voc2012()
        except (OSError, RuntimeError, ValueError) as err:  # offline, a bad checksum, a full disk, a broken archive
            _downgrade(f"VOC2012 could not be downloaded ({type(err).__name__})")
    env = Setup(profile=get_profile(device, asked=asked), device=device, seed=seed_everything(seed))
    quiet_notebook()
    if verbose:
        print(env)
    return env
