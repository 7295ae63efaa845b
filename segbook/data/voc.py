"""Pascal VOC2012 segmentation: class names, the palette, and the reader.

A VOC label is a palette PNG whose pixels hold class indices (0..20, 255 for the
"difficult" border band). Reading the indices is fast and exact; decoding RGB
colours back to classes (as many tutorials do) silently turns the 255 border into background.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

IGNORE_INDEX = 255  # VOC's border / "difficult" band: ignored by the loss and the metrics

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
NUM_CLASSES = len(VOC_CLASSES)  # 21


def _voc_color(index: int) -> tuple[int, int, int]:
    """VOC's palette: the bits of the index spread over R, G and B, most significant first."""
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= ((index >> 0) & 1) << shift
        g |= ((index >> 1) & 1) << shift
        b |= ((index >> 2) & 1) << shift
        index >>= 3
    return r, g, b


VOC_COLORMAP = tuple(_voc_color(i) for i in range(NUM_CLASSES))  # (0, 0, 0), (128, 0, 0), ...
VOC_BORDER_COLOR = _voc_color(IGNORE_INDEX)  # (224, 224, 192): how VOC draws index 255


def voc_palette() -> list[int]:
    """The full 256-entry palette as PIL wants it (768 ints), identical to VOC's PNGs."""
    return [channel for i in range(256) for channel in _voc_color(i)]


HOW_TO_GET_VOC = ("Get VOC2012 with segbook.data.download_voc2012() (about 2 GB), or point SEGBOOK_VOC_ROOT at a "
                  "copy you already have, or use the offline toy set: segbook.data.get_voc_dir('toy').")
_VOC_LAYOUT = "JPEGImages/<id>.jpg, SegmentationClass/<id>.png and ImageSets/Segmentation/<split>.txt"
VOC_ARCHIVE_NAME = "VOCtrainval_11-May-2012.tar"
_LAYOUT_PARTS = ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/train.txt")
# A file in VOC2012/ that says "generated", so a generated set is never taken for the real one.
TOY_MARKER = ".segbook_toy"


def layout_missing(voc_dir: os.PathLike | str) -> list[str]:
    """The parts of VOC2012's layout that ``voc_dir`` lacks (empty for a VOC2012 folder, real or toy)."""
    voc_dir = Path(voc_dir)
    return [part for part in _LAYOUT_PARTS if not (voc_dir / part).exists()]


def locate_voc(folder: os.PathLike | str) -> Path | None:
    """The VOC2012 folder at or inside ``folder`` (VOC2012 itself, or a folder holding VOCdevkit/VOC2012)."""
    folder = Path(folder).expanduser()
    for voc in (folder, folder / "VOC2012", folder / "VOCdevkit" / "VOC2012"):
        if not layout_missing(voc):
            return voc
    return None


def is_toy_voc(voc_dir: os.PathLike | str) -> bool:
    """Whether ``voc_dir`` is a generated toy set (it carries the toy marker), not Pascal VOC2012."""
    return (Path(voc_dir) / TOY_MARKER).is_file()


def missing_files(voc_dir: os.PathLike | str, ids: list[str]) -> list[Path]:
    """Images and labels that ``ids`` name but ``voc_dir`` lacks (a tar cut short at a header reads as valid)."""
    voc_dir = Path(voc_dir)
    missing = []
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        present = set(os.listdir(voc_dir / folder))
        missing += [voc_dir / folder / (i + suffix) for i in ids if i + suffix not in present]
    return missing


def split_ids(split_file: os.PathLike | str) -> list[str]:
    """The image ids a VOC split file names, in its order."""
    return [line.strip() for line in Path(split_file).read_text().splitlines() if line.strip()]


def restore_hint(path: os.PathLike | str) -> str:
    """What to do about one bad file: restore that file (from VOC's archive, or by regenerating the toy set)."""
    path = Path(path)
    voc_dir = path.parent.parent
    if is_toy_voc(voc_dir):
        return (f"This is the generated toy set: delete {voc_dir.parent.parent} and it is generated again "
                "on the next call.")
    if voc_dir.name == "VOC2012" and path.parent.name in ("JPEGImages", "SegmentationClass"):
        member = f"VOCdevkit/VOC2012/{path.parent.name}/{path.name}"
        return (f"Restore this one file from VOC's archive: run `tar -xf {VOC_ARCHIVE_NAME} {member}` "
                f"in {voc_dir.parent.parent}.")
    return "Replace this one file with a good copy."


def read_image(path: os.PathLike | str) -> torch.Tensor:
    """An RGB image as uint8 (3, H, W), decoded by PIL as torchvision's VOC reader does, so the pixels match it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found. {HOW_TO_GET_VOC}")
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))  # (H, W, 3) uint8
    except OSError as err:  # PIL's UnidentifiedImageError and "image file is truncated" are OSErrors
        raise ValueError(f"{path}: cannot decode this image ({err}); the file is corrupt or incomplete. "
                         f"{restore_hint(path)}") from err
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())  # (3, H, W), one writable copy


def read_label(path: os.PathLike | str) -> torch.Tensor:
    """The class ids of a VOC label PNG as int64 (H, W), 255 kept.

    Only palette ("P" mode) PNGs are read: an RGB label (re-saved by an image editor)
    would need colour matching, which is how the 255 band silently becomes background.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label not found. {HOW_TO_GET_VOC}")
    try:
        with Image.open(path) as img:
            mode = img.mode
            ids = np.array(img) if mode == "P" else None  # (H, W) uint8 palette indices, a writable copy
    except OSError as err:
        raise ValueError(f"{path}: cannot decode this label PNG ({err}); the file is corrupt or incomplete. "
                         f"{restore_hint(path)}") from err
    if ids is None:
        raise ValueError(
            f"{path}: label PNG has mode {mode!r}, but VOC labels are palette ('P' mode) PNGs whose pixel values "
            "are class ids. An RGB or greyscale file was probably re-saved by an image editor or another tool; "
            "restore the original from the VOC archive, or save class ids as a palette PNG: "
            "img = Image.fromarray(ids.astype('uint8')); img.putpalette(segbook.data.voc.voc_palette()); "
            "img.save(...).")
    high = ids[ids >= NUM_CLASSES]  # (N,) usually only the 255 border: two cheap uint8 passes
    if (high != IGNORE_INDEX).any():
        bad = np.unique(high[high != IGNORE_INDEX])
        raise ValueError(f"{path}: label holds class ids {bad.tolist()}, but VOC labels hold only 0..{NUM_CLASSES - 1} "
                         f"and {IGNORE_INDEX} (the ignored border). The file is not a VOC2012 label; "
                         "check it came from SegmentationClass/ (not SegmentationObject/, which holds instance ids).")
    # NumPy widens on one thread: torch's .to() would use its intra-op pool, which stalls when the cores are busy
    return torch.from_numpy(ids.astype(np.int64))  # (H, W)


def segmentation_item(image: torch.Tensor, label: torch.Tensor, transforms: Callable | None, *,
                      image_path: Path, label_path: Path, fix: str = ""):
    """One item from a decoded pair: a label that does not cover its image is refused, then the joint transform runs."""
    if image.shape[-2:] != label.shape:  # (3, H, W) against (H, W)
        raise ValueError(f"{label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but its image {image_path} is "
                         f"{image.shape[2]}x{image.shape[1]}: a label must cover its image pixel for pixel. {fix}")
    if transforms is not None:
        return transforms(tv_tensors.Image(image), tv_tensors.Mask(label))
    return image, label


class VOCSegmentation(Dataset):
    """Pascal VOC2012 segmentation: ``(image, label)`` pairs for one split.

    ``voc_dir`` holds ``JPEGImages/``, ``SegmentationClass/`` and ``ImageSets/Segmentation/``.
    Items are uint8 (3, H, W) and int64 (H, W) with values in 0..20 or 255; with
    ``transforms`` the pair goes through ``transforms(tv_tensors.Image(image),
    tv_tensors.Mask(label))``, so one random crop moves pixels and classes together.
    Every id is kept (d2l's reader drops small images). Missing files are found
    when the dataset is built, decoding problems when an item is read.
    """

    def __init__(self, voc_dir: os.PathLike | str, split: str = "train",
                 transforms: Callable | None = None) -> None:
        self.voc_dir = Path(voc_dir).expanduser()
        self.split = split
        self.transforms = transforms
        missing = layout_missing(self.voc_dir)
        if missing:
            inner = locate_voc(self.voc_dir)
            hint = f" It looks like you passed the archive's root: use {inner} instead." if inner else ""
            raise FileNotFoundError(
                f"{self.voc_dir} is not a VOC2012 folder (missing {', '.join(missing)}). Expected the folder that "
                f"holds {_VOC_LAYOUT}.{hint} {HOW_TO_GET_VOC}")
        self.split_file = self.voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not self.split_file.is_file():
            available = sorted(p.stem for p in self.split_file.parent.glob("*.txt"))
            raise ValueError(f"unknown split {split!r}: {self.split_file} does not exist. "
                             f"Splits in {self.split_file.parent}: {available}.")
        self.ids: list[str] = split_ids(self.split_file)
        absent = missing_files(self.voc_dir, self.ids)
        if absent:
            more = f" (and {len(absent) - 1} more missing files)" if len(absent) > 1 else ""
            raise FileNotFoundError(f"{absent[0]} is missing: the split file {self.split_file} names it{more}. "
                                    f"{restore_hint(absent[0])}")

    def image_path(self, index: int) -> Path:
        return self.voc_dir / "JPEGImages" / f"{self.ids[index]}.jpg"

    def label_path(self, index: int) -> Path:
        return self.voc_dir / "SegmentationClass" / f"{self.ids[index]}.png"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image = read_image(self.image_path(index))  # (3, H, W) uint8
        label = read_label(self.label_path(index))  # (H, W) int64
        return segmentation_item(image, label, self.transforms, image_path=self.image_path(index),
                                 label_path=self.label_path(index), fix="Restore both files from the VOC archive.")

    def __repr__(self) -> str:
        return f"VOCSegmentation(split={self.split!r}, {len(self)} images)"


@functools.lru_cache(maxsize=1)
def voc_colormap2label() -> torch.Tensor:
    """d2l's lookup table from a packed RGB colour to a class id: int64, 256**3 entries (128 MiB).

    Only the reference the data chapter measures against: every colour but the 21
    class colours, the border's included, maps to 0, so the 255 band is trained on as background.
    """
    table = torch.zeros(256 ** 3, dtype=torch.int64)  # (16777216,) = 128 MiB
    for index, (r, g, b) in enumerate(VOC_COLORMAP):
        table[(r * 256 + g) * 256 + b] = index
    return table


def decode_label_rgb(rgb: torch.Tensor, colormap2label: torch.Tensor | None = None) -> torch.Tensor:
    """d2l's ``voc_label_indices``: class ids from an RGB-decoded label, (3, H, W) -> (H, W); slow and lossy."""
    table = voc_colormap2label() if colormap2label is None else colormap2label
    rgb = rgb.permute(1, 2, 0).to(torch.int64)  # (H, W, 3)
    packed = (rgb[..., 0] * 256 + rgb[..., 1]) * 256 + rgb[..., 2]  # (H, W) in 0..256**3-1
    return table.to(rgb.device)[packed]  # (H, W) int64
