"""Every random stream a training epoch draws from, captured into a checkpoint and put back on resume.

A resumed run continues bit for bit only if the shuffling, the augmentations
and any dropout draw the numbers they would have drawn: Python's, NumPy's and
PyTorch's generators (CPU and the GPU in use) and the generators the loader
shuffles with. Under torchrun every process seeds its own streams differently
(``seed + rank``), so the checkpoint keeps one set per process, and each
process takes back its own. States are stored as tensors and ints, so a
checkpoint loads with ``weights_only=True``.
"""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["loader_generators", "process_rng_state", "rng_state", "set_rng_state"]


def loader_generators(loader) -> list[torch.Generator]:
    """The generators that shuffle ``loader`` (its sampler's, then its own), each once.

    The sampler's comes first: checkpoints written while the loader and its
    sampler shared one generator hold one state, and it belongs to the sampler.
    """
    found = []
    sampler = getattr(loader, "sampler", None)
    inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    for owner in (sampler, inner, loader):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def process_rng_state(device: torch.device | None = None) -> dict:
    """This process's global streams: Python, NumPy, PyTorch's CPU and, on CUDA, the GPU it trains on.

    Only the GPU in use is saved (and ``cuda_device`` says which), so that a
    process restores its own device's state, whatever the machine's GPU count.
    """
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
             "torch": torch.get_rng_state(), "cuda": []}
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        state["cuda"], state["cuda_device"] = [torch.cuda.get_rng_state(index)], index
    return state


def rng_state(loader, device: torch.device | None = None, processes: list[dict] | None = None) -> dict:
    """Every random stream a training epoch draws from, as tensors and ints (loadable with weights_only).

    ``processes``: every process's :func:`process_rng_state`, in rank order, when several train together.
    """
    state = {**process_rng_state(device), "loader": [g.get_state() for g in loader_generators(loader)]}
    if processes is not None:
        state["processes"] = processes
    return state


def set_rng_state(state: dict, loader, device: torch.device | None = None, rank: int = 0) -> None:
    """Put back what :func:`rng_state` captured: the loader's generators and this process's own streams.

    A checkpoint from as many processes gives rank ``r`` its own streams; one from
    a different number of processes gives every process the saved first one
    (the run continues, but not bit for bit). Checkpoints that saved every GPU's
    state (older ones) are put back only onto as many GPUs as were saved.
    """
    mine = state.get("processes") or [state]
    own = mine[rank] if rank < len(mine) else mine[0]
    random.setstate(_tuples(own["python"]))
    kind, keys, *rest = own["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(own["torch"])
    if "cuda_device" in own:
        if device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"][0], device)  # onto this process's GPU, whichever index it has
    elif own["cuda"] and torch.cuda.is_available() and len(own["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(own["cuda"])
    for gen, saved in zip(loader_generators(loader), state["loader"]):
        gen.set_state(saved)


def _tuples(x):
    """Pickling keeps tuples, but be safe: ``random.setstate`` insists on tuples all the way down."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
