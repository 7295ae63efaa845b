"""One rule for sizes given as ``n`` or ``(height, width)``: crops, strides, windows, kernel sizes."""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

__all__ = ["as_pair"]


def as_pair(value: int | Sequence[int], name: str, minimum: int = 1) -> tuple[int, int]:
    """``value`` as ``(height, width)``; an int is used for both sides.

    Booleans and floats are refused (``True`` is an int to Python, ``96.5`` a typo),
    as is any side below ``minimum``; ``name`` is the argument the message names.
    """
    def is_int(v) -> bool:
        return isinstance(v, Integral) and not isinstance(v, bool)

    pair = (value, value) if is_int(value) else value
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(not is_int(v) or v < minimum for v in pair):
        raise ValueError(f"{name}={value!r}: give an int >= {minimum} or (height, width) of such ints, e.g. (96, 128).")
    return int(pair[0]), int(pair[1])
