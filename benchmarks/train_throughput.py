"""Images per second of ``segbook.train.fit`` against a plain float32 training loop.

fit does more than the textbook loop: a loss that skips 255 by sum/count, one
``loss.item()`` per step to stop at a NaN, the poly schedule, a GradScaler
call, and on CUDA float16 autocast with channels-last tensors. This script
measures what that costs (on the CPU) or gains (on a GPU), side by side in one
run: the two loops train the same model (FCN on ResNet-18) on the same random
batches, in alternating order, and the medians over several rounds are
compared. fit's time is taken over its training pass only (a wrapper around the
loader notes when the first batch is asked for and when the last one is done),
so its validation pass does not count.

    python -m benchmarks.train_throughput              # CPU, and CUDA when there is one
    python -m benchmarks.train_throughput --rounds 7 --size 256 --batch-size 8
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from segbook.models import build_model
from segbook.train import fit


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedLoader:
    """Wraps a loader and records how long one full pass over it took (queued GPU work included)."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device, self.seconds = loader, device, None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        _sync(self.device)
        began = time.perf_counter()
        yield from self.loader
        _sync(self.device)  # the last step's kernels have run by the time fit asks for the next epoch
        self.seconds = time.perf_counter() - began


def plain_loop(model, loader, device: torch.device) -> float:
    """The textbook loop: forward, cross entropy, backward, SGD step; float32, no metrics. Returns seconds."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    _sync(device)
    began = time.perf_counter()
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)  # (B, 3, H, W), (B, H, W)
        loss = F.cross_entropy(model(images)["out"], masks, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return time.perf_counter() - began


def fit_pass(model, loader, val_loader, device: torch.device) -> float:
    """One epoch of fit with its defaults for the device; returns the seconds of the training pass."""
    timed = TimedLoader(loader, device)
    fit(model, timed, val_loader, epochs=1, device=device, progress=False, live_plot=False, log=None)
    return timed.seconds


def compare(device: torch.device, *, batch_size: int, size: int, steps: int, rounds: int) -> float:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size * steps, 3, size, size, generator=g)  # (N, 3, H, W)
    masks = torch.randint(0, 21, (batch_size * steps, size, size), generator=g)  # (N, H, W)
    masks[:, :4] = 255
    loader = DataLoader(TensorDataset(images, masks), batch_size=batch_size)
    val_loader = DataLoader(TensorDataset(images[:1], masks[:1]), batch_size=1)
    torch.manual_seed(0)
    base = build_model("fcn", num_classes=21, backbone="resnet18")
    models = {"fit": copy.deepcopy(base).to(device), "plain": copy.deepcopy(base).to(device)}
    runs = {"fit": lambda: fit_pass(models["fit"], loader, val_loader, device),
            "plain": lambda: plain_loop(models["plain"], loader, device)}
    for run in runs.values():  # warm-up: allocator, cuDNN autotuning, first-call costs
        run()
    rates = {name: [] for name in runs}
    for r in range(rounds):
        order = ("fit", "plain") if r % 2 == 0 else ("plain", "fit")
        for name in order:
            rates[name].append(len(images) / runs[name]())
    fit_rate, plain_rate = statistics.median(rates["fit"]), statistics.median(rates["plain"])
    what = "fp32" if device.type == "cpu" else "float16 autocast + channels_last"
    print(f"{device.type}: FCN-ResNet18, batch {batch_size} x 3 x {size} x {size}, {steps} steps, "
          f"median of {rounds} interleaved rounds")
    for label, name, rate in ((f"fit() ({what})", "fit", fit_rate), ("plain fp32 loop", "plain", plain_rate)):
        print(f"  {label + ':':<45} {rate:8.2f} images/s   (rounds: {', '.join(f'{x:.2f}' for x in rates[name])})")
    print(f"  {'ratio fit / plain:':<45} {fit_rate / plain_rate:8.3f}")
    return fit_rate / plain_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=128, help="image side in pixels on the CPU (CUDA: at least 320)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--steps", type=int, default=4, help="batches per timed pass")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpu-only", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    compare(torch.device("cpu"), batch_size=args.batch_size, size=args.size, steps=args.steps, rounds=args.rounds)
    if torch.cuda.is_available() and not args.cpu_only:
        print(f"GPU: {torch.cuda.get_device_name()}")
        compare(torch.device("cuda"), batch_size=4 * args.batch_size,  # a GPU needs bigger batches to be busy size=max(args.size, 320), steps=4 * args.steps,
                rounds=args.rounds)


if __name__ == "__main__":
    main()
