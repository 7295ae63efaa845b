"""SegFormer-B0 on chapter 7's quick schedule, three seeds: the rows chapters 7 and 8 add to the comparison.

The same training and scoring as ``compare_all.py`` (its ``run`` and ``costs``):
the toy VOC set, 96 x 128 crops, batch 8, three epochs from scratch, SGD at
0.01 with the poly decay, two threads, scored on the whole validation images
(mIoU and boundary mIoU); seeds 0, 1 and 2, like the seven models of chapter 7
(seed 0 in ``compare_all.json``, 1 and 2 in ``compare_all_seeds.json`` and the
chapters' own experiments). Costs as there: CPU latency of a 256 x 256 forward as
a ratio to FCN-32s, measured side by side in this run, and the peak memory of a
training step (``benchmarks/memory.py``).

It writes its JSON after every run (a kill loses one): to a scratch file, or
with ``--write`` to the shipped ``segbook/results/segformer_compare.json`` that
chapters 7 and 8 load. About two minutes a run on two quiet cores.

    python -m experiments.segformer_compare --write [--seeds 0 1 2] [--repeats 5]
    python -m experiments.segformer_compare --write --costs-only   # re-measure the costs, keep the runs

Measure the costs on a quiet machine: the ratio is taken side by side, but a
loaded machine (other training runs beside it) stretches the two models'
times unevenly.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
from experiments.harness import SHIPPED, add_output_options, output_path, stamp, write_json
from experiments.compare_all import COST_SIZE, QUICK, costs, run  # chapter 7's training and costs
from experiments.compare_all import MODELS as CHAPTER7_MODELS

NAME = "segformer_compare"
MODELS = {"SegFormer-B0": ("segformer", {"backbone": "mit_b0"})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=QUICK["epochs"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--costs-only", action="store_true",
                        help="re-measure latency and memory only; keep the stored runs and settings")
    add_output_options(parser, NAME)
    args = parser.parse_args()
    path = output_path(args, NAME)
    torch.set_num_threads(args.threads)
    if args.costs_only:
        stored = json.loads((SHIPPED / f"{NAME}.json").read_text())
        if stored["settings"]["threads"] != args.threads:
            raise SystemExit(f"the stored runs used {stored['settings']['threads']} threads; pass --threads to match")
        stored["settings"]["repeats"] = args.repeats
        stored.update(stamp())
        stored["costs"] = costs(args.repeats, {"FCN-32s": CHAPTER7_MODELS["FCN-32s"], **MODELS})
        print(json.dumps(stored["costs"], indent=1))
        write_json(path, stored)
        print(f"wrote {path}")
        return
    stored = {"settings": {**QUICK, "epochs": args.epochs, "threads": args.threads, "cost_size": COST_SIZE,
                           "repeats": args.repeats, "optimizer": "SGD, momentum 0.9, weight decay 1e-4"},
              "models": {label: [name, extra] for label, (name, extra) in MODELS.items()},
              **stamp(), "runs": []}
    for label in MODELS:
        for seed in args.seeds:
            stored["runs"].append(run(label, seed, args.epochs, MODELS))
            print(json.dumps(stored["runs"][-1]), flush=True)
            write_json(path, stored)
    stored["costs"] = costs(args.repeats, {"FCN-32s": CHAPTER7_MODELS["FCN-32s"], **MODELS})
    print(json.dumps(stored["costs"], indent=1))
    write_json(path, stored)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
