"""Segmentation data in plain folders (CamVid-style): your own images and class-id PNGs, in one of two layouts::

    "nested":  root/<split>/images/<stem>.png|.jpg|.jpeg   root/<split>/labels/<stem><label_suffix>.png
    "camvid":  root/<split>_images/<stem>.png|.jpg|.jpeg   root/<split>_labels/<stem><label_suffix>.png

Items keep :class:`~segbook.data.voc.VOCSegmentation`'s contract, so every loader,
model and metric of the book works on them unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Sequence
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .loaders import segmentation_loaders
from .transforms import eval_transforms, train_transforms
from .voc import IGNORE_INDEX, read_image, segmentation_item

__all__ = ["FolderSegmentation", "IMAGE_SUFFIXES", "LAYOUTS", "load_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LABEL_MODES = ("L", "P", "I;16", "I")  # single-channel PNGs whose pixel values are class ids
# layout -> (image folder, label folder) relative to the root, for a split
LAYOUTS = {"nested": ("{split}/images", "{split}/labels"), "camvid": ("{split}_images", "{split}_labels")}


def _layout_text(layout: str) -> str:
    images, labels = LAYOUTS[layout]
    return (f"<root>/{images.format(split='<split>')}/<stem>.png|.jpg|.jpeg and "
            f"<root>/{labels.format(split='<split>')}/<stem><label_suffix>.png (layout={layout!r})")


def _splits_in(root: Path, layout: str) -> list[str]:
    """The splits a root holds in ``layout``: subfolders (nested) or ``<split>_images`` folders (camvid)."""
    if not root.is_dir():
        return []
    folders = [p.name for p in root.iterdir() if p.is_dir()]
    if layout == "camvid":
        return sorted(name[:-len("_images")] for name in folders if name.endswith("_images"))
    return sorted(folders)


def _name_some(paths: list[Path], limit: int = 3) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" (and {len(paths) - limit} more)" if len(paths) > limit else "")


class FolderSegmentation(Dataset):
    """Image/label pairs of one split in ``layout``, items as :class:`VOCSegmentation`'s.

    Labels are single-channel PNGs whose values are class ids; RGB is refused, since
    decoding colours is how "ignore" pixels silently become a class. ``num_classes``
    checks every label; ``ignore_index``, your files' "ignore" value (CamVid's "void"
    is often 11), becomes 255; ``label_suffix`` covers names like ``0001TP_006690_L.png``.
    A stray image or label is an error, never silently dropped.
    """

    def __init__(self, root: os.PathLike | str, split: str = "train", transforms: Callable | None = None, *,
                 label_suffix: str = "", num_classes: int | None = None, ignore_index: int | None = None,
                 layout: str = "nested") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}: use one of {', '.join(map(repr, LAYOUTS))} "
                             f"({'; '.join(_layout_text(name) for name in LAYOUTS)}).")
        self.root = Path(root).expanduser()
        self.layout = layout
        self.class_names: list[str] | None = None  # for the figures (segbook.viz); load_folder sets them
        self.palette: list[tuple[int, int, int]] | None = None
        self.split = split
        self.transforms = transforms
        self.label_suffix = label_suffix
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        image_dir, label_dir = LAYOUTS[layout]
        self.image_dir = self.root / image_dir.format(split=split)
        self.label_dir = self.root / label_dir.format(split=split)
        for folder in (self.image_dir, self.label_dir):
            if not folder.is_dir():
                other = next(name for name in LAYOUTS if name != layout)
                hint = (f" (this root looks like layout={other!r}: pass that)"
                        if (self.root / LAYOUTS[other][0].format(split=split)).is_dir() else "")
                raise FileNotFoundError(f"{folder} does not exist. FolderSegmentation expects {_layout_text(layout)}; "
                                        f"splits found in {self.root}: {_splits_in(self.root, layout) or 'none'}"
                                        f"{hint}.")
        self.images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise FileNotFoundError(f"{self.image_dir} holds no {'/'.join(IMAGE_SUFFIXES)} images. "
                                    f"FolderSegmentation expects {_layout_text(layout)}.")
        self.labels = [self.label_dir / f"{p.stem}{label_suffix}.png" for p in self.images]
        present = set(os.listdir(self.label_dir))
        missing = [p for p in self.labels if p.name not in present]
        if missing:
            raise FileNotFoundError(f"no label for {len(missing)} image(s): {_name_some(missing)} missing. Each image "
                                    f"<stem>.jpg needs {self.label_dir.name}/<stem>{label_suffix}.png; add the labels, "
                                    "remove those images, or set label_suffix to your naming.")
        strays = sorted(set(self.label_dir.glob("*.png")) - set(self.labels))
        if strays:
            raise FileNotFoundError(f"{len(strays)} label(s) have no image: {_name_some(strays)}. Add the images to "
                                    f"{self.image_dir}, or remove those labels.")

    def __len__(self) -> int:
        return len(self.images)

    def read_label(self, path: Path) -> torch.Tensor:
        """Class ids of a single-channel label PNG as int64 (H, W), the file's ignore value turned into 255."""
        try:
            with Image.open(path) as img:
                mode = img.mode
                ids = np.asarray(img).astype(np.int64) if mode in _LABEL_MODES else None  # (H, W)
        except OSError as err:
            raise ValueError(f"{path}: cannot decode this label PNG ({err}). Replace the file.") from err
        if ids is None:
            raise ValueError(f"{path}: label PNG has mode {mode!r}; labels must be single-channel PNGs whose "
                             f"values are class ids (modes {', '.join(_LABEL_MODES)}). Convert colour labels to "
                             "class ids once, with your dataset's colour table, and save them with mode 'L'.")
        if self.ignore_index is not None:
            ids[ids == self.ignore_index] = IGNORE_INDEX
        if self.num_classes is not None:
            bad = np.unique(ids[(ids >= self.num_classes) & (ids != IGNORE_INDEX)])
            if bad.size:
                raise ValueError(f"{path}: label holds class ids {bad.tolist()[:10]}, but num_classes="
                                 f"{self.num_classes} allows 0..{self.num_classes - 1} and {IGNORE_INDEX} (ignore). "
                                 "Pass the right num_classes, or ignore_index= for your files' 'void' value.")
        return torch.from_numpy(ids)  # (H, W) int64

    def __getitem__(self, index: int):
        image = read_image(self.images[index])  # (3, H, W) uint8
        label = self.read_label(self.labels[index])  # (H, W) int64
        return segmentation_item(image, label, self.transforms, image_path=self.images[index],
                                 label_path=self.labels[index])

    def __repr__(self) -> str:
        return f"FolderSegmentation(split={self.split!r}, layout={self.layout!r}, {len(self)} images)"


def _check_class_table(num_classes: int, class_names: Sequence[str] | None,
                       palette: Sequence[Sequence[int]] | None) -> None:
    """One name and one RGB colour per class, when given: a short table mislabels every class after the gap."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}; "
                         "give one name per class id 0..num_classes-1.")
    if palette is not None:
        if len(palette) != num_classes:
            raise ValueError(f"palette has {len(palette)} colours for num_classes={num_classes}; give one (r, g, b) "
                             "per class id, or palette=None for generated colours.")
        bad = [c for c in palette if len(c) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255
                                                              for v in c)]
        if bad:
            raise ValueError(f"palette colours must be (r, g, b) with integers 0..255; got {bad[:3]}.")


def load_folder(root: os.PathLike | str, batch_size: int, crop_size: int | tuple[int, int], num_classes: int,
                class_names: Sequence[str] | None = None, palette: Sequence[Sequence[int]] | None = None, *,
                layout: str = "nested", train_split: str = "train", val_split: str | None = None,
                label_suffix: str = "", ignore_index: int | None = None, num_workers: int | None = None,
                scale_range: tuple[float, float] | None = (0.5, 2.0), val_batch_size: int | None = None,
                seed: int = 0, verbose: bool = True) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders for a folder dataset, built exactly as :func:`~segbook.data.load_voc` builds VOC's.

    ``class_names`` and ``palette`` (one per class, for the figures) are kept on both
    datasets. ``val_split=None`` takes ``"val"`` or else ``"valid"`` (CamVid's).
    """
    _check_class_table(num_classes, class_names, palette)  # the layout is checked by FolderSegmentation
    root = Path(root).expanduser()
    if val_split is None:
        present = _splits_in(root, layout)
        val_split = next((name for name in ("val", "valid") if name in present), "val")
    options = dict(label_suffix=label_suffix, num_classes=num_classes, ignore_index=ignore_index, layout=layout)
    train_set = FolderSegmentation(root, train_split, transforms=train_transforms(crop_size, scale_range), **options)
    val_set = FolderSegmentation(root, val_split, transforms=eval_transforms(), **options)
    for dataset in (train_set, val_set):
        dataset.class_names = list(class_names) if class_names is not None else None
        dataset.palette = [tuple(int(v) for v in c) for c in palette] if palette is not None else None
    train_loader, val_loader = segmentation_loaders(train_set, val_set, batch_size, val_batch_size=val_batch_size,
                                                    num_workers=num_workers, seed=seed)
    if verbose:
        print(f"dataset: folder {root} (layout={layout!r}) | {train_split} {len(train_set)}, {val_split} "
              f"{len(val_set)} images | {num_classes} classes")
    return train_loader, val_loader
