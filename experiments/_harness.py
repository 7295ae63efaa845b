"""What the comparison scripts share: runs side by side, a stamp of the machine, and where results go.

A script here trains several models over several seeds and writes one JSON
file. The shipped copy in ``segbook/results/`` is what a chapter prints and a
test re-checks (with a ``check_spread`` that ``check_spread.py`` adds), so no
script replaces it unless asked: by default results go to a scratch file,
and ``--write`` sends them to the shipped path.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

__all__ = ["SHIPPED", "add_output_options", "first_batch", "output_path", "side_by_side", "stamp",
           "write_json"]

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
