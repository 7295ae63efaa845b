"""Mask2Former's quick model trained long enough to learn: three seeds scored like chapter 7's models, and why.

Chapter 9 trains Mask2Former live for two epochs only; what it concludes comes
from here. The model is ``build_model("mask2former", num_classes=21)`` with its
quick defaults (ResNet-18 from random init, C = 64, N = 16 queries, 3 decoder and
2 encoder layers) and 2048 points per mask in the loss. The recipe is the
paper's, scaled to the toy set: AdamW (weight decay 0.05, none on norms and
embeddings), the poly decay (power 0.9), no warm-up, 96 x 128 crops in batches of
8 (chapter 3's), ``EPOCHS`` epochs on the toy set's 200 training images. Two of
its choices were made on held-out training images, never on val:

* the backbone's learning rate equals the rest's (``backbone_lr_factor`` 1): the
  paper's x0.1 is for a pretrained backbone; from random init it scored lower at
  every learning rate of ``experiments/mask2former_probe.py`` (3 epochs, its log
  ``mask2former_probe_log.jsonl``);
* the learning rate: that probe's 3-epoch sweep put 1e-3 first; at this longer
  schedule ``--lr-check`` trains each of ``LRS`` for ``EPOCHS`` epochs on 160
  training images and scores the other 40 (the probe's split), and the rule
  fixed in advance picks the highest mean held-out mIoU over the last three
  epochs.

Each run is scored as in ``compare_all.py`` (whole validation images, mIoU,
boundary mIoU, pixel accuracy; rows with the keys of ``segformer_compare.json``)
and measured after every epoch on the 50 validation images, where nothing is
chosen: how many queries predict anything (a real class beats "no object" and
the mask covers a cell), which query the Hungarian matching pairs with each
region of the label (final layer, 2048 uniform points, a fixed generator), how
many of those pairs changed since the previous epoch, and how good the matched
pairs are: the mean IoU of the query's mask with its region, and the share of
queries whose most probable class is the region's (at the end, per class too).
Seed 0 also stores
its last model's queries on one validation image (the first with three object
classes): class probabilities and stride-4 mask probabilities, quantised to
bytes, for chapter 9's figure.

``check`` is a cheap run the tests repeat (two steps of one epoch, seed 0, not
scored); ``experiments/check_spread.py mask2former_compare`` measures its spread.

    python -m experiments.mask2former_compare --lr-check --no-runs --write [--lrs 5e-4 1e-3 2e-3]   # ~8 min a rate
    python -m experiments.mask2former_compare --write                 # seeds 0 1 2, ~12 min each
    python -m experiments.mask2former_compare --write --check-only    # the check row alone

The file is written after every run (a kill loses one). ``--write`` goes to the
shipped ``segbook/results/mask2former_compare.json``, else a scratch file.
"""
from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
import zlib
from pathlib import Path

import torch

from experiments.compare_all import QUICK as CHAPTER7
from experiments.harness import SHIPPED, add_output_options, first_batch, output_path, stamp, write_json
from experiments.mask2former_probe import held_out_loaders
from experiments.pointrend_compare import score  # mIoU and boundary mIoU over whole images

from segbook import seed_everything
from segbook.data import NUM_CLASSES, load_voc
from segbook.metrics import ConfusionMatrix
from segbook.models import build_model
from segbook.models.base import resize_to
from segbook.models.set_criterion import hungarian_match, semantic_targets
from segbook.train import fit

NAME = "mask2former_compare"
MODELS = {"Mask2Former": ("mask2former", {})}  # the registered model's quick defaults
EPOCHS = 20
LRS = (5e-4, 1e-3, 2e-3)
RECIPE = dict(optimizer="AdamW", weight_decay=0.05, backbone_lr_factor=1.0, poly_power=0.9, warmup_steps=0,
              num_points=2048)
CHECK = dict(model="Mask2Former", seed=0, epochs=1, steps=2, lr=5e-4)  # the chosen rate
MATCH_POINTS, MATCH_SEED = 2048, 0
PROBE_LOG = Path(__file__).resolve().parent / "mask2former_probe_log.jsonl"  # mask2former_probe.py's first probe


def probe_summary(epochs: int = 3, num_points: int = 12544) -> dict:
    """The 3-epoch probe's held-out mIoU by backbone factor and learning rate (seed 0), from its log."""
    rows = [json.loads(line) for line in PROBE_LOG.read_text().splitlines() if line.strip()]
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        if row.get("epochs") == epochs and row.get("num_points") == num_points and row.get("seed") == 0 \
                and "lr" in row:
            table.setdefault(str(row["backbone_factor"]), {})[f"{row['lr']:g}"] = row["held_miou"][-1]
    return {"source": f"experiments/{PROBE_LOG.name}", "epochs": epochs, "num_points": num_points,
            "split": "160 training images trained, 40 scored", "held_miou": table}


def build(num_points: int = RECIPE["num_points"]) -> torch.nn.Module:
    name, extra = MODELS["Mask2Former"]
    return build_model(name, num_classes=NUM_CLASSES, loss_settings={"num_points": num_points}, **extra)


def optimizer_for(model, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.param_groups(lr, weight_decay=RECIPE["weight_decay"],
                                                backbone_lr_factor=RECIPE["backbone_lr_factor"]))


class FirstLosses:
    """The model's own loss, remembering the first training step's value (as compare_all's FirstStepLoss)."""

    def __init__(self, model) -> None:
        self.loss_fn, self.value = model.loss, None

    def __call__(self, outputs, target):
        total, parts = self.loss_fn(outputs, target)
        if self.value is None and torch.is_grad_enabled():
            self.value = total.item()
        return total, parts


@torch.no_grad()
def query_census(model, val_set) -> dict:
    """On every validation image: queries that predict anything, the final layer's matching, and its pairs' quality.

    Returns ``predicting`` (per image, the number of queries whose best real class
    beats "no object" and whose mask covers a stride-4 cell), ``pairs`` (per image,
    ``[[class, query], ...]`` for each region of the label: what the loss would
    match) and ``matched`` (per pair ``[class, mask IoU, class right, best real class
    right]``: the IoU of the query's mask, sigmoid > 0.5 at the image's size, with the
    region over the counted pixels; whether the query's most probable class, "no
    object" included, is the region's; and whether its most probable real class is).
    """
    model.eval()
    generator = torch.Generator().manual_seed(MATCH_SEED)
    predicting, pairs, matched = [], [], []
    for i in range(len(val_set)):
        image, label = val_set[i]                                                  # (3, H, W), (H, W)
        out = model(image[None])
        probs = out["pred_logits"][0].softmax(-1)                                  # (N, K + 1)
        real = probs[:, :-1].max(-1).values > probs[:, -1]                         # (N,)
        covers = (out["pred_masks"][0] > 0).flatten(1).any(-1)                     # (N,): sigmoid > 0.5
        predicting.append(int((real & covers).sum()))
        regions, counted = semantic_targets(label[None], NUM_CLASSES)
        (queries, targets), = hungarian_match(out["pred_logits"], out["pred_masks"], regions, counted,
                                              num_points=MATCH_POINTS, generator=generator)
        classes, masks = regions[0]                                                # (T,), (T, H, W)
        pairs.append(sorted([int(classes[t]), int(q)] for q, t in zip(queries, targets)))
        inside = resize_to(out["pred_masks"][:, queries], tuple(label.shape))[0] > 0  # (T', H, W)
        valid = counted[0].bool()                                                  # (H, W)
        for j, (q, t) in enumerate(zip(queries, targets)):
            truth = masks[t].bool() & valid
            union = int((truth | (inside[j] & valid)).sum())
            iou = int((truth & inside[j]).sum()) / union if union else 0.0
            matched.append([int(classes[t]), round(iou, 4), bool(probs[q].argmax() == classes[t]),
                            bool(probs[q, :-1].argmax() == classes[t])])
    return {"predicting": predicting, "pairs": pairs, "matched": matched}


def pair_quality(matched: list) -> dict:
    """Mean mask IoU and share of right classes over matched pairs, overall and per class."""
    def summary(rows: list) -> dict:
        return {"pairs": len(rows), "mask_iou": round(statistics.mean(r[1] for r in rows), 4),
                "class_right": round(statistics.mean(r[2] for r in rows), 4),
                "best_real_class_right": round(statistics.mean(r[3] for r in rows), 4)}
    by_class = {str(c): summary([r for r in matched if r[0] == c]) for c in sorted({r[0] for r in matched})}
    return {**summary(matched), "by_class": by_class}


def changed_share(before: list, after: list) -> float:
    """The share of (image, region) pairs whose matched query differs between two censuses."""
    total = changed = 0
    for old, new in zip(before, after):
        old_q = dict(map(tuple, old))
        for cls, query in new:
            total += 1
            changed += old_q.get(cls) != query
    return round(changed / max(total, 1), 4)


class EpochCensus:
    """``fit``'s ``log``: called once per finished epoch (after validation), it takes a census of the model."""

    def __init__(self, model, val_set) -> None:
        self.model, self.val_set, self.rows, self.last = model, val_set, [], None

    def __call__(self, line: str) -> None:
        if not line.startswith("epoch "):
            return
        census = query_census(self.model, self.val_set)
        quality = pair_quality(census["matched"])
        self.rows.append({"queries_predicting_mean": round(statistics.mean(census["predicting"]), 2),
                          "queries_predicting_max": max(census["predicting"]),
                          "matching_changed": None if self.last is None else changed_share(self.last["pairs"],
                                                                                           census["pairs"]),
                          "matched_mask_iou": quality["mask_iou"], "matched_class_right": quality["class_right"],
                          "matched_real_class_right": quality["best_real_class_right"]})
        self.last = census


def query_roles(pairs: list) -> dict:
    """Which classes each query was matched to over the validation images (final census): query -> {class: count}."""
    roles: dict[int, dict[int, int]] = {}
    for image_pairs in pairs:
        for cls, query in image_pairs:
            roles.setdefault(query, {}).setdefault(cls, 0)
            roles[query][cls] += 1
    return {str(q): {str(c): n for c, n in sorted(counts.items())} for q, counts in sorted(roles.items())}


def final_census(model, val_set) -> dict:
    """The last model's query roles and matched pairs' quality per class, on the validation images."""
    census = query_census(model, val_set)
    return {"query_roles": query_roles(census["pairs"]), "matched_quality": pair_quality(census["matched"])}


def figure_image_index(val_set) -> int:
    """The first validation image whose label holds three or more object classes (fixed before any training)."""
    for i in range(len(val_set)):
        classes = val_set[i][1].unique()
        if int(((classes != 0) & (classes != 255)).sum()) >= 3:
            return i
    return 0


def as_bytes(x: torch.Tensor) -> str:
    """Probabilities in [0, 1] as uint8 (x 255, rounded), zlib-compressed, base64: small enough for JSON."""
    q = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes()
    return base64.b64encode(zlib.compress(q, 9)).decode("ascii")


@torch.no_grad()
def figure_data(model, val_set) -> dict:
    """One validation image's queries: class probabilities (N, K + 1) and mask probabilities (N, h, w) as bytes."""
    model.eval()
    index = figure_image_index(val_set)
    image, _ = val_set[index]
    out = model(image[None])
    masks = out["pred_masks"][0].sigmoid()                                          # (N, h, w)
    return {"val_index": index, "image_size": list(image.shape[-2:]), "mask_size": list(masks.shape[-2:]),
            "class_probs": [[round(p, 4) for p in row] for row in out["pred_logits"][0].softmax(-1).tolist()],
            "mask_probs_uint8_zlib_b64": as_bytes(masks)}


def train(seed: int, lr: float, epochs: int, loaders, census_set=None, max_steps: int | None = None) -> tuple:
    """``fit`` with the recipe; returns (model, history, first step's loss, census rows, seconds)."""
    train_loader, val_loader = loaders
    seed_everything(seed)
    model = build()
    loss_fn = FirstLosses(model)
    census = EpochCensus(model, census_set) if census_set is not None else None
    began = time.perf_counter()
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, optimizer=optimizer_for(model, lr),
                  poly_power=RECIPE["poly_power"], warmup_steps=RECIPE["warmup_steps"], loss_fn=loss_fn,
                  device="cpu", num_classes=NUM_CLASSES, seed=seed, live_plot=False, progress=False,
                  log=census, max_steps_per_epoch=max_steps)
    return model, history, loss_fn.value, (census.rows if census else []), time.perf_counter() - began


def lr_check_row(lr: float, epochs: int, seed: int = 0) -> dict:
    """One learning rate on the probe's split: 160 training images trained, the other 40 scored."""
    _, history, _, _, seconds = train(seed, lr, epochs, held_out_loaders(seed))
    held = [round(row["val_miou"], 4) for row in history]
    return {"lr": lr, "seed": seed, "epochs": epochs, "held_miou": held,
            "held_miou_last3": round(statistics.mean(held[-3:]), 4),
            "held_pixel_acc": [round(row["val_pixel_acc"], 4) for row in history],
            "train_loss": [round(row["train_loss"], 4) for row in history], "seconds": round(seconds, 1)}


def run(label: str, seed: int, epochs: int, lr: float, with_figure: bool = False) -> dict:
    """Train on the whole toy train split, score on val like chapter 7; the row, plus what the model learnt."""
    loaders = load_voc(CHAPTER7["batch_size"], CHAPTER7["crop_size"], source="toy", seed=seed, verbose=False)
    val_set = loaders[1].dataset
    model, history, first_step, census, seconds = train(seed, lr, epochs, loaders, census_set=val_set)
    confusion = ConfusionMatrix(NUM_CLASSES)
    with torch.no_grad():
        for i in range(len(val_set)):
            image, target = val_set[i]                                             # (3, H, W), (H, W)
            confusion.update(model(image[None])["out"][0].argmax(0), target)
    row = {"model": label, "seed": seed, "epochs": epochs, **score(model, val_set),
           "val_pixel_acc": round(history[-1]["val_pixel_acc"], 4), "first_step_loss": round(first_step, 4),
           "first_train_loss": round(history[0]["train_loss"], 4), "train_loss": round(history[-1]["train_loss"], 4),
           "train_seconds": round(seconds, 1), "lr": lr,
           "val_iou": [None if v != v else round(v, 4) for v in confusion.iou.tolist()],
           "history": {"train_loss": [round(r["train_loss"], 4) for r in history],
                       "val_miou": [round(r["val_miou"], 4) for r in history],
                       **{key: [r[key] for r in census] for key in census[0]}},
           "final_loss_parts": {k.removeprefix("train_loss_"): round(float(v), 4) for k, v in history[-1].items()
                                if k.startswith("train_loss_")},
           **final_census(model, val_set)}
    if with_figure:
        row["figure"] = figure_data(model, val_set)
    return row


def run_check(seed: int = CHECK["seed"], scored: bool = True) -> dict:
    """``CHECK``: two training steps of seed 0 (one epoch capped), validated on one batch; losses only.

    Unscored whatever ``scored`` says: two steps teach the model nothing worth
    scoring, and ``check_spread`` compares the losses.
    """
    train_loader, val_loader = load_voc(CHAPTER7["batch_size"], CHAPTER7["crop_size"], source="toy", seed=seed,
                                        verbose=False)
    _, history, first_step, _, seconds = train(seed, CHECK["lr"], CHECK["epochs"], (train_loader, first_batch(val_loader)),
                                               max_steps=CHECK["steps"])
    return {**CHECK, "seed": seed, "first_step_loss": round(first_step, 4),
            "first_train_loss": round(history[0]["train_loss"], 4), "train_seconds": round(seconds, 1)}


def settings(args: argparse.Namespace, lr: float | None) -> dict:
    return {"crop_size": list(CHAPTER7["crop_size"]), "batch_size": CHAPTER7["batch_size"], "epochs": args.epochs,
            "lr": lr, **RECIPE, "threads": args.threads, "train_images": 200, "model": MODELS["Mask2Former"][0],
            "model_settings": "build_model defaults: resnet18, hidden_dim 64, 16 queries, 3 decoder layers, "
                              "2 encoder layers, 4 heads, ffn 256",
            "match_points": MATCH_POINTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=None, help="default: the stored lr check's choice")
    parser.add_argument("--lr-check", action="store_true", help="train --lrs on the held-out split first")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS),
                        help=f"the rates --lr-check trains (default {LRS}); stored rows of other rates are kept")
    parser.add_argument("--no-runs", action="store_true", help="stop after --lr-check")
    parser.add_argument("--check-only", action="store_true", help="re-measure the check row only")
    add_output_options(parser, NAME)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = output_path(args, NAME)
    shipped = SHIPPED / f"{NAME}.json"
    stored = json.loads(path.read_text()) if path.is_file() else (
        json.loads(shipped.read_text()) if shipped.is_file() else {})
    if args.check_only:
        stored["check"] = run_check()
        write_json(path, stored)
        print(json.dumps(stored["check"]), f"\nwrote {path}")
        return
    if args.lr_check:
        rows = [r for r in stored.get("lr_check", {}).get("rows", [])
                if r["lr"] not in args.lrs and r["epochs"] == args.epochs]  # kept: other rates, same length
        for lr in args.lrs:
            rows.append(lr_check_row(lr, args.epochs))
            print(json.dumps(rows[-1]), flush=True)
            rows.sort(key=lambda r: r["lr"])
            stored["lr_check"] = {"rule": "the highest mean held-out mIoU over the last three epochs",
                                  "split": "experiments/mask2former_probe.py's: 160 training images trained, "
                                           "40 scored (never val)", "rows": rows}
            write_json(path, stored)
        stored["lr_check"]["chosen"] = max(rows, key=lambda r: r["held_miou_last3"])["lr"]
        write_json(path, stored)
        if args.no_runs:
            return
    lr = args.lr if args.lr is not None else stored["lr_check"]["chosen"]
    stored.update({"settings": settings(args, lr), "models": {k: list(v) for k, v in MODELS.items()}, **stamp(),
                   "probe": probe_summary(), "runs": []})
    for seed in args.seeds:
        stored["runs"].append(run("Mask2Former", seed, args.epochs, lr, with_figure=seed == 0))
        print(json.dumps({k: v for k, v in stored["runs"][-1].items() if k != "figure"}), flush=True)
        write_json(path, stored)
    stored["check"] = run_check()
    write_json(path, stored)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
