"""What one training step holds in memory, counted tensor by tensor, on any device.

The peak comes when backward starts, and the activations saved for it grow with
batch and crop. A ``saved_tensors_hooks`` pair counts them without a GPU, each
storage once; the tally is PyTorch's own, the same on CPU and GPU. What CUDA adds
(context, workspaces, allocator slack) is the margin :data:`CUDA_OVERHEAD_GIB`.
"""
from __future__ import annotations

import textwrap
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["CUDA_OVERHEAD_GIB", "gpu_memory_line", "largest_batch", "step_memory"]

CUDA_OVERHEAD_GIB = 1.5  # CUDA context (~0.4 GiB), cuDNN workspaces and allocator slack, for a fit/no-fit call


def _key(t: Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def step_memory(model: nn.Module, images: Tensor, target: Tensor,
                loss_fn: Callable[[dict, Tensor], Tensor | tuple] | None = None, *,
                amp_dtype: torch.dtype | None = None, optimizer_slots: int = 1) -> dict[str, int]:
    """Bytes one training step of ``model`` on ``images`` holds at the start of backward, by kind, and their ``total``.

    ``optimizer`` counts ``optimizer_slots`` tensors per trainable parameter (1 for
    SGD with momentum, 2 for Adam); ``saved``, what the forward pass and the loss save
    for backward (weights excluded), under autocast in ``amp_dtype`` when given. The
    model runs in training mode; only BatchNorm's running statistics change.
    """
    device = images.device
    weights = {_key(t) for t in [*model.parameters(), *model.buffers()]}
    seen: dict[tuple[int, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        key = _key(t)
        if key not in weights:
            seen[key] = key[1]
        return t

    model.train()
    if loss_fn is None:
        from .models.base import model_loss  # here: the tally needs the loss only when none is given
        loss_fn = model_loss(model)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(images), target)
    loss = loss[0] if isinstance(loss, tuple) else loss
    del loss  # the graph and what it saved are freed here
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    params = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    counts = {"params": params, "grads": trainable, "optimizer": optimizer_slots * trainable,
              "saved": sum(seen.values())}
    counts["total"] = sum(counts.values())
    return counts


def largest_batch(fixed: int, per_image: int, card_gib: float, overhead_gib: float = CUDA_OVERHEAD_GIB) -> int:
    """The largest batch whose ``fixed + per_image * batch`` bytes fit ``card_gib`` less ``overhead_gib``."""
    room = (card_gib - overhead_gib) * 2**30 - fixed
    return max(0, int(room // per_image))


def _listed(items: list[str]) -> str:
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1] if items else "none of them"


def gpu_memory_line(entry: dict) -> str:
    """One sentence from an entry of ``load_results("full_memory")["chapters"]``: the estimate, and what it fits."""
    settings, batch = entry["settings"], entry["settings"]["batch_size"]
    crop = " x ".join(str(side) for side in settings["crop_size"])
    fits = [card for card, largest in entry["largest_batch"].items() if largest >= batch]
    smaller = [f"on {card} use batch {largest}" for card, largest in entry["largest_batch"].items()
               if largest < batch]
    line = (f"full profile, estimated from a CPU tally (no GPU has run it): a training step at batch {batch} "
            f"of {crop} crops in mixed precision would hold about {entry['step_gib']} GiB of tensors, plus an "
            f"allowance of {CUDA_OVERHEAD_GIB} GiB for CUDA itself; by that estimate it fits {_listed(fits)}")
    return textwrap.fill(line + (f"; {_listed(smaller)}." if smaller else "."), 88)
