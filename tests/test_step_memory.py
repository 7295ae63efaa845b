"""segbook.step_memory against a count by hand, and the fit arithmetic."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbook.step_memory import gpu_memory_line, largest_batch, step_memory


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 5, 1))


def test_step_memory_matches_a_count_by_hand():
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 5, (2, 8, 8))
    counts = step_memory(tiny(), x, y, lambda out, t: F.cross_entropy(out, t), optimizer_slots=2)
    params = (4 * 3 * 3 * 3 + 5 * 4 + 5) * 4  # conv1 weight, conv2 weight and bias, float32
    saved = (2 * 3 * 8 * 8 * 4      # conv1 saves its input
             + 2 * 4 * 8 * 8 * 4    # ReLU's output, saved by ReLU and by conv2: once
             + 2 * 5 * 8 * 8 * 4    # log_softmax saves its output
             + 2 * 8 * 8 * 8        # nll_loss saves the int64 target ...
             + 4)                   # ... and its total weight, a float32 scalar
    assert counts == {"params": params, "grads": params, "optimizer": 2 * params, "saved": saved,
                      "total": 4 * params + saved}


def test_saved_activations_grow_with_the_batch_and_shrink_under_autocast():
    loss = lambda out, t: F.cross_entropy(out.float(), t)  # noqa: E731
    one, two = (step_memory(tiny(), torch.randn(b, 3, 16, 16), torch.randint(0, 5, (b, 16, 16)), loss)["saved"]
                for b in (1, 2))
    assert two == pytest.approx(2 * one, rel=0.01)  # all but a scalar is per image
    half = step_memory(tiny(), torch.randn(2, 3, 16, 16), torch.randint(0, 5, (2, 16, 16)), loss,
                       amp_dtype=torch.bfloat16)["saved"]
    assert half < 0.8 * two


def test_frozen_parameters_have_no_gradient_or_optimiser_state():
    model = tiny()
    model[0].weight.requires_grad_(False)
    counts = step_memory(model, torch.randn(1, 3, 8, 8), torch.randint(0, 5, (1, 8, 8)),
                         lambda out, t: F.cross_entropy(out, t))
    assert counts["grads"] == counts["optimizer"] == (5 * 4 + 5) * 4


def test_largest_batch():
    gib = 2**30
    assert largest_batch(1 * gib, gib, card_gib=15, overhead_gib=1.5) == 12  # 1 + 12 <= 13.5
    assert largest_batch(20 * gib, gib, card_gib=15) == 0


def test_gpu_memory_line_names_what_fits_and_the_batch_for_the_rest():
    entry = {"settings": {"crop_size": [473, 473], "batch_size": 8}, "step_gib": 4.5,
             "largest_batch": {"a 4 GB card": 3, "an 8 GB card": 12, "a 15 GB T4 (Colab)": 26}}
    line = " ".join(gpu_memory_line(entry).split())
    assert "batch 8 of 473 x 473 crops" in line and "about 4.5 GiB" in line
    assert line.startswith("full profile, estimated from a CPU tally (no GPU has run it):")  # never a measured fact
    assert line.endswith("it fits an 8 GB card and a 15 GB T4 (Colab); on a 4 GB card use batch 3.")
    assert max(len(row) for row in gpu_memory_line(entry).splitlines()) <= 88


def test_the_stored_figures_are_consistent():
    from segbook.results import load_results

    stored = load_results("full_memory")
    for name, entry in stored["chapters"].items():
        fixed, per_image = entry["fixed_bytes"], entry["per_image_bytes"]
        assert abs(fixed + per_image * entry["settings"]["batch_size"] - entry["step_gib"] * 2**30) < 0.05 * 2**30
        for card, largest in entry["largest_batch"].items():
            room = (stored["cards_gib"][card] - stored["overhead_gib"]) * 2**30 - fixed
            assert largest == max(0, int(room // per_image)), (name, card)


def test_every_chapter_that_trains_states_its_memory():
    """A chapter that calls ``fit`` prints its full step's memory, from an entry the benchmark writes."""
    import json
    import re
    from pathlib import Path

    from segbook.results import load_results

    root = Path(__file__).resolve().parent.parent
    trains, states = set(), set()
    for path in sorted((root / "chapters").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                         if c["cell_type"] == "code")
        if re.search(r"\bfit\(", code):
            trains.add(path.stem)
        if "gpu_memory_line(" in code:
            states.add(path.stem)
    benchmark = (root / "benchmarks" / "full_memory.py").read_text()
    assert trains and trains == states, (trains, states)
    assert trains == set(load_results("full_memory")["chapters"])
    assert all(f'"{name}"' in benchmark for name in trains)
