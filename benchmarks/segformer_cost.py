"""What SegFormer's reduced attention saves, and what whole models cost: FLOPs and memory side by side.

Part 1, one attention layer at the same width, on the map that a 512 x 512 and
a 1024 x 1024 image give at MiT-B0's first two stages (stride 4: C = 32, one
head, reduction r = 8; stride 8: C = 64, two heads, r = 4):

* dense self-attention: :class:`EfficientSelfAttention` with ``sr_ratio=1``, every
  cell attends to all ``hw`` cells;
* criss-cross attention, chapter 5's :class:`CrissCrossAttention` at width C, run
  twice with shared weights (CCNet's R = 2, which reaches every cell);
* SegFormer's reduced attention: :class:`EfficientSelfAttention` with the stage's
  ``r``, every cell attends to ``hw / r^2`` cells.

Part 2, whole models for 21 classes: FCN-8s, PSPNet, CCNet, DeepLabV3+ (each at
its paper's output stride, on a ResNet-18 as chapter 7 trains them and on a
ResNet-50 as the full profile does) and SegFormer-B0: parameters used at
inference (auxiliary heads left out) and GFLOPs at both image sizes.

How it is measured, the same on every machine:

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device
  (shapes, no data: exact and instant; 2 per multiply-add; convolutions and
  matrix products counted, softmax, norms and interpolation not);
* memory: a *saved-tensor tally*. ``torch.autograd.graph.saved_tensors_hooks``
  sees every tensor that autograd keeps from the forward pass for the backward
  pass; the tally adds the bytes of each distinct storage once, leaving out the
  weights and the layer's input. That is the training memory of the layer's
  forward, what a batch of one holds until its backward runs; it is exact
  arithmetic on meta tensors, so a dense 65,536-cell layer that keeps 16 GiB
  is tallied without allocating it. ``--check`` also measures the real CPU peak of
  a forward + backward with ``torch.profiler`` (``experiments/harness.py``) for the
  layers that fit in ``--max-gib``, beside the tally.

Usage::

    python -m benchmarks.segformer_cost                 # a few seconds
    python -m benchmarks.segformer_cost --check         # + profiler peaks of the small layers (~1 min)
    python -m benchmarks.segformer_cost --check --output segbook/results/segformer_cost.json

Chapter 8 prints its tables from the stored JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from experiments.harness import cpu_name, peak_bytes
from segbook.models import build_model
from segbook.models.ccnet import CrissCrossAttention
from segbook.models.mit import EfficientSelfAttention

IMAGES = (512, 1024)
LAYERS = {4: dict(channels=32, heads=1, sr_ratio=8), 8: dict(channels=64, heads=2, sr_ratio=4)}  # MiT-B0
METHODS = ("dense", "criss-cross R=2", "reduced (SegFormer)")
MODELS = {  # label: (registered name, keywords besides the backbone)
    "FCN-8s": ("fcn8s", {}),
    "PSPNet": ("pspnet", {"output_stride": 8}),
    "CCNet": ("ccnet", {"output_stride": 8}),
    "DeepLabV3+": ("deeplabv3plus", {"output_stride": 16}),
}
MiB = 2 ** 20


class OnTokens(nn.Module):
    """Run a token layer (B, N, C) -> (B, N, C) on a map (B, C, h, w), as the encoder does."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.layer(x.flatten(2).transpose(1, 2), (h, w))       # (B, N, C)
        return tokens.transpose(1, 2).reshape(b, c, h, w)                # (B, C, h, w)


class Twice(nn.Module):
    """One block applied twice with the same weights (CCNet's R = 2)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.block(x))                                  # (B, C, h, w)


def attention_layer(method: str, channels: int, heads: int, sr_ratio: int) -> nn.Module:
    torch.manual_seed(0)
    if method == "dense":
        return OnTokens(EfficientSelfAttention(channels, heads, sr_ratio=1))
    if method == "criss-cross R=2":
        block = CrissCrossAttention(channels)
        block.gamma.data.fill_(1.0)  # the cost does not depend on gamma
        return Twice(block)
    return OnTokens(EfficientSelfAttention(channels, heads, sr_ratio))


def flops_and_saved(module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Forward FLOPs, and bytes autograd saves for the backward (distinct storages; no weights, no input)."""
    weights = {id(p) for p in module.parameters()}
    kept: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if id(base) not in weights and base is not x:
            kept[id(base)] = base  # holding it keeps its id unique while we count
        return t

    x.requires_grad_()
    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return counter.get_total_flops(), sum(t.numel() * t.element_size() for t in kept.values())


def measured_peak(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes at the CPU peak of one forward + backward, from the profiler's allocation records."""
    x = x.detach().requires_grad_()
    return peak_bytes(lambda: module(x).sum().backward(), torch.device("cpu"))[1]


def attention_rows(check: bool, max_gib: float) -> list[dict]:
    rows = []
    for image in IMAGES:
        for stride, layer in LAYERS.items():
            side = image // stride
            for method in METHODS:
                with torch.device("meta"):
                    module = attention_layer(method, **layer)
                    x = torch.empty(1, layer["channels"], side, side)     # (1, C, h, w)
                flops, saved = flops_and_saved(module, x)
                keys = {"dense": side * side, "criss-cross R=2": 2 * side - 1,
                        "reduced (SegFormer)": (side // layer["sr_ratio"]) ** 2}[method]
                row = {"image": image, "stride": stride, "side": side, "method": method, **layer,
                       "keys_per_cell": keys, "gflops": round(flops / 1e9, 4), "saved_mib": round(saved / MiB, 2)}
                if check and saved * 4 < max_gib * 2 ** 30:  # backward holds a few times the forward's
                    real = attention_layer(method, **layer)
                    row["peak_mib"] = round(measured_peak(real, torch.randn(1, layer["channels"], side, side))
                                            / MiB, 2)
                rows.append(row)
    return rows


def model_rows() -> list[dict]:
    rows = []
    entries = [(label, name, {**extra, "backbone": backbone})
               for backbone in ("resnet18", "resnet50") for label, (name, extra) in MODELS.items()]
    entries.append(("SegFormer-B0", "segformer", {"backbone": "mit_b0"}))
    for label, name, kwargs in entries:
        with torch.device("meta"):
            model = build_model(name, num_classes=21, **kwargs).eval()
        aux = getattr(model, "aux_head", None)
        params = sum(p.numel() for p in model.parameters()) - (sum(p.numel() for p in aux.parameters())
                                                                if aux is not None else 0)
        row = {"model": label, "name": name, **kwargs, "params_m": round(params / 1e6, 3)}
        for image in IMAGES:
            with torch.device("meta"):
                x = torch.empty(1, 3, image, image)                       # (1, 3, H, W)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(x)
            row[f"gflops_{image}"] = round(counter.get_total_flops() / 1e9, 2)
        rows.append(row)
    return rows


def print_attention(rows: list[dict]) -> None:
    print("one attention layer, batch 1; ratios are to SegFormer's reduced attention on the same map")
    print(f"{'image':>6} {'map':>9} {'C':>3} {'layer':<20} {'keys/cell':>9} {'GFLOPs':>8} {'x':>6} "
          f"{'saved MiB':>10} {'x':>6} {'peak MiB':>9}")
    for r in rows:
        base = next(b for b in rows if (b["image"], b["stride"], b["method"]) ==
                    (r["image"], r["stride"], "reduced (SegFormer)"))
        peak = f"{r['peak_mib']:9.1f}" if "peak_mib" in r else f"{'-':>9}"
        print(f"{r['image']:>6} {r['side']:>4}x{r['side']:<4} {r['channels']:>3} {r['method']:<20} "
              f"{r['keys_per_cell']:>9,} {r['gflops']:8.3f} {r['gflops'] / base['gflops']:6.1f} "
              f"{r['saved_mib']:10.1f} {r['saved_mib'] / base['saved_mib']:6.1f} {peak}")


def print_models(rows: list[dict]) -> None:
    base = next(r for r in rows if r["model"] == "SegFormer-B0")
    print("\nwhole models, 21 classes, inference (no auxiliary head); ratios are to SegFormer-B0")
    print(f"{'model':<14} {'backbone':<9} {'params':>8} {'x':>6} " +
          " ".join(f"{f'GFLOPs@{i}':>12} {'x':>6}" for i in IMAGES))
    for r in rows:
        print(f"{r['model']:<14} {r['backbone']:<9} {r['params_m']:7.2f}M {r['params_m'] / base['params_m']:6.1f} "
              + " ".join(f"{r[f'gflops_{i}']:12.1f} {r[f'gflops_{i}'] / base[f'gflops_{i}']:6.1f}"
                         for i in IMAGES))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="also measure real CPU peaks with the profiler")
    parser.add_argument("--max-gib", type=float, default=1.0, help="--check skips layers whose tally exceeds "
                        "a quarter of this (default 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="also write everything to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    attention, models = attention_rows(args.check, args.max_gib), model_rows()
    print_attention(attention)
    print_models(models)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.output:
        stored = {"config": {"images": list(IMAGES), "layers": {str(k): v for k, v in LAYERS.items()},
                             "batch": 1, "num_classes": 21,
                             "flops": "FlopCounterMode on meta tensors, 2 per multiply-add",
                             "saved": "bytes autograd saves for the backward, distinct storages, "
                                      "no weights, no input (saved_tensors_hooks, meta tensors)",
                             "peak": "CPU peak of forward + backward from torch.profiler's allocation "
                                     "records (experiments/harness.py), where measured"},
                  "cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
                  "machine": platform.machine(), "attention": attention, "models": models}
        args.output.write_text(json.dumps(stored, indent=1) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
