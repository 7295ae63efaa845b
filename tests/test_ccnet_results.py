"""The stored CCNet comparison (segbook/results/ccnet_compare.json) is whole and reproduces.

Chapter 5 trains CCNet once and loads the stored rows of the three-way
comparison (dilated FCN, PSPNet, CCNet) instead of training them. These tests
check that the file holds what the chapter reads, and re-run its cheap
configuration (``check``: CCNet, seed 0, 1 epoch, about 10 s on 2 quiet CPU
cores) with ``experiments/ccnet_compare.py``'s own code, comparing its first
epoch's mean training loss with the stored row, to within the spread stored
beside it (``segbook.results.reproduction_tolerance``; the epoch's scores move
between CPUs about as much as between seeds).
"""
from __future__ import annotations

import pytest

from segbook.results import load_results

from _experiments import assert_check_reproduces, load_experiment


def test_stored_rows_are_whole():
    results, experiment = load_results("ccnet_compare"), load_experiment("ccnet_compare")
    runs, settings = results["runs"], results["settings"]
    seeds = sorted({r["seed"] for r in runs})
    assert seeds and sorted((r["model"], r["seed"]) for r in runs) == sorted(
        (label, seed) for label in experiment.MODELS for seed in seeds)
    assert results["models"] == {k: [v[0], v[1]] for k, v in experiment.MODELS.items()}
    assert all(r["epochs"] == settings["epochs"] for r in runs)
    for r in runs:
        assert 0 < r["val_miou"] < 1 and 0 < r["val_pixel_acc"] < 1, r
        assert r["train_loss"] < r["first_train_loss"], r
    assert settings == {**experiment.QUICK, "epochs": settings["epochs"], "threads": settings["threads"],
                        "crop_size": list(experiment.QUICK["crop_size"])}


@pytest.mark.all_threads  # real training: torch's thread count (the tolerance covers 1, 2, 4)
def test_check_run_reproduces():
    assert_check_reproduces("ccnet_compare")
