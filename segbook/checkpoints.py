"""Checkpoints that survive a killed run: atomic files, the run's settings inside, and an exact resume.

``fit`` writes ``last.pt`` after every epoch and ``best.pt`` when the mIoU
improves. A hard kill (a preempted Colab, a full disk) can land mid-write, and
a resumed run that quietly loads another model's settings trains something
else than the user thinks; both are caught here, each with one line to act on.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from .paths import data_home, short_path
from .rng import rng_state, set_rng_state

__all__ = ["save_checkpoint", "load_checkpoint", "chapter_checkpoint_dir", "remove_stale_temporaries",
           "ConfigMismatch"]

UNCHECKED_ON_RESUME = ("epochs",)  # a resumed run may go on for more epochs: the poly schedule is rebuilt


class ConfigMismatch(ValueError):
    """``resume`` found a ``last.pt`` written by a run with other settings."""


def chapter_checkpoint_dir(chapter: str, name: str) -> Path:
    """Where a chapter keeps its trained model ``name``: ``data_home()/"checkpoints"/chapter/name``.

    Away from the working folder, so a chapter never resumes from (or
    overwrites) a ``checkpoints/MODEL`` that a command-line run left there.
    """
    return data_home() / "checkpoints" / chapter / name


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace`` it in.

    An interrupted write (Ctrl-C, a full disk, a preempted Colab) then leaves
    either the old checkpoint or the new one, never half a file; a temporary
    file in the same folder keeps the rename on one file system, where it is atomic.
    """
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


def remove_stale_temporaries(folder: Path, names: tuple[str, ...] = ("last.pt", "best.pt")) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files a hard kill left in ``folder`` (a clean exit leaves none)."""
    stale = sorted(p for name in names for p in Path(folder).glob(f".{name}.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a (Distributed)DataParallel wrapper, whose state dict has no ``module.`` prefix."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write ``{"model": model.state_dict(), **extra}`` atomically (see ``fit`` for what it stores)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"model": unwrap(model).state_dict(), **extra}, path)
    return path


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None, *,
                    map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`fit` and, given ``model``, load its weights into it.

    Only tensors and plain Python values are stored, so the file is read with
    ``weights_only=True`` (no code runs from it). Returns the whole dict
    (``epoch``, ``history``, ``best_miou``, ``config``, ...) for the curious reader.
    """
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
        made_by = f" (written for {_describe(config)})" if config else ""
        raise ValueError(f"{short_path(path)} holds weights of another model{made_by}: {detail} against "
                         f"{type(model).__name__}; build the model it was trained as, or use another "
                         "checkpoint folder.") from err


def _describe(config: Mapping) -> str:
    return ", ".join(f"{key} {value}" for key, value in config.items())


def config_differences(saved: Mapping | None, current: Mapping) -> list[str]:
    """``"key: saved -> current"`` for every setting that differs (those in ``UNCHECKED_ON_RESUME`` aside)."""
    keys = [k for k in dict.fromkeys([*saved, *current]) if k not in UNCHECKED_ON_RESUME]
    missing = "(not recorded)"
    return [f"{key}: {saved.get(key, missing)} -> {current.get(key, missing)}" for key in keys
            if _plain(saved.get(key, missing)) != _plain(current.get(key, missing))]


def _plain(value):
    """Tuples and lists compare equal (a checkpoint may hand either back)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def checkpoint_state(model, optimizer, scheduler, scaler, train_loader, *, rng: dict | None = None,
                     **progress) -> dict:
    """All a resumed run needs to continue bit for bit: weights, optimizer, schedule, scaler, random streams.

    ``rng`` (from :func:`segbook.rng.rng_state`) defaults to this process's streams on the CPU.
    """
    return {
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict(), "rng": rng if rng is not None else rng_state(train_loader), **progress,
    }


def resume(last: Path, model, optimizer, scheduler, scaler, train_loader, epochs: int, config: Mapping,
           say: Callable[[str], object], *, device: torch.device | None = None,
           rank: int = 0) -> tuple[list[dict], float, int]:
    """Load ``last.pt`` into the run's objects; returns the history so far, the best mIoU and the next epoch.

    The checkpoint's recorded settings are compared with this run's first, so a
    changed model, crop or learning rate stops the run with the list of what
    changed, instead of a state-dict error or, worse, a quietly different run.
    Process ``rank`` on ``device`` takes back its own random streams.
    """
    if not last.is_file():
        say(f"no checkpoint at {short_path(last)}; starting from scratch")
        return [], -math.inf, 1
    state = load_checkpoint(last)  # on the CPU: RNG states must be CPU tensors
    changed = config_differences(state["config"], config) if state.get("config") is not None else []  # older files: none
    if changed:
        raise ConfigMismatch(f"{short_path(last)} was written by a run with other settings ({'; '.join(changed)}); "
                             "resume with the same settings, or train into another checkpoint folder.")
    _load_weights(last, unwrap(model), state["model"], state.get("config"))
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], train_loader, device, rank)
    say(f"resuming from {short_path(last)} after epoch {state['epoch']}")
    if state.get("epochs", epochs) != epochs and scheduler is not None:
        say(f"note: that run planned {state['epochs']} epochs; the poly schedule now ends at epoch {epochs}.")
    return list(state["history"]), state["best_miou"], state["epoch"] + 1
