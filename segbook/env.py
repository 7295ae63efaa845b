"""Where a chapter runs: the profile, the device and the random seed.

Every chapter's first code cell calls :func:`setup`, which settles these three
once and prints them on one line, so a reader always knows whether the numbers
below came from the CPU toy run or the GPU run on real VOC2012.
"""
from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch

from . import rehearsal
from .paths import data_home, short_path
from .profiles import PROFILE_DESCRIPTIONS, PROFILES, downgrade_profile, profile_downgraded

__all__ = ["PROFILES", "PROFILE_DESCRIPTIONS", "Setup", "data_home", "downgrade_profile", "get_device", "get_profile",
           "profile_downgraded", "real_voc_available", "seed_everything", "setup", "short_path"]

_PROFILE_TAG = {"quick": "toy VOC, random-init backbones", "full": "VOC2012, pretrained backbones"}  # setup's line


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


def get_device(prefer: str | None = None, *, given_as: str = "get_device(prefer=...)") -> torch.device:
    """The best device available: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` (or the ``SEGBOOK_DEVICE`` variable) forces one, which is how the
    tests pin the stored outputs to the CPU on a machine that has a GPU. A
    forced device that is not there is an error that says where the choice came
    from: ``given_as`` names the caller's argument (the CLI passes ``--device``),
    or ``SEGBOOK_DEVICE`` when the variable chose it.
    """
    choice = prefer or os.environ.get("SEGBOOK_DEVICE")
    if not choice:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    origin = given_as if prefer else "SEGBOOK_DEVICE"
    fix = f"pass another {given_as} or leave it out" if prefer else "unset SEGBOOK_DEVICE or set it to 'cpu'"
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise ValueError(f"device {choice!r} (asked for with {origin}) is not a device name; "
                         "use cpu, cuda, cuda:1 or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {choice!r} was asked for with {origin}, but PyTorch sees no CUDA GPU; {fix}.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {choice!r} was asked for with {origin}, but PyTorch sees "
                           f"{torch.cuda.device_count()} CUDA GPU(s); {fix}.")
    mps = getattr(torch.backends, "mps", None)
    if device.type == "mps" and not (mps is not None and mps.is_available()):
        raise RuntimeError(f"device {choice!r} was asked for with {origin}, but PyTorch sees no MPS device; {fix}.")
    return device


def real_voc_available() -> bool:
    """True when a real VOC2012 is already on disk (nothing is downloaded here)."""
    from .data import find_voc_dir  # here, not on top: ``import segbook`` should not load the data stack

    return find_voc_dir() is not None


def get_profile(device: torch.device | None = None, *, asked: str | None = None) -> str:
    """The profile of this process: ``quick`` or ``full``.

    Asked for by ``asked`` (``setup(profile=...)``) or ``SEGBOOK_PROFILE``;
    otherwise ``full`` on CUDA with VOC2012 on disk, else ``quick``. When
    ``full`` is asked for but something of it is missing (no CUDA GPU, no
    VOC2012 on disk), the profile is downgraded: one line says what was
    missing, and every later call in the process returns ``quick``, so the
    asserts written for the quick profile hold in every later cell.
    """
    if profile_downgraded() is not None:
        return "quick"
    asked = (asked or os.environ.get("SEGBOOK_PROFILE", "")).strip().lower()
    if asked and asked not in PROFILES:
        raise ValueError(f"profile {asked!r} (SEGBOOK_PROFILE or setup(profile=...)) is not a profile; "
                         f"use one of {PROFILES}.")
    device = device or get_device()
    if asked == "quick":
        return "quick"
    missing = _full_profile_missing(device)
    if asked == "full" and missing:
        downgrade_profile(missing)
    return "full" if not missing else "quick"


def _full_profile_missing(device: torch.device) -> str | None:
    """What the full profile needs and this machine lacks, in words; None when nothing is missing.

    A rehearsal (``SEGBOOK_REHEARSAL=1``, see :mod:`segbook.rehearsal`) runs the
    full profile on the CPU: there the GPU is not asked for, loudly.
    """
    if device.type != "cuda" and rehearsal.active() and device.type == "cpu":
        rehearsal.announce("profile", "the full profile's settings on the CPU, every loop cut to a few steps; "
                           "this is a rehearsal, not a result")
    elif device.type != "cuda":
        return f"no CUDA GPU (device: {device.type})"
    if not real_voc_available():
        return "no VOC2012 on disk (setup(download_voc=True) fetches it, or set SEGBOOK_VOC_ROOT)"
    return None


class Setup:
    """What :func:`setup` decided; ``pick`` chooses a per-profile setting.

    ``profile`` is read live: if the full profile is downgraded after set-up
    (a later cell finds VOC2012 missing), every later ``pick`` sees ``quick``.
    """

    def __init__(self, profile: str, device: torch.device, seed: int) -> None:
        self._profile, self.device, self.seed = profile, device, seed

    @property
    def profile(self) -> str:
        return "quick" if profile_downgraded() is not None else self._profile

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


def _relax_asserts() -> None:
    """In a rehearsal, a notebook's failing asserts print a skipped check (see :mod:`segbook.rehearsal`)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    rehearsal.relax_asserts(get_ipython())


def setup(seed: int = 0, profile: str | None = None, download_voc: bool = False, *, verbose: bool = True) -> Setup:
    """Choose the profile and device, seed everything, and say so in one short line.

    A reader switches profile here rather than in the code below:
    ``setup(profile="full", download_voc=True)`` on a GPU machine fetches
    VOC2012 (about 2 GB, once) and runs the full profile; when the GPU or the
    data cannot be had, one line says so and the chapter runs the quick profile.
    ``profile=None`` follows ``SEGBOOK_PROFILE``, else what the machine has.
    """
    device = get_device()
    asked = (profile or os.environ.get("SEGBOOK_PROFILE", "")).strip().lower() or None
    if asked == "full" and download_voc and device.type == "cuda" and not real_voc_available():
        _download_voc()
    env = Setup(profile=get_profile(device, asked=asked), device=device, seed=seed_everything(seed))
    _quiet_notebook()
    if rehearsal.active() and env.profile == "full":
        _relax_asserts()
    if verbose:
        print(env)
    return env


def _download_voc() -> None:
    """VOC2012 for the full profile; a failure downgrades the profile with one line instead of stopping the notebook."""
    from .data import download_voc2012  # here, not on top: ``import segbook`` should not load the data stack

    try:
        download_voc2012()
    except (OSError, RuntimeError, ValueError) as err:  # offline, a bad checksum, a full disk, a broken archive
        downgrade_profile(f"VOC2012 could not be downloaded ({type(err).__name__})")
