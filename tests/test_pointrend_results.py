"""The stored PointRend results (segbook/results/pointrend_*.json) are whole, and the comparison reproduces.

Chapter 6 loads the stored rows instead of training six models. These tests
check that the file holds what the chapter reads, and re-run its cheap
configuration (``check``: PointRend, seed 0, one epoch) with
``experiments/pointrend_compare.py``'s own code, comparing its first epoch's
mean training loss with the stored row, to within the spread stored beside it
(``segbook.results.reproduction_tolerance``; the epoch's scores move between
CPUs about as much as between seeds). Chapter 6 also prints the inference
benchmark's stored figures; the last tests check that the file and the script's
``--output`` hold what it reads.
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


@pytest.mark.all_threads  # real training: torch's thread count (the tolerance covers 1, 2, 4)
def test_check_run_reproduces():
    assert_check_reproduces("pointrend_compare")


# -- the inference benchmark's stored figures (benchmarks/pointrend_inference.py --output) --------------

CONFIG_READ = {"backbone", "channels", "num_classes", "num_points", "rounds", "threads"}
ROW_READ = {"height", "width", "subdivision_ms", "dense_ms", "time_ratio", "subdivision_mib", "dense_mib",
            "memory_ratio", "evals_ratio"}


def _load_benchmark():
    from benchmarks import pointrend_inference

    return pointrend_inference


def test_stored_inference_benchmark_holds_what_chapter_6_reads():
    from segbook.models.pointrend import subdivision_sizes

    stored = load_results("pointrend_inference")
    assert CONFIG_READ <= stored["config"].keys() and stored["config"]["num_points"] == 8192
    cpu = stored["devices"]["cpu"]
    assert cpu["name"] and {(r["height"], r["width"]) for r in cpu["rows"]} == {(512, 1024), (1024, 2048)}
    points = stored["config"]["num_points"]
    for row in cpu["rows"]:
        assert ROW_READ <= row.keys(), row
        h, w = row["height"], row["width"]
        # the counts follow from the sizes: min(N, cells) per subdivision step from the stride-4 map
        steps = subdivision_sizes((h // 4, w // 4), (h, w))
        assert row["evals_subdivision"] == sum(min(points, a * b) for a, b in steps)
        assert row["evals_dense"] == h * w and row["evals_ratio"] == h * w / row["evals_subdivision"]
        # the ratios are those of the stored figures (ratios rounded to 0.01, figures to 0.1)
        assert row["time_ratio"] == pytest.approx(row["dense_ms"] / row["subdivision_ms"], abs=0.01, rel=2e-3)
        assert row["memory_ratio"] == pytest.approx(row["dense_mib"] / row["subdivision_mib"], abs=0.01,
                                                    rel=2e-3)


def test_inference_benchmark_writes_those_fields(tmp_path):
    import json

    out = tmp_path / "bench.json"
    _load_benchmark().main(["--device", "cpu", "--sizes", "64x96", "--rounds", "1", "--num-points", "64",
                            "--channels", "16", "--output", str(out)])
    written = json.loads(out.read_text())
    assert CONFIG_READ <= written["config"].keys() and written["config"]["num_points"] == 64
    (row,) = written["devices"]["cpu"]["rows"]
    assert ROW_READ <= row.keys() and (row["height"], row["width"]) == (64, 96)
    assert row["evals_dense"] == 64 * 96 and row["time_ratio"] > 0 and row["memory_ratio"] > 0
