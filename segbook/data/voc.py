"""Pascal VOC2012 segmentation: class names, the palette, and the reader.

VOC stores each label as a *palette* PNG: every pixel holds a class index
(0..20, or 255 for the "difficult" border band), and the palette only says how
to draw it. Reading the indices directly is both faster and exact; decoding the
RGB colours back to classes (as many tutorials do) is slower and silently turns
the 255 border into background.
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

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
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


# --------------------------------------------------------------------------- reading files
_HOW_TO_GET_VOC = (
    "Get VOC2012 with segbook.data.download_voc2012() (about 2 GB), or point SEGBOOK_VOC_ROOT at a copy you "
    "already have, or use the offline toy set: segbook.data.get_voc_dir('toy')."
)
_VOC_LAYOUT = "JPEGImages/<id>.jpg, SegmentationClass/<id>.png and ImageSets/Segmentation/<split>.txt"


def read_image(path: os.PathLike | str) -> torch.Tensor:
    """An RGB image as a uint8 tensor of shape (3, H, W).

    PIL decodes it, exactly as ``torchvision.datasets.VOCSegmentation`` does, so
    the pixels match that reader bit for bit (two JPEG decoders may round
    differently); grey or CMYK JPEGs become RGB the same way.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found. {_HOW_TO_GET_VOC}")
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))  # (H, W, 3) uint8
    except OSError as err:  # PIL's UnidentifiedImageError and "image file is truncated" are OSErrors
        raise ValueError(f"{path}: cannot decode this image ({err}). The file is corrupt or incomplete: "
                         "delete the dataset folder and download or extract it again.") from err
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())  # (3, H, W), one writable copy


def read_label(path: os.PathLike | str) -> torch.Tensor:
    """The class ids of a VOC label PNG as an int64 tensor of shape (H, W), 255 kept.

    VOC saves labels as palette ("P" mode) PNGs whose pixel values *are* the
    class ids; the palette only colours them. Reading the values directly is
    exact and keeps the 255 border band that the loss and the metrics must
    ignore. Anything else is refused rather than guessed at: an RGB label (an
    image editor re-saved it) would need colour matching, which is how the 255
    band silently becomes background.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label not found. {_HOW_TO_GET_VOC}")
    try:
        with Image.open(path) as img:
            mode = img.mode
            ids = np.array(img) if mode == "P" else None  # (H, W) uint8 palette indices, a writable copy
    except OSError as err:
        raise ValueError(f"{path}: cannot decode this label PNG ({err}). The file is corrupt or incomplete: "
                         "delete the dataset folder and download or extract it again.") from err
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


# --------------------------------------------------------------------------- the dataset
def segmentation_item(image: torch.Tensor, label: torch.Tensor, transforms: Callable | None, *,
                      image_path: Path, label_path: Path, fix: str = ""):
    """One dataset item from a decoded pair: sizes checked, then the joint transform if any.

    Shared by every segbook dataset so that all of them refuse a label that does
    not cover its image (a crop would silently pair wrong pixels) and hand
    transforms the same ``tv_tensors.Image`` / ``tv_tensors.Mask`` pair.
    """
    if image.shape[-2:] != label.shape:  # (3, H, W) against (H, W)
        raise ValueError(f"{label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but its image {image_path} is "
                         f"{image.shape[2]}x{image.shape[1]}: a label must cover its image pixel for pixel. {fix}")
    if transforms is not None:
        return transforms(tv_tensors.Image(image), tv_tensors.Mask(label))
    return image, label


class VOCSegmentation(Dataset):
    """Pascal VOC2012 segmentation: ``(image, label)`` pairs for one split.

    ``voc_dir`` is the folder that holds ``JPEGImages/``, ``SegmentationClass/``
    and ``ImageSets/Segmentation/`` (real VOC2012 and the toy set alike). An
    item is ``(image, label)``: uint8 (3, H, W) and int64 (H, W) with values in
    0..20 or 255. With ``transforms`` the pair goes through it jointly as
    ``transforms(tv_tensors.Image(image), tv_tensors.Mask(label))``, so one
    random crop or flip moves the pixels and their classes together.

    Every id of the split is kept: small images are padded by the crop (with
    255), not dropped as d2l's reader does. Missing files are found when the
    dataset is built (a listing is cheap); decoding problems surface when an
    item is read.
    """

    def __init__(self, voc_dir: os.PathLike | str, split: str = "train",
                 transforms: Callable | None = None) -> None:
        self.voc_dir = Path(voc_dir).expanduser()
        self.split = split
        self.transforms = transforms
        self._check_layout()
        self.split_file = self.voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not self.split_file.is_file():
            available = sorted(p.stem for p in self.split_file.parent.glob("*.txt"))
            raise ValueError(f"unknown split {split!r}: {self.split_file} does not exist. "
                             f"Splits in {self.split_file.parent}: {available}.")
        self.ids: list[str] = [line.strip() for line in self.split_file.read_text().splitlines() if line.strip()]
        self._check_files()

    def _check_layout(self) -> None:
        needed = ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation"))
        missing = [name for name in needed if not (self.voc_dir / name).is_dir()]
        if not missing:
            return
        hint = ""
        for inner in (self.voc_dir / "VOC2012", self.voc_dir / "VOCdevkit" / "VOC2012"):
            if (inner / "JPEGImages").is_dir():
                hint = f" It looks like you passed the archive's root: use {inner} instead."
        raise FileNotFoundError(
            f"{self.voc_dir} is not a VOC2012 folder (missing {', '.join(missing)}). Expected the folder that "
            f"holds {_VOC_LAYOUT}.{hint} {_HOW_TO_GET_VOC}")

    def _check_files(self) -> None:
        """Every image and label of the split exists: one listing per folder, no per-file stat."""
        for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
            present = set(os.listdir(self.voc_dir / folder))
            missing = [i for i in self.ids if i + suffix not in present]
            if missing:
                first = self.voc_dir / folder / (missing[0] + suffix)
                raise FileNotFoundError(
                    f"{first} is missing: the split file {self.split_file} names it"
                    f"{f' (and {len(missing) - 1} more missing in {folder}/)' if len(missing) > 1 else ''}. "
                    "The dataset is incomplete: extract the archive again, or remove those ids from the split file.")

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


# --------------------------------------------------------------------------- the seed's slow reference
@functools.lru_cache(maxsize=1)
def voc_colormap2label() -> torch.Tensor:
    """d2l's lookup table from a packed RGB colour to a class id: int64, 256**3 entries (128 MiB).

    Kept only as the reference that the benchmark and the data chapter compare
    against; do not use it to read labels. Every colour that is not one of the
    21 class colours, the border's (224, 224, 192) included, maps to 0, so the
    255 "ignore" band silently becomes background and is then trained on.
    """
    table = torch.zeros(256 ** 3, dtype=torch.int64)  # (16777216,) = 128 MiB
    for index, (r, g, b) in enumerate(VOC_COLORMAP):
        table[(r * 256 + g) * 256 + b] = index
    return table


def decode_label_rgb(rgb: torch.Tensor, colormap2label: torch.Tensor | None = None) -> torch.Tensor:
    """d2l's ``voc_label_indices``: class ids from an RGB-decoded label, shape (3, H, W) -> (H, W).

    Slow (a gather from a 128 MiB table) and lossy: the 255 border colour comes
    back as 0 = background. Use :func:`read_label` instead; this exists so the
    book can show and measure the difference.
    """
    table = voc_colormap2label() if colormap2label is None else colormap2label
    rgb = rgb.permute(1, 2, 0).to(torch.int64)  # (H, W, 3)
    packed = (rgb[..., 0] * 256 + rgb[..., 1]) * 256 + rgb[..., 2]  # (H, W) in 0..256**3-1
    return table.to(rgb.device)[packed]  # (H, W) int64
