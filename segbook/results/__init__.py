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

__all__ = ["load_results", "results_path"]


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
