"""What the experiment and benchmark scripts share: runs side by side, a stamp of the machine, peak memory.

A script in ``experiments/`` trains several models over several seeds and
writes one JSON file; a script in ``benchmarks/`` measures time and memory and
prints ratios taken side by side. The shipped copies in ``segbook/results/``
are what the chapters print and the tests re-check, so no script replaces one
unless asked: by default results go to a scratch file, and ``--write`` sends
them to the shipped path. Run the scripts from the repository's root as
modules (``python -m experiments.compare_all``), so that they import this one.

**Peak memory** of one step is measured the same way for every benchmark:
CUDA's counter, or the CPU profiler's records. PyTorch keeps a high-water mark
on CUDA (``max_memory_allocated``) but none on the CPU, where the process's
resident size also counts memory the allocator keeps after freeing and
``tracemalloc`` does not see ATen's allocations. So on the CPU the profiler's
raw allocation records (``profile_memory=True``: one ``[memory]`` event per
malloc, ``+bytes``, or free, ``-bytes``, each with its own time) are replayed
and the highest running total kept. The per-op totals of ``prof.events()``
would net an op's frees against its children's allocations and hide the
moment when an old and a new tensor are both alive.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

__all__ = ["MARK", "SHIPPED", "add_output_options", "cpu_name", "first_batch", "marked", "output_path", "peak_bytes",
           "side_by_side", "stamp", "sync", "write_json"]

SHIPPED = Path(__file__).resolve().parent.parent / "segbook" / "results"  # package data, loaded by chapters


def first_batch(loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """A loader over ``loader``'s first batch only, in the same order and with the same collation.

    A check run that compares only training losses still goes through ``fit``,
    which validates after every epoch; a one-batch validation keeps that path
    and skips work whose numbers nobody reads (the training losses of a
    one-epoch run cannot depend on it).
    """
    count = min(len(loader.dataset), loader.batch_size or 1)
    return torch.utils.data.DataLoader(torch.utils.data.Subset(loader.dataset, range(count)),
                                       batch_size=loader.batch_size, collate_fn=loader.collate_fn)


def stamp() -> dict:
    """The torch version and machine that produced a file."""
    return {"torch": torch.__version__, "machine": platform.machine()}


def add_output_options(parser: argparse.ArgumentParser, name: str) -> None:
    """``--output PATH`` (default: a scratch file) and ``--write`` (the shipped ``segbook/results/<name>.json``)."""
    scratch = Path(tempfile.gettempdir()) / f"{name}.json"
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", type=Path, default=scratch,
                       help=f"where to write the results (default: {scratch}, a scratch file)")
    where.add_argument("--write", action="store_true",
                       help=f"replace the shipped segbook/results/{name}.json (then run "
                            f"experiments/check_spread.py {name} to measure its check's spread again)")


def output_path(args: argparse.Namespace, name: str) -> Path:
    """The file the parsed options ask for."""
    return SHIPPED / f"{name}.json" if args.write else args.output


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` (indented, one trailing newline), making the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def side_by_side(seeds: Iterable[int], labels: Iterable[str], run: Callable[[str, int], dict],
                 done: Callable[[list[dict]], None] | None = None, tag: str = "") -> list[dict]:
    """``run(label, seed)`` for every seed, all labels in turn, so a slow spell of a shared machine hits all alike.

    ``done(rows)`` is called after every run (to save what exists so far, say).
    """
    rows: list[dict] = []
    labels = list(labels)
    for seed in seeds:
        for label in labels:
            began = time.perf_counter()
            rows.append(run(label, seed))
            print(tag, json.dumps(rows[-1]), f"({time.perf_counter() - began:.0f} s)", flush=True)
            if done is not None:
                done(rows)
    return rows


# -- time and memory ---------------------------------------------------------------------------------

MARK = "segbook-mark"  # wrap a later phase in record_function(MARK) to get the peak before it too


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _quiet_fd2():
    """The profiler prints its start/stop lines straight to file descriptor 2; hide them while it runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(step: Callable[[], None], device: torch.device) -> tuple[int, int]:
    """``(peak before the first MARK region, overall peak)`` of what ``step`` allocates, in bytes.

    Without a ``record_function(MARK)`` region inside ``step`` both are the
    overall peak. Memory held before ``step`` starts (weights, inputs) is not counted.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return peak, peak  # CUDA has one high-water mark; a split would need two runs
    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = prof.profiler.kineto_results.events()
    mark = min((e.start_ns() for e in events if e.name() == MARK), default=None)
    records = sorted(((e.start_ns(), e.nbytes()) for e in events
                      if e.name() == "[memory]" and e.device_type() == DeviceType.CPU))
    live = before_mark = overall = 0
    for start, nbytes in records:
        live += nbytes
        overall = max(overall, live)
        if mark is None or start < mark:
            before_mark = overall
    return before_mark, overall


def marked(fn: Callable[[], object]) -> object:
    """Run ``fn`` inside the MARK region (e.g. the backward pass)."""
    with record_function(MARK):
        return fn()


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
