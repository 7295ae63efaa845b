"""The command line: ``segbook-train`` / ``python -m segbook.train``.

Everything that can be checked before a model is built is checked first, cheapest first (the arguments,
the device, the dataset folder, then every label of both splits): a mistake costs seconds, not an epoch,
and every message names what to change.
"""
from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .. import data
from ..env import get_device, seed_everything
from ..models import build_model
from ..models.base import DEFAULT_AUX_WEIGHTS, model_loss
from ..settings import short_path
from .checkpoints import ConfigMismatch
from .distributed import Processes, RanksDisagree
from .evaluation import evaluate
from .loop import SGD_MOMENTUM, SGD_WEIGHT_DECAY, TrainingDiverged, fit
from .runtime import progress_on

__all__ = ["main", "build_parser"]

EXAMPLE = "segbook-train --model fcn --source toy --epochs 1 --batch-size 8 --crop-size 96 128 --device cpu"
INTERRUPTED = 130  # the shell's status for a run stopped by Ctrl-C (128 + SIGINT)
LR = inspect.signature(fit).parameters["lr"].default  # fit's own default, stated once


def _at_least(minimum: int, kind=int, what: str = "a number"):
    """An argparse ``type`` that refuses values below ``minimum`` with a usage error (exit 2)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is too small; give {what} >= {minimum}")
        return value
    return parse


def _positive_float(text: str) -> float:
    value = _at_least(-math.inf, float)(text)  # a usage error for what is not a number
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number, e.g. 0.01")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Every option states its default once, in its help (the formatter adds none)."""
    p = argparse.ArgumentParser(
        prog="segbook-train",
        description="Train a segbook model on Pascal VOC2012 (or the offline toy VOC) and print its mIoU\n"
                    "with a per-class IoU table. Also run as: python -m segbook.train",
        epilog=f"example (a minute on a CPU):\n  {EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--model", default="fcn", help="model name for segbook.models.build_model, e.g. fcn, fcn8s (default: fcn)")
    add("--backbone", default=None, help="backbone for the model, e.g. resnet18 (default: the model's own)")
    add("--source", choices=("auto", "voc", "toy"), default="auto",
        help="voc: real VOC2012 (downloaded when missing and no --root is given); toy: the offline toy VOC, "
             "generated into --root or the data home; auto: VOC when on disk, else toy (default: auto)")
    add("--root", default=None, help="the dataset folder: one holding VOCdevkit/VOC2012, or VOC2012 itself "
                                     "(default: SEGBOOK_VOC_ROOT, then the segbook data home)")
    add("--epochs", type=_at_least(1, what="a whole number"), default=30, help="epochs to train (default: 30)")
    add("--batch-size", type=_at_least(1, what="a whole number"), default=8, help="training batch size (default: 8)")
    add("--crop-size", type=_at_least(32, what="a crop side in pixels"), nargs=2, metavar=("H", "W"),
        default=(320, 480), help="random training crop, each side >= 32; smaller images are padded, "
                                 "labels with 255 (default: 320 480)")
    add("--lr", type=_positive_float, default=LR, help=f"initial SGD learning rate, poly decay to 0 (default: {LR})")
    add("--momentum", type=_at_least(0, float), default=SGD_MOMENTUM, help=f"SGD momentum (default: {SGD_MOMENTUM})")
    add("--weight-decay", type=_at_least(0, float), default=SGD_WEIGHT_DECAY,
        help=f"SGD weight decay (default: {SGD_WEIGHT_DECAY})")
    add("--aux-weight", type=_at_least(0, float), default=DEFAULT_AUX_WEIGHTS["aux"],
        help=f"weight of an 'aux' head's loss, if the model has one (default: {DEFAULT_AUX_WEIGHTS['aux']})")
    add("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: CUDA, then MPS, then CPU)")
    add("--amp", choices=("auto", "float16", "bfloat16", "off"), default="auto",
        help="mixed precision; auto = float16 on CUDA, off elsewhere (default: auto)")
    add("--checkpoint-dir", default=None, help="where last.pt and best.pt go (default: checkpoints/MODEL)")
    add("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt, written with the same settings")
    add("--pretrained-backbone", choices=("auto", "true", "false"), default="auto",
        help="ImageNet weights for the backbone; auto = on for real VOC (random init, with a note, when they "
             "cannot be had), off for the toy set (default: auto)")
    add("--num-workers", type=_at_least(0, what="a whole number"), default=None,
        help="data loader workers (default: 0 on 1-2 CPU cores, else up to 4)")
    add("--seed", type=int, default=0, help="seeds the model's initialisation, shuffling and augmentation; "
                                            "the same command gives the same run on a CPU (default: 0)")
    add("--global-pixel-mean", action="store_true",
        help="several processes: average the loss over the global batch's counted pixels, not per process")
    add("--sync-batchnorm", action="store_true",
        help="under torchrun on GPUs: BatchNorm statistics over the whole global batch (default: per "
             "process); ignored by a single process")
    add("--no-progress", action="store_true", help="no progress bars, the label check's and the final evaluation's "
                                                   "included (default: bars unless TQDM_DISABLE is set)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Train, then print the final metrics and the per-class IoU table; returns the exit status.

    0 when done, 1 for a problem with the data or the checkpoint (one line on stderr), 130 after Ctrl-C; argument
    errors exit with 2 through argparse. Under torchrun rank 0 alone speaks and checks the labels, and the others
    wait for its verdict, so that all stop together or none does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    processes = Processes(sync_batchnorm=args.sync_batchnorm, global_pixel_mean=args.global_pixel_mean)
    try:
        device = processes.start(get_device(args.device, given_as="--device"))  # joined now: fetch the data once
    except (RuntimeError, ValueError) as err:
        parser.error(str(err))
    try:
        return _train(args, parser, device, processes)
    finally:
        processes.close()


def _train(args, parser: argparse.ArgumentParser, device: torch.device, processes: Processes) -> int:
    say = print if processes.is_main else (lambda *args, **kwargs: None)  # under torchrun, rank 0 alone
    with processes.in_turn(processes.local_rank == 0):  # machines need not share a disk: each one's first fetches
        voc_dir = _dataset_dir(args, parser, say)
    progress = processes.on_main(progress_on(False if args.no_progress else None), False)
    seed_everything(args.seed)  # before the model is built: its initial weights come from this seed
    problem, sizes = None, []
    try:
        train_loader, val_loader = data.load_voc(args.batch_size, tuple(args.crop_size), source=args.source,
                                                 root=voc_dir, num_workers=args.num_workers, seed=args.seed,
                                                 verbose=False)
        if processes.is_main:  # one process reads every label; the others would only repeat it
            sizes = data.check_labels(train_loader.dataset, progress=progress, desc="checking train labels")
            data.check_labels(val_loader.dataset, progress=progress, desc="checking val labels")
    except (OSError, ValueError) as err:
        problem = err
    problems = processes.gather(problem and str(problem))
    if any(problems):
        return _fail(problem or next(p for p in problems if p))
    _warn_if_crop_too_large(tuple(args.crop_size), sizes)

    toy = data.is_toy_voc(voc_dir)
    model = _build_model(args, data.NUM_CLASSES, real_voc=not toy)
    checkpoint_dir = Path(args.checkpoint_dir or Path("checkpoints") / args.model)
    say(f"model {args.model} | data {'toy VOC' if toy else 'VOC2012'} ({len(train_loader.dataset)} train, "
        f"{len(val_loader.dataset)} val) | device {device.type} | checkpoints {short_path(checkpoint_dir)}"
        + (f" | {processes.world_size} processes, batch {args.batch_size} each" if processes.several else ""))
    began = time.perf_counter()
    loss_fn = model_loss(model, {"aux": args.aux_weight})
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    try:
        fit(model, train_loader, val_loader, epochs=args.epochs, lr=args.lr, optimizer=optimizer, loss_fn=loss_fn,
            device=device, num_classes=data.NUM_CLASSES, amp={"auto": None, "off": False}.get(args.amp, args.amp),
            processes=processes, checkpoint_dir=checkpoint_dir, resume=args.resume, seed=args.seed,
            run_config=_run_config(args, toy), live_plot=False, progress=progress, log=say)
    except KeyboardInterrupt:  # fit has said what was saved
        return INTERRUPTED
    except (ConfigMismatch, TrainingDiverged, RanksDisagree) as err:
        return _fail(err)
    if not processes.is_main:
        return 0
    say(f"trained in {time.perf_counter() - began:.0f} s")
    result = evaluate(model, val_loader, num_classes=data.NUM_CLASSES, loss_fn=loss_fn, progress=progress)
    say(f"final: val_loss {result['loss']:.4f} | pixel_acc {result['pixel_acc']:.4f} | mIoU {result['miou']:.4f}")
    say(result["confusion"].table(class_names=data.VOC_CLASSES))
    return 0


def _fail(err: BaseException) -> int:
    print(f"segbook-train: error: {err}", file=sys.stderr)
    return 1


def _dataset_dir(args, parser: argparse.ArgumentParser, say=print) -> Path:
    """The dataset folder, or a usage error: a ``--root`` is used as given, never created nor swapped for toy."""
    if args.root is not None:
        try:
            voc = data.get_voc_dir(args.source, args.root, download=False, verbose=False)
        except (FileNotFoundError, ValueError) as err:
            parser.error(f"--root {err}")
    elif args.source == "voc":  # no silent toy fallback: the user asked for VOC2012
        voc = data.find_voc_dir()
        if voc is None:
            try:
                voc = data.download_voc2012()
            except (OSError, RuntimeError, ValueError) as err:
                raise SystemExit(_fail(err)) from None
    else:
        voc = data.get_voc_dir(args.source, verbose=False)
    kind = "the generated toy VOC set" if data.is_toy_voc(voc) else "Pascal VOC2012"
    say(f"dataset: {kind} at {short_path(voc)}")
    return voc


def _warn_if_crop_too_large(crop: tuple[int, int], sizes: list[tuple[int, int]]) -> None:
    """A crop larger than every training image trains mostly on padding: say so, with a crop that fits."""
    heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
    if not sizes or (crop[0] <= max(heights) and crop[1] <= max(widths)):
        return
    suggest = (max(32, min(heights) // 32 * 32), max(32, min(widths) // 32 * 32))
    print(f"warning: the crop {crop[0]}x{crop[1]} (HxW) is larger than every training image (heights "
          f"{min(heights)}-{max(heights)}, widths {min(widths)}-{max(widths)} px), so most of each crop is padding; "
          f"try --crop-size {suggest[0]} {suggest[1]}", file=sys.stderr)


def _build_model(args, num_classes: int, real_voc: bool) -> nn.Module:
    """``--pretrained-backbone auto``: ImageNet weights for real VOC; the toy set is learnt from scratch."""
    kw = {"backbone": args.backbone} if args.backbone else {}
    pretrained = {"true": True, "false": False}.get(args.pretrained_backbone, "auto" if real_voc else False)
    return build_model(args.model, num_classes=num_classes, pretrained_backbone=pretrained, **kw)


def _run_config(args, toy: bool) -> dict:
    """The settings a resumed run must share with the one that wrote ``last.pt`` (all but the epochs)."""
    return {"model": args.model, "backbone": args.backbone, "num_classes": data.NUM_CLASSES,
            "dataset": "toy" if toy else "voc", "crop_size": list(args.crop_size), "batch_size": args.batch_size,
            "epochs": args.epochs, "momentum": args.momentum, "weight_decay": args.weight_decay,
            "aux_weight": args.aux_weight, "pretrained_backbone": args.pretrained_backbone, "amp": args.amp}


if __name__ == "__main__":
    raise SystemExit(main())
