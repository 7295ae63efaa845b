"""CCNet against PSPNet and a plain dilated network, on the quick profile, over seeds.

Chapter 5 trains CCNet once; this script trains the three heads on the same
dilated ResNet-18, data and schedule (the chapter's quick settings) for each
seed, and writes the final validation scores as JSON: to a scratch file by
default, and with ``--write`` to ``segbook/results/ccnet_compare.json``
(package data), which the chapter loads with ``segbook.results.load_results``. The "dilated FCN" is PSPNet with no
pyramid (``pool_sizes=()``): the same head convolution and auxiliary head,
without context. It also stores one cheap ``check`` run that
``tests/test_ccnet_results.py`` repeats. A run takes about 30 s on 2 quiet CPU
cores (several minutes when other work shares them).

    python -m experiments.ccnet_compare [--seeds 0 1 2] [--epochs 3] [--threads 2] [--output PATH | --write]

After ``--write``, run ``python -m experiments.check_spread ccnet_compare``: the
test's tolerance comes from the spread that script adds to the file.
"""
from __future__ import annotations

import argparse

import torch

from segbook import seed_everything
from segbook.data import NUM_CLASSES, load_voc
from segbook.models import build_model
from segbook.train import fit

from experiments.harness import add_output_options, first_batch, output_path, side_by_side, stamp, write_json

QUICK = dict(backbone="resnet18", output_stride=16, crop_size=(96, 128), batch_size=8, epochs=3,
             lr=0.01)  # chapter 5's quick profile
MODELS = {  # name in the table: (registered model, extra keywords)
    "dilated FCN": ("pspnet", {"pool_sizes": []}),
    "PSPNet": ("pspnet", {}),
    "CCNet": ("ccnet", {"recurrence": 2}),
}
CHECK = dict(model="CCNet", seed=0, epochs=1)  # the run the test repeats: about 10 s on 2 quiet cores


def run(label: str, seed: int, epochs: int, scored: bool = True) -> dict:
    """Train MODELS[label] with the quick settings and ``seed``; its final scores as a row.

    ``scored=False`` validates on one batch and returns the training losses alone.
    """
    name, extra = MODELS[label]
    train_loader, val_loader = load_voc(QUICK["batch_size"], QUICK["crop_size"], source="toy", seed=seed,
                                        verbose=False)
    val_loader = val_loader if scored else first_batch(val_loader)
    seed_everything(seed)
    model = build_model(name, num_classes=NUM_CLASSES, backbone=QUICK["backbone"],
                        output_stride=QUICK["output_stride"], **extra)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=QUICK["lr"], device="cpu",
                  num_classes=NUM_CLASSES, seed=seed, live_plot=False, progress=False, log=None)
    first, last = history[0], history[-1]
    if not scored:
        return {"model": label, "seed": seed, "epochs": epochs, "train_loss": round(last["train_loss"], 4),
                "first_train_loss": round(first["train_loss"], 4)}
    row = {"model": label, "seed": seed, "epochs": epochs, "val_miou": round(last["val_miou"], 4),
           "val_pixel_acc": round(last["val_pixel_acc"], 4), "train_loss": round(last["train_loss"], 4),
           "first_train_loss": round(first["train_loss"], 4)}
    if name == "ccnet":
        row["gamma"] = round(model.head.cca.gamma.item(), 4)
    return row


def run_check(seed: int = CHECK["seed"], scored: bool = True) -> dict:
    """``CHECK``, the cheap run that tests/test_ccnet_results.py repeats (``check_spread.py``)."""
    return run(CHECK["model"], seed, CHECK["epochs"], scored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=QUICK["epochs"])
    parser.add_argument("--threads", type=int, default=2)
    add_output_options(parser, "ccnet_compare")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = output_path(args, "ccnet_compare")
    settings = {**QUICK, "epochs": args.epochs, "threads": args.threads,
                "crop_size": list(QUICK["crop_size"])}

    def write(rows: list[dict], check: dict | None = None) -> None:  # after every run: a stopped run keeps its rows
        write_json(path, {"settings": settings, "models": MODELS, **stamp(), "runs": rows, "check": check})

    rows = side_by_side(args.seeds, MODELS, lambda label, seed: run(label, seed, args.epochs), done=write)
    check = run_check()
    print("check", check, flush=True)
    write(rows, check)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
