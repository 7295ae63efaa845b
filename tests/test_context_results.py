"""The stored context ablation (segbook/results/context_compare.json) is whole and reproduces.

Chapter 4 loads the four-model ablation on the context set instead of training
it (twelve runs of about 100 s). These tests check that the file holds what the
chapter reads, that its counts agree with its scores, and re-run the cheap
configuration (``CHECK``: PSPNet, seed 0, one epoch) with
``experiments/context_compare.py``'s own code, comparing its first epoch's mean
training loss with the stored row, to within the spread stored beside it
(``segbook.results.reproduction_tolerance``; the epoch's scores move between
CPUs about as much as between seeds).
"""
from __future__ import annotations

import pytest

from segbook.results import load_results

from _experiments import assert_check_reproduces, load_experiment


def test_stored_rows_are_whole_and_consistent():
    results, experiment = load_results("context_compare"), load_experiment("context_compare")
    runs = results["runs"]
    seeds = sorted({r["seed"] for r in runs})
    assert len(seeds) == 3
    assert sorted((r["model"], r["seed"]) for r in runs) == sorted(
        (name, seed) for name in experiment.MODELS for seed in seeds)
    assert results["models"] == {k: {"pool_sizes": list(v["pool_sizes"]), "aux": v["aux"]}
                                 for k, v in experiment.MODELS.items()}
    for r in runs:
        assert r["epochs"] == results["settings"]["epochs"] and r["train_loss"] < r["first_train_loss"], r
        (bg, car, boat) = r["counts"]                       # label rows: prediction bg, car, boat, other
        objects = sum(car) + sum(boat)
        assert r["confusion"] == pytest.approx((car[2] + boat[1]) / objects, abs=1e-4), r
        union = sum(car) + bg[1] + boat[1]                  # car row + car column - the diagonal
        assert r["car_iou"] == pytest.approx(car[1] / union, abs=1e-4), r


@pytest.mark.all_threads  # real training: torch's thread count (the tolerance covers 1, 2, 4)
def test_check_run_reproduces():
    assert_check_reproduces("context_compare")
