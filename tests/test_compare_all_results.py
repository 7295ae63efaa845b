"""The stored side-by-side comparison (segbook/results/compare_all.json) is whole and reproduces.

Chapter 7 loads the scores and costs of seven models trained by
``experiments/compare_all.py`` (seven minutes on two cores) instead of training
them. These tests check that the file holds a row for every model the script
defines, with the costs the chapter prints, and re-run its check configuration
(FCN-32s, seed 0, one epoch, about 10 s) with the script's own code. What the
re-run compares, and how closely, comes from the spread stored beside the
check row (``_experiments.tolerance``): after one epoch the validation scores
already differ between CPUs, the epoch's mean training loss does not.
"""
from __future__ import annotations

import pytest

from segbook.results import load_results

from _experiments import assert_check_reproduces, load_experiment


def test_stored_rows_are_whole():
    results, experiment = load_results("compare_all"), load_experiment("compare_all")
    assert list(results["models"]) == list(experiment.MODELS)
    assert [r["model"] for r in results["runs"]] == list(experiment.MODELS)
    assert set(results["costs"]) == set(experiment.MODELS)
    for r in results["runs"]:
        assert r["epochs"] == results["settings"]["epochs"] == experiment.QUICK["epochs"]
        assert 0 < r["val_boundary_miou"] < r["val_miou"] < r["val_pixel_acc"] < 1, r
        assert r["train_loss"] < r["first_train_loss"], r
    assert results["costs"]["FCN-32s"]["latency_ratio"] == 1.0
    assert all(c["latency_ms"] > 0 and c["train_step_mb"] > 0 for c in results["costs"].values())


def test_check_run_reproduces():
    assert_check_reproduces("compare_all")
