"""PointRend's subdivision inference against a dense point head at full size: time, peak memory, evaluations.

The point head could simply be run at every pixel of the output. Subdivision
runs it at ``subdivision_num_points`` cells per step instead (8192 in
detectron2), two steps from stride 4. This script measures both on the same
coarse logits and stride-4 features, side by side in one run: the two methods
alternate (their order flips every round) and the medians over the rounds are
compared, so a busy machine slows both alike. The shared part (backbone and
DeepLabV3+ decoder) is timed once per size for scale and is not in the ratios.

Peak memory is the most memory held by tensors the method created, above what
existed when it started: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU
a dispatch mode adds up the bytes of every live tensor storage an operator
returns (kernels' private scratch buffers are not seen). It is measured in its
own untimed pass before the timed rounds, since the bookkeeping slows the CPU run.

The defaults (ResNet-18, 64-channel decoder and point head, 19 classes as
Cityscapes) finish in a few minutes on 2 CPU cores; ``--paper`` uses the paper's
setting (ResNet-101, 256-channel decoder, 3 x 256 point head).

    python -m benchmarks.pointrend_inference                      # CPU, and CUDA when there is one
    python -m benchmarks.pointrend_inference --paper --sizes 1024x2048 --device cuda
    python -m benchmarks.pointrend_inference --device cpu --output segbook/results/pointrend_inference.json

With ``--output`` the measurements are also written as JSON, with the
configuration, thread count, machine and torch version that produced them:
chapter 6 prints its figures from the copy stored in ``segbook/results/``.
Without it nothing is written, so a trial run never replaces the stored one.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from experiments.harness import cpu_name
from segbook.models.pointrend import PointRend, dense_point_inference, subdivision_inference, subdivision_sizes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created by operators while active; ``peak`` is the most alive at once.

    An output that shares storage with an operator's input (a view, an in-place
    result) adds nothing new. A storage's bytes are released when the last
    tensor that was seen holding it is garbage collected.
    """

    def __init__(self) -> None:
        super().__init__()
        self.holders: dict[int, int] = {}     # storage pointer -> tensors alive that hold it
        self.now = self.peak = 0

    def _release(self, key: int, nbytes: int) -> None:
        self.holders[key] -= 1
        if self.holders[key] == 0:
            del self.holders[key]
            self.now -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or (key in inputs and key not in self.holders):
                continue                      # a view of memory that existed before
            if key not in self.holders:
                self.now += nbytes
                self.peak = max(self.peak, self.now)
            self.holders[key] = self.holders.get(key, 0) + 1
            weakref.finalize(t, self._release, key, nbytes)
        return out


def peak_bytes(fn, device: torch.device) -> int:
    """Peak memory of the tensors ``fn()`` allocates, above what was allocated before it ran."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        _sync(device)
        del result
        return torch.cuda.max_memory_allocated(device) - before
    with LiveTensorBytes() as tracker:
        result = fn()
        del result
    return tracker.peak


def seconds(fn, device: torch.device) -> float:
    _sync(device)
    began = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - began


def evaluations(coarse_size: tuple[int, int], size: tuple[int, int], num_points: int) -> list[int]:
    """Point-head evaluations per image at each subdivision step (a step cannot pick more cells than it has)."""
    return [min(num_points, h * w) for h, w in subdivision_sizes(coarse_size, size)]


def point_head_macs(model: PointRend) -> int:
    """Multiply-accumulates of one point-head evaluation (its 1x1 Conv1d layers)."""
    return sum(m.in_channels * m.out_channels for m in model.point_head.modules() if isinstance(m, torch.nn.Conv1d))


def run(device: torch.device, args: argparse.Namespace) -> list[dict]:
    """Print the table for ``device``; return its rows as stored by ``--output`` (ms and MiB to 0.1)."""
    torch.manual_seed(0)
    channels = 256 if args.paper else args.channels
    model = PointRend(args.num_classes, backbone="resnet101" if args.paper else args.backbone,
                      decoder_channels=channels, aspp_channels=channels, point_channels=channels,
                      subdivision_num_points=args.num_points).to(device).eval()
    head, points = model.point_head, args.num_points
    print(f"\n{device.type.upper()}: {'ResNet-101' if args.paper else args.backbone}, {channels}-channel decoder "
          f"and point head, K = {args.num_classes}, {points} points per step, {args.rounds} rounds "
          f"(median), batch of 1, {torch.get_num_threads()} CPU threads")
    print(f"one point-head evaluation: {point_head_macs(model):,} multiply-accumulates")
    header = (f"{'size':>10}  {'coarse ms':>9}  {'subdiv ms':>9}  {'dense ms':>9}  {'time x':>7}  "
              f"{'subdiv MiB':>10}  {'dense MiB':>9}  {'mem x':>6}  {'evals subdiv':>12}  {'evals dense':>11}  "
              f"{'evals x':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for height, width in args.sizes:
        with torch.no_grad():
            images = torch.randn(1, 3, height, width, device=device)
            maps = model.coarse.decode(images)                                        # warm-up
            coarse_time = seconds(lambda: model.coarse.decode(images), device)
            coarse, fine = maps["coarse"], maps[model.fine_features]                  # (1, K, h, w), (1, C, h, w)
            del maps, images
            methods = {
                "subdivision": lambda: subdivision_inference(coarse, fine, head, (height, width), points),
                "dense": lambda: dense_point_inference(coarse, fine, head, (height, width)),
            }
            # The memory pass comes first and doubles as the warm-up (first calls pay for allocation
            # and kernel selection), so the slow dense method runs once less.
            memory = {name: peak_bytes(fn, device) for name, fn in methods.items()}
            times = {name: [] for name in methods}
            for r in range(args.rounds):
                for name in (list(methods) if r % 2 == 0 else list(methods)[::-1]):
                    times[name].append(seconds(methods[name], device))
        median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        evals_sub = sum(evaluations(tuple(coarse.shape[-2:]), (height, width), points))
        evals_dense = height * width
        mib = {name: m / 2**20 for name, m in memory.items()}
        print(f"{f'{height}x{width}':>10}  {coarse_time * 1e3:9.0f}  {median['subdivision']:9.1f}  "
              f"{median['dense']:9.1f}  {median['dense'] / median['subdivision']:7.1f}  "
              f"{mib['subdivision']:10.1f}  {mib['dense']:9.1f}  {mib['dense'] / mib['subdivision']:6.1f}  "
              f"{evals_sub:12,}  {evals_dense:11,}  {evals_dense / evals_sub:7.1f}")
        rows.append({"height": height, "width": width, "coarse_ms": round(coarse_time * 1e3, 1),
                     "subdivision_ms": round(median["subdivision"], 1), "dense_ms": round(median["dense"], 1),
                     "time_ratio": round(median["dense"] / median["subdivision"], 2),
                     "subdivision_mib": round(mib["subdivision"], 1), "dense_mib": round(mib["dense"], 1),
                     "memory_ratio": round(mib["dense"] / mib["subdivision"], 2),
                     "evals_subdivision": evals_sub, "evals_dense": evals_dense,
                     "evals_ratio": evals_dense / evals_sub})
    print("time x, mem x, evals x: dense / subdivision. Coarse ms (backbone + decoder, shared) is one run.")
    return rows


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes look like 512x1024 (height x width), got {text!r}") from None
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"segbook models take H, W >= 32, got {text!r}")
    return height, width


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=_size, nargs="+", default=[(512, 1024), (1024, 2048)],
                   help="output sizes HxW (default: 512x1024 1024x2048)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per method (median; default 3)")
    p.add_argument("--num-points", type=int, default=8192, help="points per subdivision step (detectron2: 8192)")
    p.add_argument("--num-classes", type=int, default=19, help="K (default 19, Cityscapes)")
    p.add_argument("--channels", type=int, default=64, help="decoder and point-head width (default 64)")
    p.add_argument("--backbone", default="resnet18", help="ResNet backbone (default resnet18)")
    p.add_argument("--paper", action="store_true", help="ResNet-101 and 256 channels, as in the paper")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                   help="cpu, cuda, or all (CPU, then CUDA when there is one; the default)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--output", type=Path, default=None,
                   help="also write the measurements and their configuration to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])}
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu.")
    print(f"PointRend inference: subdivision ({args.num_points} points per step) vs. the point head at every pixel")
    paper = args.paper
    stored = {"config": {"backbone": "resnet101" if paper else args.backbone,
                         "channels": 256 if paper else args.channels, "num_classes": args.num_classes,
                         "num_points": args.num_points, "rounds": args.rounds, "batch_size": 1,
                         "threads": torch.get_num_threads(),
                         "time": "median of rounds alternating the two methods, coarse logits and features given",
                         "memory": "peak bytes of the tensors the method creates (CPU: operator outputs)"},
              "torch": torch.__version__, "machine": platform.machine(), "devices": {}}
    for name in devices[args.device]:
        device = torch.device(name)
        rows = run(device, args)
        label = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
        stored["devices"][device.type] = {"name": label, "rows": rows}
    if args.output:
        args.output.write_text(json.dumps(stored, indent=1) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
