"""Chapter 4's ablation on the context set (car on a road, boat on water): what the pyramid buys.

The object's pixels and everything within ``margin + ring`` pixels of it are
drawn without knowing the scene (:mod:`segbook.data.context`), so only the far
scene says car or boat. Four models, all ``build_model("pspnet",
backbone="resnet18", output_stride=8, ...)`` with parts taken out (``MODELS``):
no pyramid (a dilated FCN with PSPNet's head), the 1x1 bin only, the paper's
1/2/3/6 pyramid, and that pyramid without the auxiliary loss. Each is trained
from scratch by :func:`segbook.train.fit` with the same optimiser (AdamW, which
gets somewhere in five epochs from scratch), schedule, data and seed. Scores on
the whole validation split: mIoU, car and boat IoU, the car<->boat confusion
(the fraction of object pixels predicted as the *other* of the two classes) and
the label x prediction counts for background, car and boat.

Every invocation appends its rows to ``context_compare_log.jsonl``; ``--from-log
TAG`` writes the results file from every run with that tag, and adds a fresh run
of ``CHECK``, the cheap configuration the tests repeat: to a scratch file by
default, and with ``--write`` to ``segbook/results/context_compare.json``
(package data, which the chapter loads; then run ``check_spread.py
context_compare`` again). About 100 s per run on one quiet core;
two invocations with different seeds can share a two-core machine:

    python -m experiments.context_compare --seeds 0 --tag B & python -m experiments.context_compare --seeds 1 --tag B
    python -m experiments.context_compare --seeds 2 --tag B
    python -m experiments.context_compare --from-log B --write
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from segbook import seed_everything
from segbook.data import VOCSegmentation, eval_transforms, segmentation_loaders, train_transforms
from segbook.data.context import get_context_voc_dir
from segbook.data.voc import VOC_CLASSES
from segbook.metrics import ConfusionMatrix
from segbook.models import build_model
from segbook.train import fit

from experiments.harness import add_output_options, first_batch, output_path, side_by_side, stamp, write_json

RESULTS = Path(__file__).resolve().parent.parent / "segbook" / "results" / "context_compare.json"
LOG = Path(__file__).resolve().parent / "context_compare_log.jsonl"  # every invocation's rows, appended
BOAT, CAR, K = VOC_CLASSES.index("boat"), VOC_CLASSES.index("car"), len(VOC_CLASSES)


def confusion(model, val_set) -> torch.Tensor:
    """(K, K) pixel counts, rows the label, columns the prediction; 255 skipped."""
    model.eval()
    matrix = torch.zeros(K * K, dtype=torch.long)
    with torch.no_grad():
        for i in range(len(val_set)):
            image, label = val_set[i]                             # (3, H, W), (H, W)
            pred = model(image[None])["out"][0].argmax(0)         # (H, W)
            keep = label != 255
            matrix += torch.bincount(label[keep].long() * K + pred[keep], minlength=K * K)
    return matrix.view(K, K)


def scores(matrix: torch.Tensor) -> dict:
    """mIoU over the classes in the label or the prediction (chapter 2's convention), and the pair's scores."""
    m = matrix.double()
    inter, union = m.diag(), m.sum(0) + m.sum(1) - m.diag()
    iou = inter / union.clamp(min=1)
    obj = m[CAR].sum() + m[BOAT].sum()
    swapped = m[CAR, BOAT] + m[BOAT, CAR]
    called = swapped + m[CAR, CAR] + m[BOAT, BOAT]                 # object pixels given car or boat
    return {"val_miou": ConfusionMatrix.from_matrix(matrix).miou,  # the book's mIoU, as fit reports it
            "car_iou": iou[CAR].item(), "boat_iou": iou[BOAT].item(),
            "bg_iou": iou[0].item(), "confusion": (swapped / obj).item(),
            "confusion_of_called": (swapped / called.clamp(min=1)).item(),
            "object_recall": (called / obj).item()}


# The ablation: chapter 4's table. Every model is PSPNet's code with parts taken out.
MODELS = {
    "dilated-fcn": {"pool_sizes": (), "aux": True},            # the same head, no pyramid
    "ppm-1": {"pool_sizes": (1,), "aux": True},                # the global average only
    "pspnet": {"pool_sizes": (1, 2, 3, 6), "aux": True},        # the paper's pyramid and auxiliary loss
    "pspnet-no-aux": {"pool_sizes": (1, 2, 3, 6), "aux": False},
}
CHECK = {"model": "pspnet", "seed": 0, "epochs": 1}  # the cheap run the tests repeat: see check_spread.py
LABELS = (0, CAR, BOAT)  # rows of the stored confusion counts: background, car, boat


def run(settings: dict, name: str, seed: int, epochs: int | None = None, scored: bool = True) -> dict:
    """Train ``MODELS[name]`` on the context set with ``settings`` (the argparse defaults' keys); score it.

    ``scored=False`` validates on one batch and returns the training losses alone.
    """
    size = tuple(settings["size"])
    epochs = epochs or settings["epochs"]
    voc = get_context_voc_dir(settings["data_root"], seed=settings["data_seed"], num_train=settings["num_train"],
                              num_val=settings["num_val"], size=size, margin=settings["margin"],
                              ring=settings["ring"], area_range=tuple(settings["area"]))
    train_set = VOCSegmentation(voc, "train", transforms=train_transforms(size, None))
    val_set = VOCSegmentation(voc, "val", transforms=eval_transforms())
    train_loader, val_loader = segmentation_loaders(train_set, val_set, settings["batch"], num_workers=0, seed=seed)
    val_loader = val_loader if scored else first_batch(val_loader)
    seed_everything(seed)
    model = build_model("pspnet", num_classes=K, backbone="resnet18", output_stride=settings["output_stride"],
                        channels=settings["channels"], pool_norm=settings["pool_norm"], **MODELS[name])
    params = [p for p in model.parameters() if p.requires_grad]
    lr = settings["lr"]
    optimizer = (torch.optim.AdamW(params, lr=lr, weight_decay=1e-4) if settings["opt"] == "adamw"
                 else torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4))
    began = time.perf_counter()
    history = fit(model, train_loader, val_loader, epochs=epochs, optimizer=optimizer, lr=lr,
                  device="cpu", num_classes=K, seed=seed, live_plot=False, progress=False, log=None)
    seconds = time.perf_counter() - began
    if not scored:
        return {"model": name, "seed": seed, "epochs": epochs,
                "first_train_loss": round(history[0]["train_loss"], 4),
                "train_loss": round(history[-1]["train_loss"], 4)}
    matrix = confusion(model, val_set)
    counts = [[int(matrix[i, j]) for j in LABELS] + [int(matrix[i].sum() - matrix[i, list(LABELS)].sum())]
              for i in LABELS]  # (3, 4): label bg/car/boat x prediction bg/car/boat/other
    return {"model": name, "seed": seed, "epochs": epochs,
            **{k: round(v, 4) for k, v in scores(matrix).items()}, "counts": counts,
            "first_train_loss": round(history[0]["train_loss"], 4),
            "train_loss": round(history[-1]["train_loss"], 4), "seconds": round(seconds, 1)}


def run_check(seed: int = CHECK["seed"], scored: bool = True) -> dict:
    """``CHECK`` with the stored settings: the cheap run that tests/test_context_results.py repeats."""
    settings = json.loads(RESULTS.read_text())["settings"]
    return run(settings, CHECK["model"], seed, CHECK["epochs"], scored)


def summary(rows: list[dict]) -> dict:
    """Mean and (population) standard deviation over seeds of every score, per model."""
    out = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        out[name] = {"seeds": [r["seed"] for r in mine]}
        for key in ("val_miou", "car_iou", "boat_iou", "confusion", "confusion_of_called", "seconds"):
            values = torch.tensor([float(r[key]) for r in mine], dtype=torch.float64)
            out[name][key] = [round(values.mean().item(), 4), round(values.std(unbiased=False).item(), 4)]
    return out


def write_from_log(tag: str, path: Path) -> None:
    """Write the results file ``path`` from every logged run tagged ``tag``, plus a fresh run of ``CHECK``."""
    entries = [json.loads(line) for line in LOG.read_text().splitlines() if json.loads(line)["tag"] == tag]
    if not entries:
        raise SystemExit(f"no runs tagged {tag!r} in {LOG}.")
    settings = entries[0]["settings"]
    if any(e["settings"] != settings for e in entries):
        raise SystemExit(f"runs tagged {tag!r} have different settings; give them different tags.")
    order = list(MODELS)
    rows = sorted((r for e in entries for r in e["runs"]), key=lambda r: (r["seed"], order.index(r["model"])))
    torch.set_num_threads(settings["threads"])
    check = run(settings, CHECK["model"], CHECK["seed"], CHECK["epochs"])
    models = {k: {"pool_sizes": list(v["pool_sizes"]), "aux": v["aux"]} for k, v in MODELS.items()}
    write_json(path, {"settings": settings, "models": models, **stamp(), "summary": summary(rows), "runs": rows,
                      "check": check})
    print(json.dumps(summary(rows), indent=1))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--size", type=int, nargs=2, default=[96, 160])
    parser.add_argument("--margin", type=float, default=4.0)
    parser.add_argument("--ring", type=float, default=16.0)
    parser.add_argument("--area", type=float, nargs=2, default=[0.05, 0.10])
    parser.add_argument("--num-train", type=int, default=96)
    parser.add_argument("--num-val", type=int, default=32)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--opt", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--pool-norm", choices=["batch", "group", "none"], default="none")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="")
    parser.add_argument("--from-log", metavar="TAG", help="train nothing: write the results file from the "
                        "logged runs with this tag (seeds may come from several invocations)")
    add_output_options(parser, "context_compare")
    args = parser.parse_args()
    if args.from_log:
        return write_from_log(args.from_log, output_path(args, "context_compare"))
    torch.set_num_threads(args.threads)
    settings = {k: v for k, v in vars(args).items()
                if k not in ("tag", "seeds", "models", "from_log", "output", "write")}
    rows = side_by_side(args.seeds, args.models, lambda name, seed: run(settings, name, seed), tag=args.tag)
    with LOG.open("a") as f:
        f.write(json.dumps({"tag": args.tag, "settings": settings, "runs": rows}) + "\n")


if __name__ == "__main__":
    main()
