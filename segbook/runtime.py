"""The parts of a training or evaluation loop that are not about learning: precision, progress bars, devices.

Kept apart so that :mod:`segbook.train` and :mod:`segbook.evaluation` read as
the loops they are, and both make these choices the same way.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch import Tensor

from . import rehearsal

__all__ = ["amp_dtype", "default_channels_last", "progress_on", "progress_bar", "scaler_enabled", "to_device"]


def _as_on_cuda(device: torch.device) -> bool:
    """CUDA, or the CPU in a rehearsal of the full profile, which takes CUDA's lines where it can."""
    return device.type == "cuda" or (device.type == "cpu" and rehearsal.active())


def amp_dtype(amp: bool | str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32.

    ``None`` means float16 on CUDA (every CUDA GPU runs it, with a GradScaler
    against underflow, Micikevicius et al., 2018) and float32 elsewhere;
    ``True`` picks float16 on CUDA and bfloat16 on other devices; a dtype or its
    name ("float16", "bfloat16") forces it. A rehearsal (:mod:`segbook.rehearsal`)
    takes CUDA's default on the CPU: bfloat16 autocast, since the CPU's float16 kernels are few.
    """
    if amp is None:
        if device.type != "cuda" and _as_on_cuda(device):
            rehearsal.announce("amp", "autocast in bfloat16 on the CPU, where CUDA would use float16, "
                               "with the GradScaler on")
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    if amp is False:
        return None
    if amp is True:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    names = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    dtype = names.get(amp.lower()) if isinstance(amp, str) else amp
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"amp={amp!r} is not a mixed-precision setting; use None (auto), True, False, "
                         "'float16' or 'bfloat16'.")
    return dtype


def scaler_enabled(dtype: torch.dtype | None, device: torch.device) -> bool:
    """Whether a GradScaler scales the loss: for float16 autocast (and, in a rehearsal, its bfloat16 stand-in)."""
    if dtype == torch.float16:
        return True
    return dtype is not None and device.type != "cuda" and _as_on_cuda(device)


def default_channels_last(device: torch.device) -> bool:
    """Channels-last tensors by default where the convolutions are faster that way: CUDA (and a rehearsal)."""
    return _as_on_cuda(device)


def progress_on(progress: bool | None) -> bool:
    """Bars unless asked not to: ``TQDM_DISABLE`` or ``CI`` set (stored notebooks, CI logs) turn them off."""
    if progress is not None:
        return bool(progress)
    off = ("", "0", "false", "no")
    return not any(os.environ.get(name, "").strip().lower() not in off for name in ("TQDM_DISABLE", "CI"))


def progress_bar(iterable: Iterable, *, enabled: bool | None, desc: str):
    """A bar that vanishes when done (``leave=False``): the one-line summary after it is what stays."""
    if not progress_on(enabled):
        return iterable
    from tqdm.auto import tqdm  # a widget in a notebook, text in a terminal

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, disable=False)


def to_device(images: Tensor, masks: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    """One batch onto ``device``; channels-last images where the convolutions are faster that way (CUDA)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=memory_format)  # (B, 3, H, W)
    masks = masks.to(device, non_blocking=True)  # (B, H, W)
    return images, masks
