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
  the name only when it downloads) reads it as if it had been downloaded.

The weights are random: every key and shape is ImageNet's, no value is. Both
parts are made once; a second call finds them and returns. Nothing here
touches the network.
"""
from __future__ import annotations

import argparse
import os
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
