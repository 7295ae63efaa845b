"""The stored side-by-side comparison (segbook/results/compare_all.json) is whole and reproduces.

Chapter 7 loads the scores and costs of seven models trained by
``experiments/compare_all.py`` (seven minutes on two cores) instead of training
them. These tests check that the file holds a row for every model the script
defines, with the costs the chapter prints, and re-run its check configuration
(FCN-32s, seed 0, one epoch, about 10 s) with the script's own code. On the
machine that wrote the file the run is identical; elsewhere the order of
floating-point sums differs, hence the tolerance.
"""
from __future__ import annotations

import pytest

from segbook.results import load_results

from _experiments import load_experiment


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
    results, experiment = load_results("compare_all"), load_experiment("compare_all")
    stored = results["check"]
    assert (stored["model"], stored["seed"], stored["epochs"]) == tuple(experiment.CHECK.values())
    row = experiment.run(stored["model"], stored["seed"], stored["epochs"])
    for key in ("val_miou", "val_boundary_miou", "val_pixel_acc"):
        assert row[key] == pytest.approx(stored[key], abs=0.03), key
    assert row["train_loss"] == pytest.approx(stored["train_loss"], rel=0.05)
