"""Data for the book: real Pascal VOC2012 or its offline toy twin, behind one loader.

A chapter asks for ``load_voc(batch_size, crop_size)`` and gets the real
VOC2012 when it is on disk, else a toy set generated offline in VOC's exact
file layout. Both go through the same reader (:class:`VOCSegmentation`) and the
same transforms, so the quick profile runs the very code the full one does.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..env import data_home, short_path
from .download import download_voc2012
from .folder import FolderSegmentation
from .toy import TOY_CLASSES, TOY_MARKER, TOY_SIZE, TOY_VERSION, make_toy_voc
from .transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transforms, train_transforms
from .voc import IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES, VOC_COLORMAP, VOCSegmentation, read_image, read_label

__all__ = [
    "VOC_CLASSES", "VOC_COLORMAP", "IGNORE_INDEX", "NUM_CLASSES", "TOY_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD",
    "read_image", "read_label", "VOCSegmentation", "FolderSegmentation", "download_voc2012", "make_toy_voc",
    "train_transforms", "eval_transforms", "denormalize", "find_voc_dir", "get_voc_dir", "pad_collate", "load_voc",
]

SOURCES = ("auto", "voc", "toy")


def _voc_layout(folder: Path) -> Path | None:
    """The VOC2012 folder at, or inside, ``folder`` (VOC2012 itself or the folder holding VOCdevkit)."""
    for voc in (folder, folder / "VOC2012", folder / "VOCdevkit" / "VOC2012"):
        if (voc / "ImageSets" / "Segmentation" / "train.txt").is_file() and (voc / "JPEGImages").is_dir() \
                and (voc / "SegmentationClass").is_dir():
            return voc
    return None


def find_voc_dir(root: os.PathLike | str | None = None) -> Path | None:
    """Real VOC2012 already on disk, or None; nothing is downloaded.

    Looks in ``root`` when given, else in ``SEGBOOK_VOC_ROOT`` and then in
    ``data_home()/"voc"`` (where :func:`download_voc2012` puts it). Each may be
    the VOC2012 folder itself or a folder above it. A generated toy set (it
    carries a marker file) is never taken for the real one.
    """
    if root is not None:
        candidates = [Path(root).expanduser()]
    else:
        candidates = [Path(os.environ["SEGBOOK_VOC_ROOT"]).expanduser()] if os.environ.get("SEGBOOK_VOC_ROOT") else []
        candidates.append(data_home() / "voc")
    for folder in candidates:
        voc = _voc_layout(folder)
        if voc is not None and not (voc / TOY_MARKER).exists():
            return voc
    return None


def _toy_voc_dir(root: Path | None, seed: int, num_train: int, num_val: int) -> Path:
    """The toy set for these settings, generated once; later calls reuse it.

    It is written into a temporary folder that is renamed into place only when
    complete, so an interrupted generation never leaves a half-made set that a
    later call would trust.
    """
    parent = Path(root).expanduser() if root is not None else data_home()
    name = f"toy_voc_v{TOY_VERSION}_seed{seed}"
    if (num_train, num_val) != TOY_SIZE:
        name += f"_{num_train}x{num_val}"
    final = parent / name
    voc = final / "VOCdevkit" / "VOC2012"
    if (voc / TOY_MARKER).is_file():
        return voc
    if final.exists():
        raise FileExistsError(f"{final} exists but is not a finished toy VOC set; delete it and call again.")
    parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=parent))
    try:
        make_toy_voc(partial, num_train=num_train, num_val=num_val, seed=seed)
        try:
            os.replace(partial, final)
        except OSError:  # another process finished first: use theirs
            if not (voc / TOY_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return voc


def _split_size(voc: Path, split: str) -> int:
    lines = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    return len(lines)


def get_voc_dir(source: str = "auto", root: os.PathLike | str | None = None, *, download: bool = True,
                verbose: bool = True, toy_seed: int = 0, toy_size: tuple[int, int] = TOY_SIZE) -> Path:
    """The VOC2012 folder to train on (the one holding ``JPEGImages/``); says which in one line.

    ``source``:

    * ``"auto"``: real VOC2012 when it is already on disk (see :func:`find_voc_dir`), else the toy set;
    * ``"voc"``: real VOC2012, downloaded into ``root`` or ``data_home()/"voc"`` when missing (if
      ``download``). When that fails (offline, say), one line says so and the toy set is used, so a
      notebook carries on in the quick profile;
    * ``"toy"``: the toy set (``toy_size`` = (train, val) images, ``toy_seed``), generated once into
      ``root`` or ``data_home()`` as ``toy_voc_v<version>_seed<seed>`` and reused afterwards.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: use one of {SOURCES}.")
    voc = None
    if source != "toy":
        voc = find_voc_dir(root)
        if voc is None and source == "voc":
            if download:
                try:
                    voc = download_voc2012(Path(root).expanduser() if root is not None else data_home() / "voc")
                except (OSError, RuntimeError) as err:  # ConnectionError, ChecksumError, a full disk ...
                    print(f"VOC2012 is not on disk and could not be downloaded ({type(err).__name__}); "
                          "carries on in the quick profile with the toy VOC set.")
            else:
                print("VOC2012 is not on disk and download=False; "
                      "carries on in the quick profile with the toy VOC set.")
    if voc is None:
        voc = _toy_voc_dir(root if source == "toy" else None, toy_seed, *toy_size)
        what = f"toy VOC ({len(TOY_CLASSES)} classes + background, generated offline)"
    else:
        what = "Pascal VOC2012"
    if verbose:
        print(f"dataset: {what} | train {_split_size(voc, 'train')}, val {_split_size(voc, 'val')} images "
              f"| {short_path(voc)}")
    return voc


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (image, mask) pairs of different sizes by padding each at the bottom and right.

    Validation scores whole images, as VOC's metric does, and images differ in
    size; resizing them would change the labels being scored. Padding keeps every
    pixel where it was: images get 0 and masks get 255, so padded pixels are
    ignored by the loss and the metrics.
    """
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images, masks = [], []
    for image, mask in batch:
        pad = (0, width - image.shape[-1], 0, height - image.shape[-2])  # (left, right, top, bottom)
        images.append(F.pad(image, pad, value=0.0))  # (3, H, W)
        masks.append(F.pad(mask, pad, value=IGNORE_INDEX))  # (H, W)
    return torch.stack(images), torch.stack(masks)  # (B, 3, H, W), (B, H, W)


class SeededShuffle(Sampler):
    """A shuffled order plus one random seed per item, both drawn from one generator.

    The loader's randomness then lives in the sampler alone: the same generator
    seed gives the same batches, augmentations included, whatever the number
    of worker processes (each item re-seeds torch's RNG with its own seed).
    """

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.generator = generator

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator)  # (N,)
        seeds = torch.randint(0, 2 ** 62, (self.size,), generator=self.generator)  # (N,)
        return iter(zip(order.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.size


class SeededItems(Dataset):
    """Wraps a dataset so item ``(index, seed)`` draws its random transforms from ``seed``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left as it was
            torch.manual_seed(seed)
            return self.dataset[index]


def default_num_workers() -> int:
    """0 on small machines (worker start-up costs more than it saves on 2 cores), else up to 4."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(4, cpus)


def load_voc(batch_size: int, crop_size: int | tuple[int, int], source: str = "auto",
             root: os.PathLike | str | None = None, num_workers: int | None = None,
             scale_range: tuple[float, float] | None = (0.5, 2.0), val_batch_size: int | None = None,
             seed: int = 0, verbose: bool = True) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders for VOC2012 (real or toy, see :func:`get_voc_dir`).

    Train: random scale, ``crop_size`` crop (padded with 255 when needed) and
    flip, reshuffled every epoch by a generator seeded with ``seed``; the last
    incomplete batch is dropped unless the split is no larger than a batch.
    Validation: whole images, normalised only, padded to a common size per
    batch by :func:`pad_collate`.
    """
    voc = get_voc_dir(source, root, verbose=verbose)
    workers = default_num_workers() if num_workers is None else num_workers
    train_set = VOCSegmentation(voc, "train", transforms=train_transforms(crop_size, scale_range))
    val_set = VOCSegmentation(voc, "val", transforms=eval_transforms())
    generator = torch.Generator().manual_seed(seed)  # all the loaders' randomness; torch's global RNG is not used
    common = dict(num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
    train_loader = DataLoader(SeededItems(train_set), batch_size=batch_size,
                              sampler=SeededShuffle(len(train_set), generator), generator=generator,
                              drop_last=len(train_set) > batch_size, **common)
    val_loader = DataLoader(val_set, batch_size=val_batch_size or batch_size, shuffle=False,
                            collate_fn=pad_collate, generator=torch.Generator().manual_seed(seed), **common)
    return train_loader, val_loader
