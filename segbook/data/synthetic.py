"""What the generated data sets share: VOC's folder layout written once, and the drawing primitives.

Shapes take coordinates (u, v) in units of the object's size and return bool
masks; textures map pixel coordinates (x, y) to a mix in [0, 1] of two colours,
with periods in pixels, so a small object shows the same texture as a large one.
"""
from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from .voc import IGNORE_INDEX, TOY_MARKER, voc_palette

__all__ = ["CLUTTER_TEXTURES", "border_band", "box", "capsule", "checker", "color_pair", "dots", "ellipse", "fur",
           "generate_once", "gradient", "new_voc_folder", "object_frame", "panels", "polygon", "smooth_noise",
           "stripes", "toy_ids", "write_sample", "write_splits"]


def generate_once(parent: Path, name: str, make: Callable[[Path], object], what: str) -> Path:
    """``parent/name/VOCdevkit/VOC2012``, made by ``make(folder)`` the first time and reused after.

    Written into a temporary folder renamed into place when complete, so an
    interrupted run never leaves a half-made set that a later call would trust.
    """
    final = parent / name
    voc = final / "VOCdevkit" / "VOC2012"
    if (voc / TOY_MARKER).is_file():
        return voc
    if final.exists():
        raise FileExistsError(f"{final} exists but is not a finished {what}; delete it and call again.")
    parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=parent))
    try:
        make(partial)
        try:
            os.replace(partial, final)
        except OSError:  # another process finished first: use theirs
            if not (voc / TOY_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return voc


def new_voc_folder(root: os.PathLike | str, maker: str) -> Path:
    """``root/VOCdevkit/VOC2012`` with its three subfolders, refused (naming ``maker``) if it already holds files."""
    voc = Path(root).expanduser() / "VOCdevkit" / "VOC2012"
    if voc.exists() and any(voc.iterdir()):
        raise FileExistsError(f"{voc} already holds files; {maker} writes only into an empty folder. "
                              "Delete it, or pass another root.")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    return voc


def write_sample(voc: Path, image_id: str, image: np.ndarray, label: np.ndarray, **jpeg) -> None:
    """One picture as VOC stores it: ``JPEGImages/<id>.jpg`` and a palette PNG ``SegmentationClass/<id>.png``."""
    Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", **jpeg)
    png = Image.fromarray(label)  # mode "L"; the palette turns it into VOC's mode "P"
    png.putpalette(voc_palette())
    png.save(voc / "SegmentationClass" / f"{image_id}.png")


def write_splits(voc: Path, splits: dict[str, list[str]], settings: dict | None = None) -> None:
    """The split files (``trainval`` added), and with ``settings`` the marker that says the set was generated."""
    splits = {**splits, "trainval": sorted(i for names in splits.values() for i in names)}
    for split, names in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in names))
    if settings is not None:
        (voc / TOY_MARKER).write_text(json.dumps(settings, indent=1) + "\n")  # never taken for real VOC


def toy_ids(count: int) -> list[str]:
    """VOC-style ids (``2007_000032``): a year between 2007 and 2012 and a six-digit number, sorted."""
    return [f"{2007 + i * 6 // max(count, 1)}_{32 + 7 * i:06d}" for i in range(count)]


def ellipse(u, v, cu, cv, a, b):
    return ((u - cu) / a) ** 2 + ((v - cv) / b) ** 2 <= 1.0


def box(u, v, u0, u1, v0, v1, r=0.0):
    """An axis-aligned box in the object frame with corners rounded by radius ``r``."""
    hu, hv = (u1 - u0) / 2, (v1 - v0) / 2
    qu = np.maximum(np.abs(u - (u0 + u1) / 2) - hu + r, 0.0)
    qv = np.maximum(np.abs(v - (v0 + v1) / 2) - hv + r, 0.0)
    return qu ** 2 + qv ** 2 <= r ** 2 + 1e-9


def capsule(u, v, p0, p1, r):
    """Points within ``r`` of the segment p0-p1: a limb, a tail, a line of clutter."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / (du * du + dv * dv + 1e-12), 0.0, 1.0)
    return (u - p0[0] - t * du) ** 2 + (v - p0[1] - t * dv) ** 2 <= r * r


def polygon(u, v, points):
    """A convex polygon given counter- or clockwise: inside every edge's half-plane."""
    signs = []
    for (u0, v0), (u1, v1) in zip(points, points[1:] + points[:1]):
        signs.append((u1 - u0) * (v - v0) - (v1 - v0) * (u - u0))
    signs = np.stack(signs)  # (edges, h, w)
    return (signs >= 0).all(0) | (signs <= 0).all(0)


def gradient(x, y, rng):
    phi = rng.uniform(0, 2 * np.pi)
    ramp = x * np.cos(phi) + y * np.sin(phi)
    return (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)


def stripes(x, y, rng):
    period = rng.uniform(5.0, 9.0)
    return 0.5 + 0.5 * np.sin(2 * np.pi * y / period + rng.uniform(0, 2 * np.pi))


def checker(x, y, rng):
    period = rng.uniform(4.0, 7.0)
    return ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)


def fur(x, y, rng):
    """Speckle: a random value per cell of 2-3 pixels (finer noise would not survive JPEG)."""
    cell = rng.uniform(2.0, 3.0)
    table = rng.uniform(0.0, 1.0, size=(61, 59)).astype(np.float32)  # prime sides: no visible repeat
    return table[np.floor(x / cell).astype(np.int64) % 61, np.floor(y / cell).astype(np.int64) % 59]


def panels(x, y, rng):
    """Panel lines: a grid of thin lines, like the seams of a metal skin."""
    period = rng.uniform(6.0, 9.0)
    return ((np.mod(x, period) < 1.6) | (np.mod(y, period) < 1.6)).astype(np.float32)


def dots(x, y, rng):
    period = rng.uniform(5.0, 8.0)
    fx, fy = x / period - np.round(x / period), y / period - np.round(y / period)
    return (fx * fx + fy * fy <= 0.3 ** 2).astype(np.float32)


def color_pair(rng, hue, contrast):
    """A texture's ink and paper: two colours of about the same ``hue`` (0..1), ``contrast`` (0..1) apart in value."""
    saturation, value = rng.uniform(0.35, 1.0), rng.uniform(0.45, 1.0)
    other = value - contrast if value - contrast >= 0.1 else value + contrast
    first = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    second = colorsys.hsv_to_rgb((hue + rng.uniform(-0.05, 0.05)) % 1.0, saturation, min(max(other, 0.05), 1.0))
    return np.float32(first) * 255, np.float32(second) * 255


def object_frame(height, width, cx, cy, size, angle, aspect, mirror, reach):
    """Where an object can reach: the image slice, (u, v) in units of ``size``, (x, y) in pixels; None if off-image."""
    r = reach * size * max(aspect, 1 / aspect)
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, height)
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, width)
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)  # (h, w) each
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    x = (c * dx + s * dy) * mirror  # (h, w) pixels along the object's own axes
    y = -s * dx + c * dy
    u, v = x / (size * aspect), y / (size / aspect)
    return (slice(y0, y1), slice(x0, x1)), (u, v), (x, y)


def smooth_noise(rng, height, width, cells, amplitude):
    """Low-frequency colour noise: a few random values per side, upsampled bicubically."""
    small = rng.uniform(-amplitude, amplitude, size=(cells, cells, 3)).astype(np.float32)
    channels = [np.asarray(Image.fromarray(small[..., c]).resize((width, height), Image.BICUBIC))
                for c in range(3)]
    return np.stack(channels, axis=-1)  # (H, W, 3)


def border_band(label, border):
    """255 on every pixel within ``border`` pixels of a change of class (VOC's "difficult" outline band)."""
    padded = np.pad(label, border, mode="edge")
    height, width = label.shape
    band = np.zeros(label.shape, dtype=bool)
    for dy in range(-border, border + 1):
        for dx in range(-border, border + 1):
            if dy * dy + dx * dx <= border * border:
                band |= padded[border + dy:border + dy + height, border + dx:border + dx + width] != label
    out = label.copy()
    out[band] = IGNORE_INDEX
    return out


CLUTTER_TEXTURES = (panels, stripes, checker, fur, dots)
