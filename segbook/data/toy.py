"""A toy Pascal VOC2012, drawn offline in seconds, that a CPU model can learn in a minute.

Written in VOC's own layout, so the quick profile runs the full one's reader,
transforms and 255 border band. Each class has its own shape family (a car is a
body with two dark wheels) at random scale, aspect, rotation and mirror, and its
own texture; hue ranges overlap, so colour is a hint, never the answer; the
background holds clutter, some in an object's texture, so the shape must agree.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .synthetic import (CLUTTER_TEXTURES, border_band, box, capsule, checker, color_pair, dots, ellipse, fur,
                        gradient, new_voc_folder, object_frame, panels, polygon, smooth_noise, stripes, toy_ids,
                        write_sample, write_splits)
from .voc import VOC_CLASSES

TOY_VERSION = 2  # bump when the pictures change, so cached copies are not reused
TOY_CLASSES = ("aeroplane", "bottle", "car", "cat", "person")  # the VOC classes that the toy set draws
TOY_SIZE = (200, 50)  # (train, val) images by default: 25 batches of 8 an epoch, validation in seconds


# The five shape families; each returns (mask, dark): the object's pixels and an optional near-black part (wheels).
def _aeroplane(u, v, rng):
    sweep = rng.uniform(0.15, 0.45)
    span = rng.uniform(0.75, 1.0)
    body = ellipse(u, v, 0.0, 0.0, 1.0, rng.uniform(0.11, 0.16))
    for side in (-1, 1):  # swept wings and tailplane, mirrored about the fuselage
        body |= polygon(u, v, [(0.3, 0.0), (0.3 - sweep - 0.25, side * span), (0.3 - sweep - 0.45, side * span),
                                (-0.2, 0.0)])
        body |= polygon(u, v, [(-0.7, 0.0), (-0.92, side * 0.35), (-1.0, side * 0.35), (-0.95, 0.0)])
    return body, None


def _bottle(u, v, rng):
    w = rng.uniform(0.26, 0.38)
    body = box(u, v, -w, w, -0.25, 1.0, r=0.1)
    body |= ellipse(u, v, 0.0, -0.25, w, 0.22)  # shoulders
    neck = rng.uniform(0.08, 0.12)
    body |= box(u, v, -neck, neck, -0.8, -0.2)
    body |= box(u, v, -neck - 0.03, neck + 0.03, -0.95, -0.75, r=0.02)  # cap
    return body, None


def _car(u, v, rng):
    roof = rng.uniform(0.3, 0.45)
    body = box(u, v, -1.0, 1.0, -0.05, 0.35, r=0.12)
    body |= polygon(u, v, [(-0.6, 0.0), (-0.3, -roof), (0.35, -roof), (0.65, 0.0)])  # cabin
    wheels = ellipse(u, v, -0.6, 0.38, 0.2, 0.2) | ellipse(u, v, 0.6, 0.38, 0.2, 0.2)
    return body | wheels, wheels


def _cat(u, v, rng):
    body = ellipse(u, v, 0.15, 0.15, 0.7, rng.uniform(0.3, 0.4))
    hu, hv, hr = -0.65, -0.3, rng.uniform(0.25, 0.32)
    body |= ellipse(u, v, hu, hv, hr, hr)
    for du in (-0.6, 0.6):  # two pointed ears on top of the head
        base = hu + du * hr
        body |= polygon(u, v, [(base - 0.14, hv - 0.6 * hr), (base + 0.02 * np.sign(du), hv - 1.75 * hr),
                                (base + 0.14, hv - 0.6 * hr)])
    tail_end = (rng.uniform(0.95, 1.1), rng.uniform(-0.6, 0.2))
    body |= capsule(u, v, (0.75, 0.1), tail_end, 0.07)
    return body, None


def _person(u, v, rng):
    body = ellipse(u, v, 0.0, -0.8, 0.17, 0.19)  # head
    body |= capsule(u, v, (0.0, -0.5), (0.0, 0.1), 0.2)  # torso
    for side in (-1, 1):
        angle = rng.uniform(0.1, 1.4)  # arm raised from hanging (0) towards horizontal
        hand = (side * (0.16 + 0.55 * np.sin(angle)), -0.45 + 0.55 * np.cos(angle))
        body |= capsule(u, v, (side * 0.16, -0.45), hand, 0.07)
        body |= capsule(u, v, (side * 0.1, 0.1), (side * rng.uniform(0.12, 0.35), 0.95), 0.09)  # leg
    return body, None


# class -> (drawing function, largest rotation in degrees, area at size 1: sets the size for a wanted area)
_FAMILIES = {
    "aeroplane": (_aeroplane, 40, 1.0),
    "bottle": (_bottle, 25, 1.0),
    "car": (_car, 12, 1.24),
    "cat": (_cat, 20, 1.15),
    "person": (_person, 10, 0.88),
}
_TEXTURES = {"aeroplane": panels, "bottle": stripes, "car": checker, "cat": fur, "person": dots}  # one per class


def _background(rng, height, width, clutter):
    """Gradient plus low-frequency noise, then 0..``clutter`` pieces of clutter that stay labelled background."""
    base, other = color_pair(rng, rng.uniform(0, 1), contrast=rng.uniform(0.1, 0.4))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = gradient(xx, yy, rng)[..., None]  # (H, W, 1)
    image = base * (1 - t) + other * t + smooth_noise(rng, height, width, int(rng.integers(3, 7)), 40)
    for _ in range(int(rng.integers(0, clutter + 1))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        size = rng.uniform(6, 0.35 * min(height, width))
        frame = object_frame(height, width, cx, cy, size, rng.uniform(0, np.pi), rng.uniform(0.6, 1.6), 1, 1.5)
        if frame is None:
            continue
        where, (u, v), (x, y) = frame
        kind = rng.integers(0, 3)
        if kind == 0:
            mask = box(u, v, -1, 1, -rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0), r=rng.uniform(0, 0.3))
        elif kind == 1:
            mask = ellipse(u, v, 0, 0, 1, rng.uniform(0.3, 1.0))
        else:
            mask = capsule(u, v, (-1.2, 0), (1.2, 0), rng.uniform(0.04, 0.12))
        c0, c1 = color_pair(rng, rng.uniform(0, 1), contrast=rng.uniform(0.1, 0.5))
        tex = CLUTTER_TEXTURES[rng.integers(len(CLUTTER_TEXTURES))](x, y, rng) if rng.random() < 0.25 else 0.0
        tex = np.broadcast_to(np.asarray(tex, dtype=np.float32), mask.shape)[..., None]
        patch = image[where]
        patch[mask] = (c0 * (1 - tex) + c1 * tex)[mask]
    return image


def _draw_object(rng, image, label, class_name, area_range, hue_spread):
    """Paint one object over ``image`` and write its class id into ``label``; False when it barely shows."""
    height, width = label.shape
    draw, max_rotation, unit_area = _FAMILIES[class_name]
    area = np.exp(rng.uniform(np.log(area_range[0]), np.log(area_range[1]))) * height * width  # log-uniform
    size = np.sqrt(area / unit_area)
    cx, cy = rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.95) * height
    angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation))
    frame = object_frame(height, width, cx, cy, size, angle, rng.uniform(0.8, 1.25), rng.choice([-1, 1]), 1.3)
    if frame is None:
        return False
    where, (u, v), (x, y) = frame
    mask, dark = draw(u, v, rng)
    if mask.sum() < 60:
        return False
    hue = TOY_CLASSES.index(class_name) / len(TOY_CLASSES) + rng.uniform(-0.5, 0.5) * hue_spread / 360
    c0, c1 = color_pair(rng, hue, contrast=rng.uniform(0.35, 0.65))
    t = _TEXTURES[class_name](x, y, rng)[..., None]  # (h, w, 1)
    colour = c0 * (1 - t) + c1 * t  # (h, w, 3)
    shade = 1.0 + 0.15 * (gradient(x, y, rng) - 0.5)[..., None]  # soft light across the object
    colour = colour * shade
    if dark is not None:
        colour[dark] = rng.uniform(10, 50)
    image[where][mask] = colour[mask]
    label[where][mask] = VOC_CLASSES.index(class_name)
    return True


def _image_size(rng, side_range):
    """Landscape two times in three (as in VOC), portrait otherwise; sides within ``side_range``."""
    lo, hi = side_range
    long_side = int(rng.integers((lo + hi) // 2, hi + 1))
    short_side = int(rng.integers(lo, max(lo + 1, int(long_side * 0.85)) + 1))
    return (short_side, long_side) if rng.random() < 2 / 3 else (long_side, short_side)  # (H, W)


def _toy_sample(rng, side_range, area_range, border, noise, clutter, hue_spread):
    """One (image uint8 (H, W, 3), label uint8 (H, W)) pair with 1-3 objects."""
    height, width = _image_size(rng, side_range)
    image = _background(rng, height, width, clutter)
    label = np.zeros((height, width), dtype=np.uint8)
    count = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    drawn = 0
    for _ in range(20):  # a few tries: an object placed off the image is drawn again elsewhere
        drawn += _draw_object(rng, image, label, TOY_CLASSES[rng.integers(len(TOY_CLASSES))], area_range,
                              hue_spread)
        if drawn == count:
            break
    image = image + rng.normal(0.0, noise, size=image.shape)  # sensor noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), border_band(label, border)


def make_toy_voc(root: os.PathLike | str, *, num_train: int = TOY_SIZE[0], num_val: int = TOY_SIZE[1],
                 seed: int = 0, side_range: tuple[int, int] = (110, 220), area_range: tuple[float, float] = (0.05, 0.5),
                 border: int = 1, noise: float = 4.0, clutter: int = 5, hue_spread: float = 150.0,
                 jpeg_quality: int = 90) -> Path:
    """Write a toy VOC2012 under ``root/VOCdevkit/VOC2012`` and return that folder; same arguments, same bytes.

    The defaults make 250 images in about two seconds, which a small random-init
    FCN learns to a clearly non-trivial, far from perfect mIoU in a few hundred CPU
    steps. ``area_range``: an object's area as a fraction of the image (log-uniform:
    small objects as common as large). ``border``: the 255 band's half-width.
    ``clutter``: at most this many distractors. ``hue_spread``: each class's hue
    range in degrees (360: colour carries no hint).
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train={num_train} and num_val={num_val}: both splits need at least one image.")
    voc = new_voc_folder(root, "make_toy_voc")
    rng = np.random.default_rng(seed)
    ids = toy_ids(num_train + num_val)
    for image_id in ids:
        image, label = _toy_sample(rng, side_range, area_range, border, noise, clutter, hue_spread)
        write_sample(voc, image_id, image, label, quality=jpeg_quality)
    order = rng.permutation(len(ids))
    splits = {"train": sorted(ids[i] for i in order[:num_train]), "val": sorted(ids[i] for i in order[num_train:])}
    write_splits(voc, splits, dict(version=TOY_VERSION, seed=seed, num_train=num_train, num_val=num_val,
                                   classes=TOY_CLASSES, side_range=side_range, area_range=area_range, border=border,
                                   noise=noise, clutter=clutter, hue_spread=hue_spread, jpeg_quality=jpeg_quality))
    return voc
