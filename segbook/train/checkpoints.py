"""Checkpoints that survive a killed run: atomic files, the run's settings inside, and an exact resume.

A hard kill (a preempted Colab, a full disk) can land mid-write, and a resumed run that quietly loads
another run's settings trains something else than the user thinks: :class:`Checkpoints` catches both,
each with one line to act on. A resume continues bit for bit only if shuffling, augmentations and dropout
draw what they would have drawn, so a checkpoint also holds every random stream (Python's, NumPy's,
PyTorch's on the CPU and the GPU in use, the loader's generators), one set per process under torchrun.
All are tensors and plain values, so a checkpoint loads with ``weights_only=True``: no code runs from it.
"""
from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.base import unwrap
from ..settings import data_home, short_path

__all__ = ["Checkpoints", "ConfigMismatch", "atomic_save", "chapter_checkpoint_dir", "load_checkpoint",
           "loader_generators", "random_state", "save_checkpoint", "set_random_state"]

UNCHECKED_ON_RESUME = ("epochs",)  # a resumed run may go on for more epochs: the poly schedule is rebuilt


class ConfigMismatch(ValueError):
    """``resume`` found a ``last.pt`` written by a run with other settings."""


def chapter_checkpoint_dir(chapter: str, name: str) -> Path:
    """A chapter's model ``name``: ``data_home()/"checkpoints"/chapter/name``, never a command-line run's folder."""
    return data_home() / "checkpoints" / chapter / name


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then ``os.replace`` (atomic): a kill leaves no half file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write ``{"model": model.state_dict(), **extra}`` atomically (see ``fit`` for what it stores)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"model": unwrap(model).state_dict(), **extra}, path)
    return path


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None, *,
                    map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`fit` (``weights_only=True``) and, given ``model``, load its weights.

    Returns the whole dict (``epoch``, ``history``, ``best_miou``, ``config``, ...) for the curious reader."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {short_path(path)}; train with fit(..., checkpoint_dir=...) "
                                "or check the path.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file: say which file
        raise RuntimeError(f"could not read the checkpoint {short_path(path)} ({err}); delete it and train again, "
                           "or pass another file.") from err
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{short_path(path)} is not a segbook checkpoint (no 'model' entry).")
    if model is not None:
        _load_weights(path, unwrap(model), state["model"], state.get("config"))
    return state


def _load_weights(path: Path, model: nn.Module, weights: Mapping, config: Mapping | None) -> None:
    """``load_state_dict``, with torch's key-by-key report replaced by one sentence naming the file."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        ours, theirs = set(model.state_dict()), set(weights)
        detail = (f"{len(theirs - ours)} unexpected and {len(ours - theirs)} missing entries"
                  if ours != theirs else "the same entries with other shapes")
        made_by = f" (written for {', '.join(f'{k} {v}' for k, v in config.items())})" if config else ""
        raise ValueError(f"{short_path(path)} holds weights of another model{made_by}: {detail} against "
                         f"{type(model).__name__}; build the model it was trained as, or use another "
                         "checkpoint folder.") from err


def config_differences(saved: Mapping, current: Mapping) -> list[str]:
    """``"key: saved -> current"`` for every setting that differs (those in ``UNCHECKED_ON_RESUME`` aside)."""
    missing = "(not recorded)"
    keys = [k for k in dict.fromkeys([*saved, *current]) if k not in UNCHECKED_ON_RESUME]
    return [f"{key}: {saved.get(key, missing)} -> {current.get(key, missing)}" for key in keys
            if _tuples(saved.get(key, missing)) != _tuples(current.get(key, missing))]


def loader_generators(loader) -> list[torch.Generator]:
    """The generators that shuffle ``loader`` (its sampler's, then its own), each once."""
    found = []
    for owner in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None),
                  loader):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def random_state(device: torch.device | None = None) -> dict:
    """This process's global streams: Python, NumPy, PyTorch's CPU and, on CUDA, the GPU it trains on."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
             "torch": torch.get_rng_state(), "cuda": []}
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        state["cuda"], state["cuda_device"] = [torch.cuda.get_rng_state(index)], index
    return state


def set_random_state(state: dict, loader, device: torch.device | None = None, rank: int = 0) -> None:
    """Put back what a checkpoint's ``"rng"`` holds: the loader's generators and this process's own streams.

    Rank ``r`` gets rank ``r``'s streams, or the first one's from a run with fewer processes (not bit for bit)."""
    mine = state.get("processes") or [state]
    own = mine[rank] if rank < len(mine) else mine[0]
    random.setstate(_tuples(own["python"]))
    kind, keys, *rest = own["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(own["torch"])
    if own["cuda"] and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(own["cuda"][0], device)  # onto this process's GPU, whichever index it has
    for gen, saved in zip(loader_generators(loader), state["loader"]):
        gen.set_state(saved)


def _tuples(x):
    """Tuples all the way down: ``random.setstate`` insists, and a checkpoint may hand back lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


class Checkpoints:
    """``last.pt`` and ``best.pt`` of one ``fit`` run: where they are, resuming from them, writing them.

    ``run`` is what is saved and put back (model, optimizer, scheduler or None, GradScaler, training loader); a
    ``last.pt`` with another ``config`` is refused on resume, listing what differs. Rank 0 alone writes."""

    def __init__(self, folder: str | os.PathLike | None, run: tuple, config: dict, processes,
                 device: torch.device, say: Callable[[str], object]) -> None:
        self.model, self.optimizer, self.scheduler, self.scaler, self.loader = run
        self.config, self.processes, self.device, self.say = config, processes, device, say
        self.last = self.best = None
        self.kept_epoch: int | None = None  # the epoch last.pt holds
        if folder is not None:
            folder = Path(folder)
            folder.mkdir(parents=True, exist_ok=True)
            self.last, self.best = folder / "last.pt", folder / "best.pt"
            stale = sorted([*folder.glob(".last.pt.*.tmp"), *folder.glob(".best.pt.*.tmp")])
            if stale and processes.is_main:  # another rank's temporary may be mid-write
                for path in stale:
                    path.unlink(missing_ok=True)
                say(f"removed {', '.join(p.name for p in stale)} from {short_path(folder)}: "
                    "left by a save that was killed; last.pt and best.pt are whole")

    def start(self, resume: bool, epochs: int) -> tuple[list[dict], float, int]:
        """(history, best mIoU, first epoch to train): a fresh run, or where ``last.pt`` stopped."""
        history, best_miou, start = [], -math.inf, 1
        if resume:
            if self.last is None:
                raise ValueError("resume=True needs checkpoint_dir, the folder that holds last.pt.")
            history, best_miou, start = self._resume(epochs)
            self.processes.agree_on_resume(start, self.device)  # every process at the same epoch, or a clear error
        self.kept_epoch = history[-1]["epoch"] if history and self.last is not None and self.last.is_file() else None
        return history, best_miou, start

    def _resume(self, epochs: int) -> tuple[list[dict], float, int]:
        if not self.last.is_file():
            self.say(f"no checkpoint at {short_path(self.last)}; starting from scratch")
            return [], -math.inf, 1
        state = load_checkpoint(self.last)  # on the CPU: random states must be CPU tensors
        changed = config_differences(state["config"], self.config)
        if changed:
            raise ConfigMismatch(f"{short_path(self.last)} was written by a run with other settings "
                                 f"({'; '.join(changed)}); resume with the same settings, or train into another "
                                 "checkpoint folder.")
        _load_weights(self.last, unwrap(self.model), state["model"], state["config"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_random_state(state["rng"], self.loader, self.device, self.processes.rank)
        self.say(f"resuming from {short_path(self.last)} after epoch {state['epoch']}")
        if state["epochs"] != epochs and self.scheduler is not None:
            self.say(f"note: that run planned {state['epochs']} epochs; the poly schedule now ends at epoch {epochs}.")
        return list(state["history"]), state["best_miou"], state["epoch"] + 1

    def save(self, epoch: int, epochs: int, history: list[dict], best_miou: float, improved: bool) -> None:
        """``last.pt`` (and ``best.pt`` when the epoch improved), atomically; a collective under several processes."""
        if self.last is None:
            return
        processes = self.processes.gather_states(random_state(self.device))
        rng = {**random_state(self.device), "loader": [g.get_state() for g in loader_generators(self.loader)]}
        if processes is not None:
            rng["processes"] = processes
        state = {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                 "scaler": self.scaler.state_dict(), "rng": rng, "epoch": epoch, "epochs": epochs,
                 "history": history, "best_miou": best_miou, "config": self.config}
        if self.processes.is_main:  # rank 0 alone writes the files
            atomic_save(state, self.last)
            if improved:
                atomic_save(state, self.best)
        self.kept_epoch = epoch

    def finish(self, start: int, epochs: int) -> None:
        """Say when there was nothing to train; when any process returns, rank 0's ``last.pt`` is whole."""
        if start > epochs:
            self.say(f"{short_path(self.last)} already holds {start - 1} epochs (epochs={epochs}); nothing to train")
        if self.last is not None:
            self.processes.barrier()

    def interrupted(self, epoch: int) -> str:
        if self.last is not None and self.kept_epoch is not None:
            return (f"interrupted in epoch {epoch}: {short_path(self.last)} holds epoch {self.kept_epoch}; "
                    "run again with resume=True (--resume) to continue")
        return f"interrupted in epoch {epoch}: nothing was saved"

    def after_divergence(self) -> str:
        """What is left on disk after a diverged epoch, in one line."""
        if self.last is not None and self.kept_epoch is not None:
            return (f"The last good checkpoint, {short_path(self.last)} (epoch {self.kept_epoch}), is kept as it "
                    "was; nothing of this epoch was written. Resume from it with resume=True and a lower lr.")
        if self.last is not None:
            return "No epoch finished, so no checkpoint was written."
        return "No checkpoint was kept (checkpoint_dir=None)."
