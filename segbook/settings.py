"""Every environment variable segbook reads, in one place, and where its files go.

(torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are read by :mod:`segbook.train.distributed`.)

========================  ===========================================================
``SEGBOOK_PROFILE``       ``quick`` or ``full``; unset: decided from the machine
``SEGBOOK_DEVICE``        ``cpu``, ``cuda``, ``cuda:1``, ``mps``; unset: the best one there
``SEGBOOK_DATA``          the data home (datasets, checkpoints); unset: ``~/.cache/segbook``
``SEGBOOK_VOC_ROOT``      a folder holding VOC2012, looked in before the data home
``TQDM_DISABLE``          set (not 0/false/no): no progress bars (stored notebooks, CI logs)
========================  ===========================================================
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["asked_device", "asked_profile", "data_home", "progress_disabled", "short_path", "voc_root"]


def _read(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def asked_profile() -> str | None:
    """``SEGBOOK_PROFILE``, lower-cased, or None when unset."""
    value = _read("SEGBOOK_PROFILE")
    return value.lower() if value else None


def asked_device() -> str | None:
    """``SEGBOOK_DEVICE`` as written, or None when unset."""
    return _read("SEGBOOK_DEVICE")


def data_home() -> Path:
    """Where segbook keeps datasets and checkpoints: ``SEGBOOK_DATA`` or ``~/.cache/segbook``."""
    return Path(_read("SEGBOOK_DATA") or Path.home() / ".cache" / "segbook").expanduser()


def voc_root() -> Path | None:
    """``SEGBOOK_VOC_ROOT``: a folder the reader says holds VOC2012, or None."""
    value = _read("SEGBOOK_VOC_ROOT")
    return Path(value).expanduser() if value else None


def progress_disabled() -> bool:
    """``TQDM_DISABLE``, which tqdm's notebook bars do not read themselves."""
    return (_read("TQDM_DISABLE") or "0").lower() not in ("0", "false", "no")


def short_path(path: os.PathLike | str) -> str:
    """A path to print: the home folder as ``~`` so outputs do not depend on the machine."""
    path = Path(path)
    try:
        return "~/" + path.resolve().relative_to(Path.home().resolve()).as_posix()
    except ValueError:
        return path.as_posix()
