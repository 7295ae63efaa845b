"""SegFormer-B0's learning rate under the transformer recipe, chosen on held-out training images (never on val).

The recipe is ``segformer_compare.py``'s ``"transformer"`` (AdamW, weight
decay 0.05 off norms and biases, a linear warm-up over the first tenth of the
steps, then linear decay; no stochastic depth, no dropout) with chapter 7's
quick schedule (96 x 128 crops, batch 8, three epochs, two threads). Only the
learning rate varies. A deterministic quarter of the toy training split is
held out (every fourth image in the split file's order: 50 of 200); each run
trains on the other 150 and is scored, whole images, on those 50. The
validation split is never read. The CNN baselines' learning rate (SGD at 0.01)
was chosen long ago and is not re-tuned here: the sweep gives SegFormer its
own recipe, nothing more.

The learning rate with the highest mean held-out mIoU over the seeds is
``chosen_lr``; ``segformer_compare.py``'s ``TRANSFORMER_LR`` must equal it
(``tests/test_segformer_results.py`` checks). It writes its JSON after every run,
to a scratch file or with ``--write`` to the shipped
``segbook/results/segformer_sweep.json``. Under a minute a run on two quiet cores.

    python -m experiments.segformer_sweep --write [--lrs 1e-4 3e-4 1e-3 2e-3] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

HERE = Path(__file__).resolve().parent
from experiments.harness import add_output_options, output_path, stamp, write_json
from experiments.pointrend_compare import score  # mIoU and boundary mIoU over whole images
from experiments.segformer_compare import QUICK, RECIPES, train, warmup_steps

from segbook.data import NUM_CLASSES, VOCSegmentation, eval_transforms, get_voc_dir, train_transforms
from segbook.data.loaders import segmentation_loaders
from segbook.metrics import ConfusionMatrix

NAME = "segformer_sweep"
HOLD_OUT_EVERY = 4  # images 3, 7, 11, ... of the training split are scored, the rest trained on


def held_out_loaders(seed: int) -> tuple:
    """Loaders over three quarters of the toy training split (training crops) and the held-out quarter (whole)."""
    voc = get_voc_dir("toy", verbose=False)
    crops = VOCSegmentation(voc, "train", transforms=train_transforms(QUICK["crop_size"]))
    whole = VOCSegmentation(voc, "train", transforms=eval_transforms())
    held = [i for i in range(len(whole)) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
    kept = [i for i in range(len(whole)) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1]
    return segmentation_loaders(Subset(crops, kept), Subset(whole, held), QUICK["batch_size"], seed=seed)


def background_everywhere(held_set) -> float:
    """The held-out mIoU of a model that answers "background" everywhere: the score of learning nothing."""
    meter = ConfusionMatrix(NUM_CLASSES)
    for i in range(len(held_set)):
        label = held_set[i][1]                                             # (H, W)
        meter.update(torch.zeros_like(label), label)
    return round(meter.miou, 4)


def run(lr: float, seed: int) -> dict:
    """One run of the transformer recipe at ``lr``: its held-out scores and training losses."""
    train_loader, held_loader = held_out_loaders(seed)
    recipe = {**RECIPES["transformer"], "lr": lr}
    model, history, first_step, _, seconds = train(recipe, seed, train_loader, held_loader)
    scores = score(model, held_loader.dataset)
    return {"lr": lr, "seed": seed, "held_out_miou": scores["val_miou"],
            "held_out_boundary_miou": scores["val_boundary_miou"],
            "held_out_pixel_acc": round(history[-1]["val_pixel_acc"], 4),
            "first_step_loss": round(first_step, 4), "first_train_loss": round(history[0]["train_loss"], 4),
            "train_loss": round(history[-1]["train_loss"], 4), "train_seconds": round(seconds, 1)}


def summary(runs: list[dict]) -> tuple[dict, float]:
    """Mean, min and max held-out mIoU per learning rate, and the learning rate with the highest mean."""
    lrs = sorted({r["lr"] for r in runs})
    table = {}
    for lr in lrs:
        values = [r["held_out_miou"] for r in runs if r["lr"] == lr]
        table[repr(lr)] = {"mean": round(statistics.fmean(values), 4), "min": min(values), "max": max(values),
                           "seeds": len(values)}
    return table, max(lrs, key=lambda lr: table[repr(lr)]["mean"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 2e-3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    add_output_options(parser, NAME)
    args = parser.parse_args()
    path = output_path(args, NAME)
    torch.set_num_threads(args.threads)
    train_loader, held_loader = held_out_loaders(0)
    steps = QUICK["epochs"] * len(train_loader)
    settings = {**{k: v for k, v in QUICK.items() if k != "lr"}, "threads": args.threads,
                "recipe": {k: v for k, v in RECIPES["transformer"].items() if k not in ("lr", "why")},
                "steps": steps, "warmup_steps": warmup_steps(RECIPES["transformer"], steps),
                "held_out": f"every {HOLD_OUT_EVERY}th image of the toy training split (index % {HOLD_OUT_EVERY} "
                            f"== {HOLD_OUT_EVERY - 1}): {len(held_loader.dataset)} scored (whole images), "
                            f"{len(train_loader.dataset)} trained on; val is never read",
                "lrs": args.lrs, "seeds": args.seeds, "scored_by": "mean held-out mIoU over the seeds"}
    stored = {"settings": settings, **stamp(), "background_everywhere_miou": background_everywhere(held_loader.dataset),
              "runs": []}
    for seed in args.seeds:
        for lr in args.lrs:  # every lr in turn for a seed: a slow spell of a shared machine hits all alike
            began = time.perf_counter()
            stored["runs"].append(run(lr, seed))
            print(json.dumps(stored["runs"][-1]), f"({time.perf_counter() - began:.0f} s)", flush=True)
            stored["summary"], stored["chosen_lr"] = summary(stored["runs"])
            write_json(path, stored)  # after every run: a kill loses one
    print(json.dumps(stored["summary"], indent=1), "\nchosen lr:", stored["chosen_lr"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
