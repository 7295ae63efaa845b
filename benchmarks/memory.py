"""Peak memory of one step, the same way for every benchmark: CUDA's counter, or the CPU profiler's records.

PyTorch keeps a high-water mark on CUDA (``max_memory_allocated``) but none on
the CPU, where the process's resident size also counts memory the allocator
keeps after freeing and ``tracemalloc`` does not see ATen's allocations. So on
the CPU we replay the profiler's raw allocation records (``profile_memory=True``:
one ``[memory]`` event per malloc, ``+bytes``, or free, ``-bytes``, each with its
own time) and keep the highest running total. The per-op totals of
``prof.events()`` would net an op's frees against its children's allocations
and hide the moment when an old and a new tensor are both alive.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

__all__ = ["MARK", "marked", "peak_bytes", "sync"]

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
