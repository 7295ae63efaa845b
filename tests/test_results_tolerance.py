"""The stored-result re-checks compare only what a reader's CPU reproduces, and can still fail."""
from __future__ import annotations

import re

import pytest

from segbook.results import ROUNDING, load_results, reproduction_tolerance as tolerance

from _experiments import load_experiment

from tools.portability import CONFIGS, DEFAULT_PATHS, ROOT

# Each stored result a test re-runs, and the quantity it compares (compare_all: its own test says why).
RECHECKED = {"ccnet_compare": "first_train_loss", "context_compare": "first_train_loss",
             "pointrend_compare": "first_train_loss", "compare_all": "first_step_loss"}


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
    key = RECHECKED[name]
    results, experiment = load_results(name), load_experiment(name)
    check, measured = results["check"], results["check_spread"]
    assert {k: check[k] for k in experiment.CHECK} == experiment.CHECK
    assert set(measured["configs"]) <= set(CONFIGS), "re-run experiments/check_spread.py"
    assert "default" in measured["configs"] and len(measured["configs"]) >= 4  # three other kernel choices
    default = measured["configs"]["default"]
    assert all(check[k] == v for k, v in default.items()), "the check row is the default configuration's"
    assert measured["config_range"][key] == pytest.approx(
        max(r[key] for r in measured["configs"].values())
        - min(r[key] for r in measured["configs"].values()), abs=1e-9)
    tolerance(results, key)  # the compared quantity tells seeds apart


def test_the_portability_check_runs_every_result_recheck():
    """``tools/portability.py``'s default paths exist and hold every test that re-runs a stored result."""
    assert all((ROOT / p).exists() for p in DEFAULT_PATHS), DEFAULT_PATHS
    rechecks = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")
                if re.search(r"^from _experiments import .*assert_check_reproduces", p.read_text(), re.M)}
    assert rechecks == {f"tests/test_{name}_results.py" for name in
                        ("ccnet", "context", "pointrend", "compare_all", "mask2former")}
    assert rechecks <= set(DEFAULT_PATHS)
