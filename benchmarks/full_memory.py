"""GPU memory of one training step at each chapter's full-profile settings, measured on the CPU.

    python -m benchmarks.full_memory             # about 2 minutes on 2 cores; writes segbook/results/full_memory.json
    python -m benchmarks.full_memory 08_segformer    # one chapter's entry, the others kept

For each chapter that trains, the model its full profile builds, at its crop,
in mixed precision as ``fit`` runs it on CUDA (bfloat16 autocast on the CPU
stands in for float16: both are 2 bytes), is tallied by
:func:`segbook.step_memory.step_memory`: weights, gradients, SGD's momentum
(AdamW's two moments for chapters 8 and 9) and the activations saved for backward. The tally is made at batch 2 and 3 and
is linear in the batch (every saved activation is per image), so the full
batch is ``fixed + per_image * batch``; the chapters read the JSON and say
which card fits, and what batch a 15 GB card (Colab's T4) takes.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from segbook.models import build_model
from segbook.models.mask2former import PAPER_SETTINGS
from segbook.models.pointrend import PointRend
from segbook.step_memory import CUDA_OVERHEAD_GIB, largest_batch, step_memory

CARDS_GIB = {"a 4 GB card": 4.0, "an 8 GB card": 8.0, "a 15 GB T4 (Colab)": 15.0, "a 24 GB card": 24.0}
NUM_CLASSES = 21

# chapter -> (the full profile's settings, as its training cell writes them; a builder).
# "optimizer_slots": tensors the optimiser keeps per weight (SGD's momentum 1, AdamW's moments 2).
CHAPTERS = {
    "03_fcn": (dict(model="fcn8s", backbone="resnet18", crop_size=(320, 480), batch_size=32),
               lambda: build_model("fcn8s", num_classes=NUM_CLASSES)),
    "04_pspnet": (dict(model="pspnet", backbone="resnet50", output_stride=8, crop_size=(473, 473), batch_size=8),
                  lambda: build_model("pspnet", backbone="resnet50", output_stride=8, num_classes=NUM_CLASSES)),
    "05_ccnet": (dict(model="ccnet", backbone="resnet50", output_stride=8, crop_size=(320, 480), batch_size=8),
                 lambda: build_model("ccnet", num_classes=NUM_CLASSES, backbone="resnet50", output_stride=8,
                                     recurrence=2)),
    "06_pointrend": (dict(model="pointrend", backbone="resnet50", output_stride=16, channels=256, num_points=1024,
                          crop_size=(320, 480), batch_size=16),
                     lambda: PointRend(NUM_CLASSES, backbone="resnet50", output_stride=16, aspp_channels=256,
                                       decoder_channels=256, point_channels=256, num_points=1024,
                                       subdivision_num_points=8192)),
    "08_segformer": (dict(model="segformer", backbone="mit_b0", crop_size=(512, 512), batch_size=8,
                          optimizer="adamw", optimizer_slots=2),
                     lambda: build_model("segformer", num_classes=NUM_CLASSES)),
    "09_mask2former": (dict(model="mask2former", backbone="resnet50", crop_size=(512, 512), batch_size=8,
                            num_points=12544, optimizer="adamw", optimizer_slots=2),
                       lambda: build_model("mask2former", num_classes=NUM_CLASSES, **PAPER_SETTINGS)),
}


def measure(build, crop_size: tuple[int, int], optimizer_slots: int = 1) -> tuple[int, int]:
    """(fixed bytes, bytes per image) of one training step, from tallies at batch 2 and 3.

    (Not batch 1: PSPNet's 1x1 bin cannot normalise a batch of one image in training.)
    """
    totals = []
    for batch in (2, 3):
        torch.manual_seed(0)
        model = build().to(memory_format=torch.channels_last)
        images = torch.randn(batch, 3, *crop_size).contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, NUM_CLASSES, (batch, *crop_size))
        target[:, :8] = 255  # a band of VOC's ignore label, as crops padded past the image have
        totals.append(step_memory(model, images, target, amp_dtype=torch.bfloat16,
                                  optimizer_slots=optimizer_slots)["total"])
    per_image = totals[1] - totals[0]
    return totals[0] - 2 * per_image, per_image


def main(argv: list[str]) -> int:
    torch.set_num_threads(2)
    out = ROOT / "segbook" / "results" / "full_memory.json"
    unknown = sorted(set(argv) - set(CHAPTERS))
    if unknown:
        raise SystemExit(f"unknown chapter(s) {unknown}; choose from {sorted(CHAPTERS)}")
    kept = json.loads(out.read_text())["chapters"] if argv and out.is_file() else {}
    chapters = {name: kept[name] for name in CHAPTERS if name in kept and name not in argv}
    for name, (settings, build) in CHAPTERS.items():
        if argv and name not in argv:
            continue
        began = time.perf_counter()
        fixed, per_image = measure(build, settings["crop_size"], settings.get("optimizer_slots", 1))
        batch = settings["batch_size"]
        need = fixed + per_image * batch
        largest = {card: largest_batch(fixed, per_image, gib) for card, gib in CARDS_GIB.items()}
        chapters[name] = {"settings": settings, "fixed_bytes": fixed, "per_image_bytes": per_image,
                          "fixed_gib": round(fixed / 2**30, 2),
                          "per_image_gib": round(per_image / 2**30, 3), "step_gib": round(need / 2**30, 1),
                          "largest_batch": largest}
        print(f"{name:<13} {need / 2**30:5.1f} GiB at batch {batch} ({fixed / 2**30:.2f} + "
              f"{per_image / 2**30:.3f} per image); largest batch: {largest} "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
    chapters = {name: chapters[name] for name in CHAPTERS if name in chapters}  # the chapters' order
    out.write_text(json.dumps({
        "how": "benchmarks/full_memory.py: segbook.step_memory.step_memory at batch 2 and 3 on the CPU, "
               "bfloat16 autocast standing in for CUDA's float16, channels-last, SGD with momentum "
               "(AdamW's two moments where the settings say so); linear in the batch",
        "overhead_gib": CUDA_OVERHEAD_GIB, "cards_gib": CARDS_GIB, "chapters": chapters}, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
