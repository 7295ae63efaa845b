"""Where the book's data comes from: real VOC2012 on disk or downloaded, or the toy set generated offline.

Both go through the same reader and transforms, so the quick profile runs the
full one's code. The data layer reports what it found; the profile is
:func:`segbook.env.setup`'s to choose.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from ..settings import data_home, short_path, voc_root
from .download import download_voc2012
from .loaders import segmentation_loaders
from .synthetic import generate_once
from .toy import TOY_CLASSES, TOY_SIZE, TOY_VERSION, make_toy_voc
from .transforms import eval_transforms, train_transforms
from .voc import HOW_TO_GET_VOC, VOCSegmentation, is_toy_voc, layout_missing, locate_voc, read_label, restore_hint

__all__ = ["SOURCES", "check_labels", "find_voc_dir", "get_voc_dir", "load_voc", "no_voc_message"]

SOURCES = ("auto", "voc", "toy")


def find_voc_dir(root: os.PathLike | str | None = None) -> Path | None:
    """Real VOC2012 already on disk, or None; nothing is downloaded.

    Looks in ``root``, else in ``SEGBOOK_VOC_ROOT`` and then ``data_home()/"voc"``
    (the folder itself or one above it). A generated set is never taken for VOC2012.
    """
    if root is not None:
        candidates = [Path(root).expanduser()]
    else:
        candidates = [folder for folder in (voc_root(), data_home() / "voc") if folder is not None]
    for folder in candidates:
        voc = locate_voc(folder)
        if voc is not None and not is_toy_voc(voc):
            return voc
    return None


def no_voc_message(root: os.PathLike | str) -> str:
    """Why ``root`` is not a dataset folder, and what was expected inside it."""
    root = Path(root).expanduser()
    if not root.exists():
        said = f"{root} does not exist"
    else:
        said = f"{root} holds no Pascal VOC2012 (missing {', '.join(layout_missing(root))})"
    toys = sorted(p.name for p in root.glob("toy_voc_v*") if p.is_dir()) if root.is_dir() else []
    toy_hint = f" It holds a generated toy set ({toys[0]}): use source 'toy' for it." if toys else ""
    return (f"{said}; expected VOCdevkit/VOC2012/ inside it, or JPEGImages/, SegmentationClass/ and "
            f"ImageSets/Segmentation/ directly in it.{toy_hint}")


def _toy_voc_dir(root: Path | None, seed: int, num_train: int, num_val: int) -> Path:
    """The toy set for these settings, generated once (:func:`generate_once`) and reused."""
    parent = Path(root).expanduser() if root is not None else data_home()
    name = f"toy_voc_v{TOY_VERSION}_seed{seed}"
    if (num_train, num_val) != TOY_SIZE:
        name += f"_{num_train}x{num_val}"
    return generate_once(parent, name, lambda folder: make_toy_voc(folder, num_train=num_train, num_val=num_val,
                                                                   seed=seed), "toy VOC set")


def _split_size(voc: Path, split: str) -> int:
    return len((voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split())


def get_voc_dir(source: str = "auto", root: os.PathLike | str | None = None, *, download: bool = True,
                verbose: bool = True, toy_seed: int = 0, toy_size: tuple[int, int] = TOY_SIZE) -> Path:
    """The VOC2012 folder to train on (the one holding ``JPEGImages/``); says which in one line.

    ``source``: ``"auto"``, VOC2012 if it is on disk, else the toy set; ``"voc"``,
    VOC2012, downloaded into ``data_home()/"voc"`` when missing (if ``download``);
    ``"toy"``, the toy set (``toy_size`` = (train, val) images), generated once. A
    ``root`` the caller gives is never swapped for other data: an error names what it lacks.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: use one of {SOURCES}.")
    if root is not None:
        voc = _voc_at_root(Path(root).expanduser(), source, download, toy_seed, toy_size)
    elif source == "toy":
        voc = _toy_voc_dir(None, toy_seed, *toy_size)
    else:
        voc = find_voc_dir() or _download_or_toy(source, download, toy_seed, toy_size)
    if verbose:
        what = (f"toy VOC ({len(TOY_CLASSES)} classes + background, generated offline)" if is_toy_voc(voc)
                else "Pascal VOC2012")
        print(f"dataset: {what} | train {_split_size(voc, 'train')}, val {_split_size(voc, 'val')} images "
              f"| {short_path(voc)}")
    return voc


def _voc_at_root(root: Path, source: str, download: bool, toy_seed: int, toy_size: tuple[int, int]) -> Path:
    """The data at the folder the caller named: never another folder's, never a silent substitute."""
    found = locate_voc(root)
    if found is not None and is_toy_voc(found):
        if source == "voc":
            raise ValueError(f"{root} holds the generated toy VOC set, not Pascal VOC2012; use source 'toy' "
                             "(--source toy) to train on it, or a root that holds VOC2012.")
        return found
    if found is not None and source != "toy":
        return found
    if source == "toy":
        return _toy_voc_dir(root, toy_seed, *toy_size)
    if source == "voc" and download:
        return download_voc2012(root)  # raises, saying how to get VOC2012 by hand, when it cannot
    raise FileNotFoundError(f"{no_voc_message(root)} {HOW_TO_GET_VOC}")


def _download_or_toy(source: str, download: bool, toy_seed: int, toy_size: tuple[int, int]) -> Path:
    """No root given and no VOC2012 on disk: download it when asked for (``"voc"``), else the toy set."""
    if source != "voc":
        return _toy_voc_dir(None, toy_seed, *toy_size)
    if not download:
        raise FileNotFoundError(f"VOC2012 is not on disk and download=False. {HOW_TO_GET_VOC}")
    return download_voc2012(data_home() / "voc")  # raises, saying how to get VOC2012 by hand, when it cannot


def check_labels(dataset: Dataset, *, progress: bool = False, desc: str = "checking labels") -> list[tuple[int, int]]:
    """Read every label of ``dataset`` (and its image's size) now, so a bad file stops the run before epoch 1.

    Otherwise a corrupt label surfaces when the loader reaches it, perhaps an epoch
    of work later. Takes a :class:`VOCSegmentation` or :class:`FolderSegmentation`,
    also wrapped; returns each image's ``(H, W)``.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    base = dataset
    while not hasattr(base, "label_path") and not hasattr(base, "labels") and hasattr(base, "dataset"):
        base = base.dataset  # e.g. SeededItems
    if hasattr(base, "label_path"):
        pairs = [(base.image_path(i), base.label_path(i), read_label) for i in range(len(base))]
    elif hasattr(base, "labels"):
        pairs = [(image, label, base.read_label) for image, label in zip(base.images, base.labels)]
    else:
        raise TypeError(f"check_labels takes a VOCSegmentation or FolderSegmentation, got {type(dataset).__name__}.")
    sizes = []
    for image_path, label_path, read in tqdm(pairs, desc=desc, leave=False, disable=not progress):
        label = read(label_path)  # (H, W); raises naming the file
        try:
            with Image.open(image_path) as img:  # the header only: no decoding
                width, height = img.size
        except OSError as err:
            raise ValueError(f"{image_path}: cannot read this image ({err}). {restore_hint(image_path)}") from err
        if (height, width) != tuple(label.shape):
            raise ValueError(f"{label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but its image {image_path} is "
                             f"{width}x{height}: a label must cover its image pixel for pixel. "
                             f"{restore_hint(label_path)}")
        sizes.append((height, width))
    return sizes


def load_voc(batch_size: int, crop_size: int | tuple[int, int], source: str = "auto",
             root: os.PathLike | str | None = None, num_workers: int | None = None,
             scale_range: tuple[float, float] | None = (0.5, 2.0), val_batch_size: int | None = None,
             seed: int = 0, verbose: bool = True) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders for VOC2012 (real or toy, see :func:`get_voc_dir`).

    Train: random scale, ``crop_size`` crop and flip (see :func:`~segbook.data.segmentation_loaders`).
    Validation: whole images, normalised only; :func:`~segbook.train.evaluate`
    scores each alone at its own size, whatever ``val_batch_size`` is.
    """
    voc = get_voc_dir(source, root, verbose=verbose)
    train_set = VOCSegmentation(voc, "train", transforms=train_transforms(crop_size, scale_range))
    val_set = VOCSegmentation(voc, "val", transforms=eval_transforms())
    train_loader, val_loader = segmentation_loaders(train_set, val_set, batch_size, val_batch_size=val_batch_size,
                                                    num_workers=num_workers, seed=seed)
    return train_loader, val_loader
