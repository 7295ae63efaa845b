"""Every model of the book on one quick schedule and seed: chapter 7's table, and what each costs.

Seven models, all on a ResNet-18 built through ``build_model`` (``MODELS``),
are trained with :func:`segbook.train.fit` on the toy VOC set with chapter 3's
quick settings (96 x 128 crops, batch 8, three epochs, SGD at 0.01 with the
poly decay, seed 0) and scored on the whole validation images: mIoU and the
boundary mIoU of chapter 6 (the same scoring as ``pointrend_compare.py``).

Costs are measured side by side in the same run, each model once per
interleaved repeat so that a slow spell of a shared machine hits all alike:

* CPU latency: one forward pass of a 1 x 3 x 256 x 256 image in eval mode,
  median of ``--repeats``; reported as a ratio to FCN-32s (absolute times are
  this machine's);
* peak training memory: what one forward + backward step of a batch of two
  256 x 256 crops allocates beyond the weights (``experiments/harness.py``).

Chapter 7 prints its cost columns from ``benchmarks/model_latency.py`` instead,
which times these seven beside chapter 8's SegFormer-B0 in one run; the costs
stored here are this run's own.

It writes ``segbook/results/compare_all.json`` (package data, loaded by chapter
7) with one ``check`` row (FCN-32s, one epoch) that the tests repeat. Each row
also records the loss of the first training step (:class:`FirstStepLoss`): the
check's one-epoch scores and loss move too much between CPUs to re-check, the
first step's loss does not. About seven
minutes on two quiet CPU cores (six of them training).

    python -m experiments.compare_all [--seed 0] [--repeats 5]

More seeds for some models, without touching the shipped table: ``--seeds-out``
trains only ``--models`` (labels of ``MODELS``) for each of ``--seeds`` and adds
the rows to ``segbook/results/compare_all_seeds.json`` (no costs, no check row),
which chapter 7 reads for its seed ranges. About two minutes a run on a quiet core.

    python -m experiments.compare_all --seeds-out --seeds 1 2 --models "dilated FCN" PSPNet CCNet
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
from experiments.harness import peak_bytes
from experiments.harness import first_batch
from experiments.pointrend_compare import score  # mIoU and boundary mIoU over whole images

from segbook import seed_everything
from segbook.data import NUM_CLASSES, load_voc
from segbook.models.base import model_loss
from segbook.models import build_model
from segbook.train import fit

RESULTS = HERE.parent / "segbook" / "results" / "compare_all.json"  # shipped
SEEDS_RESULTS = HERE.parent / "segbook" / "results" / "compare_all_seeds.json"  # extra seeds, shipped
QUICK = dict(crop_size=(96, 128), batch_size=8, epochs=3, lr=0.01)  # chapter 3's quick profile
DEEPLAB = dict(output_stride=16, aspp_channels=64, decoder_channels=64)  # chapter 6's quick DeepLabV3+
MODELS = {  # name in the table: (registered model, keywords); every one on a ResNet-18
    "FCN-32s": ("fcn", {}),
    "FCN-8s": ("fcn8s", {}),
    "dilated FCN": ("pspnet", {"pool_sizes": [], "output_stride": 8}),
    "PSPNet": ("pspnet", {"output_stride": 8}),
    "CCNet": ("ccnet", {"output_stride": 8, "recurrence": 2}),
    "DeepLabV3+": ("deeplabv3plus", DEEPLAB),
    "DeepLabV3+ & PointRend": ("pointrend", {**DEEPLAB, "point_channels": 64, "num_points": 256,
                                             "subdivision_num_points": 1024}),
}
CHECK = dict(model="FCN-32s", seed=0, epochs=1)  # the run the tests repeat: about 10 s
COST_SIZE = 256


def build(label: str, models: dict = MODELS) -> torch.nn.Module:
    name, extra = models[label]
    return build_model(name, num_classes=NUM_CLASSES, **{"backbone": "resnet18", **extra})


class FirstStepLoss:
    """The model's own loss, remembering the first value it returns: the first training step's.

    Why keep it: one epoch of SGD turns another CPU's last-bit differences into
    another model (FCN-32s's epoch loss moved by 0.01 between kernel choices,
    as much as between seeds), while the first step's loss depends only on the
    initial weights, the first batch and one forward pass, so another CPU comes
    close to it and another seed does not (``check_spread`` holds both).
    ``fit`` trains before it validates, so the first call is a training step.
    """

    def __init__(self, model: torch.nn.Module):
        self.loss_fn, self.value = model_loss(model), None

    def __call__(self, outputs, target):
        result = self.loss_fn(outputs, target)
        if self.value is None:
            self.value = (result[0] if isinstance(result, tuple) else result).item()
        return result


def run(label: str, seed: int, epochs: int, models: dict = MODELS, scored: bool = True) -> dict:
    """Train one model with the quick settings and ``seed``; its scores as a row.

    ``scored=False`` validates on one batch and returns the training losses alone.
    """
    train_loader, val_loader = load_voc(QUICK["batch_size"], QUICK["crop_size"], source="toy", seed=seed,
                                        verbose=False)
    val_loader = val_loader if scored else first_batch(val_loader)
    seed_everything(seed)
    model = build(label, models)
    loss_fn = FirstStepLoss(model)
    began = time.perf_counter()
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=QUICK["lr"], device="cpu",
                  num_classes=NUM_CLASSES, seed=seed, live_plot=False, progress=False, log=None,
                  loss_fn=loss_fn)
    seconds = time.perf_counter() - began
    scores = ({**score(model, val_loader.dataset), "val_pixel_acc": round(history[-1]["val_pixel_acc"], 4)}
              if scored else {})
    return {"model": label, "seed": seed, "epochs": epochs, **scores,
            "first_step_loss": round(loss_fn.value, 4),
            "first_train_loss": round(history[0]["train_loss"], 4),
            "train_loss": round(history[-1]["train_loss"], 4), "train_seconds": round(seconds, 1)}


def run_check(seed: int = CHECK["seed"], scored: bool = True) -> dict:
    """``CHECK``, the cheap run that tests/test_compare_all_results.py repeats (``check_spread.py``)."""
    return run(CHECK["model"], seed, CHECK["epochs"], scored=scored)


def costs(repeats: int, models: dict = MODELS) -> dict:
    """Median CPU latency and peak training-step memory of every model, measured interleaved."""
    labels = list(models)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, COST_SIZE, COST_SIZE, generator=g)               # (1, 3, H, W)
    crops = torch.randn(2, 3, COST_SIZE, COST_SIZE, generator=g)               # (2, 3, H, W)
    target = torch.randint(0, NUM_CLASSES, (2, COST_SIZE, COST_SIZE), generator=g)  # (2, H, W)
    built = {label: build(label, models) for label in labels}
    times = {label: [] for label in labels}
    memory = {}
    for label, model in built.items():
        loss_fn = model_loss(model)

        def step(model=model, loss_fn=loss_fn) -> None:
            model.train().zero_grad(set_to_none=False)
            loss_fn(model(crops), target)[0].backward()
        step()  # allocates the gradients, which then count as weights
        memory[label] = peak_bytes(step, torch.device("cpu"))[1]  # (before a MARK, overall)
    with torch.no_grad():
        for label, model in built.items():
            model.eval()(image)  # warm-up
        for r in range(repeats):
            order = labels[r % len(labels):] + labels[:r % len(labels)]  # rotate the order
            for label in order:
                began = time.perf_counter()
                built[label](image)
                times[label].append(time.perf_counter() - began)
    latency = {label: statistics.median(t) for label, t in times.items()}
    return {label: {"latency_ratio": round(latency[label] / latency["FCN-32s"], 3),
                    "latency_ms": round(1e3 * latency[label], 1),
                    "train_step_mb": round(memory[label] / 2**20, 1)} for label in labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=QUICK["epochs"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds-out", action="store_true",
                        help=f"train --models for --seeds and add the rows to {SEEDS_RESULTS.name}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.seeds_out:
        extra_seeds(args)
        return
    rows = []
    for label in MODELS:
        rows.append(run(label, args.seed, args.epochs))
        print(json.dumps(rows[-1]), flush=True)
    check = run(CHECK["model"], CHECK["seed"], CHECK["epochs"])
    measured = costs(args.repeats)
    print(json.dumps(measured, indent=1))
    RESULTS.write_text(json.dumps({
        "settings": {**QUICK, "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
                     "cost_size": COST_SIZE, "repeats": args.repeats},
        "models": {label: [name, extra] for label, (name, extra) in MODELS.items()},
        "torch": torch.__version__, "machine": platform.machine(), "cpus": torch.get_num_threads(),
        "runs": rows, "costs": measured, "check": check}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


def extra_seeds(args: argparse.Namespace) -> None:
    """Train ``args.models`` for ``args.seeds``; add the rows to ``SEEDS_RESULTS`` (a row per model and seed)."""
    settings = {**QUICK, "epochs": args.epochs, "threads": args.threads}
    stored = json.loads(SEEDS_RESULTS.read_text()) if SEEDS_RESULTS.exists() else {"settings": settings, "runs": []}
    if stored["settings"] != settings:
        raise SystemExit(f"{SEEDS_RESULTS} holds runs with {stored['settings']}, not {settings}; "
                         "move it away or run with its settings.")
    for label in args.models:
        for seed in args.seeds:
            row = run(label, seed, args.epochs)
            print(json.dumps(row), flush=True)
            stored["runs"] = [r for r in stored["runs"] if (r["model"], r["seed"]) != (label, seed)] + [row]
            stored.update(torch=torch.__version__, machine=platform.machine())
            SEEDS_RESULTS.write_text(json.dumps(stored, indent=1) + "\n")  # after every run: a kill loses one
    print(f"wrote {SEEDS_RESULTS}")


if __name__ == "__main__":
    main()
