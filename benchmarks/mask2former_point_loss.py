"""Mask2Former's mask loss on sampled points against the dense loss: time and peak memory, side by side.

One decoder layer's mask loss (sigmoid BCE + dice of the R matched masks,
forward and backward) computed three ways on the same predictions and labels:

* ``points``: P = 12544 points per mask (112 x 112), chosen by chapter 6's
  importance sampling (3P drawn and read without gradient, the 75 % most
  uncertain kept, the rest uniform): :func:`segbook.models.set_criterion.point_mask_losses`;
* ``dense stride 4``: every cell of the (H/4) x (W/4) mask logits, the labels
  read at the cells' centres: ``dense_mask_losses(..., size=None)``;
* ``dense input size``: the logits upsampled bilinearly to H x W and every
  pixel scored, as MaskFormer did: ``dense_mask_losses(..., size=(H, W))``.

The same three ways are timed for the matching cost of one image (no gradient;
the (N, T) cost of every query against every region, :func:`matching_cost`): on
P points drawn uniformly (Mask2Former), on every stride-4 cell (MaskFormer
matched there) or on every pixel.

The setting is the full profile's: a batch of B 512 x 512 crops, N = 100
queries whose (B, N, H/4, W/4) mask logits require a gradient, T regions per
image, so R = B T matched masks (VOC crops hold two to four classes; the ratios
barely depend on R, since every method is linear in it). Mask2Former computes
this loss for each of its 10 predictions (9 layers and the queries' own).

Time: the median over ``--rounds`` of one forward + backward, the methods
interleaved with their order rotating every round so that a busy machine slows
all alike. Peak memory: what the step allocates above what existed before it
(``experiments/harness.py``: CUDA's counter, or the CPU profiler's allocation
records), measured in its own untimed pass. Ratios are dense / points.

    python -m benchmarks.mask2former_point_loss                  # CPU, under a minute
    python -m benchmarks.mask2former_point_loss --write          # store segbook/results/mask2former_point_loss.json

Without ``--write`` the JSON goes to a scratch file (``--output`` to choose),
so a trial run never replaces the stored one that chapter 9 prints.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
from experiments.harness import add_output_options, output_path, stamp, write_json
from experiments.harness import cpu_name, peak_bytes, sync

from segbook.models.set_criterion import (LOSS_SETTINGS, dense_mask_losses, matching_cost,
                                          point_mask_losses, semantic_targets)

NAME = "mask2former_point_loss"
METHODS = ("points", "dense stride 4", "dense input size")


def make_inputs(args: argparse.Namespace, device: torch.device) -> dict:
    """One image's (N, h, w) mask logits and labels, R = B T matched logits (R, h, w) with a gradient, their masks."""
    g = torch.Generator().manual_seed(0)
    h = w = -(-args.size // 4)
    label = torch.randint(0, args.regions, (args.batch, args.size // 16, args.size // 16), generator=g)
    label = F.interpolate(label[:, None].float(), size=(args.size, args.size), mode="nearest")[:, 0].long()  # (B, H, W)
    label[:, :, : args.size // 32] = 255                                               # an ignored band
    regions, counted = semantic_targets(label, args.regions)
    images = torch.arange(args.batch).repeat_interleave(args.regions)                 # (R,): regions in image order
    return {"logits": torch.randn(args.queries, args.regions + 1, generator=g).to(device),  # (N, K + 1), image 0
            "masks": (3 * torch.randn(args.queries, h, w, generator=g)).to(device),  # (N, h, w), image 0
            "classes": regions[0][0].to(device), "image_masks": regions[0][1].to(device),
            "image_counted": counted[0].to(device),
            "matched": (3 * torch.randn(len(images), h, w, generator=g)).to(device).requires_grad_(True),
            "true_masks": torch.cat([masks for _, masks in regions]).to(device),          # (R, H, W)
            "counted": counted[images].to(device), "num_masks": float(len(images))}


def centres(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(1, height * width, 2): every cell centre of a height x width grid, in [0, 1] x [0, 1]."""
    y = (torch.arange(height, device=device) + 0.5) / height
    x = (torch.arange(width, device=device) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).reshape(1, -1, 2)


def match_cost(method: str, inputs: dict, args: argparse.Namespace) -> torch.Tensor:
    """The (N, T) matching cost of one image, on P uniform points or on every cell of a grid (no gradient)."""
    h, w = inputs["masks"].shape[-2:]
    coords = {"points": lambda: torch.rand(1, args.points, 2, device=inputs["masks"].device),
              "dense stride 4": lambda: centres(h, w, inputs["masks"].device),
              "dense input size": lambda: centres(args.size, args.size, inputs["masks"].device)}[method]()
    with torch.no_grad():
        return matching_cost(inputs["logits"], inputs["masks"], inputs["classes"], inputs["image_masks"],
                             inputs["image_counted"], coords)


def mask_loss(method: str, inputs: dict, args: argparse.Namespace) -> None:
    """Forward and backward of the R matched masks' BCE + dice by ``method``."""
    inputs["matched"].grad = None
    common = (inputs["matched"], inputs["true_masks"], inputs["counted"], inputs["num_masks"])
    if method == "points":
        bce, dice = point_mask_losses(*common, num_points=args.points)
    elif method == "dense stride 4":
        bce, dice = dense_mask_losses(*common)
    else:
        bce, dice = dense_mask_losses(*common, size=(args.size, args.size))
    (LOSS_SETTINGS["mask_weight"] * bce + LOSS_SETTINGS["dice_weight"] * dice).backward()


PARTS = {"mask loss of the batch": mask_loss, "matching cost of one image": match_cost}


def measure(device: torch.device, args: argparse.Namespace) -> dict:
    """Median time and peak memory of each part by each method, interleaved; ratios to the points."""
    inputs = make_inputs(args, device)
    jobs = [(part, method) for part in PARTS for method in METHODS]
    for part, method in jobs:  # warm-up
        PARTS[part](method, inputs, args)
    memory = {job: peak_bytes(lambda job=job: PARTS[job[0]](job[1], inputs, args), device)[1] for job in jobs}
    times: dict[tuple[str, str], list[float]] = {job: [] for job in jobs}
    for r in range(args.rounds):
        for part, method in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:  # the order rotates every round
            sync(device)
            began = time.perf_counter()
            PARTS[part](method, inputs, args)
            sync(device)
            times[part, method].append(time.perf_counter() - began)
    ms = {job: 1e3 * statistics.median(t) for job, t in times.items()}
    scored = {"points": args.points, "dense stride 4": (-(-args.size // 4)) ** 2, "dense input size": args.size ** 2}
    return {part: {method: {"ms": round(ms[part, method], 2), "peak_mib": round(memory[part, method] / 2**20, 1),
                            "time_x_points": round(ms[part, method] / ms[part, "points"], 2),
                            "memory_x_points": round(memory[part, method] / memory[part, "points"], 2),
                            "scored_per_mask": scored[method]} for method in METHODS} for part in PARTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="crop side H = W (512: the full profile's)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--regions", type=int, default=3, help="T, regions per image (R = batch x T)")
    parser.add_argument("--points", type=int, default=LOSS_SETTINGS["num_points"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    add_output_options(parser, NAME)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = measure(device, args)
    print(f"{device.type.upper()}: {args.batch} x {args.size} x {args.size}, {args.queries} queries, "
          f"R = {args.batch * args.regions} matched masks, P = {args.points}, {args.rounds} rounds (median), "
          f"{torch.get_num_threads()} threads")
    for part, table in rows.items():
        print(f"\n{part}:\n{'method':>17}  {'ms':>8}  {'peak MiB':>8}  {'time x':>6}  {'memory x':>8}  "
              f"{'scored/mask':>11}")
        for method, row in table.items():
            print(f"{method:>17}  {row['ms']:>8.1f}  {row['peak_mib']:>8.1f}  {row['time_x_points']:>6.2f}  "
                  f"{row['memory_x_points']:>8.2f}  {row['scored_per_mask']:>11,}")
    settings = {key: getattr(args, key) for key in ("size", "batch", "queries", "regions", "points", "rounds",
                                                    "threads", "device")}
    settings.update(oversample_ratio=LOSS_SETTINGS["oversample_ratio"],
                    importance_sample_ratio=LOSS_SETTINGS["importance_sample_ratio"], layers_per_loss=10)
    path = output_path(args, NAME)
    write_json(path, {"settings": settings, **stamp(), "cpu": cpu_name() if device.type == "cpu" else
                      torch.cuda.get_device_name(device), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
