"""How much reading VOC labels as palette indices saves over d2l's RGB decoding.

d2l (section 14.9), like a widely copied tutorial implementation, reads each
label PNG as RGB and maps every pixel's colour to a class through a
256**3-entry int64 table; segbook reads the palette indices that the PNG
stores. This script times both on the same PNGs in one run, interleaving the
repetitions (which method goes first rotates) and reporting medians, then
prints the speed ratio, the memory each needs, and how many 255 "ignore"
pixels the RGB method turned into background.

Usage::

    python -m benchmarks.label_decode                      # the book's toy set (written offline if missing)
    python -m benchmarks.label_decode --voc-sized          # a toy set drawn at VOC's image sizes
    python -m benchmarks.label_decode --voc-dir ~/data/VOCdevkit/VOC2012 --limit 500
    python -m benchmarks.label_decode --reps 9 --threads 2

``--threads 1`` (the default) is what each DataLoader worker runs with.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

from segbook.data import get_voc_dir, make_toy_voc
from segbook.data.voc import IGNORE_INDEX, NUM_CLASSES, decode_label_rgb, read_label, voc_colormap2label


def voc_sized_toy_dir(folder: str) -> Path:
    """A toy set drawn at VOC's own image sizes (sides 375 to 500), in ``folder``.

    The book's toy images are small (sides 110 to 220), which flatters neither
    method in the same way: per-call overhead weighs more there, per-pixel work
    more at VOC's sizes. This gives the ratio a real VOC2012 would show.
    """
    return make_toy_voc(folder, num_train=40, num_val=10, side_range=(375, 500))


def d2l_rgb_decode(path: Path, table: torch.Tensor) -> torch.Tensor:
    """d2l's path: decode the PNG to RGB, then look every colour up in the table."""
    rgb = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)  # (3, H, W) uint8
    return decode_label_rgb(rgb, table)  # (H, W) int64


def time_pass(fn, paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        fn(path)
    return time.perf_counter() - start


def rss_mib() -> float:
    """Resident memory now (Linux's /proc), else the peak so far (getrusage), in MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2 ** 20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)


def decode_only(path: Path) -> np.ndarray:
    """Inflating the PNG, which both methods must do: the floor neither can beat."""
    with Image.open(path) as img:
        return np.array(img)  # (H, W) uint8


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--voc-dir", type=Path, help="a VOC2012 folder (default: the book's toy set)")
    source.add_argument("--voc-sized", action="store_true", help="a temporary toy set at VOC's image sizes")
    parser.add_argument("--split", default="trainval", help="split file whose labels are read (default: trainval)")
    parser.add_argument("--limit", type=int, default=0, help="read at most this many labels (0: all)")
    parser.add_argument("--reps", type=int, default=7, help="timed passes per method (default: 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as in a DataLoader worker)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="segbook-bench-") as scratch:
        if args.voc_dir:
            voc_dir = args.voc_dir.expanduser()
        else:
            voc_dir = voc_sized_toy_dir(scratch) if args.voc_sized else get_voc_dir("toy")
        measure(voc_dir, args)


def measure(voc_dir: Path, args: argparse.Namespace) -> None:
    split_file = voc_dir / "ImageSets" / "Segmentation" / f"{args.split}.txt"
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    paths = [voc_dir / "SegmentationClass" / f"{i}.png" for i in ids[: args.limit or None]]
    pixels = sum(read_label(p).numel() for p in paths)  # also warms the file cache for both methods

    rss_before = rss_mib()
    start = time.perf_counter()
    table = voc_colormap2label()
    build_s = time.perf_counter() - start
    rss_growth = rss_mib() - rss_before

    # correctness first: identical away from the border, and what happens on it
    border_pixels = lost = 0
    for path in paths:
        ours, theirs = read_label(path), d2l_rgb_decode(path, table)
        border = ours == IGNORE_INDEX
        assert torch.equal(ours[~border], theirs[~border]), f"{path}: the two methods disagree off the border"
        border_pixels += int(border.sum())
        lost += int((theirs[border] == 0).sum())

    methods = {"read_label (palette indices)": read_label,
               "RGB decode + 256^3 table (d2l)": lambda p: d2l_rgb_decode(p, table),
               "PNG decode alone (the floor)": decode_only}
    times = {name: [] for name in methods}
    for rep in range(args.reps):  # interleaved: each rep runs all, and who goes first rotates
        order = list(methods)[rep % len(methods):] + list(methods)[:rep % len(methods)]
        for name in order:
            times[name].append(time_pass(methods[name], paths))
    ms = {name: 1000 * statistics.median(t) / len(paths) for name, t in times.items()}
    ours_ms, d2l_ms, floor_ms = ms.values()

    # what each allocates per label, for the largest one (tracemalloc cannot see torch's allocator, so nbytes)
    largest = max(paths, key=lambda p: read_label(p).numel())
    with Image.open(largest) as img:
        ids = np.array(img)  # (H, W) uint8: what read_label decodes into
    ours_bytes = ids.nbytes + (ids >= NUM_CLASSES).nbytes + read_label(largest).nbytes  # + bool check mask + int64 result
    rgb = decode_image(read_file(str(largest)), mode=ImageReadMode.RGB)  # (3, H, W) uint8
    wide = rgb.permute(1, 2, 0).to(torch.int64)  # (H, W, 3)
    packed = (wide[..., 0] * 256 + wide[..., 1]) * 256 + wide[..., 2]  # (H, W)
    d2l_bytes = rgb.nbytes + wide.nbytes + packed.nbytes + table[packed].nbytes

    mib = 2 ** 20
    height, width = ids.shape
    print(f"labels: {len(paths)} PNGs of split {args.split!r} ({pixels / len(paths) / 1e3:.1f} kpixels each on "
          f"average), {args.reps} interleaved passes per method, medians, torch threads: {torch.get_num_threads()}")
    for name, value in ms.items():
        print(f"  {name:34s} {value:8.3f} ms/label")
    print(f"  speed-up of read_label: {d2l_ms / ours_ms:.1f}x; {100 * floor_ms / ours_ms:.0f}% of read_label's "
          f"time is decoding the PNG, which d2l's decoder does too, so no reader can beat it by more than "
          f"{d2l_ms / floor_ms:.1f}x here")
    print(f"memory: d2l's table holds {table.nbytes / mib:.1f} MiB (int64, 256^3 entries), built once in "
          f"{build_s * 1000:.0f} ms, resident memory grew {rss_growth:.1f} MiB; read_label needs no table")
    print(f"  per label (the largest, {width}x{height}): read_label allocates {ours_bytes / mib:.2f} MiB "
          f"(uint8 ids, bool check, int64 result), d2l's decoder {d2l_bytes / mib:.2f} MiB "
          f"(uint8 RGB, int64 HxWx3, int64 packed colours, int64 result)")
    print(f"border: {border_pixels} pixels are 255 (ignore); the RGB method made {lost} of them background "
          f"({100 * lost / max(border_pixels, 1):.0f}%); all other pixels agree")


if __name__ == "__main__":
    main()
