"""A small VOC2012-shaped folder at VOC's real sizes, for rehearsing the full profile offline.

The toy set (:mod:`segbook.data.toy`) is small in every sense: images of 110 to
220 pixels, five classes. The full profile's settings (320 x 480 crops, 473 x 473
crops, whole validation images of 500 x 375) only meet their real shapes on
VOC2012 itself, which is 2 GB behind a network. :func:`make_voc_shaped` writes
a few dozen pictures in VOC's exact conventions and at its real sizes (JPEG
photographs of 500 x 375, 375 x 500, 500 x 333 ..., palette PNG labels with VOC's
palette and a 5-pixel 255 band, the three split files), with every one of the
21 labels in each split, and *without* the toy marker: to every reader it is
Pascal VOC2012, found where VOC2012 is found (``SEGBOOK_VOC_ROOT``).

The pictures are flat shapes on noise; nothing can be learnt from them. It is
for a rehearsal (:mod:`segbook.rehearsal`), never for a result.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .toy import _border_band, toy_ids
from .voc import NUM_CLASSES, VOC_COLORMAP, voc_palette

__all__ = ["VOC_SIZES", "make_voc_shaped"]

# (H, W) of VOC2012 photographs: the longer side is 500; landscape 500 x 375 is the most common.
VOC_SIZES = ((375, 500), (333, 500), (500, 375), (500, 333), (281, 500), (366, 500), (500, 500), (334, 500))
VOC_BAND = 5  # pixels: the half-width of VOC's 255 band, drawn by its annotators


def _sample(rng: np.random.Generator, size: tuple[int, int], classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (H, W, 3), label uint8 (H, W)): each class an ellipse or a box in its own column."""
    height, width = size
    image = rng.normal(118.0, 30.0, size=(height, width, 3))
    label = np.zeros((height, width), dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    column = width / len(classes)
    for k, cls in enumerate(classes):
        cx = column * (k + 0.5) + rng.uniform(-0.1, 0.1) * column
        cy = height * rng.uniform(0.35, 0.65)
        a, b = column * rng.uniform(0.25, 0.45), height * rng.uniform(0.15, 0.32)
        if rng.random() < 0.5:
            mask = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0
        else:
            mask = (np.abs(x - cx) <= a) & (np.abs(y - cy) <= b)
        label[mask] = cls
        image[mask] = np.array(VOC_COLORMAP[cls]) * 0.6 + rng.normal(40.0, 20.0, size=(int(mask.sum()), 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), _border_band(label, VOC_BAND)


def make_voc_shaped(root: os.PathLike | str, *, num_train: int = 40, num_val: int = 8, seed: int = 0,
                    objects: int = 3, jpeg_quality: int = 90) -> Path:
    """Write a VOC2012-shaped folder under ``root/VOCdevkit/VOC2012`` and return that folder.

    ``objects`` shapes per image, their classes taken in turn from 1..20 within
    each split, so each split holds all 21 labels once it has at least
    ``20 / objects`` images. Deterministic for a seed. The folder must be empty
    or absent: the set never mixes with another.
    """
    voc = Path(root).expanduser() / "VOCdevkit" / "VOC2012"
    if voc.exists() and any(voc.iterdir()):
        raise FileExistsError(f"{voc} already holds files; make_voc_shaped writes only into an empty folder. "
                              "Delete it, or pass another root.")
    if min(num_train, num_val) * objects < NUM_CLASSES - 1:
        raise ValueError(f"num_train={num_train}, num_val={num_val}, objects={objects}: each split needs at least "
                         f"{NUM_CLASSES - 1} objects in all to hold every class; raise them.")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = toy_ids(num_train + num_val)
    splits = {"train": ids[:num_train], "val": ids[num_train:]}
    palette = voc_palette()
    for names in splits.values():
        for n, image_id in enumerate(names):
            classes = [1 + (n * objects + k) % (NUM_CLASSES - 1) for k in range(objects)]
            size = VOC_SIZES[int(rng.integers(len(VOC_SIZES)))]
            image, label = _sample(rng, size, classes)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=jpeg_quality)
            png = Image.fromarray(label)
            png.putpalette(palette)  # mode "P" with VOC's palette, as VOC's own PNGs
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
    splits["trainval"] = sorted(ids)
    for split, names in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in names))
    return voc
