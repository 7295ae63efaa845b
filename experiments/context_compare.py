"""PSPNet against the same network without its pyramid on the context set (car on a road, boat on water).

Chapter 4's claim, measured on a CPU: the object's pixels and everything within
``margin + ring`` pixels of it are drawn without knowing the scene
(:mod:`segbook.data.context`), so only the far scene says car or boat. Both
models are ``build_model("pspnet", backbone="resnet18", output_stride=8, ...)``,
one with ``pool_sizes=(1, 2, 3, 6)`` and one with ``pool_sizes=()`` (a plain
dilated head), trained from scratch by :func:`segbook.train.fit` with the same
optimiser, schedule, data and seed. Scores on the whole validation split: mIoU,
car IoU, boat IoU and the car<->boat confusion, the fraction of object pixels
(car or boat in the label) predicted as the *other* of the two classes.

    python experiments/context_compare.py [--seeds 0 1 2] [--write]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from segbook import seed_everything
from segbook.data import VOCSegmentation, eval_transforms, segmentation_loaders, train_transforms
from segbook.data.context import get_context_voc_dir
from segbook.data.voc import VOC_CLASSES
from segbook.models import build_model
from segbook.train import fit

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
    m = matrix.double()
    inter, union = m.diag(), m.sum(0) + m.sum(1) - m.diag()
    present = m.sum(1) > 0
    iou = inter / union.clamp(min=1)
    obj = m[CAR].sum() + m[BOAT].sum()
    swapped = m[CAR, BOAT] + m[BOAT, CAR]
    called = swapped + m[CAR, CAR] + m[BOAT, BOAT]                 # object pixels given car or boat
    return {"val_miou": iou[present].mean().item(), "car_iou": iou[CAR].item(), "boat_iou": iou[BOAT].item(),
            "bg_iou": iou[0].item(), "confusion": (swapped / obj).item(),
            "confusion_of_called": (swapped / called.clamp(min=1)).item(),
            "object_recall": (called / obj).item()}


def run(args, name: str, seed: int) -> dict:
    size = tuple(args.size)
    voc = get_context_voc_dir(args.data_root, seed=args.data_seed, num_train=args.num_train, num_val=args.num_val,
                              size=size, margin=args.margin, ring=args.ring, area_range=tuple(args.area))
    train_set = VOCSegmentation(voc, "train", transforms=train_transforms(size, None))
    val_set = VOCSegmentation(voc, "val", transforms=eval_transforms())
    train_loader, val_loader = segmentation_loaders(train_set, val_set, args.batch, num_workers=0, seed=seed)
    seed_everything(seed)
    pool_sizes = (1, 2, 3, 6) if name == "pspnet" else ()
    model = build_model("pspnet", num_classes=K, backbone="resnet18", output_stride=args.output_stride,
                        pool_sizes=pool_sizes, channels=args.channels, pool_norm=args.pool_norm)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4) if args.opt == "adamw"
                 else torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4))
    began = time.perf_counter()
    history = fit(model, train_loader, val_loader, epochs=args.epochs, optimizer=optimizer, lr=args.lr,
                  device="cpu", num_classes=K, seed=seed, live_plot=False, progress=False, log=None)
    seconds = time.perf_counter() - began
    row = {"model": name, "seed": seed, **{k: round(v, 4) for k, v in scores(confusion(model, val_set)).items()},
           "train_loss": round(history[-1]["train_loss"], 4), "seconds": round(seconds, 1)}
    return row


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


def write_from_log(tag: str) -> None:
    entries = [json.loads(line) for line in LOG.read_text().splitlines() if json.loads(line)["tag"] == tag]
    settings = entries[0]["settings"]
    if any(e["settings"] != settings for e in entries):
        raise SystemExit(f"runs tagged {tag!r} have different settings; give them different tags.")
    rows = sorted((r for e in entries for r in e["runs"]), key=lambda r: (r["seed"], r["model"]))
    RESULTS.write_text(json.dumps({"settings": settings, "torch": torch.__version__, "machine": platform.machine(),
                                   "summary": summary(rows), "runs": rows}, indent=1) + "\n")
    print(json.dumps(summary(rows), indent=1))
    print(f"wrote {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["baseline", "pspnet"])
    parser.add_argument("--size", type=int, nargs=2, default=[96, 160])
    parser.add_argument("--margin", type=float, default=3.0)
    parser.add_argument("--ring", type=float, default=8.0)
    parser.add_argument("--area", type=float, nargs=2, default=[0.04, 0.10])
    parser.add_argument("--num-train", type=int, default=96)
    parser.add_argument("--num-val", type=int, default=32)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--opt", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--pool-norm", choices=["batch", "group", "none"], default="none")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="")
    parser.add_argument("--write", action="store_true", help=f"write the rows to {RESULTS.name}")
    parser.add_argument("--from-log", metavar="TAG", help="train nothing: write the results file from the "
                        "logged runs with this tag (seeds may come from several invocations)")
    args = parser.parse_args()
    if args.from_log:
        return write_from_log(args.from_log)
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        for name in args.models:  # side by side, so machine load hits both alike
            rows.append(run(args, name, seed))
            print(args.tag, json.dumps(rows[-1]), flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("write", "tag", "seeds", "models")}
    with LOG.open("a") as f:
        f.write(json.dumps({"tag": args.tag, "settings": settings, "runs": rows}) + "\n")
    if args.write:
        RESULTS.write_text(json.dumps({"settings": settings, "torch": torch.__version__,
                                       "machine": platform.machine(), "summary": summary(rows), "runs": rows},
                                      indent=1) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
