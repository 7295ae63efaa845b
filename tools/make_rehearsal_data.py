"""Write what a rehearsal of the full profile runs on: VOC2012-shaped data and stand-in ImageNet weights.

    python tools/make_rehearsal_data.py [--out DIR]

``DIR`` (default: segbook's data folder, ``~/.cache/segbook/rehearsal``) gets

* ``voc/VOCdevkit/VOC2012``: a few dozen images at VOC's real sizes in VOC's
  exact layout (:func:`segbook.data.voc_shaped.make_voc_shaped`); point
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
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from segbook.data.voc import layout_missing  # noqa: E402
from segbook.data.voc_shaped import make_voc_shaped  # noqa: E402
from segbook.models.backbones import RESNETS  # noqa: E402
from segbook.paths import data_home  # noqa: E402


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
