"""What criss-cross attention saves over a non-local block: FLOPs, time and peak memory, side by side.

Four blocks on the same (1, C, h, w) feature map, C = 512 by default (CCNet's
head width): segbook's :class:`CrissCrossAttention` once (R=1) and twice with
shared weights (R=2, CCNet's setting), the permute/bmm formulation of a widely
copied tutorial implementation (R=1, its CUDA-only mask fixed), and a
:class:`NonLocalBlock` with the same 1x1 query/key/value convolutions
(C/8 queries and keys). For each map size it prints:

* GFLOPs of one forward pass, counted by ``torch.utils.flop_counter.FlopCounterMode``
  on meta tensors (exact, no compute; a multiply-add counts 2; softmax is not counted);
* the median forward time (no grad) over ``--reps`` interleaved repetitions (the order
  of the blocks rotates each repetition, so a busy machine slows them alike; a fast
  block is called enough times back to back for one repetition to last ~50 ms);
* peak memory of a forward pass with autograd on (every intermediate the backward
  needs is kept), and of that forward followed by its backward, as in training:
  on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before; on
  the CPU the peak of the running sum of the bytes that ``torch.profiler``
  (``profile_memory=True``) records for every allocation and free, in time order.
  Both count tensors created by the forward and backward (output and gradients
  included), not the input or the weights, and neither depends on the allocator's
  caching.

A non-local block whose (hw, hw) matrices would not fit (``--max-gib``, default half
the free memory; forward + backward holds four of them at once) is skipped with a
note instead of taking the machine down; on CUDA an out-of-memory error is caught
and reported the same way.

Last, the paper's setting (a 97x97 map, 512 channels, R=2 vs non-local) as two
ratios, to set beside the paper's claims: about 85% fewer FLOPs, 11x less GPU memory.

Usage::

    python -m benchmarks.attention_cost                    # 512 channels, 25x25 .. 97x97, about 2 min on 2 cores
    python -m benchmarks.attention_cost --channels 64      # a quick look
    python -m benchmarks.attention_cost --sizes 25 49 97 129 161 --reps 5
    python -m benchmarks.attention_cost --device cuda
    python -m benchmarks.attention_cost --threads 2        # CPU threads (default 1, see --help)
    python -m benchmarks.attention_cost --output segbook/results/attention_cost.json

With ``--output`` every number printed is also written as JSON, with the
configuration, thread count, machine and torch version: chapter 5 prints its
memory comparison from the copy stored in ``segbook/results/``. Without it
nothing is written, so a trial run never replaces the stored one.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from experiments.harness import cpu_name, marked, peak_bytes
from segbook.models.ccnet import CrissCrossAttention, NonLocalBlock, criss_cross_attention_bmm

METHODS = ("cc R=1", "cc R=2", "cc bmm R=1", "non-local")
PAPER = {"size": 97, "channels": 512, "flops_saved": 0.85, "memory_ratio": 11.0}
MiB = 2 ** 20


class BmmCrissCross(CrissCrossAttention):
    """:class:`CrissCrossAttention` computed with :func:`criss_cross_attention_bmm` (the tutorial's form)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend(criss_cross_attention_bmm, x, False)


class Recurrent(nn.Module):
    """One block applied ``times`` times with the same weights, as CCNet's R."""

    def __init__(self, block: nn.Module, times: int) -> None:
        super().__init__()
        self.block, self.times = block, times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.times):
            x = self.block(x)                                           # (B, C, h, w)
        return x


def build(method: str, channels: int, device: str) -> nn.Module:
    torch.manual_seed(0)
    cc = CrissCrossAttention(channels)
    block = {"cc R=1": cc, "cc R=2": Recurrent(cc, 2), "cc bmm R=1": BmmCrissCross(channels),
             "non-local": NonLocalBlock(channels)}[method]
    for module in block.modules():
        if isinstance(module, (CrissCrossAttention, NonLocalBlock)):
            module.gamma.data.fill_(1.0)  # costs do not depend on gamma; 1 keeps the values realistic
    return block.to(device)


def gflops(method: str, channels: int, size: int) -> float:
    """Forward FLOPs (2 per multiply-add) on meta tensors: counted, never computed."""
    with torch.device("meta"):
        block = build(method, channels, "meta")
        x = torch.randn(1, channels, size, size)                        # (1, C, h, w)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(x)
    return counter.get_total_flops() / 1e9


def non_local_attention_gib(channels: int, size: int) -> float:
    """GiB of the (hw, hw) float32 matrices alive at once in a non-local backward (measured: four of them)."""
    return 4 * 4 * (size * size) ** 2 / 2 ** 30


def free_gib(device: str) -> float:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free / 2 ** 30
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f}
        return info["MemAvailable"] / 2 ** 20
    except OSError:
        return 8.0


def peak_mib(block: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Peak memory (MiB) of one forward with autograd on, and of that forward plus its backward.

    See the module docstring for how it is measured. The forward alone shows what
    the graph keeps for the backward pass; the backward adds the gradients of
    those intermediates (for non-local, one more (hw, hw) matrix at a time).
    """
    x = x.detach().requires_grad_()                                     # as inside a network: grads flow to x

    def forward_backward() -> None:
        out = block(x)                                                  # (1, C, h, w)
        marked(lambda: out.sum().backward())                            # the peak before this is the forward's

    if x.device.type == "cuda":  # one high-water mark per run: measure the forward on its own first
        forward = peak_bytes(lambda: block(x), x.device)[1]
        both = peak_bytes(forward_backward, x.device)[1]
    else:
        forward, both = peak_bytes(forward_backward, x.device)
    block.zero_grad(set_to_none=True)
    return forward / MiB, both / MiB


def timed(block: nn.Module, x: torch.Tensor, loops: int = 1) -> float:
    """Seconds per forward (no grad), averaged over ``loops`` back-to-back calls."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(loops):
            block(x)
    sync()
    return (time.perf_counter() - start) / loops


def loops_for(block: nn.Module, x: torch.Tensor, target_s: float = 0.05) -> int:
    """How many calls make one timing last about ``target_s``: a lone millisecond call is mostly noise."""
    return max(1, min(100, round(target_s / max(timed(block, x), 1e-6))))


def measure(size: int, channels: int, device: str, reps: int, max_gib: float) -> dict[str, dict]:
    """FLOPs, median time and peak memory of every method at one map size; skipped ones get a reason."""
    x = torch.randn(1, channels, size, size, device=device)             # (1, C, h, w)
    results: dict[str, dict] = {}
    blocks: dict[str, nn.Module] = {}
    for method in METHODS:
        results[method] = {"gflops": gflops(method, channels, size), "times": []}
        if method == "non-local" and non_local_attention_gib(channels, size) > max_gib:
            results[method]["skipped"] = (f"needs ~{non_local_attention_gib(channels, size):.1f} GiB "
                                          f"for its (hw, hw) matrices > --max-gib {max_gib:.1f}")
            continue
        blocks[method] = build(method, channels, device)
    for method, block in list(blocks.items()):
        try:
            results[method]["fwd_mib"], results[method]["train_mib"] = peak_mib(block, x)  # also the warm-up
        except torch.cuda.OutOfMemoryError:
            results[method]["skipped"] = "out of memory"
            del blocks[method]
            torch.cuda.empty_cache()
    names = list(blocks)
    loops = {method: loops_for(blocks[method], x) for method in names}
    for rep in range(reps):
        shift = rep % len(names) if names else 0
        for method in names[shift:] + names[:shift]:                    # rotate who goes first
            results[method]["times"].append(timed(blocks[method], x, loops[method]))
    for method in names:
        results[method]["ms"] = 1000 * statistics.median(results[method]["times"])
    return results


def print_table(size: int, results: dict[str, dict]) -> None:
    base = results["cc R=2"]
    print(f"\n{size}x{size} map (hw = {size * size}, criss-cross keys per pixel = {2 * size - 1})")
    print(f"  {'block':<11} {'GFLOPs':>8} {'x R=2':>6} {'ms':>8} {'x R=2':>6} {'fwd MiB':>8} {'x R=2':>6} "
          f"{'fwd+bwd MiB':>11} {'x R=2':>6}")
    for method, r in results.items():
        flops = f"{r['gflops']:8.2f} {r['gflops'] / base['gflops']:6.2f}"
        if "skipped" in r:
            print(f"  {method:<11} {flops}   skipped: {r['skipped']}")
            continue
        print(f"  {method:<11} {flops} {r['ms']:8.1f} {r['ms'] / base['ms']:6.2f} "
              f"{r['fwd_mib']:8.1f} {r['fwd_mib'] / base['fwd_mib']:6.2f} "
              f"{r['train_mib']:11.1f} {r['train_mib'] / base['train_mib']:6.2f}")


def paper_setting(device: str, max_gib: float, results: dict[str, dict] | None) -> dict:
    """The paper's comparison: R=2 against non-local on a 97x97 map with 512 channels."""
    size, channels = PAPER["size"], PAPER["channels"]
    cc_flops, nl_flops = gflops("cc R=2", channels, size), gflops("non-local", channels, size)
    if results is None:  # the table did not cover this setting: measure the memory here
        x = torch.randn(1, channels, size, size, device=device)         # (1, C, h, w)
        results = {}
        for method in ("cc R=2", "non-local"):
            if method == "non-local" and non_local_attention_gib(channels, size) > max_gib:
                results[method] = {"skipped": "too big for --max-gib"}
                continue
            fwd_mib, train_mib = peak_mib(build(method, channels, device), x)
            results[method] = {"fwd_mib": fwd_mib, "train_mib": train_mib}
    print(f"\npaper's setting: {size}x{size} map, {channels} channels, R=2 vs non-local")
    saved = 1 - cc_flops / nl_flops
    print(f"  FLOPs:  {cc_flops:.1f} vs {nl_flops:.1f} GFLOPs -> {saved:.1%} fewer "
          f"(paper: about {PAPER['flops_saved']:.0%} fewer)")
    cc, nl = results["cc R=2"], results["non-local"]
    summary = {"size": size, "channels": channels, "cc_gflops": round(cc_flops, 2),
               "non_local_gflops": round(nl_flops, 2), "flops_saved": round(saved, 4)}
    if "skipped" in cc or "skipped" in nl:
        print(f"  memory: not measured ({nl.get('skipped') or cc.get('skipped')})")
        return summary
    for key in ("fwd_mib", "train_mib"):
        summary[f"cc_{key}"], summary[f"non_local_{key}"] = round(cc[key], 1), round(nl[key], 1)
        summary[f"{key}_ratio"] = round(nl[key] / cc[key], 2)
    where = "GPU" if device == "cuda" else "CPU"
    for key, what in (("fwd_mib", "forward, autograd on"), ("train_mib", "forward + backward")):
        print(f"  memory ({what}): {cc[key]:.0f} vs {nl[key]:.0f} MiB on the {where} -> "
              f"{nl[key] / cc[key]:.1f}x less (paper: {PAPER['memory_ratio']:.0f}x less GPU memory)")
    return summary


def json_rows(size: int, results: dict[str, dict]) -> list[dict]:
    """The table of one map size as JSON rows (the raw repeat times left out)."""
    keep = ("gflops", "ms", "fwd_mib", "train_mib", "skipped")
    return [{"size": size, "method": method, **{k: (round(v, 3) if isinstance(v, float) else v)
                                                for k, v in r.items() if k in keep}}
            for method, r in results.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=512, help="C of the feature map (default 512)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 49, 73, 97], help="map sides h = w")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per block and size (median)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine, OpenMP threads waiting for a busy "
                             "core can make a millisecond call take a second)")
    parser.add_argument("--output", type=Path, default=None,
                        help="also write every measurement and its configuration to this JSON file")
    parser.add_argument("--max-gib", type=float, default=None,
                        help="skip non-local when its (hw, hw) matrices need more (default: half the free memory)")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    max_gib = args.max_gib if args.max_gib is not None else free_gib(device) / 2
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"attention cost | torch {torch.__version__} | {name} | C = {args.channels}, C' = {args.channels // 8}, "
          f"batch 1 | time: median of {args.reps} interleaved forwards (no grad) | "
          "memory: peak of a forward (autograd on), and of forward + backward")
    start = time.perf_counter()
    paper_results, table = None, []
    for size in args.sizes:
        results = measure(size, args.channels, device, args.reps, max_gib)
        print_table(size, results)
        table += json_rows(size, results)
        if size == PAPER["size"] and args.channels == PAPER["channels"]:
            paper_results = results
    paper = paper_setting(device, max_gib, paper_results)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.output:
        stored = {"config": {"channels": args.channels, "sizes": args.sizes, "reps": args.reps, "batch": 1,
                             "threads": torch.get_num_threads() if device == "cpu" else None,
                             "time": "median of interleaved forwards, no grad",
                             "memory": "peak of a forward with autograd on, and of forward + backward, "
                                       "beyond the input and the weights"},
                  "device": device, "device_name": name if device == "cuda" else cpu_name(),
                  "torch": torch.__version__, "machine": platform.machine(),
                  "table": table, "paper_setting": paper}
        args.output.write_text(json.dumps(stored, indent=1) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
