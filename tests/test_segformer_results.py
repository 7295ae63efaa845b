"""The stored SegFormer runs (segbook/results/segformer_compare.json) are whole and comparable with chapter 7's.

Chapters 7 and 8 set these rows beside ``compare_all.json``'s; that is fair
only if they were trained with the same quick settings, for the same seeds.
The attention-cost file (``segformer_cost.json``) must hold every row that
chapter 8 prints. No training here.
"""
from __future__ import annotations

from segbook.results import load_results

from _experiments import load_experiment


def test_rows_match_chapter_7s_settings_and_seeds():
    results, experiment = load_results("segformer_compare"), load_experiment("segformer_compare")
    chapter7 = load_results("compare_all")
    assert results["models"] == {k: [v[0], v[1]] for k, v in experiment.MODELS.items()}
    for key in ("crop_size", "batch_size", "epochs", "lr", "threads", "cost_size"):
        assert results["settings"][key] == chapter7["settings"][key], key
    assert sorted((r["model"], r["seed"]) for r in results["runs"]) == [
        ("SegFormer-B0", seed) for seed in (0, 1, 2)]
    for r in results["runs"]:
        assert r["epochs"] == experiment.QUICK["epochs"]
        assert 0 < r["val_boundary_miou"] < r["val_miou"] < r["val_pixel_acc"] < 1, r
        assert r["train_loss"] < r["first_train_loss"], r
    assert set(results["costs"]) == {"FCN-32s", "SegFormer-B0"}
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
