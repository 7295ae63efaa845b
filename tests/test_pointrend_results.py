"""The stored PointRend comparison (segbook/results/pointrend_compare.json) is whole and reproduces.

Chapter 6 loads the stored rows instead of training six models. These tests
check that the file holds what the chapter reads, and re-run its cheap
configuration (``check``: PointRend, seed 0, one epoch) with
``experiments/pointrend_compare.py``'s own code, comparing it with the stored
row to within the spread stored beside it (``_experiments.tolerance``).
"""
from __future__ import annotations

import pytest

from segbook.results import load_results

from _experiments import assert_check_reproduces, load_experiment

SCORES = ("val_miou", "val_boundary_miou", "coarse_miou", "coarse_boundary_miou")


def test_stored_rows_are_whole():
    results = load_results("pointrend_compare")
    runs, settings = results["runs"], results["settings"]
    assert sorted((r["model"], r["seed"]) for r in runs) == [
        (model, seed) for model in ("deeplabv3plus", "pointrend") for seed in (0, 1, 2)]
    assert all(r["epochs"] == settings["epochs"] for r in runs)
    for r in runs:
        wanted = SCORES if r["model"] == "pointrend" else SCORES[:2]
        assert all(0 < r[key] < 1 for key in wanted), r
        assert r["train_loss"] < r["first_train_loss"], r
    experiment = load_experiment("pointrend_compare")
    assert settings == {**experiment.QUICK, "epochs": settings["epochs"], "threads": settings["threads"],
                        **experiment.MODEL, **experiment.POINTS} | {"crop_size": list(experiment.QUICK["crop_size"])}


def test_check_run_reproduces():
    assert_check_reproduces("pointrend_compare")
