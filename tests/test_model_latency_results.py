"""The stored latency and memory of chapter 7's models (segbook/results/model_latency.json) are whole and from one run.

Chapter 7 prints every model's latency as a ratio to FCN-32s. A ratio means
something only when both times come from the same run, so one benchmark,
``benchmarks/model_latency.py``, times every model the chapter shows in one
process. These tests check that the stored file holds every one of them, built
with the keywords they were trained with, and that its ratios are those of its
own times; and that the benchmark's loop gives each model its turn in every
round, in a rotated order.
"""
from __future__ import annotations

import pytest

from segbook.results import load_results

from _experiments import load_experiment


def _benchmark():
    from benchmarks import model_latency
    return model_latency


def test_every_model_chapter_7_shows_is_timed_in_the_stored_run():
    stored, benchmark = load_results("model_latency"), _benchmark()
    trained = {**load_experiment("compare_all").MODELS,
               **{label: tuple(spec) for label, spec in load_results("segformer_compare")["models"].items()},
               **{label: tuple(spec) for label, spec in load_results("mask2former_compare")["models"].items()}}
    for label, (name, extra) in trained.items():  # built as they were trained
        assert tuple(benchmark.MODELS[label]) == (name, extra), label
        assert stored["models"][label] == [name, extra], label
    assert set(stored["rows"]) == set(stored["models"]) == set(benchmark.MODELS)
    reference = stored["rows"][stored["settings"]["reference"]]
    assert reference["latency_ratio"] == 1.0
    for label, row in stored["rows"].items():  # each ratio is the one of the stored medians
        assert row["latency_ratio"] == pytest.approx(row["latency_ms"] / reference["latency_ms"], abs=0.005), label
        low, high = row["latency_quartiles_ms"]
        assert 0 < low <= row["latency_ms"] <= high and row["train_step_mb"] > 0, label
    assert stored["settings"]["threads"] == 2 and stored["settings"]["size"] == 256
    assert set(stored["load_average"]) == {"at_start", "before_timing", "after_timing"}


def test_each_round_times_every_model_once_in_a_rotated_order():
    calls = []

    class Named:
        def __init__(self, name):
            self.name = name

        def __call__(self, image):
            calls.append(self.name)

    benchmark = _benchmark()
    labels = ["a", "b", "c"]
    times = benchmark.time_side_by_side({label: Named(label) for label in labels}, image=None, rounds=4, warmup=1)
    assert {label: len(t) for label, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert calls == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
