"""What a finer output stride costs: time, peak memory and FLOPs of dilated ResNets and PSPNet, as ratios.

Dilation keeps every weight and buys a denser last feature map: at output
stride 8 ``layer3`` works on 4x and ``layer4`` on 16x the cells it has at
stride 32, so those stages cost that much more. This script measures it for the
ResNet-18 and ResNet-50 backbones at output stride 32, 16 and 8 and for
PSPNet (ResNet-50, stride 8, training mode with its auxiliary head), side by
side in one run:

* time: one forward + backward pass (loss: the mean square of ``layer4``, or
  PSPNet's segmentation loss), the fastest of interleaved repeats (each repeat
  runs every model once, in a rotated order, so a slow spell of a shared
  machine hits all of them alike; other work on the machine can only add time,
  so the fastest repeat is the least disturbed one; ``--output`` stores the median too);
* peak memory: on the CPU, the highest running total of the allocator's
  allocation and free events that ``torch.profiler`` records with
  ``profile_memory=True`` during one step (PyTorch exposes no CPU
  high-water mark; the process RSS would count freed memory the allocator
  keeps, and tracemalloc does not see PyTorch's C++ allocations). On CUDA,
  ``torch.cuda.max_memory_allocated`` after a reset. Both count what the step
  allocates beyond the weights and their gradients (allocated by a warm-up
  step and kept): the activations saved for backward and the workspace, which
  is what the output stride changes;
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass at
  473 x 473 (PSPNet's crop), on the meta device, so nothing is computed.

    python -m benchmarks.dilation_cost                       # 2x3x224x224, 3 repeats, CPU (+ CUDA if any)
    python -m benchmarks.dilation_cost --size 473 --batch-size 2 --repeats 5 --threads 2
    python -m benchmarks.dilation_cost --threads 1 --output segbook/results/dilation_cost.json

With ``--output`` the measurements are also written as JSON, with the
configuration, thread count, machine and torch version that produced them:
chapter 4 prints its table from the copy stored in ``segbook/results/``. Without
it nothing is written, so a trial run never replaces the stored one.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.harness import cpu_name, peak_bytes, sync
from segbook.models.backbones import ResNetBackbone
from segbook.models.pspnet import PSPNet
from segbook.train import segmentation_loss

CONFIGS = [("resnet18", 32), ("resnet18", 16), ("resnet18", 8),
           ("resnet50", 32), ("resnet50", 16), ("resnet50", 8), ("pspnet-resnet50", 8)]
NUM_CLASSES = 21


def build(name: str, output_stride: int) -> torch.nn.Module:
    if name.startswith("pspnet-"):
        return PSPNet(NUM_CLASSES, backbone=name.split("-", 1)[1], output_stride=output_stride)
    return ResNetBackbone(name, output_stride)


def step_fn(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    """One training step's forward and backward (no optimizer: it costs the same at every stride)."""
    def step() -> None:
        model.zero_grad(set_to_none=False)  # gradients stay allocated (after the warm-up), like the weights
        out = model(images)
        if "out" in out:
            loss = segmentation_loss(out, target)[0]
        else:
            loss = out["layer4"].float().pow(2).mean()  # touches every stage through layer4
        loss.backward()
    return step


def forward_flops(name: str, output_stride: int, size: int) -> int:
    with torch.device("meta"):
        model = build(name, output_stride).eval()
        images = torch.empty(1, 3, size, size)  # (1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    return counter.get_total_flops()


def measure(device: torch.device, *, batch_size: int, size: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, size, size, generator=g).to(device)  # (B, 3, H, W)
    target = torch.randint(0, NUM_CLASSES, (batch_size, size, size), generator=g).to(device)  # (B, H, W)
    steps = {}
    for name, stride in CONFIGS:
        torch.manual_seed(0)
        steps[name, stride] = step_fn(build(name, stride).to(device).train(), images, target)
    peaks = {}
    for key, step in steps.items():  # warm-up (allocator, first-call costs), then the memory of one step
        step()
        peaks[key] = peak_bytes(step, device)[1]
    times = {key: [] for key in steps}
    keys = list(steps)
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotate the order each repeat
            sync(device)
            began = time.perf_counter()
            steps[key]()
            sync(device)
            times[key].append(time.perf_counter() - began)
    return {key: (min(times[key]), peaks[key], statistics.median(times[key])) for key in keys}


def report(results: dict, flops: dict, header: str) -> None:
    print(header)
    print(f"  {'model':<17}{'OS':>3}  {'fwd+bwd ms':>10} {'x OS32':>7}  {'step MiB':>8} {'x OS32':>7}  "
          f"{'GFLOPs@473':>10} {'x OS32':>7}")
    for (name, stride), (seconds, peak, _) in results.items():
        ref_name = name.split("-", 1)[1] if name.startswith("pspnet-") else name
        ref_seconds, ref_peak, _ = results[ref_name, 32]
        gflops, ref_gflops = flops[name, stride] / 1e9, flops[ref_name, 32] / 1e9
        print(f"  {name:<17}{stride:>3}  {1e3 * seconds:>10.1f} {seconds / ref_seconds:>7.2f}  "
              f"{peak / 2 ** 20:>8.1f} {peak / ref_peak:>7.2f}  {gflops:>10.1f} {gflops / ref_gflops:>7.2f}")
    print("  (ratios: to the same ResNet at output stride 32; PSPNet's to its ResNet-50 backbone at stride 32)")


def rows(results: dict, flops: dict) -> list[dict]:
    """One JSON row per configuration: absolute numbers and the ratios :func:`report` prints."""
    out = []
    for (name, stride), (seconds, peak, median) in results.items():
        ref = (name.split("-", 1)[1] if name.startswith("pspnet-") else name, 32)
        out.append({"model": name, "output_stride": stride, "step_ms": round(1e3 * seconds, 1),
                    "median_step_ms": round(1e3 * median, 1),
                    "step_mib": round(peak / 2 ** 20, 1), "gflops": round(flops[name, stride] / 1e9, 2),
                    "time_ratio": round(seconds / results[ref][0], 2),
                    "memory_ratio": round(peak / results[ref][1], 2),
                    "flops_ratio": round(flops[name, stride] / flops[ref], 2)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=2, help="at least 2: PSPNet trains with batch statistics")
    p.add_argument("--size", type=int, default=224, help="square input side for time and memory")
    p.add_argument("--flops-size", type=int, default=473, help="square input side for the FLOP count")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed repeats; the fastest is shown")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--cpu-only", action="store_true")
    p.add_argument("--output", type=Path, default=None,
                   help="also write the measurements and their configuration to this JSON file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flops = {key: forward_flops(*key, args.flops_size) for key in CONFIGS}
    print(f"torch {torch.__version__}; FLOPs: one forward pass of a 1x3x{args.flops_size}x{args.flops_size} image "
          "(FlopCounterMode, meta device; a multiply-add counts 2)")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    stored = {"config": {"batch_size": args.batch_size, "size": args.size, "flops_size": args.flops_size,
                         "repeats": args.repeats, "threads": torch.get_num_threads(),
                         "step": "train-mode forward + backward, no optimizer",
                         "time": "fastest of interleaved repeats",
                         "memory": "peak allocated by one step beyond weights and gradients"},
              "torch": torch.__version__, "machine": platform.machine(), "devices": {}}
    for device in devices:
        results = measure(device, batch_size=args.batch_size, size=args.size, repeats=args.repeats)
        what = (f"{torch.get_num_threads()} CPU threads; peak = profiler memory events" if device.type == "cpu"
                else f"{torch.cuda.get_device_name(device)}; peak = torch.cuda.max_memory_allocated")
        report(results, flops, f"{device.type}: train-mode forward+backward of {args.batch_size}x3x{args.size}x"
                               f"{args.size}, fastest of {args.repeats} interleaved repeats ({what})")
        name = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
        stored["devices"][device.type] = {"name": name, "rows": rows(results, flops)}
    if args.output:
        args.output.write_text(json.dumps(stored, indent=1) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
