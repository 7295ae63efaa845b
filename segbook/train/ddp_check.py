"""``python -m segbook.train.ddp_check``: a few steps of ``fit`` under torchrun, each process saying what it did.

DistributedDataParallel promises what no log line shows: the processes train on disjoint shares of each epoch, and
end with the same weights. Under torchrun every process trains one small model with :func:`~segbook.train.fit` for
one epoch on the first ``--images`` toy training images and writes to ``--out/rank<r>.pt`` the ids of the images it
loaded, in order, and its final state dict; comparing the files (:func:`read_ranks`, chapter 7) checks the promises::

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m segbook.train.ddp_check --out /tmp/ddp
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from .. import data
from ..env import seed_everything
from ..models import build_model
from .distributed import Processes
from .loop import fit

__all__ = ["RecordIds", "main", "read_ranks"]


class RecordIds(Dataset):
    """A VOC split (or a subset of one) that appends the id of every image it loads to ``ids``.

    With ``num_workers=0`` the training process loads the items itself: ``ids`` is what it trained on."""

    def __init__(self, dataset: Subset | data.VOCSegmentation) -> None:
        self.dataset, self.ids = dataset, []
        voc = dataset.dataset if isinstance(dataset, Subset) else dataset
        self.names = [voc.ids[i] for i in (dataset.indices if isinstance(dataset, Subset) else range(len(voc)))]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.ids.append(self.names[index])
        return self.dataset[index]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segbook.train.ddp_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for rank<r>.pt (made if needed)")
    p.add_argument("--root", default=None, help="the toy set's folder (default: the segbook data home)")
    p.add_argument("--model", default="fcn", help="a registered model (default: fcn)")
    p.add_argument("--backbone", default="resnet18", help="its backbone (default: resnet18)")
    p.add_argument("--images", type=int, default=8, help="training images, the first of the split (default: 8)")
    p.add_argument("--batch-size", type=int, default=2, help="per process (default: 2)")
    p.add_argument("--crop-size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"),
                   help="training crop (default: 64 64)")
    p.add_argument("--seed", type=int, default=0, help="weights, order and crops (default: 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Train one epoch in this process (one of torchrun's) and write ``rank<r>.pt``; returns 0."""
    args = _parser().parse_args(argv)
    processes = Processes()
    with processes.joined("cpu"):  # joined here, so that rank 0 can write the toy set before the others read it
        with processes.in_turn(processes.rank == 0):  # rank 0 finds or writes the toy set, then the others read it
            voc = data.get_voc_dir("toy", args.root, verbose=False)
        train = data.VOCSegmentation(voc, "train", transforms=data.train_transforms(tuple(args.crop_size)))
        val = data.VOCSegmentation(voc, "val", transforms=data.eval_transforms())
        recorded = RecordIds(Subset(train, range(args.images)))
        train_loader, val_loader = data.segmentation_loaders(recorded, Subset(val, range(2)), args.batch_size,
                                                             num_workers=0, seed=args.seed)
        seed_everything(args.seed)  # the same initial weights in every process (DDP also copies rank 0's)
        model = build_model(args.model, num_classes=data.NUM_CLASSES, backbone=args.backbone)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        fit(model, train_loader, val_loader, epochs=1, device="cpu", processes=processes, seed=args.seed,
            live_plot=False, progress=False, log=None)
        state = model.state_dict()
        moved = [k for k, v in state.items() if v.is_floating_point() and not torch.equal(v, start[k])]
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save({"rank": processes.rank, "world_size": processes.world_size, "epoch_ids": recorded.names,
                    "ids": recorded.ids, "batch_size": args.batch_size, "moved": moved, "state": state},
                   args.out / f"rank{processes.rank}.pt")
    return 0


def read_ranks(folder: Path | str) -> list[dict]:
    """Every ``rank<r>.pt`` in ``folder``, in rank order (a file per process of one run)."""
    files = sorted(Path(folder).glob("rank*.pt"), key=lambda p: int(p.stem.removeprefix("rank")))
    if not files:
        raise FileNotFoundError(f"no rank<r>.pt in {folder}: run python -m segbook.train.ddp_check --out {folder} "
                                "under torchrun first.")
    return [torch.load(path, map_location="cpu", weights_only=True) for path in files]


if __name__ == "__main__":
    sys.exit(main())
