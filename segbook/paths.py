"""Where segbook keeps its files, and how a path is printed.

The lowest layer of the package: the data modules, the checkpoints and the
chapters' set-up all need these two answers, and nothing here needs them back.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_home", "short_path"]


def data_home() -> Path:
    """Where segbook keeps datasets and checkpoints: ``SEGBOOK_DATA`` or ``~/.cache/segbook``."""
    return Path(os.environ.get("SEGBOOK_DATA", Path.home() / ".cache" / "segbook")).expanduser()


def short_path(path: os.PathLike | str) -> str:
    """A path to print: the home folder as ``~`` so outputs do not depend on the machine."""
    path = Path(path)
    try:
        return "~/" + path.resolve().relative_to(Path.home().resolve()).as_posix()
    except ValueError:
        return path.as_posix()
