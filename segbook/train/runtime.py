"""What a training or evaluation loop does that is not learning: precision, memory layout, bars.

Kept apart so that ``fit``, ``train_one_epoch`` and ``evaluate`` read as loops and make these choices alike.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..settings import progress_disabled

__all__ = ["amp_dtype", "default_channels_last", "model_device", "progress_bar", "progress_on", "to_device"]

_AMP_NAMES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
              "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def amp_dtype(amp: bool | str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32.

    ``None`` means float16 on CUDA (every CUDA GPU runs it, with a GradScaler against underflow, Micikevicius et
    al., 2018) and float32 elsewhere; ``True`` float16 on CUDA and bfloat16 elsewhere; a dtype or its name
    ("float16", "bfloat16") forces it. Only float16 needs a GradScaler."""
    if amp is None:
        return torch.float16 if device.type == "cuda" else None
    if amp is False:
        return None
    if amp is True:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    dtype = _AMP_NAMES.get(amp.lower()) if isinstance(amp, str) else amp
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"amp={amp!r} is not a mixed-precision setting; use None (auto), True, False, "
                         "'float16' or 'bfloat16'.")
    return dtype


def default_channels_last(device: torch.device) -> bool:
    """Channels-last tensors by default where the convolutions are faster that way: CUDA."""
    return device.type == "cuda"


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights are (the CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def progress_on(progress: bool | None) -> bool:
    """Bars unless asked not to: ``progress=False``, or ``TQDM_DISABLE`` set (stored notebooks, CI logs)."""
    return bool(progress) if progress is not None else not progress_disabled()


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
