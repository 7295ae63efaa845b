"""Mask2Former's quick model on the toy set: a learning-rate probe scored on held-out training images.

The quick model (``build_model("mask2former", num_classes=21)``: ResNet-18 from
random init, C = 64, 16 queries, 3 decoder and 2 encoder layers) is trained with
:func:`segbook.train.fit` on 160 of the toy set's 200 training images (96 x 128
crops, batch 8, chapter 3's quick schedule) with the paper's recipe scaled down:
AdamW, weight decay 0.05 (none on norms and embeddings), the backbone's learning
rate times ``--backbone-factors``, poly decay, no warm-up. After every epoch
``fit`` scores the 40 held-out training images (whole images, one at a time):
the learning rate is chosen on them, never on val.

Each run prints one JSON line (and appends it to ``--output``, a scratch file by
default): seconds per epoch, the training loss per epoch and per step, the
held-out loss, mIoU and per-class IoU, and how many queries predict anything
on the held-out images (a query "predicts" when a real class beats "no object"
and its mask covers at least one cell).

    python -m experiments.mask2former_probe --lrs 1e-4 3e-4 1e-3 --epochs 3
    python -m experiments.mask2former_probe --lrs 1e-3 --epochs 24 --backbone-factors 1
    python -m experiments.mask2former_probe --baseline --epochs 3     # FCN-8s on the same split, for scale

``mask2former_probe_log.jsonl`` beside this script holds the first probe's rows (seed 0, one thread, timed
on a machine shared with other jobs: its seconds are not the model's cost).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from segbook import seed_everything
from segbook.data import NUM_CLASSES, VOCSegmentation, eval_transforms, get_voc_dir, train_transforms
from segbook.data.loaders import segmentation_loaders
from segbook.train.evaluation import single_images
from segbook.metrics import ConfusionMatrix
from segbook.models import build_model
from segbook.models.mask2former import Mask2Former
from segbook.train import fit

QUICK = dict(crop_size=(96, 128), batch_size=8)
HELD_OUT = 40  # of the toy set's 200 training images


def held_out_loaders(seed: int = 0):
    """Train on 160 training images (random crops), score on the other 40 (whole images); val is never read."""
    voc = get_voc_dir("toy", verbose=False)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(1234)).tolist()  # fixed for every seed
    train = Subset(VOCSegmentation(voc, "train", transforms=train_transforms(QUICK["crop_size"])), order[HELD_OUT:])
    held = Subset(VOCSegmentation(voc, "train", transforms=eval_transforms()), order[:HELD_OUT])
    return segmentation_loaders(train, held, QUICK["batch_size"], seed=seed, num_workers=0)


class StepLosses:
    """The model's loss, remembering every training step's value (steps run with gradients, scoring without)."""

    def __init__(self, model: Mask2Former) -> None:
        self.loss_fn, self.steps = model.loss, []

    def __call__(self, outputs, target):
        total, parts = self.loss_fn(outputs, target)
        if torch.is_grad_enabled():
            self.steps.append(round(total.item(), 4))
        return total, parts


@torch.no_grad()
def query_use(model: Mask2Former, loader) -> dict:
    """On the held-out images: per-class IoU, queries whose best real class beats "no object" and whose mask
    covers a cell, and how many classes the semantic map shows against the label's."""
    model.eval()
    confusion, predicting, shown, true = ConfusionMatrix(NUM_CLASSES), [], [], []
    for batch in loader:
        for image, label in single_images(batch):                                     # (1, 3, H, W), (1, H, W)
            out = model(image)
            probs = out["pred_logits"][0].softmax(-1)                                  # (N, K + 1)
            real = probs[:, :-1].max(-1).values > probs[:, -1]                         # (N,)
            covers = (out["pred_masks"][0].sigmoid() > 0.5).flatten(1).any(-1)        # (N,)
            predicting.append(int((real & covers).sum()))
            pred = out["out"].argmax(1)                                                # (1, H, W)
            confusion.update(pred, label)
            shown.append(len(pred.unique()))
            true.append(len(label[label != 255].unique()))
    return {"queries_predicting_mean": round(statistics.mean(predicting), 2),
            "queries_predicting_max": max(predicting), "classes_shown_mean": round(statistics.mean(shown), 2),
            "classes_true_mean": round(statistics.mean(true), 2),
            "iou_last": [None if v != v else round(v, 3) for v in confusion.iou.tolist()]}


def run(lr: float, backbone_factor: float, epochs: int, seed: int, num_points: int) -> dict:
    train_loader, held_loader = held_out_loaders(seed)
    seed_everything(seed)
    model = build_model("mask2former", num_classes=NUM_CLASSES, loss_settings={"num_points": num_points})
    optimizer = torch.optim.AdamW(model.param_groups(lr, weight_decay=0.05, backbone_lr_factor=backbone_factor))
    loss_fn = StepLosses(model)
    began = time.perf_counter()
    history = fit(model, train_loader, held_loader, epochs=epochs, optimizer=optimizer, lr=lr, device="cpu",
                  num_classes=NUM_CLASSES, seed=seed, loss_fn=loss_fn, live_plot=False, progress=False, log=None)
    seconds = time.perf_counter() - began
    return {"lr": lr, "backbone_factor": backbone_factor, "epochs": epochs, "seed": seed, "num_points": num_points,
            "seconds": round(seconds, 1), "seconds_per_epoch": [round(row["seconds"], 1) for row in history],
            "train_loss": [round(row["train_loss"], 4) for row in history],
            "train_parts_last": {k.removeprefix("train_loss_"): round(v, 4) for k, v in history[-1].items()
                                 if k.startswith("train_loss_")},
            "held_loss": [round(row["val_loss"], 4) for row in history],
            "held_miou": [round(row["val_miou"], 4) for row in history],
            "held_pixel_acc": [round(row["val_pixel_acc"], 4) for row in history],
            "step_losses": loss_fn.steps, **query_use(model, held_loader)}


def baseline(epochs: int, seed: int) -> dict:
    """FCN-8s (ResNet-18) with chapter 7's quick recipe (SGD at 0.01, poly) on the same split, for scale."""
    train_loader, held_loader = held_out_loaders(seed)
    seed_everything(seed)
    model = build_model("fcn8s", num_classes=NUM_CLASSES, backbone="resnet18")
    history = fit(model, train_loader, held_loader, epochs=epochs, lr=0.01, device="cpu", num_classes=NUM_CLASSES,
                  seed=seed, live_plot=False, progress=False, log=None)
    return {"model": "fcn8s", "epochs": epochs, "seed": seed,
            "seconds_per_epoch": [round(row["seconds"], 1) for row in history],
            "held_miou": [round(row["val_miou"], 4) for row in history],
            "held_pixel_acc": [round(row["val_pixel_acc"], 4) for row in history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--backbone-factors", type=float, nargs="+", default=[0.1])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num-points", type=int, default=12544)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path(tempfile.gettempdir()) / "mask2former_probe.jsonl")
    parser.add_argument("--baseline", action="store_true", help="train FCN-8s on the same split instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.baseline:
        for seed in args.seeds:
            print(json.dumps(baseline(args.epochs, seed)), flush=True)
        return
    for seed in args.seeds:
        for factor in args.backbone_factors:
            for lr in args.lrs:
                row = run(lr, factor, args.epochs, seed, args.num_points)
                line = json.dumps({**row, "threads": args.threads, "torch": torch.__version__})
                print(line, flush=True)
                with args.output.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
