"""Results of runs too long for a chapter, stored as JSON and shipped with the package.

Each file here is written by a script in the repository's ``experiments/``
folder (which says how long it takes and with what settings); a chapter loads
it with :func:`load_results`, so the page can show measurements over several
seeds without re-running them, on a reader's machine or on Colab, where only
the package is installed.
"""
from __future__ import annotations

import json
from importlib import resources

__all__ = ["load_results", "reproduction_tolerance", "results_path"]

ROUNDING = 1e-4  # stored values have 4 decimals: two roundings can differ by one unit of the last digit
MARGIN = 3  # a reader's CPU may add in an order that none of the measured configurations used


def results_path(name: str):
    """The stored file ``<name>.json`` (a Traversable; ``str()`` gives its path in a checkout)."""
    return resources.files(__package__) / f"{name}.json"


def load_results(name: str) -> dict:
    """The stored results ``<name>.json``, e.g. ``load_results("fcn_alignment")``."""
    path = results_path(name)
    if not path.is_file():
        known = sorted(p.name.removesuffix(".json") for p in resources.files(__package__).iterdir()
                       if p.name.endswith(".json"))
        raise FileNotFoundError(f"no stored results named {name!r} (known: {', '.join(known) or 'none'}); "
                                f"run experiments/{name}.py from a clone of the repository to make them.")
    return json.loads(path.read_text())


def reproduction_tolerance(results: dict, key: str) -> float:
    """How far a re-run of the stored ``check`` may land from it in ``key``, from the measured spread.

    Why not a fixed number: a short CPU training run is chaotic, so what a
    reader's machine reproduces depends on the quantity. ``check_spread``
    (written by ``experiments/check_spread.py``) holds the check run under
    every configuration of ``tools/portability.py`` (other SIMD kernels, other
    thread counts) and with two other seeds. The tolerance is ``MARGIN`` times
    the spread over configurations plus the rounding of the stored digits. It
    must stay under half the distance to the nearest other seed, or a
    comparison could not tell a changed run from an unchanged one: then this
    raises, and the quantity is not fit to be re-checked.
    """
    spread = results["check_spread"]
    tol = MARGIN * spread["config_range"][key] + ROUNDING
    if not tol < spread["seed_gap"][key] / 2:
        raise ValueError(f"{key}: a tolerance of {tol:.4f} cannot tell seed 0 from the nearest other seed "
                         f"({spread['seed_gap'][key]:.4f} away); re-check a steadier quantity")
    return tol
