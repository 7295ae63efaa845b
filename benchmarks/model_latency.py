"""Every model chapter 7 compares, timed side by side in one process: CPU latency and training-step memory.

A latency ratio means something only when both times come from the same run:
another run finds the machine busier or quieter (FCN-32s took 49 ms in one
run of this book's scripts and 66 ms in another). So every model of ``MODELS``
is built in this one process and timed in turns:

* latency: one forward pass of a 1 x 3 x 256 x 256 image in eval mode, under
  ``torch.inference_mode``, on ``--threads`` CPU threads (default 2). After
  ``--warmup`` passes of each model, ``--rounds`` rounds run every model once,
  the order rotated by one model each round, so a slow spell of a shared
  machine hits all models alike and none always runs first. Reported: the
  median time of each model, its quartiles, and the ratio of its median to
  FCN-32s's (the absolute times belong to the machine);
* memory: what one forward + backward step of a batch of two 256 x 256 crops
  allocates beyond the weights and their gradients (``experiments/harness.py``'s
  ``peak_bytes``), measured before the timing.

The system's load average is recorded when the script starts, before the
timing and after it (the script's own threads count in the last two): run it
when nothing else runs (``uptime`` shows the load; a load near the number of
cores means another job is competing for them), niced like any long job::

    nice -n 5 python -m benchmarks.model_latency                     # prints; writes nothing
    nice -n 5 python -m benchmarks.model_latency --output segbook/results/model_latency.json

Chapter 7 prints its cost columns and its latency figure from the stored copy.
A new model joins by one line in ``MODELS`` (label: registered name and
keywords, as for ``build_model``); the next run times it beside the others.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from experiments.compare_all import MODELS as CHAPTER7  # the seven trained models, with their settings
from experiments.harness import cpu_name, peak_bytes
from experiments.mask2former_compare import MODELS as CHAPTER9
from segbook.data import NUM_CLASSES
from segbook.models import build_model
from segbook.models.base import model_loss

MODELS = {  # label: (registered model, keywords); every ResNet on a ResNet-18 unless the keywords say otherwise
    **CHAPTER7,  # FCN-32s, FCN-8s, dilated FCN, PSPNet, CCNet, DeepLabV3+, DeepLabV3+ & PointRend
    "SegFormer-B0": ("segformer", {"backbone": "mit_b0"}),  # chapter 8
    **CHAPTER9,  # Mask2Former
}
REFERENCE = "FCN-32s"  # every ratio is to this model's median
SIZE = 256


def build(label: str) -> torch.nn.Module:
    name, extra = MODELS[label]
    return build_model(name, num_classes=NUM_CLASSES, **{"backbone": "resnet18", **extra})


def step_memory(model: torch.nn.Module, crops: torch.Tensor, target: torch.Tensor) -> int:
    """Peak bytes one training step allocates beyond the weights and their (already allocated) gradients."""
    loss_fn = model_loss(model)

    def step() -> None:
        model.train().zero_grad(set_to_none=False)
        loss_fn(model(crops), target)[0].backward()

    step()  # allocates the gradients, which then count with the weights
    return peak_bytes(step, torch.device("cpu"))[1]


def time_side_by_side(models: dict[str, torch.nn.Module], image: torch.Tensor, rounds: int,
                      warmup: int) -> dict[str, list[float]]:
    """Seconds of every forward pass, per model: ``rounds`` rounds, each model once a round, the order rotated."""
    labels = list(models)
    times: dict[str, list[float]] = {label: [] for label in labels}
    with torch.inference_mode():
        for _ in range(warmup):
            for label in labels:
                models[label](image)
        for r in range(rounds):
            for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                began = time.perf_counter()
                models[label](image)
                times[label].append(time.perf_counter() - began)
    return times


def summary(times: dict[str, list[float]], memory: dict[str, int]) -> dict[str, dict]:
    """Per model: median and quartiles (ms), the ratio of medians to ``REFERENCE``, and step memory (MiB)."""
    median = {label: statistics.median(t) for label, t in times.items()}
    rows = {}
    for label, t in times.items():
        q1, _, q3 = statistics.quantiles(t, n=4)
        rows[label] = {"latency_ratio": round(median[label] / median[REFERENCE], 3),
                       "latency_ms": round(1e3 * median[label], 1),
                       "latency_quartiles_ms": [round(1e3 * q1, 1), round(1e3 * q3, 1)],
                       "train_step_mb": round(memory[label] / 2**20, 1)}
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=61, help="timed rounds, each model once a round (default 61)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes of each model first (default 3)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help=f"a subset to time (default: all; {REFERENCE} is always included)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()  # before this script's own work shows in it
    torch.set_num_threads(args.threads)
    labels = [REFERENCE] + [label for label in args.models if label != REFERENCE]
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, SIZE, SIZE, generator=g)                           # (1, 3, H, W)
    crops = torch.randn(2, 3, SIZE, SIZE, generator=g)                           # (2, 3, H, W)
    target = torch.randint(0, NUM_CLASSES, (2, SIZE, SIZE), generator=g)         # (2, H, W)
    torch.manual_seed(0)
    models = {label: build(label) for label in labels}
    memory = {label: step_memory(model, crops, target) for label, model in models.items()}
    for model in models.values():
        model.eval()
    load_before, began = os.getloadavg(), time.perf_counter()
    times = time_side_by_side(models, image, args.rounds, args.warmup)
    load_after, seconds = os.getloadavg(), time.perf_counter() - began
    result = {
        "settings": {"size": SIZE, "threads": args.threads, "rounds": args.rounds, "warmup": args.warmup,
                     "reference": REFERENCE, "memory_batch": 2, "mode": "eval, inference_mode, batch 1"},
        "models": {label: list(MODELS[label]) for label in labels},
        "torch": torch.__version__, "machine": platform.machine(), "cpu": cpu_name(),
        "cores": os.cpu_count(), "niceness": os.nice(0),
        "load_average": {name: [round(x, 2) for x in load] for name, load in  # over 1, 5 and 15 minutes
                         (("at_start", load_at_start), ("before_timing", load_before), ("after_timing", load_after))},
        "timing_seconds": round(seconds, 1), "rows": summary(times, memory)}
    print(f"{'model':<24} {'median ms':>9} {'quartiles':>13} {'ratio':>6} {'step MiB':>8}")
    for label, row in result["rows"].items():
        q1, q3 = row["latency_quartiles_ms"]
        print(f"{label:<24} {row['latency_ms']:9.1f} {q1:6.1f}-{q3:<6.1f} {row['latency_ratio']:6.2f} "
              f"{row['train_step_mb']:8.0f}")
    print(f"load average at the start {list(load_at_start)}, after the timing {list(load_after)} (this script's own "
          f"{args.threads} threads count in it); {cpu_name()}, torch {torch.__version__}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
