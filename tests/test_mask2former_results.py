"""The stored Mask2Former runs (segbook/results/mask2former_compare.json) are whole, and their check reproduces.

Chapter 9 loads three 20-epoch runs, the learning-rate check behind them and
one model's queries for its figure, from ``experiments/mask2former_compare.py``
(about an hour on two cores) instead of training them; chapter 7 can set the
runs beside its own, so they carry the same keys as ``segformer_compare.json``.
These tests check that the file holds what the chapters read, that the
learning rate is the one its rule picks, and re-run the cheap ``check``
configuration (two training steps of seed 0), comparing its losses with the
stored row within the spread stored beside it.
"""
from __future__ import annotations

import base64
import zlib

import pytest

from segbook.results import load_results

from _experiments import assert_check_reproduces, load_experiment

ROW_KEYS = {"model", "seed", "epochs", "val_miou", "val_boundary_miou", "val_pixel_acc", "first_train_loss",
            "train_loss", "train_seconds"}


def test_runs_have_segformer_compares_keys_and_the_recipes_settings():
    results, experiment = load_results("mask2former_compare"), load_experiment("mask2former_compare")
    segformer = load_results("segformer_compare")
    assert ROW_KEYS <= set(segformer["runs"][0]), "the keys chapter 7 reads"
    settings = results["settings"]
    assert {k: settings[k] for k in experiment.RECIPE} == experiment.RECIPE
    assert settings["crop_size"] == list(experiment.CHAPTER7["crop_size"])
    assert settings["batch_size"] == experiment.CHAPTER7["batch_size"]
    assert sorted(r["seed"] for r in results["runs"]) == [0, 1, 2]
    for r in results["runs"]:
        assert ROW_KEYS <= set(r), r.keys()
        assert r["model"] == "Mask2Former" and r["epochs"] == settings["epochs"] and r["lr"] == settings["lr"]
        assert 0 < r["val_boundary_miou"] < r["val_miou"] < r["val_pixel_acc"] < 1, r
        assert r["train_loss"] < r["first_train_loss"], r
        history = r["history"]
        assert all(len(v) == settings["epochs"] for v in history.values()), history.keys()
        assert history["matching_changed"][0] is None and 0 <= min(history["matching_changed"][1:])


def test_the_learning_rate_is_the_one_the_held_out_rule_picks():
    results = load_results("mask2former_compare")
    check = results["lr_check"]
    assert len({r["lr"] for r in check["rows"]}) >= 3, "at least three rates at the schedule's length"
    assert all(r["epochs"] == results["settings"]["epochs"] for r in check["rows"])
    for r in check["rows"]:
        assert r["held_miou_last3"] == pytest.approx(sum(r["held_miou"][-3:]) / 3, abs=1e-4)
    best = max(check["rows"], key=lambda r: r["held_miou_last3"])
    assert check["chosen"] == best["lr"] == results["settings"]["lr"]
    rates = sorted(r["lr"] for r in check["rows"])
    assert rates[0] < best["lr"] < rates[-1], "the chosen rate is inside the range tried, not at its edge"


def test_the_figure_data_decodes_to_every_querys_mask():
    results = load_results("mask2former_compare")
    figure = next(r for r in results["runs"] if r["seed"] == 0)["figure"]
    masks = zlib.decompress(base64.b64decode(figure["mask_probs_uint8_zlib_b64"]))
    queries = len(figure["class_probs"])
    h, w = figure["mask_size"]
    assert len(masks) == queries * h * w and (h, w) == tuple(-(-s // 4) for s in figure["image_size"])
    assert all(len(p) == 22 and abs(sum(p) - 1) < 1e-2 for p in figure["class_probs"])


@pytest.mark.all_threads  # real training: torch's thread count (the tolerance covers 1, 2, 4)
def test_check_run_reproduces():
    assert_check_reproduces("mask2former_compare", keys=("first_step_loss", "first_train_loss"))
