"""The training loop every chapter uses: loss, fit, evaluate, checkpoints.

A segmentation recipe is mostly the same across FCN, PSPNet, CCNet and
DeepLab: pixel-wise cross entropy that skips VOC's 255 border, SGD with
momentum and the "poly" learning-rate decay of DeepLab and PSPNet, mixed
precision on a GPU, and an mIoU on the validation set after each epoch. Writing
it once here keeps the chapters about the models, and makes the parts that
are easy to get subtly wrong (ignored pixels, a resumable schedule, seeded
shuffling, atomic checkpoints) tested code. Inference (``predict``, with sliding
windows) lives in :mod:`segbook.inference` and is re-exported here.

Run it from a shell too: ``python -m segbook.train --help``.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.voc import IGNORE_INDEX
from .env import get_device, seed_everything, short_path
from .inference import _as_outputs, _model_device, predict, predict_logits, sliding_windows
from .metrics import ConfusionMatrix

__all__ = [
    "TrainingDiverged", "segmentation_loss", "fit", "evaluate", "predict", "predict_logits",
    "sliding_windows", "poly_schedule", "load_checkpoint", "save_checkpoint", "main",
]

DEFAULT_AUX_WEIGHTS = {"aux": 0.4}  # PSPNet's auxiliary head weight (Zhao et al., 2017)

LossFn = Callable[[Mapping[str, Tensor], Tensor], "Tensor | tuple[Tensor, dict[str, Tensor]]"]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint is left as it was.

    Attributes say where it happened (``epoch``, ``step``, ``loss``), which
    checkpoint survives (``checkpoint``, a path or None) and what was learnt
    up to then (``history``, the finished epochs).
    """

    def __init__(self, message: str, *, epoch: int | None = None, step: int | None = None, loss: float = math.nan,
                 checkpoint: Path | None = None, history: list[dict] | None = None) -> None:
        super().__init__(message)
        self.epoch, self.step, self.loss = epoch, step, loss
        self.checkpoint = checkpoint
        self.history = history or []


# -- loss ------------------------------------------------------------------------------------------


def _pixel_ce(logits: Tensor, target: Tensor, ignore_index: int, name: str) -> Tensor:
    """Mean cross entropy over the pixels that are not ``ignore_index``.

    ``F.cross_entropy(..., ignore_index=...)`` averages over the counted pixels
    already, but returns NaN (0/0) for a batch whose every pixel is ignored; a
    sum divided by a count clamped at 1 gives 0 there instead, so such a batch
    cannot pass for a diverged run.
    """
    if logits.shape[-2:] != target.shape[-2:] or logits.shape[0] != target.shape[0]:
        raise ValueError(f"outputs[{name!r}] has shape {tuple(logits.shape)} but the target has {tuple(target.shape)}; "
                         "logits must be (B, C, H, W) at the target's own H and W (upsample them in the model).")
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")  # () over counted pixels
    counted = (target != ignore_index).sum().clamp_min(1)  # ()
    return total / counted


def segmentation_loss(outputs: Mapping[str, Tensor] | Tensor, target: Tensor, *,
                      aux_weights: Mapping[str, float] | None = None,
                      ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, dict[str, Tensor]]:
    """Pixel-wise cross entropy on ``outputs["out"]`` plus weighted cross entropy on auxiliary logits.

    ``target`` is ``(B, H, W)`` int64 with ``ignore_index`` on pixels that must
    not count (VOC's object borders, the padding of a crop). ``aux_weights``
    maps an extra key of ``outputs`` to its weight; by default ``{"aux": 0.4}``
    as in PSPNet. A weighted key the outputs lack is skipped: models drop their
    auxiliary heads in ``eval()`` mode, so the same loss serves validation.
    Keys that are not named (PointRend's point logits) are left to their own loss.

    Returns the total (for ``backward``) and the unweighted loss of each head,
    detached, for logging: ``{"out": ..., "aux": ...}``.
    """
    outputs = _as_outputs(outputs)
    if aux_weights is None:
        aux_weights = DEFAULT_AUX_WEIGHTS
    main = _pixel_ce(outputs["out"], target, ignore_index, "out")
    total, parts = main, {"out": main.detach()}
    for key, weight in aux_weights.items():
        if key == "out" or key not in outputs:
            continue
        aux = _pixel_ce(outputs[key], target, ignore_index, key)
        total = total + weight * aux
        parts[key] = aux.detach()
    return total, parts


def _call_loss(loss_fn: LossFn, outputs, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """A custom ``loss_fn`` may return a tensor alone or ``(tensor, parts)``."""
    result = loss_fn(outputs, target)
    if isinstance(result, tuple):
        return result[0], dict(result[1])
    return result, {}


# -- the poly schedule -----------------------------------------------------------------------------


def poly_schedule(max_iters: int, power: float = 0.9) -> Callable[[int], float]:
    """The factor ``(1 - it / max_iters) ** power`` for ``LambdaLR``, one step per iteration.

    DeepLab and PSPNet decay the learning rate this way: smoothly to zero at the
    last iteration, faster than linear near the end. It is a plain function on
    purpose: ``LambdaLR`` then saves only its step count, so a resumed run
    rebuilds the curve for the epochs it is asked to reach.
    """
    max_iters = max(1, int(max_iters))

    def factor(it: int) -> float:
        return max(0.0, 1.0 - it / max_iters) ** power

    return factor


# -- devices, precision, progress --------------------------------------------------------------------


def _amp_dtype(amp: bool | str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32.

    ``None`` means float16 on CUDA (every CUDA GPU runs it, with a GradScaler
    against underflow, Micikevicius et al., 2018) and float32 elsewhere;
    ``True`` picks float16 on CUDA and bfloat16 on other devices; a dtype or its
    name ("float16", "bfloat16") forces it.
    """
    if amp is None:
        return torch.float16 if device.type == "cuda" else None
    if amp is False:
        return None
    if amp is True:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    names = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    dtype = names.get(amp.lower()) if isinstance(amp, str) else amp
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"amp={amp!r} is not a mixed-precision setting; use None (auto), True, False, "
                         "'float16' or 'bfloat16'.")
    return dtype


def _progress_on(progress: bool | None) -> bool:
    """Bars unless asked not to: ``TQDM_DISABLE`` or ``CI`` set (stored notebooks, CI logs) turn them off."""
    if progress is not None:
        return bool(progress)
    off = ("", "0", "false", "no")
    return not any(os.environ.get(name, "").strip().lower() not in off for name in ("TQDM_DISABLE", "CI"))


def _bar(iterable: Iterable, *, enabled: bool, desc: str):
    """A bar that vanishes when done (``leave=False``): the one-line epoch summary is what stays."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm  # a widget in a notebook, text in a terminal

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, disable=False)


def _to_device(images: Tensor, masks: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=memory_format)  # (B, 3, H, W)
    masks = masks.to(device, non_blocking=True)  # (B, H, W)
    return images, masks


# -- evaluation --------------------------------------------------------------------------------------


def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None,
             num_classes: int | None = None, aux_weights: Mapping[str, float] | None = None,
             loss_fn: LossFn | None = None, amp: bool | str | torch.dtype | None = None,
             channels_last: bool | None = None, progress: bool | None = None,
             ignore_index: int = IGNORE_INDEX) -> dict:
    """Loss, pixel accuracy, per-class IoU and mIoU of ``model`` over ``loader``.

    Scores come from one confusion matrix over the whole set (the VOC
    protocol), and the loss is averaged over counted pixels rather than
    batches, so the 255-padding of uneven validation images weighs nothing.
    ``device=None`` evaluates where the model already is; ``num_classes=None``
    reads it from the logits. Returns ``{"loss", "pixel_acc", "miou", "iou",
    "confusion"}`` (``iou`` a list of floats, NaN for a class in neither target
    nor prediction; ``confusion`` the :class:`~segbook.metrics.ConfusionMatrix`).
    """
    if device is not None:
        model.to(device)
    device = _model_device(model)
    amp_dtype = _amp_dtype(amp, device)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    loss_fn = loss_fn or partial(segmentation_loss, aux_weights=aux_weights, ignore_index=ignore_index)
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index) if num_classes else None
    loss_sum, pixels = torch.zeros((), dtype=torch.float64, device=device), 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for images, masks in _bar(loader, enabled=_progress_on(progress), desc="val"):
                images, masks = _to_device(images, masks, device, channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    outputs = _as_outputs(model(images))
                    loss, _ = _call_loss(loss_fn, outputs, masks)
                logits = outputs["out"]  # (B, C, H, W)
                if confusion is None:
                    confusion = ConfusionMatrix(logits.shape[1], ignore_index=ignore_index)
                confusion.update(logits.argmax(1), masks)  # (B, H, W) ids
                counted = (masks != ignore_index).sum()
                loss_sum += loss.double() * counted
                pixels += counted
    finally:
        model.train(was_training)
    if confusion is None:
        raise ValueError("the validation loader yielded no batches; check the split file and the loader's length.")
    pixels = int(pixels)
    return {
        "loss": float(loss_sum) / max(pixels, 1),
        "pixel_acc": confusion.pixel_accuracy,
        "miou": confusion.miou,
        "iou": confusion.iou.tolist(),
        "confusion": confusion,
    }


# -- checkpoints --------------------------------------------------------------------------------------


def _atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace`` it in.

    An interrupted write (Ctrl-C, a full disk, a preempted Colab) then leaves
    either the old checkpoint or the new one, never half a file; a temporary
    file in the same folder keeps the rename on one file system, where it is atomic.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write ``{"model": model.state_dict(), **extra}`` atomically (see ``fit`` for what it stores)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({"model": _unwrap(model).state_dict(), **extra}, path)
    return path


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None, *,
                    map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`fit` and, given ``model``, load its weights into it.

    Only tensors and plain Python values are stored, so the file is read with
    ``weights_only=True`` (no code runs from it). Returns the whole dict
    (``epoch``, ``history``, ``best_miou``, ...) for the curious reader.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {short_path(path)}; train with fit(..., checkpoint_dir=...) "
                                "or check the path.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file: say which file
        raise RuntimeError(f"could not read the checkpoint {short_path(path)} ({err}); delete it and train again, "
                           "or pass another file.") from err
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{short_path(path)} is not a segbook checkpoint (no 'model' entry).")
    if model is not None:
        _unwrap(model).load_state_dict(state["model"])
    return state


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def _loader_generators(loader) -> list[torch.Generator]:
    """The generators that shuffle ``loader`` (its own, its sampler's), each once."""
    found = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def _rng_state(loader) -> dict:
    """Every random stream a training epoch draws from, as tensors and ints (loadable with weights_only)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": [g.get_state() for g in _loader_generators(loader)],
    }


def _set_rng_state(state: dict, loader) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for gen, saved in zip(_loader_generators(loader), state["loader"]):
        gen.set_state(saved)


def _tuples(x):
    """Pickling keeps tuples, but be safe: ``random.setstate`` insists on tuples all the way down."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# -- fit ----------------------------------------------------------------------------------------------


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return getattr(shell, "kernel", None) is not None


class _LivePlot:
    """One figure in a notebook, redrawn after each epoch and left showing the final curves.

    ``display_id`` makes Jupyter replace the figure in place rather than append
    one per epoch; the figure is closed in pyplot right away (it can still be
    drawn and shown), so the inline backend does not show it a second time
    when the cell ends.
    """

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = _in_notebook() if enabled is None else bool(enabled)
        self.handle = self.figure = None

    def update(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        from .viz import plot_history

        if self.figure is None:
            self.figure = plot_history(history)
            plt.close(self.figure)
            self.handle = display(self.figure, display_id=True)
        else:
            plot_history(history, axes=self.figure.axes[:2])
            self.handle.update(self.figure)


def _format_epoch(row: dict, epochs: int) -> str:
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    parts += [f"{key.removeprefix('train_loss_')} {row[key]:.4f}" for key in row if key.startswith("train_loss_")]
    parts += [f"val_loss {row['val_loss']:.4f}", f"pixel_acc {row['val_pixel_acc']:.4f}", f"mIoU {row['val_miou']:.4f}"]
    return " | ".join(parts)


class _NonFinite(Exception):
    def __init__(self, step: int, value: float) -> None:
        self.step, self.value = step, value


def _train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, scheduler, scaler,
                     loss_fn: LossFn, device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool,
                     progress: bool, desc: str) -> dict[str, float]:
    """One pass over ``loader``; returns the mean total loss and the mean of each head's loss."""
    model.train()
    total, steps, part_sums = 0.0, 0, {}
    bar = _bar(loader, enabled=progress, desc=desc)
    for step, (images, masks) in enumerate(bar, start=1):
        images, masks = _to_device(images, masks, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, parts = _call_loss(loss_fn, model(images), masks)
        value = loss.item()  # one sync per step: the price of stopping at the step that diverged
        if not math.isfinite(value):
            raise _NonFinite(step, value)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            with warnings.catch_warnings():  # a float16 step the scaler skipped is not a mistake
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                scheduler.step()
        total, steps = total + value, steps + 1
        for key, part in parts.items():
            part_sums[key] = part_sums.get(key, 0.0) + part.float()
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
    if steps == 0:
        raise ValueError("the training loader yielded no batches; check the split file and the batch size "
                         "(drop_last=True with fewer images than one batch yields none).")
    stats = {"train_loss": total / steps}
    if len(part_sums) > 1:  # with one head the part is the total itself
        stats.update({f"train_loss_{key}": float(value) / steps for key, value in part_sums.items()})
    return stats


def _diverged_message(epoch: int, step: int, steps: int, value: float, lr: float, amp_dtype, last: Path | None,
                      kept_epoch: int | None) -> str:
    lines = [f"training diverged: the loss is {value} at epoch {epoch}, step {step} of {steps}.",
             f"Try a lower learning rate (this step used lr={lr:.3g}; e.g. fit(..., lr={lr / 10:.3g}))."]
    if amp_dtype == torch.float16:
        lines.append("Mixed precision was float16; if a lower lr does not help, try amp='bfloat16' or amp=False.")
    if last is not None and kept_epoch is not None:
        lines.append(f"The last good checkpoint, {short_path(last)} (epoch {kept_epoch}), is kept as it was; "
                     "nothing of this epoch was written. Resume from it with resume=True and a lower lr.")
    elif last is not None:
        lines.append("No epoch finished, so no checkpoint was written.")
    else:
        lines.append("No checkpoint was kept (checkpoint_dir=None).")
    return "\n".join(lines)


def _checkpoint_state(model, optimizer, scheduler, scaler, train_loader, **progress) -> dict:
    """All a resumed run needs to continue bit for bit: weights, optimizer, schedule, scaler, random streams."""
    return {
        "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict(), "rng": _rng_state(train_loader), **progress,
    }


def _resume(last: Path, model, optimizer, scheduler, scaler, train_loader, epochs: int,
            say: Callable[[str], object]) -> tuple[list[dict], float, int]:
    """Load ``last.pt`` into the run's objects; returns the history so far, the best mIoU and the next epoch."""
    if not last.is_file():
        say(f"no checkpoint at {short_path(last)}; starting from scratch")
        return [], -math.inf, 1
    state = load_checkpoint(last, model)  # on the CPU: RNG states must be CPU tensors
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"], train_loader)
    say(f"resuming from {short_path(last)} after epoch {state['epoch']}")
    if state.get("epochs", epochs) != epochs and scheduler is not None:
        say(f"note: that run planned {state['epochs']} epochs; the poly schedule now ends at epoch {epochs}.")
    return list(state["history"]), state["best_miou"], state["epoch"] + 1


def fit(model: nn.Module, train_loader, val_loader, *, epochs: int,
        optimizer: torch.optim.Optimizer | None = None, lr: float = 0.01, momentum: float = 0.9,
        weight_decay: float = 1e-4, poly_power: float = 0.9, schedule: str | None = "poly",
        aux_weights: Mapping[str, float] | None = None, loss_fn: LossFn | None = None,
        device: torch.device | str | None = None, num_classes: int | None = None,
        amp: bool | str | torch.dtype | None = None, channels_last: bool | None = None,
        checkpoint_dir: str | os.PathLike | None = None, resume: bool = False, seed: int = 0,
        live_plot: bool | None = None, progress: bool | None = None,
        log: Callable[[str], object] | None = print) -> list[dict]:
    """Train ``model`` for ``epochs`` epochs, validating after each; returns one dict per epoch.

    Each dict holds ``epoch``, ``train_loss``, ``val_loss``, ``val_pixel_acc``,
    ``val_miou``, ``lr`` (the learning rate of the epoch's first step) and
    ``seconds`` (wall time, never printed: it would differ between runs), plus
    ``train_loss_out`` / ``train_loss_aux`` when the model has auxiliary heads.

    The recipe: SGD with momentum and weight decay (unless ``optimizer`` is
    given) and the per-iteration poly decay ``(1 - it / max_it) ** poly_power``
    (``schedule=None`` keeps the learning rate fixed); pixel-wise cross entropy
    that skips 255 (see :func:`segmentation_loss`, or pass ``loss_fn(outputs,
    target)``). On CUDA, by default, float16 autocast with a GradScaler and
    channels-last tensors (``amp``/``channels_last``: None means "on when CUDA").

    Reproducible on a CPU: ``seed`` seeds Python, NumPy and PyTorch, and the
    generator that shuffles ``train_loader`` is rewound to its own seed (set
    by ``load_voc(seed=...)``), so calling ``fit`` twice with the same loaders
    and freshly built models gives the same history.

    With ``checkpoint_dir``, ``last.pt`` is written after every epoch and
    ``best.pt`` whenever ``val_miou`` improves, each atomically, holding the
    model, optimizer, schedule and scaler states, the history and the random
    streams; ``resume=True`` continues from ``last.pt`` exactly where it
    stopped (the returned history includes the earlier epochs).

    A NaN or infinite loss raises :class:`TrainingDiverged` naming the epoch
    and step; the diverged epoch writes no checkpoint. ``progress`` shows tqdm
    bars (default: unless ``TQDM_DISABLE`` or ``CI`` is set); ``live_plot``
    redraws loss and mIoU in a notebook (default: only in one); ``log`` gets
    one line per epoch (``None`` for silence).
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}.")
    if schedule not in ("poly", None):
        raise ValueError(f"schedule={schedule!r}: use 'poly' or None (a fixed learning rate).")
    try:
        steps_per_epoch = len(train_loader)
    except TypeError:
        raise TypeError("fit needs a training loader with a length (a DataLoader over a map-style dataset), "
                        "to lay out the poly schedule.") from None
    say = log or (lambda line: None)
    device = torch.device(device) if device is not None else get_device()
    amp_dtype = _amp_dtype(amp, device)
    channels_last = device.type == "cuda" if channels_last is None else bool(channels_last)
    progress = _progress_on(progress)

    seed_everything(seed)
    for gen in _loader_generators(train_loader):
        gen.manual_seed(gen.initial_seed())  # rewind: the batches do not depend on what ran before this call
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = None
    if schedule == "poly":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(epochs * steps_per_epoch, poly_power))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loss_fn = loss_fn or partial(segmentation_loss, aux_weights=aux_weights)

    history: list[dict] = []
    best_miou, start = -math.inf, 1
    last = best = None
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir)
        folder.mkdir(parents=True, exist_ok=True)
        last, best = folder / "last.pt", folder / "best.pt"
    if resume:
        if last is None:
            raise ValueError("resume=True needs checkpoint_dir, the folder that holds last.pt.")
        history, best_miou, start = _resume(last, model, optimizer, scheduler, scaler, train_loader, epochs, say)
    kept_epoch = history[-1]["epoch"] if history and last is not None and last.is_file() else None

    plot = _LivePlot(live_plot)
    for epoch in range(start, epochs + 1):
        began = time.perf_counter()
        lr_now = optimizer.param_groups[0]["lr"]
        try:
            stats = _train_one_epoch(model, train_loader, optimizer, scheduler, scaler, loss_fn, device, amp_dtype,
                                     channels_last, progress, desc=f"epoch {epoch}/{epochs}")
        except _NonFinite as bad:
            lr_bad = optimizer.param_groups[0]["lr"]
            message = _diverged_message(epoch, bad.step, steps_per_epoch, bad.value, lr_bad, amp_dtype, last, kept_epoch)
            raise TrainingDiverged(message, epoch=epoch, step=bad.step, loss=bad.value,
                                   checkpoint=last if kept_epoch is not None else None, history=history) from None
        val = evaluate(model, val_loader, num_classes=num_classes, loss_fn=loss_fn, amp=amp_dtype or False,
                       channels_last=channels_last, progress=progress)
        num_classes = val["confusion"].num_classes
        row = {"epoch": epoch, **stats, "val_loss": val["loss"], "val_pixel_acc": val["pixel_acc"],
               "val_miou": val["miou"], "lr": lr_now, "seconds": time.perf_counter() - began}
        history.append(row)
        improved = row["val_miou"] > best_miou  # NaN (no class seen) never counts as better
        if improved:
            best_miou = row["val_miou"]
        if last is not None:
            state = _checkpoint_state(model, optimizer, scheduler, scaler, train_loader, epoch=epoch, epochs=epochs,
                                      history=history, best_miou=best_miou)
            _atomic_save(state, last)
            kept_epoch = epoch
            if improved:
                _atomic_save(state, best)
        plot.update(history)  # first, so that in a notebook the figure sits above the epoch lines
        say(_format_epoch(row, epochs))
    if start > epochs:
        say(f"{short_path(last)} already holds {start - 1} epochs (epochs={epochs}); nothing to train")
    return history


# -- command line ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m segbook.train",
        description="Train a segbook model on Pascal VOC2012 (or the offline toy VOC) and print its mIoU "
                    "with a per-class IoU table.",
        epilog="Example: python -m segbook.train --model fcn --source toy --epochs 2 --crop-size 128 128 --device cpu",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="fcn", help="model name for segbook.models.build_model (fcn, fcn8s, ...)")
    p.add_argument("--backbone", default=None, help="backbone for the model, e.g. resnet18 (default: the model's own)")
    p.add_argument("--source", choices=("auto", "voc", "toy"), default="auto",
                   help="real VOC2012, the offline toy VOC, or auto: VOC when on disk, else toy")
    p.add_argument("--root", default=None, help="dataset folder (default: SEGBOOK_VOC_ROOT or the segbook data home)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), default=(320, 480),
                   help="random training crop (images smaller are padded, labels with 255)")
    p.add_argument("--lr", type=float, default=0.01, help="initial SGD learning rate (poly decay to 0)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--aux-weight", type=float, default=0.4, help="weight of an 'aux' head's loss, if the model has one")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: CUDA, then MPS, then CPU)")
    p.add_argument("--amp", choices=("auto", "float16", "bfloat16", "off"), default="auto",
                   help="mixed precision; auto = float16 on CUDA, off elsewhere")
    p.add_argument("--checkpoint-dir", default=None, help="where last.pt and best.pt go (default: checkpoints/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt")
    p.add_argument("--pretrained-backbone", choices=("auto", "true", "false"), default="auto",
                   help="ImageNet weights for the backbone; auto = on for real VOC (random init, with a note, "
                        "when they cannot be had), off for the toy set")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers (default: the loader's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (also when TQDM_DISABLE or CI is set)")
    return p


def _build_cli_model(args, num_classes: int, real_voc: bool) -> nn.Module:
    """``--pretrained-backbone auto``: ImageNet weights for real VOC (random init, with a note, when they
    cannot be had); the toy set is learnt from scratch, as in the quick profile."""
    from .models import build_model

    kw = {"backbone": args.backbone} if args.backbone else {}
    pretrained = {"true": True, "false": False}.get(args.pretrained_backbone, "auto" if real_voc else False)
    return build_model(args.model, num_classes=num_classes, pretrained_backbone=pretrained, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m segbook.train``: train, then print the final metrics and the per-class IoU table.

    Returns the exit status (0), as the ``segbook-train`` console script passes it to ``sys.exit``.
    """
    args = _parser().parse_args(argv)
    from .data import load_voc
    from .data.voc import NUM_CLASSES, VOC_CLASSES

    device = get_device(args.device)
    train_loader, val_loader = load_voc(args.batch_size, tuple(args.crop_size), source=args.source, root=args.root,
                                        num_workers=args.num_workers, seed=args.seed)
    real_voc = not _is_toy(val_loader)
    model = _build_cli_model(args, NUM_CLASSES, real_voc)
    checkpoint_dir = Path(args.checkpoint_dir or Path("checkpoints") / args.model)
    amp = {"auto": None, "off": False}.get(args.amp, args.amp)
    print(f"model {args.model} | data {'VOC2012' if real_voc else 'toy VOC'} ({len(train_loader.dataset)} train, "
          f"{len(val_loader.dataset)} val) | device {device.type} | checkpoints {short_path(checkpoint_dir)}")
    began = time.perf_counter()
    fit(model, train_loader, val_loader, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, aux_weights={"aux": args.aux_weight}, device=device,
        num_classes=NUM_CLASSES, amp=amp, checkpoint_dir=checkpoint_dir, resume=args.resume,
        seed=args.seed, live_plot=False, progress=False if args.no_progress else None)
    print(f"trained in {time.perf_counter() - began:.0f} s")
    result = evaluate(model, val_loader, num_classes=NUM_CLASSES, aux_weights={"aux": args.aux_weight})
    print(f"final: val_loss {result['loss']:.4f} | pixel_acc {result['pixel_acc']:.4f} | mIoU {result['miou']:.4f}")
    print(result["confusion"].table(class_names=VOC_CLASSES))
    return 0


def _is_toy(loader) -> bool:
    """Whether the loader reads the generated toy VOC (its folder holds the toy marker file)."""
    from .data.toy import TOY_MARKER

    dataset = getattr(loader, "dataset", None)
    while dataset is not None and not hasattr(dataset, "voc_dir"):  # unwrap e.g. SeededItems
        dataset = getattr(dataset, "dataset", None)
    return dataset is not None and (Path(dataset.voc_dir) / TOY_MARKER).exists()


if __name__ == "__main__":
    raise SystemExit(main())
