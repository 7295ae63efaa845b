"""The stored SegFormer runs (segbook/results/segformer_compare.json) are whole and comparable with chapter 7's.

Chapters 7 and 8 set these rows beside ``compare_all.json``'s; that is fair
only if they were trained with the same quick settings, for the same seeds,
each run labelled with its recipe, and if the transformer recipe's learning
rate is the one the sweep (``segformer_sweep.json``) chose on held-out
training images. The attention-cost file (``segformer_cost.json``) must hold
every row that chapter 8 prints. No training here.
"""
from __future__ import annotations

import json
import math

from segbook.results import load_results

from _experiments import load_experiment


def test_rows_match_chapter_7s_settings_and_seeds():
    results, experiment = load_results("segformer_compare"), load_experiment("segformer_compare")
    chapter7 = load_results("compare_all")
    assert results["models"] == {k: [v[0], v[1]] for k, v in experiment.MODELS.items()}
    for key in ("crop_size", "batch_size", "epochs", "threads", "cost_size"):
        assert results["settings"][key] == chapter7["settings"][key], key
    assert results["settings"]["recipes"] == json.loads(json.dumps(experiment.RECIPES))
    assert results["settings"]["recipes"]["cnn"]["lr"] == chapter7["settings"]["lr"]  # chapter 7's own recipe
    assert sorted((r["model"], r["recipe"], r["seed"]) for r in results["runs"]) == [
        ("SegFormer-B0", recipe, seed) for recipe in ("cnn", "transformer") for seed in (0, 1, 2)]
    for r in results["runs"]:
        assert r["epochs"] == experiment.QUICK["epochs"]
        assert 0 < r["val_boundary_miou"] < r["val_miou"] < r["val_pixel_acc"] < 1, r
        assert r["train_loss"] < r["first_train_loss"], r
    assert set(results["costs"]) == {"FCN-32s", "SegFormer-B0"}
    assert results["baselines"] == experiment.baselines()  # recomputed from the toy set's labels
    assert results["costs"]["FCN-32s"]["latency_ratio"] == 1.0


def test_cost_file_holds_every_layer_and_model():
    cost = load_results("segformer_cost")
    rows = {(r["image"], r["stride"], r["method"]) for r in cost["attention"]}
    assert rows == {(image, stride, method) for image in (512, 1024) for stride in (4, 8)
                    for method in ("dense", "criss-cross R=2", "reduced (SegFormer)")}
    models = {(m["model"], m["backbone"]) for m in cost["models"]}
    assert ("SegFormer-B0", "mit_b0") in models and len(models) == 9
    segformer = next(m for m in cost["models"] if m["model"] == "SegFormer-B0")
    assert segformer["params_m"] == 3.72  # 3,719,541 at 21 classes


def test_diagnostics_are_whole_and_within_their_bounds():
    """Entropy lies in (0, log keys]; every weight group of every stage has a relative change."""
    from segbook.models.mit import STAGES
    from segbook.models.mit_diagnostics import MIT_WEIGHT_GROUPS

    groups = {*MIT_WEIGHT_GROUPS, *(f"{g} {s}" for g in MIT_WEIGHT_GROUPS for s in STAGES)}
    for r in load_results("segformer_compare")["runs"]:
        assert set(r["attention_entropy"]) == set(STAGES)
        for stage in r["attention_entropy"].values():
            for when in ("init", "trained"):
                assert 0 < stage[when] <= stage["log_keys"] + 1e-4, (r["recipe"], r["seed"], stage)
        assert set(r["relative_change"]) == groups
        assert all(0 <= v < 100 for v in r["relative_change"].values())


def test_the_transformer_lr_is_the_sweeps_choice():
    """The sweep is whole (every lr for every seed), its summary follows from its runs, and the recipe uses its lr."""
    sweep, experiment = load_results("segformer_sweep"), load_experiment("segformer_sweep")
    settings = sweep["settings"]
    assert len(settings["lrs"]) >= 3 and len(settings["seeds"]) >= 2
    assert sorted((r["lr"], r["seed"]) for r in sweep["runs"]) == sorted(
        (lr, seed) for lr in settings["lrs"] for seed in settings["seeds"])
    assert (sweep["summary"], sweep["chosen_lr"]) == experiment.summary(sweep["runs"])
    assert load_experiment("segformer_compare").TRANSFORMER_LR == sweep["chosen_lr"]
    transformer = load_results("segformer_compare")["settings"]["recipes"]["transformer"]
    assert transformer["lr"] == sweep["chosen_lr"]
    assert settings["recipe"] == {k: v for k, v in transformer.items() if k not in ("lr", "why")}
    assert all(math.isfinite(r["held_out_miou"]) for r in sweep["runs"])
    assert 0 < sweep["background_everywhere_miou"] < max(r["held_out_miou"] for r in sweep["runs"])


def test_the_held_out_images_are_training_images_never_trained_on():
    experiment = load_experiment("segformer_sweep")
    train_loader, held_loader = experiment.held_out_loaders(0)
    trained, held = train_loader.dataset.dataset, held_loader.dataset  # Subsets of the training split
    assert trained.dataset.split == held.dataset.split == "train"
    assert set(trained.indices).isdisjoint(held.indices)
    assert len(held.indices) * 4 == len(trained.indices) + len(held.indices)
