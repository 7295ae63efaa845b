"""The two profiles, and the one-way switch from ``full`` to ``quick`` when the full one cannot run.

Kept below both :mod:`segbook.env` (which chooses the profile) and
:mod:`segbook.data` (which may find VOC2012 missing halfway through a notebook
and must then downgrade it), so that neither has to import the other to
share this one piece of state.
"""
from __future__ import annotations

__all__ = ["PROFILES", "PROFILE_DESCRIPTIONS", "downgrade_profile", "profile_downgraded"]

PROFILES = ("quick", "full")

PROFILE_DESCRIPTIONS = {  # what each profile is, for the set-up page and the docs
    "quick": "the toy VOC set, random-init backbones, a few small epochs on a CPU",
    "full": "real VOC2012, ImageNet-pretrained backbones, a longer GPU schedule",
}

_downgraded: str | None = None  # why this process left the full profile for quick, once that happened


def downgrade_profile(reason: str, *, say: bool = True) -> None:
    """Leave the full profile for quick, for the rest of the process, saying why in one line (once)."""
    global _downgraded
    if _downgraded is None and say:
        print(f"full profile unavailable: {reason}; using the quick profile")
    _downgraded = _downgraded or reason


def profile_downgraded() -> str | None:
    """Why the full profile was left for quick in this process, or None if it was not."""
    return _downgraded
