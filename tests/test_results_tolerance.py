"""The stored-result re-checks compare only what a reader's CPU reproduces, and can still fail."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from segbook.results import ROUNDING, load_results, reproduction_tolerance as tolerance

from _experiments import load_experiment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from portability import CONFIGS  # noqa: E402

RECHECKED = ("ccnet_compare", "context_compare", "pointrend_compare")  # compare_all: see its own test


def spread(config_range: float, seed_gap: float) -> dict:
    return {"check_spread": {"config_range": {"x": config_range}, "seed_gap": {"x": seed_gap}}}


def test_tolerance_comes_from_the_measured_spread():
    assert tolerance(spread(0.0, 0.05), "x") == pytest.approx(ROUNDING)
    assert tolerance(spread(0.002, 0.05), "x") == pytest.approx(0.006 + ROUNDING)


def test_a_quantity_that_cannot_tell_seeds_apart_is_refused():
    with pytest.raises(ValueError, match="cannot tell seed 0 from the nearest other seed"):
        tolerance(spread(0.07, 0.05), "x")  # one epoch's pixel accuracy: CPUs differ more than seeds


@pytest.mark.parametrize("name", RECHECKED)
def test_the_spread_was_measured_for_the_stored_check(name):
    results, experiment = load_results(name), load_experiment(name)
    check, measured = results["check"], results["check_spread"]
    assert {k: check[k] for k in experiment.CHECK} == experiment.CHECK
    assert set(measured["configs"]) <= set(CONFIGS), "re-run experiments/check_spread.py"
    assert "default" in measured["configs"] and len(measured["configs"]) >= 4  # three other kernel choices
    default = measured["configs"]["default"]
    assert all(check[k] == v for k, v in default.items()), "the check row is the default configuration's"
    assert measured["config_range"]["first_train_loss"] == pytest.approx(
        max(r["first_train_loss"] for r in measured["configs"].values())
        - min(r["first_train_loss"] for r in measured["configs"].values()), abs=1e-9)
    tolerance(results, "first_train_loss")  # the compared quantity tells seeds apart
