"""Load a script from the repository's experiments/ folder, and re-check a stored result's check run."""
import importlib

import pytest


def load_experiment(name: str):
    """``experiments/<name>.py``, imported as the module ``experiments.<name>`` (the repository's root is on the path)."""
    return importlib.import_module(f"experiments.{name}")


def assert_check_reproduces(name: str, keys: tuple[str, ...] = ("first_train_loss",)) -> dict:
    """Re-run ``experiments/<name>.py``'s check and compare ``keys`` with the stored row.

    Only training losses are compared (the scores of a one-epoch run move between CPUs
    about as much as between seeds: see each file's ``check_spread``), so the re-run is
    unscored: ``fit`` validates on one batch, which a one-epoch run's training losses
    cannot depend on.
    """
    from segbook.results import load_results, reproduction_tolerance

    results, experiment = load_results(name), load_experiment(name)
    stored = results["check"]
    assert {k: stored[k] for k in experiment.CHECK} == experiment.CHECK, "the stored check is another run"
    assert experiment.CHECK["epochs"] == 1, "a later epoch could depend on the skipped validation"
    row = experiment.run_check(scored=False)
    for key in keys:
        assert row[key] == pytest.approx(stored[key], abs=reproduction_tolerance(results, key)), key
    return row
