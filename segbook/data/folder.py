"""Segmentation data in plain folders (CamVid-style): your own images and class-id PNGs.

VOC's split files and palette are one convention; many datasets (CamVid,
Cityscapes exports, labels made with an annotation tool) are simply two
folders of files that share a name. :class:`FolderSegmentation` reads::

    root/<split>/images/<stem>.png|.jpg|.jpeg
    root/<split>/labels/<stem><label_suffix>.png

with the same item contract as :class:`~segbook.data.voc.VOCSegmentation`, so
every loader, model and metric of the book works on it unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .voc import IGNORE_INDEX, read_image, segmentation_item

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LABEL_MODES = ("L", "P", "I;16", "I")  # single-channel PNGs whose pixel values are class ids
_LAYOUT = "<root>/<split>/images/<stem>.png|.jpg|.jpeg and <root>/<split>/labels/<stem><label_suffix>.png"


def _name_some(paths: list[Path], limit: int = 3) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" (and {len(paths) - limit} more)" if len(paths) > limit else "")


class FolderSegmentation(Dataset):
    """Image/label pairs from ``root/<split>/images`` and ``root/<split>/labels``.

    An item is ``(image, label)``: uint8 (3, H, W) and int64 (H, W); with
    ``transforms`` it is ``transforms(tv_tensors.Image(image), tv_tensors.Mask(label))``.
    Labels are single-channel PNGs (mode L, P or 16-bit) whose values are class
    ids; an RGB label is refused, because decoding colours is how "ignore"
    pixels silently become a class.

    The number of classes is the caller's to know: pass ``num_classes`` to have
    every label checked against it (ids >= num_classes raise, naming the file).
    ``ignore_index`` is the value your files use for "ignore" (CamVid's "void"
    is often 11); it is mapped to 255, the book's ignore value, which is always
    allowed. ``label_suffix`` covers names like ``0001TP_006690_L.png``.
    Every image needs a label and every label an image: a stray file is an
    error, never silently dropped.
    """

    def __init__(self, root: os.PathLike | str, split: str = "train", transforms: Callable | None = None, *,
                 label_suffix: str = "", num_classes: int | None = None, ignore_index: int | None = None) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.transforms = transforms
        self.label_suffix = label_suffix
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.image_dir = self.root / split / "images"
        self.label_dir = self.root / split / "labels"
        for folder in (self.image_dir, self.label_dir):
            if not folder.is_dir():
                splits = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
                raise FileNotFoundError(f"{folder} does not exist. FolderSegmentation expects {_LAYOUT}; "
                                        f"splits found in {self.root}: {splits or 'none'}.")
        self.images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise FileNotFoundError(f"{self.image_dir} holds no {'/'.join(IMAGE_SUFFIXES)} images. "
                                    f"FolderSegmentation expects {_LAYOUT}.")
        self.labels = [self.label_dir / f"{p.stem}{label_suffix}.png" for p in self.images]
        present = set(os.listdir(self.label_dir))
        missing = [p for p in self.labels if p.name not in present]
        if missing:
            raise FileNotFoundError(f"no label for {len(missing)} image(s): {_name_some(missing)} missing. Each image "
                                    f"<stem>.jpg needs labels/<stem>{label_suffix}.png; add the labels, remove those "
                                    "images, or set label_suffix to your naming.")
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
        return f"FolderSegmentation(split={self.split!r}, {len(self)} images)"
