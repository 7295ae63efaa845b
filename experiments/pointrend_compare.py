"""DeepLabV3+ against DeepLabV3+ with PointRend, on the quick profile, over seeds.

Chapter 6 trains PointRend once; this script trains both models with the
chapter's quick settings (ResNet-18 at output stride 16, 64-channel decoder and
point head, 96 x 128 crops, batch 8, 3 epochs, from scratch on the toy set) for
three seeds, and scores each on the whole validation set: mIoU, and boundary
IoU (``segbook.metrics.BoundaryIoU``, band 2% of the image diagonal). For
PointRend it also scores the coarse head alone (its stride-4 logits upsampled
bilinearly, the same weights without the point head). The rows go to
``segbook/results/pointrend_compare.json`` (package data), which the chapter
loads with ``segbook.results.load_results``; ``check`` holds one cheaper run
(PointRend, seed 0, 2 epochs) that ``tests/test_pointrend_results.py`` re-runs.
One thread by default, as the tests; about 10 minutes on 2 quiet CPU cores.

    python -m experiments.pointrend_compare [--seeds 0 1 2] [--epochs 3]
    python -m experiments.pointrend_compare --check-only   # redo only the check row
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from segbook import seed_everything
from segbook.data import NUM_CLASSES, load_voc
from segbook.metrics import BoundaryIoU, ConfusionMatrix
from segbook.models.base import resize_to
from segbook.models.deeplab import DeepLabV3Plus
from segbook.models.pointrend import PointRend, point_loss
from segbook.train import fit

from experiments.harness import first_batch

RESULTS = Path(__file__).resolve().parent.parent / "segbook" / "results" / "pointrend_compare.json"
QUICK = dict(crop_size=(96, 128), batch_size=8, epochs=3, lr=0.01)  # chapter 6's quick profile
MODEL = dict(backbone="resnet18", output_stride=16, aspp_channels=64, decoder_channels=64)
POINTS = dict(point_channels=64, num_points=256, subdivision_num_points=1024)
CHECK = dict(model="pointrend", seed=0, epochs=1)  # the run the tests repeat: one epoch, see check_spread.py


def build(name: str) -> torch.nn.Module:
    if name == "deeplabv3plus":
        return DeepLabV3Plus(NUM_CLASSES, **MODEL)
    return PointRend(NUM_CLASSES, **MODEL, **POINTS)


@torch.no_grad()
def score(model: torch.nn.Module, val_set) -> dict:
    """mIoU and boundary mIoU over whole validation images (PointRend: refined and coarse alone)."""
    model.eval()
    meters = {kind: (ConfusionMatrix(NUM_CLASSES), BoundaryIoU(NUM_CLASSES)) for kind in ("out", "coarse")}
    for i in range(len(val_set)):
        image, label = val_set[i]                                              # (3, H, W), (H, W)
        if isinstance(model, PointRend):
            outputs = model(image[None], return_steps=True)
            preds = {"out": outputs["out"], "coarse": resize_to(outputs["coarse"], label.shape)}
        else:
            preds = {"out": model(image[None])["out"]}                         # (1, K, H, W)
        for kind, logits in preds.items():
            for meter in meters[kind]:
                meter.update(logits[0].argmax(0), label)
    row = {"val_miou": meters["out"][0].miou, "val_boundary_miou": meters["out"][1].miou}
    if isinstance(model, PointRend):
        row.update(coarse_miou=meters["coarse"][0].miou, coarse_boundary_miou=meters["coarse"][1].miou)
    return {key: round(value, 4) for key, value in row.items()}


def run(name: str, seed: int, epochs: int, scored: bool = True) -> dict:
    """Train ``name`` with the quick settings and ``seed``; its scores as a row.

    ``scored=False`` validates on one batch and returns the training losses alone.
    """
    train_loader, val_loader = load_voc(QUICK["batch_size"], QUICK["crop_size"], source="toy", seed=seed,
                                        verbose=False)
    val_loader = val_loader if scored else first_batch(val_loader)
    seed_everything(seed)
    model = build(name)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=QUICK["lr"], device="cpu",
                  num_classes=NUM_CLASSES, seed=seed, live_plot=False, progress=False, log=None,
                  loss_fn=point_loss if name == "pointrend" else None)
    scores = score(model, val_loader.dataset) if scored else {}
    assert not scored or abs(history[-1]["val_miou"] - scores["val_miou"]) < 1e-4  # fit's own validation
    return {"model": name, "seed": seed, "epochs": epochs, **scores,
            "first_train_loss": round(history[0]["train_loss"], 4),
            "train_loss": round(history[-1]["train_loss"], 4)}


def run_check(seed: int = CHECK["seed"], scored: bool = True) -> dict:
    """``CHECK``, the cheap run that tests/test_pointrend_results.py repeats (``check_spread.py``)."""
    return run(CHECK["model"], seed, CHECK["epochs"], scored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=QUICK["epochs"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check-only", action="store_true", help="recompute only the check row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    check = run(CHECK["model"], CHECK["seed"], CHECK["epochs"])  # tests/test_pointrend_results.py
    print("check", check, flush=True)
    if args.check_only:
        stored = json.loads(RESULTS.read_text())
        if stored["settings"]["threads"] != args.threads:
            raise SystemExit(f"the stored runs used {stored['settings']['threads']} threads; pass --threads.")
        stored["check"] = check
        RESULTS.write_text(json.dumps(stored, indent=1) + "\n")
        print(f"updated the check row of {RESULTS}")
        return
    rows = []
    for seed in args.seeds:
        for name in ("deeplabv3plus", "pointrend"):  # side by side, so machine load hits both alike
            began = time.perf_counter()
            rows.append(run(name, seed, args.epochs))
            print(rows[-1], f"({time.perf_counter() - began:.0f} s)", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": {**QUICK, "epochs": args.epochs, "threads": args.threads,
                                                **MODEL, **POINTS},
                                   "torch": torch.__version__, "machine": platform.machine(),
                                   "runs": rows, "check": check}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
