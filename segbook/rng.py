"""Every random stream a training epoch draws from, captured into a checkpoint and put back on resume.

A resumed run continues bit for bit only if the shuffling, the augmentations
and any dropout draw the numbers they would have drawn: Python's, NumPy's and
PyTorch's generators (CPU and CUDA) and the generators the loader shuffles with.
States are stored as tensors and ints, so a checkpoint loads with ``weights_only=True``.
"""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["loader_generators", "rng_state", "set_rng_state"]


def loader_generators(loader) -> list[torch.Generator]:
    """The generators that shuffle ``loader`` (its own, its sampler's), each once."""
    found = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def rng_state(loader) -> dict:
    """Every random stream a training epoch draws from, as tensors and ints (loadable with weights_only)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": [g.get_state() for g in loader_generators(loader)],
    }


def set_rng_state(state: dict, loader) -> None:
    """Put back what :func:`rng_state` captured; CUDA states only onto as many GPUs as were saved."""
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for gen, saved in zip(loader_generators(loader), state["loader"]):
        gen.set_state(saved)


def _tuples(x):
    """Pickling keeps tuples, but be safe: ``random.setstate`` insists on tuples all the way down."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
