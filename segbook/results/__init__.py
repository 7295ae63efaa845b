"""Results of runs too long for a chapter, written by ``experiments/`` as JSON and shipped with the package."""
from __future__ import annotations

import json
from importlib import resources

__all__ = ["load_results", "reproduction_tolerance"]

ROUNDING = 1e-4  # stored values have 4 decimals: two roundings can differ by one unit of the last digit
MARGIN = 3  # a reader's CPU may add in an order that none of the measured configurations used


def load_results(name: str) -> dict:
    """The stored results ``<name>.json``, e.g. ``load_results("fcn_alignment")``."""
    folder = resources.files(__package__)
    path = folder / f"{name}.json"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))
        raise FileNotFoundError(f"no stored results named {name!r} (known: {', '.join(known) or 'none'}); "
                                f"run experiments/{name}.py from a clone of the repository to make them.")
    return json.loads(path.read_text())


def reproduction_tolerance(results: dict, key: str) -> float:
    """How far a re-run of the stored ``check`` may land from it in ``key``: ``MARGIN`` times the measured spread.

    The spread is ``check_spread``'s over configurations (SIMD kernels, thread
    counts) plus the stored digits' rounding. It must stay under half the distance
    to the nearest other seed, or a re-check could not tell a changed run: then this raises.
    """
    spread = results["check_spread"]
    tol = MARGIN * spread["config_range"][key] + ROUNDING
    if not tol < spread["seed_gap"][key] / 2:
        raise ValueError(f"{key}: a tolerance of {tol:.4f} cannot tell seed 0 from the nearest other seed "
                         f"({spread['seed_gap'][key]:.4f} away); re-check a steadier quantity")
    return tol
