"""A VOC-format set where only context decides the class: the same vehicle is a car on a road, a boat on water.

PSPNet's motivating failure (Zhao et al., 2017, Fig. 2) is a boat labelled "car".
A generic vehicle, its mat and a near field ``ring`` pixels wide (road or water
by a coin flip) are drawn by random streams that never see the scene; only the
scene beyond (asphalt: car; water: boat) tells the class. A network that pools
over the whole image sees it; one whose effective receptive field stays near the
object sees a coin flip. Every split is exactly balanced.
"""
from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np

from ..settings import data_home
from .synthetic import (CLUTTER_TEXTURES, border_band, box, color_pair, generate_once, gradient, object_frame,
                        new_voc_folder, polygon, smooth_noise, toy_ids, write_sample, write_splits)
from .voc import VOC_CLASSES

__all__ = ["CONTEXT_CLASSES", "CONTEXT_SIZE", "CONTEXT_VERSION", "SCENES", "context_sample", "get_context_voc_dir",
           "make_context_voc"]

CONTEXT_VERSION = 1  # bump when the pictures change, so cached copies are not reused
SCENES = {"road": "car", "water": "boat"}  # the scene decides the class; nothing else does
CONTEXT_CLASSES = ("boat", "car")  # VOC ids 4 and 7
CONTEXT_SIZE = (96, 32)  # (train, val) images by default
_UNIT_AREA = 1.2  # the hull's area at size 1, in size^2: sets the size for a wanted area


def _road(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grey asphalt with grain and dashed lane marks (white or yellow) at a small random angle."""
    grey = rng.uniform(70, 120)
    tint = rng.uniform(-6, 6, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
    image = np.zeros((height, width, 3), np.float32) + (grey + tint).astype(np.float32)  # (H, W, 3)
    grain = rng.uniform(-14, 14, size=(height // 2 + 1, width // 2 + 1)).astype(np.float32)
    image += grain.repeat(2, 0).repeat(2, 1)[:height, :width, None]  # 2-px grain: fine noise dies in JPEG
    image += smooth_noise(rng, height, width, int(rng.integers(3, 6)), 15)
    angle = np.deg2rad(rng.uniform(-20, 20))
    along = xx * np.cos(angle) + yy * np.sin(angle)  # (H, W) pixels along the road
    across = -xx * np.sin(angle) + yy * np.cos(angle)  # (H, W) pixels across it
    spacing, offset = rng.uniform(22, 34), rng.uniform(0, 34)
    dash, gap, phase = rng.uniform(8, 14), rng.uniform(6, 12), rng.uniform(0, 30)
    lane = np.abs(np.mod(across - offset + spacing / 2, spacing) - spacing / 2) < 1.2
    lane &= np.mod(along - phase, dash + gap) < dash
    paint = np.float32([235, 235, 230]) if rng.random() < 0.5 else np.float32([230, 195, 60])
    image[lane] = paint + rng.uniform(-10, 10)
    return image


def _water(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blue water, darker and lighter in large patches, with bright wavy ripple crests."""
    hue, saturation, value = rng.uniform(0.53, 0.62), rng.uniform(0.45, 0.85), rng.uniform(0.4, 0.75)
    base = np.float32(colorsys.hsv_to_rgb(hue, saturation, value)) * 255
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
    image = np.zeros((height, width, 3), np.float32) + base  # (H, W, 3)
    image += smooth_noise(rng, height, width, int(rng.integers(3, 6)), 20)
    angle = np.deg2rad(rng.uniform(-20, 20))
    along = xx * np.cos(angle) + yy * np.sin(angle)  # (H, W)
    across = -xx * np.sin(angle) + yy * np.cos(angle)  # (H, W)
    period, wave = rng.uniform(6, 10), rng.uniform(18, 40)
    ripple = np.sin(2 * np.pi * (across / period + 0.3 * np.sin(2 * np.pi * along / wave) + rng.uniform(0, 1)))
    image += (np.clip(ripple - 0.6, 0, None) / 0.4 * rng.uniform(35, 70))[..., None]  # (H, W, 1) crests
    return image


_SCENE_PAINTERS = {"road": _road, "water": _water}


def _hull(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A generic vehicle (body and cabin); returns the mask and the cabin's height, which the mat needs."""
    cabin, front = rng.uniform(0.3, 0.5), rng.uniform(0.35, 0.7)
    body = box(u, v, -1.0, 1.0, -0.05, 0.35, r=rng.uniform(0.08, 0.18))
    body |= polygon(u, v, [(-0.65, 0.0), (-0.45, -cabin), (front - 0.25, -cabin), (front, 0.0)])
    return body, cabin


def _paint_object(rng: np.random.Generator, image: np.ndarray, mask_out: np.ndarray, area_range, margin: float,
                  ring: float, near: np.ndarray | None):
    """Draw near field, mat and object over ``image``, mark the object in ``mask_out``; False if it barely shows."""
    height, width = mask_out.shape
    area = np.exp(rng.uniform(np.log(area_range[0]), np.log(area_range[1]))) * height * width  # log-uniform
    size = np.sqrt(area / _UNIT_AREA)
    aspect = rng.uniform(0.85, 1.15)
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.25, 0.75) * height
    frame = object_frame(height, width, cx, cy, size, np.deg2rad(rng.uniform(-12, 12)), aspect, rng.choice([-1, 1]),
                   1.4 + (margin + ring) / size)
    if frame is None:
        return False
    where, (u, v), (x, y) = frame
    mask, cabin = _hull(u, v, rng)
    if mask.sum() < 60:
        return False
    half_w, top, bottom = size * aspect, cabin * size / aspect, 0.35 * size / aspect
    if ring > 0:  # the near field: `ring` pixels of a scene texture chosen without knowing the scene
        reach = margin + ring
        band = box(x, y, -half_w - reach, half_w + reach, -top - reach, bottom + reach, r=min(reach, 8.0))
        image[where][band] = near[where][band]
    # The mat: a rounded rectangle `margin` pixels beyond the hull's extent, in a plain neutral colour.
    mat = box(x, y, -half_w - margin, half_w + margin, -top - margin, bottom + margin, r=min(margin, 6.0))
    mat_colour = np.float32(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.2),
                                                rng.uniform(0.55, 0.85))) * 255
    image[where][mat] = mat_colour + rng.uniform(-4, 4, size=(int(mat.sum()), 3))
    # The object: any of the toy set's textures, any hue, and the toy set's soft shading.
    c0, c1 = color_pair(rng, rng.uniform(0, 1), contrast=rng.uniform(0.35, 0.65))
    t = CLUTTER_TEXTURES[rng.integers(len(CLUTTER_TEXTURES))](x, y, rng)[..., None]  # (h, w, 1)
    colour = (c0 * (1 - t) + c1 * t) * (1.0 + 0.15 * (gradient(x, y, rng) - 0.5)[..., None])  # (h, w, 3)
    image[where][mask] = colour[mask]
    mask_out[where] |= mask
    return True


def context_sample(seed: int | np.random.SeedSequence, scene: str, size: tuple[int, int] = (96, 128), *,
                   margin: float = 3.0, ring: float = 8.0, area_range: tuple[float, float] = (0.04, 0.10),
                   border: int = 1, noise: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (H, W, 3), label uint8 (H, W)) pair: the object of ``seed`` in ``scene``.

    ``scene`` is ``"road"`` (car) or ``"water"`` (boat). ``seed`` splits into four
    independent streams: the scene's, the object's (with its mat and the choice of
    near-field texture), the near field's and the sensor noise's. Only the first
    depends on ``scene``, so the same seed in the other scene gives the very same
    pixels within ``margin + ring`` of the object.
    """
    if scene not in SCENES:
        raise ValueError(f"scene={scene!r}: use one of {', '.join(SCENES)}.")
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    # Child streams 0..3 of ``seed``, derived without .spawn() (which counts calls): a seed always means one picture.
    scene_rng, object_rng, near_rng, noise_rng = (
        np.random.default_rng(np.random.SeedSequence(sequence.entropy, spawn_key=(*sequence.spawn_key, k)))
        for k in range(4))
    height, width = size
    scene_image = _SCENE_PAINTERS[scene](scene_rng, height, width)  # (H, W, 3)
    near_scene = tuple(SCENES)[int(object_rng.integers(len(SCENES)))]  # a coin flip that never sees `scene`
    near = _SCENE_PAINTERS[near_scene](near_rng, height, width) if ring > 0 else None  # (H, W, 3)
    image = np.full((height, width, 3), np.nan, np.float32)  # (H, W, 3): near field, mat, object; scene-blind
    mask = np.zeros((height, width), bool)  # (H, W) the object's pixels
    for _ in range(20):  # a few tries: an object placed off the image is drawn again elsewhere
        if _paint_object(object_rng, image, mask, area_range, margin, ring, near):
            break
    covered = ~np.isnan(image[..., 0])  # (H, W) what the near field, the mat or the object painted
    image[~covered] = scene_image[~covered]
    image += noise_rng.normal(0.0, noise, size=image.shape)  # sensor noise, the same in both scenes
    label = np.where(mask, VOC_CLASSES.index(SCENES[scene]), 0).astype(np.uint8)  # (H, W)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), border_band(label, border)


def make_context_voc(root: os.PathLike | str, *, num_train: int = CONTEXT_SIZE[0], num_val: int = CONTEXT_SIZE[1],
                     seed: int = 0, size: tuple[int, int] = (96, 128), margin: float = 3.0, ring: float = 8.0,
                     area_range: tuple[float, float] = (0.04, 0.10), border: int = 1, noise: float = 3.0,
                     jpeg_quality: int = 90) -> Path:
    """Write the context set under ``root/VOCdevkit/VOC2012`` and return that folder; same arguments, same bytes.

    ``size``: (H, W) of every image; ``margin``: how far the mat reaches beyond the
    object, in pixels; ``ring``: the near field's width (0: none); ``area_range``: the
    object's area as a fraction of the image (log-uniform). JPEGs are written without
    chroma subsampling, so the water's colour does not bleed into the mat.
    """
    if num_train < 2 or num_val < 2:
        raise ValueError(f"num_train={num_train} and num_val={num_val}: each split needs at least one car "
                         "and one boat, so at least 2 images.")
    voc = new_voc_folder(root, "make_context_voc")
    root_sequence = np.random.SeedSequence(seed)
    split_rng = np.random.default_rng(root_sequence.spawn(1)[0])
    ids = toy_ids(num_train + num_val)
    order = split_rng.permutation(len(ids))
    splits = {"train": sorted(ids[i] for i in order[:num_train]), "val": sorted(ids[i] for i in order[num_train:])}
    scenes = {}
    for names in splits.values():  # exactly balanced per split; an odd split gets one road image more
        kinds = [("road", "water")[i % 2] for i in range(len(names))]
        scenes.update(zip(names, (kinds[i] for i in split_rng.permutation(len(names)))))
    for image_id, sample_seed in zip(ids, root_sequence.spawn(len(ids))):
        image, label = context_sample(sample_seed, scenes[image_id], size, margin=margin, ring=ring,
                                      area_range=area_range, border=border, noise=noise)
        write_sample(voc, image_id, image, label, quality=jpeg_quality, subsampling=0)
    write_splits(voc, splits, dict(kind="context", version=CONTEXT_VERSION, seed=seed, num_train=num_train,
                                   num_val=num_val, size=list(size), margin=margin, ring=ring,
                                   area_range=list(area_range), border=border, noise=noise,
                                   jpeg_quality=jpeg_quality, scenes=SCENES))
    return voc


def get_context_voc_dir(root: os.PathLike | str | None = None, *, seed: int = 0, num_train: int = CONTEXT_SIZE[0],
                        num_val: int = CONTEXT_SIZE[1], **kwargs) -> Path:
    """The context set for these settings (``kwargs`` go to :func:`make_context_voc`), generated once and reused."""
    parent = Path(root).expanduser() if root is not None else data_home()
    name = f"context_voc_v{CONTEXT_VERSION}_seed{seed}_{num_train}x{num_val}"
    name += "".join(f"_{key}{value}" for key, value in sorted(kwargs.items())).replace(" ", "")
    return generate_once(parent, name, lambda folder: make_context_voc(folder, num_train=num_train, num_val=num_val,
                                                                       seed=seed, **kwargs), "context set")
