"""Aligned against textbook upsampling in FCN-32s and FCN-8s, on the quick profile, over seeds.

Chapter 3 trains the aligned models once; this script trains both geometries
(``FCN(aligned=True)``: cell ``i`` on pixel ``32 i``; ``aligned=False``: d2l's
even kernel, cell ``i`` at ``32 i + 15.5``) with the chapter's quick settings
for three seeds, and writes the final validation scores to
``segbook/results/fcn_alignment.json`` (package data), which the chapter loads
with ``segbook.results.load_results``. About
6 minutes on 2 quiet CPU cores.

    python -m experiments.fcn_alignment [--seeds 0 1 2] [--epochs 3]
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
from segbook.models import build_model
from segbook.train import fit

RESULTS = Path(__file__).resolve().parent.parent / "segbook" / "results" / "fcn_alignment.json"  # shipped
QUICK = dict(crop_size=(96, 128), batch_size=8, epochs=3, lr=0.01)  # chapter 3's quick profile


def run(model_name: str, aligned: bool, seed: int, epochs: int) -> dict:
    train_loader, val_loader = load_voc(QUICK["batch_size"], QUICK["crop_size"], source="toy", seed=seed,
                                        verbose=False)
    seed_everything(seed)
    model = build_model(model_name, num_classes=NUM_CLASSES, aligned=aligned)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=QUICK["lr"], device="cpu",
                  num_classes=NUM_CLASSES, seed=seed, live_plot=False, progress=False, log=None)
    last = history[-1]
    return {"model": model_name, "aligned": aligned, "seed": seed, "epochs": epochs,
            "val_miou": round(last["val_miou"], 4), "val_pixel_acc": round(last["val_pixel_acc"], 4),
            "train_loss": round(last["train_loss"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=QUICK["epochs"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        for model_name in ("fcn", "fcn8s"):
            for aligned in (True, False):  # side by side, so machine load hits both alike
                began = time.perf_counter()
                rows.append(run(model_name, aligned, seed, args.epochs))
                print(rows[-1], f"({time.perf_counter() - began:.0f} s)", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": {**QUICK, "epochs": args.epochs, "threads": args.threads},
                                   "torch": torch.__version__, "machine": platform.machine(), "runs": rows},
                                  indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
