"""Generated data sets, made once and reused: written aside, then renamed into place.

The toy VOC set and the context set are both generated on first use into the
data home and reused afterwards; both go through :func:`generate_once`, so a
generation killed halfway never leaves a folder that a later call would trust.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .voc import TOY_MARKER

__all__ = ["generate_once"]


def generate_once(parent: Path, name: str, make: Callable[[Path], object], what: str) -> Path:
    """``parent/name/VOCdevkit/VOC2012``, made by ``make(folder)`` the first time and reused after.

    It is written into a temporary folder that is renamed into place only when
    complete, so an interrupted generation never leaves a half-made set that a
    later call would trust (a finished set carries the toy marker file).
    """
    final = parent / name
    voc = final / "VOCdevkit" / "VOC2012"
    if (voc / TOY_MARKER).is_file():
        return voc
    if final.exists():
        raise FileExistsError(f"{final} exists but is not a finished {what}; delete it and call again.")
    parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=parent))
    try:
        make(partial)
        try:
            os.replace(partial, final)
        except OSError:  # another process finished first: use theirs
            if not (voc / TOY_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return voc
