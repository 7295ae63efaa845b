"""A tiny VOC2012 folder written with PIL, for the reader and downloader tests.

It follows VOC's conventions on purpose (JPEG images, palette PNG labels with
VOC's palette, a 255 border band round every object, split files) so that
``torchvision.datasets.VOCSegmentation`` can read it as an independent
reference. Sizes vary, one image is smaller than any crop, one JPEG is grey.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segbook.data.voc import IGNORE_INDEX, voc_palette

# id -> (width, height, JPEG mode); VOC's ids look like 2007_000032
TINY_VOC = {
    "2007_000001": (48, 40, "RGB"),
    "2007_000002": (40, 56, "RGB"),
    "2007_000003": (17, 23, "RGB"),  # smaller than any crop: must be kept, not dropped
    "2008_000004": (64, 48, "L"),  # a grey JPEG: both readers turn it into RGB
    "2008_000005": (36, 36, "RGB"),
}
TINY_SPLITS = {"train": ["2007_000002", "2007_000001", "2008_000004"], "val": ["2008_000005", "2007_000003"]}


def tiny_label(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A palette PNG: background, two objects of random classes, each ringed by a 255 band."""
    label = Image.new("P", (width, height), 0)
    label.putpalette(voc_palette())
    draw = ImageDraw.Draw(label)
    for _ in range(2):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = int(rng.integers(x0 + 4, width)), int(rng.integers(y0 + 4, height))
        draw.rectangle((x0, y0, x1, y1), fill=int(rng.integers(1, 21)), outline=IGNORE_INDEX, width=2)
    return label


def write_tiny_voc(root: Path, *, seed: int = 0, items: dict = TINY_VOC, splits: dict = TINY_SPLITS) -> Path:
    """Write ``root/VOCdevkit/VOC2012`` and return that folder (what VOCSegmentation takes)."""
    rng = np.random.default_rng(seed)
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (width, height, mode) in items.items():
        channels = 3 if mode == "RGB" else 1
        pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)  # (H, W, C)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(
            voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        tiny_label(width, height, rng).save(voc / "SegmentationClass" / f"{image_id}.png")
    for split, ids in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc
