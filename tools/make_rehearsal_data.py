"""Write what a rehearsal of the full profile runs on: VOC2012-shaped data and stand-in ImageNet weights.

    python tools/make_rehearsal_data.py [--out DIR]

``DIR`` (default: segbook's data folder, ``~/.cache/segbook/rehearsal``) gets

* ``voc/VOCdevkit/VOC2012``: a few dozen images at VOC's real sizes in VOC's
  exact layout (:func:`make_voc_shaped`); point
  ``SEGBOOK_VOC_ROOT`` at ``DIR/voc``;
* ``torch/hub/checkpoints/<file>``: for every ResNet the book builds, a freshly
  initialised torchvision model's ``state_dict``, saved under the exact file
  name of its ImageNet weights' URL; point ``TORCH_HOME`` at ``DIR/torch`` and
  torchvision's own loader (``weights.get_state_dict``, which checks the hash in
  the name only when it downloads) reads it as if it had been downloaded; and
  for chapter 8's MiT-B0, a Hugging Face ``SegformerForImageClassification``'s
  weights under the names of the published ``nvidia/mit-b0`` checkpoint, where
  :class:`segbook.models.mit.MixTransformer` caches its download, so that its
  key map runs as on a reader's machine (needs ``transformers``, which
  ``requirements.txt`` installs for the tests).

The weights are random: every key and shape is ImageNet's, no value is. Both
parts are made once; a second call finds them and returns. Nothing here
touches the network.

The VOC-shaped pictures are flat shapes on noise, at VOC's real sizes (JPEG
photographs of 500 x 375, 375 x 500, 500 x 333 ..., palette PNG labels with
VOC's palette and a 5-pixel 255 band, the three split files), with every one of
the 21 labels in each split and *without* the toy marker: to every reader it is
Pascal VOC2012, found where VOC2012 is found (``SEGBOOK_VOC_ROOT``). Nothing can
be learnt from them; they are for a rehearsal, never for a result.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import numpy as np
import torch

from segbook.data.synthetic import border_band, new_voc_folder, toy_ids, write_sample, write_splits
from segbook.data.voc import NUM_CLASSES, VOC_COLORMAP, layout_missing
from segbook.models.backbones import RESNETS
from segbook.settings import data_home

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
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), border_band(label, VOC_BAND)


def make_voc_shaped(root: os.PathLike | str, *, num_train: int = 40, num_val: int = 8, seed: int = 0,
                    objects: int = 3, jpeg_quality: int = 90) -> Path:
    """Write a VOC2012-shaped folder under ``root/VOCdevkit/VOC2012`` and return that folder.

    ``objects`` shapes per image, their classes taken in turn from 1..20 within
    each split, so each split holds all 21 labels once it has at least
    ``20 / objects`` images. Deterministic for a seed. The folder must be empty
    or absent: the set never mixes with another.
    """
    if min(num_train, num_val) * objects < NUM_CLASSES - 1:
        raise ValueError(f"num_train={num_train}, num_val={num_val}, objects={objects}: each split needs at least "
                         f"{NUM_CLASSES - 1} objects in all to hold every class; raise them.")
    voc = new_voc_folder(root, "make_voc_shaped")
    rng = np.random.default_rng(seed)
    ids = toy_ids(num_train + num_val)
    splits = {"train": ids[:num_train], "val": ids[num_train:]}
    for names in splits.values():
        for n, image_id in enumerate(names):
            classes = [1 + (n * objects + k) % (NUM_CLASSES - 1) for k in range(objects)]
            size = VOC_SIZES[int(rng.integers(len(VOC_SIZES)))]
            image, label = _sample(rng, size, classes)
            write_sample(voc, image_id, image, label, quality=jpeg_quality)
    write_splits(voc, splits)  # no marker: to every reader this is Pascal VOC2012
    return voc


def weight_file(torch_home: Path, name: str) -> Path:
    """Where torchvision looks for ``name``'s ImageNet weights under ``torch_home``."""
    _, weights = RESNETS[name]
    return torch_home / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]


def write_stand_in_weights(torch_home: Path) -> list[Path]:
    """A random-init torchvision ResNet's state dict for each of :data:`RESNETS`, under its weights' file name."""
    written = []
    for seed, (name, (build, _)) in enumerate(RESNETS.items()):
        path = weight_file(torch_home, name)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(seed)
            partial = path.with_suffix(".partial")
            torch.save(build(weights=None).state_dict(), partial)
            os.replace(partial, path)
        written.append(path)
    return written


# MiT-B0 in transformers' config names (the SegFormer authors' sizes).
B0 = dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
          sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], mlp_ratios=[4, 4, 4, 4],
          decoder_hidden_size=256, hidden_act="gelu")


def published_names(state_dict: dict) -> dict:
    """transformers 5's names written back in the checkpoint's (transformers 4) layout, as on the hub."""
    renames = [(r"^segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
               (r"^segformer\.stages\.(\d+)\.blocks\.(\d+)\.", r"segformer.encoder.block.\1.\2."),
               (r"^segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
               (r"layernorm_before", "layer_norm_1"), (r"layernorm_after", "layer_norm_2"),
               (r"attention\.q_proj", "attention.self.query"), (r"attention\.k_proj", "attention.self.key"),
               (r"attention\.v_proj", "attention.self.value"),
               (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
               (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
               (r"attention\.o_proj", "attention.output.dense"),
               (r"mlp\.fc1", "mlp.dense1"), (r"mlp\.fc2", "mlp.dense2")]
    published = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        published[key] = value
    return published


def write_stand_in_mit_b0(torch_home: Path) -> Path:
    """nvidia/mit-b0's file, random values under the published names, where ``MixTransformer`` caches it."""
    path = torch_home / "hub" / "checkpoints" / "nvidia_mit-b0.bin"
    if not path.is_file():
        from transformers import SegformerConfig, SegformerForImageClassification

        torch.manual_seed(len(RESNETS))
        classifier = SegformerForImageClassification(SegformerConfig(num_labels=1000, **B0))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save(published_names(classifier.state_dict()), partial)
        os.replace(partial, path)
    return path


def make_rehearsal_data(out: Path) -> tuple[Path, Path]:
    """``out/voc`` and ``out/torch``, made when missing; returns both (the values of SEGBOOK_VOC_ROOT, TORCH_HOME)."""
    voc_root, torch_home = out / "voc", out / "torch"
    voc = voc_root / "VOCdevkit" / "VOC2012"
    if layout_missing(voc) or not (voc / "ImageSets" / "Segmentation" / "trainval.txt").is_file():
        if voc.exists():
            raise FileExistsError(f"{voc} exists but is not a finished rehearsal set; delete {voc_root} "
                                  "and run again.")
        partial = out / "voc.partial"
        if partial.exists():
            import shutil
            shutil.rmtree(partial)
        make_voc_shaped(partial)
        os.replace(partial, voc_root)
    write_stand_in_weights(torch_home)
    write_stand_in_mit_b0(torch_home)
    return voc_root, torch_home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=data_home() / "rehearsal",
                        help="folder for voc/ and torch/ (default: %(default)s)")
    args = parser.parse_args(argv)
    voc_root, torch_home = make_rehearsal_data(args.out.expanduser())
    print(f"SEGBOOK_VOC_ROOT={voc_root}\nTORCH_HOME={torch_home}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
