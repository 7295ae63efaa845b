"""SegFormer-B0 on chapter 7's quick schedule, two recipes, three seeds: the rows chapters 7 and 8 add.

The same data, schedule and scoring as ``compare_all.py``: the toy VOC set,
96 x 128 crops, batch 8, three epochs from scratch, two threads, scored on the
whole validation images (mIoU and boundary mIoU); seeds 0, 1 and 2, like the
seven models of chapter 7. Two optimisation recipes (``RECIPES``), each run
labelled with its ``"recipe"``:

* ``"cnn"``: chapter 7's recipe for every model (``fit``'s defaults): SGD with
  momentum 0.9 at 0.01, weight decay 1e-4 on every parameter, poly decay 0.9,
  no warm-up; the model's defaults (stochastic depth 0.1, dropout 0.1);
* ``"transformer"``: what transformers are trained with: AdamW, weight decay
  0.05 on weight matrices and kernels only (``segbook.train.param_groups_weight_decay``), a linear warm-up
  over the first tenth of the steps, then poly decay 1.0 (linear); stochastic
  depth and dropout off for this short run from scratch. Its learning rate is
  the one ``segformer_sweep.py`` chose on held-out training images.

Every run also stores what training did to the encoder
(``segbook.models.mit_diagnostics``): each stage's attention entropy on the
validation images before and after training, beside log(keys), the entropy of
uniform attention; how far the query/key weights, the Mix-FFN depthwise 3 x 3
kernels and the patch embeddings moved, ``||w - w0|| / ||w0||``; and, for the
same groups, ``||g|| / ||w||`` of the first training batch's gradient at
initialisation, the step size SGD's learning rate multiplies.

Beside the runs, ``baselines`` holds what learning nothing scores on the toy
set: background everywhere (mIoU) and the label prior's cross entropy (nats).

Costs as in ``compare_all.py``: CPU latency of a 256 x 256 forward as a ratio
to FCN-32s, measured side by side in this run, and the peak memory of a
training step (``experiments/harness.py``); they do not depend on the recipe.

It writes its JSON after every run (a kill loses one): to a scratch file, or
with ``--write`` to the shipped ``segbook/results/segformer_compare.json`` that
chapters 7 and 8 load, keeping the stored runs it does not redo. Under a
minute a run on two quiet cores.

    python -m experiments.segformer_compare --write [--recipes cnn transformer] [--seeds 0 1 2]
    python -m experiments.segformer_compare --write --costs-only   # re-measure the costs, keep the runs

Measure the costs on a quiet machine: the ratio is taken side by side, but a
loaded machine (other training runs beside it) stretches the two models'
times unevenly.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
from experiments.harness import SHIPPED, add_output_options, output_path, stamp, write_json
from experiments.compare_all import COST_SIZE, QUICK, FirstStepLoss, costs  # chapter 7's schedule and costs
from experiments.compare_all import MODELS as CHAPTER7_MODELS
from experiments.pointrend_compare import score  # mIoU and boundary mIoU over whole images

from segbook import seed_everything
from segbook.data import NUM_CLASSES, VOCSegmentation, get_voc_dir, load_voc
from segbook.models.base import model_loss
from segbook.metrics import ConfusionMatrix
from segbook.models import build_model
from segbook.models.mit import STAGES
from segbook.models.mit_diagnostics import MIT_WEIGHT_GROUPS, attention_entropy, relative_change
from segbook.train import fit, param_groups_weight_decay

NAME = "segformer_compare"
MODELS = {"SegFormer-B0": ("segformer", {"backbone": "mit_b0"})}
TRANSFORMER_LR = 3e-4  # chosen by experiments/segformer_sweep.py (segformer_sweep.json's "chosen_lr")
RECIPES = {
    "cnn": dict(optimizer="SGD", lr=QUICK["lr"], momentum=0.9, weight_decay=1e-4, decay_on="every parameter",
                poly_power=0.9, warmup_fraction=0.0, drop_path_rate=0.1, dropout=0.1,
                why="chapter 7's recipe for every model (fit's defaults), lr 0.01 chosen for the CNNs"),
    "transformer": dict(optimizer="AdamW", lr=TRANSFORMER_LR, betas=[0.9, 0.999], weight_decay=0.05,
                        decay_on="weight matrices and kernels only (segbook.train.param_groups_weight_decay)",
                        poly_power=1.0, warmup_fraction=0.1, drop_path_rate=0.0, dropout=0.0,
                        why="a transformer's recipe; lr chosen on held-out training images by "
                            "experiments/segformer_sweep.py"),
}


def warmup_steps(recipe: dict, total_steps: int) -> int:
    """The recipe's warm-up in optimiser steps: its fraction of the run, rounded."""
    return round(recipe["warmup_fraction"] * total_steps)


def make_optimizer(model: torch.nn.Module, recipe: dict) -> torch.optim.Optimizer | None:
    """AdamW on two parameter groups for the transformer recipe; None lets ``fit`` build its SGD."""
    if recipe["optimizer"] == "SGD":
        return None
    return torch.optim.AdamW(param_groups_weight_decay(model, recipe["weight_decay"]), lr=recipe["lr"],
                             betas=tuple(recipe["betas"]))


def train(recipe: dict, seed: int, train_loader, val_loader, label: str = "SegFormer-B0") -> tuple:
    """(model, history, first step's loss, the start, seconds): one run of ``recipe`` from ``seed``.

    The start holds the initial ``weights`` and each weight group's ``gradients`` on the first batch.
    """
    name, extra = MODELS[label]
    seed_everything(seed)
    model = build_model(name, num_classes=NUM_CLASSES, drop_path_rate=recipe["drop_path_rate"],
                        dropout=recipe["dropout"], **extra)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    gradients = relative_gradients(model, train_loader)  # fit rewinds the loader and reseeds before training
    loss_fn = FirstStepLoss(model)
    steps = QUICK["epochs"] * len(train_loader)
    began = time.perf_counter()
    history = fit(model, train_loader, val_loader, epochs=QUICK["epochs"], optimizer=make_optimizer(model, recipe),
                  lr=recipe["lr"], poly_power=recipe["poly_power"], warmup_steps=warmup_steps(recipe, steps),
                  device="cpu", num_classes=NUM_CLASSES, seed=seed, live_plot=False, progress=False, log=None,
                  loss_fn=loss_fn)
    return model, history, loss_fn.value, {"weights": initial, "gradients": gradients}, time.perf_counter() - began


def relative_gradients(model: torch.nn.Module, train_loader) -> dict:
    """``||g|| / ||w||`` of each weight group for the first training batch, on a copy (BatchNorm's buffers stay)."""
    probe = copy.deepcopy(model).train()
    images, masks = next(iter(train_loader))                                  # (B, 3, H, W), (B, H, W)
    loss = model_loss(probe)(probe(images), masks)
    (loss[0] if isinstance(loss, tuple) else loss).backward()
    ratios = {}
    for label, pattern in MIT_WEIGHT_GROUPS.items():
        params = [p for n, p in probe.named_parameters() if re.search(pattern, n)]
        grad = sum(p.grad.pow(2).sum() for p in params).sqrt()
        ratios[label] = float(f"{(grad / sum(p.detach().pow(2).sum() for p in params).sqrt()).item():.3g}")
    return ratios


def diagnostics(model: torch.nn.Module, initial: dict, images: list[torch.Tensor]) -> dict:
    """Attention entropy per stage (before and after) and each weight group's relative change, rounded."""
    trained = attention_entropy(model.backbone, images)
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():  # the same encoder with its initial weights, for the entropy before training
        for n, p in model.named_parameters():
            p.copy_(initial[n])
        before = attention_entropy(model.backbone, images)
        for n, p in model.named_parameters():
            p.copy_(state[n])
    groups = {f"{label} {stage}": rf"^backbone\.stages\.{i}(\..*)?{pattern}"  # the group within one stage
              for label, pattern in MIT_WEIGHT_GROUPS.items() for i, stage in enumerate(STAGES)}
    change = {**relative_change(model, initial, MIT_WEIGHT_GROUPS), **relative_change(model, initial, groups)}
    entropy = {s: {"init": round(before[s]["entropy"], 4), "trained": round(trained[s]["entropy"], 4),
                   "log_keys": round(trained[s]["log_keys"], 4)} for s in STAGES}
    return {"attention_entropy": entropy,
            "relative_change": {k: round(v, 4) for k, v in change.items()}}


def baselines() -> dict:
    """What learning nothing scores on the toy set: background everywhere, and the label prior's cross entropy.

    The label prior predicts the training split's class frequencies at every
    pixel, the best a model that ignores the image can do; its cross entropy
    (nats) is the floor a loss reaches without any input-dependent signal.
    """
    voc = get_voc_dir("toy", verbose=False)
    lazy, pixels = ConfusionMatrix(NUM_CLASSES), {}
    for split in ("train", "val"):
        pixels[split] = torch.zeros(NUM_CLASSES)                              # (K,)
        for _, label in VOCSegmentation(voc, split):                          # (3, H, W), (H, W)
            pixels[split] += torch.bincount(label[label != 255], minlength=NUM_CLASSES)
            if split == "val":
                lazy.update(torch.zeros_like(label), label)
    prior = pixels["train"] / pixels["train"].sum()                           # (K,)
    return {"background_everywhere_miou": round(lazy.miou, 4),
            "label_prior_nats": {split: round(-(c / c.sum() * prior.clamp_min(1e-12).log()).sum().item(), 4)
                                 for split, c in pixels.items()}}


def run(recipe_name: str, seed: int) -> dict:
    """Train SegFormer-B0 with ``RECIPES[recipe_name]`` and ``seed``; its scores and diagnostics as a row."""
    train_loader, val_loader = load_voc(QUICK["batch_size"], QUICK["crop_size"], source="toy", seed=seed,
                                        verbose=False)
    model, history, first_step, start, seconds = train(RECIPES[recipe_name], seed, train_loader, val_loader)
    images = [val_loader.dataset[i][0] for i in range(len(val_loader.dataset))]  # (3, H, W) each, normalised
    return {"model": "SegFormer-B0", "recipe": recipe_name, "seed": seed, "epochs": QUICK["epochs"],
            **score(model, val_loader.dataset), "val_pixel_acc": round(history[-1]["val_pixel_acc"], 4),
            "first_step_loss": round(first_step, 4), "first_train_loss": round(history[0]["train_loss"], 4),
            "train_loss": round(history[-1]["train_loss"], 4), "train_seconds": round(seconds, 1),
            "relative_gradient_at_init": start["gradients"], **diagnostics(model, start["weights"], images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--costs-only", action="store_true",
                        help="re-measure latency and memory only; keep the stored runs and settings")
    add_output_options(parser, NAME)
    args = parser.parse_args()
    path = output_path(args, NAME)
    torch.set_num_threads(args.threads)
    stored = json.loads((SHIPPED / f"{NAME}.json").read_text())
    if stored["settings"]["threads"] != args.threads:
        raise SystemExit(f"the stored runs used {stored['settings']['threads']} threads; pass --threads to match")
    if args.costs_only:
        stored["settings"]["repeats"] = args.repeats
        stored.update(stamp())
        stored["costs"] = costs(args.repeats, {"FCN-32s": CHAPTER7_MODELS["FCN-32s"], **MODELS})
        print(json.dumps(stored["costs"], indent=1))
        write_json(path, stored)
        print(f"wrote {path}")
        return
    stored["settings"] = {**{k: v for k, v in QUICK.items() if k != "lr"}, "threads": args.threads,
                          "cost_size": COST_SIZE, "repeats": stored["settings"]["repeats"], "recipes": RECIPES}
    stored["models"] = {label: [name, extra] for label, (name, extra) in MODELS.items()}
    stored["baselines"] = baselines()
    for recipe in args.recipes:
        for seed in args.seeds:
            began = time.perf_counter()
            row = run(recipe, seed)
            print(json.dumps(row), f"({time.perf_counter() - began:.0f} s)", flush=True)
            kept = [r for r in stored["runs"] if (r.get("recipe", "cnn"), r["seed"]) != (recipe, seed)]
            # chapter 7's recipe last: a reader of the file who keys rows by (model, seed) alone, as
            # chapter 7 did before the recipes were labelled, still gets the runs of chapter 7's recipe
            stored["runs"] = sorted(kept + [row], key=lambda r: (r.get("recipe", "cnn") == "cnn", r["seed"]))
            stored.update(stamp())
            write_json(path, stored)  # after every run: a kill loses one
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
