"""The training loop every chapter uses: ``fit`` and one epoch of it.

A segmentation recipe is mostly the same across FCN, PSPNet, CCNet and
DeepLab: pixel-wise cross entropy that skips VOC's 255 border, SGD with
momentum and the "poly" learning-rate decay of DeepLab and PSPNet, mixed
precision on a GPU, and an mIoU on the validation set after each epoch. Writing
it once keeps the chapters about the models. The parts that are easy to get
subtly wrong live in modules named for them (the losses, evaluation,
checkpoints, random streams, several processes), so that ``fit`` reads as
the loop of chapter 3; chapters import it from :mod:`segbook.train`.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from . import rehearsal
from .checkpoints import atomic_save, checkpoint_state, remove_stale_temporaries, resume
from .distributed import (Distributed, agree_on_resume, all_gather_states, init_distributed, leave,
                          mean_over_processes, process_device, seed_process, set_epoch, share_buffers,
                          shard_train_loader, shard_val_loader, wait_for_rank0, wrap_model)
from .env import get_device
from .evaluation import evaluate
from .losses import LossFn, call_loss, model_loss
from .paths import short_path
from .rng import process_rng_state, rng_state
from .runtime import amp_dtype as _amp_dtype
from .runtime import default_channels_last, progress_bar, progress_on, scaler_enabled, to_device
from .viz import LivePlot

__all__ = ["TrainingDiverged", "fit", "poly_schedule"]


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


def poly_schedule(max_iters: int, power: float = 0.9, warmup_steps: int = 0) -> Callable[[int], float]:
    """The factor ``(1 - it / max_iters) ** power`` for ``LambdaLR``, one step per iteration.

    DeepLab and PSPNet decay the learning rate this way: smoothly to zero at the
    last iteration, faster than linear near the end (``power=1.0`` is linear).
    With ``warmup_steps`` the factor first rises linearly, ``(it + 1) / warmup_steps``,
    and the decay then runs over the remaining ``max_iters - warmup_steps`` steps
    (SegFormer's recipe): Adam's first steps, taken with second-moment estimates
    from a handful of gradients, are the ones that can throw a transformer off.
    It is a plain function on purpose: ``LambdaLR`` then saves only its step
    count, so a resumed run rebuilds the curve for the epochs it is asked to reach.
    """
    max_iters = max(1, int(max_iters))
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < max_iters:
        raise ValueError(f"warmup_steps={warmup_steps!r}: use an int from 0 to {max_iters - 1} "
                         f"(fewer than the {max_iters} steps of the whole run).")

    def factor(it: int) -> float:
        if it < warmup_steps:
            return (it + 1) / warmup_steps
        return max(0.0, 1.0 - (it - warmup_steps) / (max_iters - warmup_steps)) ** power

    return factor


def fit(model: nn.Module, train_loader, val_loader, *, epochs: int,
        optimizer: torch.optim.Optimizer | None = None, lr: float = 0.01, momentum: float = 0.9,
        weight_decay: float = 1e-4, poly_power: float = 0.9, schedule: str | None = "poly", warmup_steps: int = 0,
        aux_weights: Mapping[str, float] | None = None, loss_fn: LossFn | None = None,
        device: torch.device | str | None = None, num_classes: int | None = None,
        amp: bool | str | torch.dtype | None = None, channels_last: bool | None = None,
        checkpoint_dir: str | os.PathLike | None = None, resume: bool = False, seed: int = 0,
        run_config: Mapping | None = None, live_plot: bool | None = None, progress: bool | None = None,
        log: Callable[[str], object] | None = print, sync_batchnorm: bool = False) -> list[dict]:
    """Train ``model`` for ``epochs`` epochs, validating after each; returns one dict per epoch.

    Each dict holds ``epoch``, ``train_loss``, ``val_loss``, ``val_pixel_acc``,
    ``val_miou``, ``lr`` (the learning rate of the epoch's first step) and
    ``seconds`` (wall time, never printed: it would differ between runs), plus
    ``train_loss_out`` / ``train_loss_aux`` when the model has auxiliary heads.

    The recipe: SGD with momentum and weight decay (unless ``optimizer`` is
    given) and the per-iteration poly decay ``(1 - it / max_it) ** poly_power``
    (``schedule=None`` keeps the learning rate fixed), after a linear warm-up over
    the first ``warmup_steps`` optimiser steps when that is above 0 (see
    :func:`poly_schedule`; for a transformer, pass an AdamW built on
    :func:`segbook.optim.param_groups_weight_decay` as ``optimizer``); the model's own loss
    (:func:`segbook.losses.model_loss`: pixel-wise cross entropy that skips 255,
    plus PointRend's point loss for PointRend), or ``loss_fn(outputs, target)``
    when given. On CUDA, by default, float16 autocast with a GradScaler and
    channels-last tensors (``amp``/``channels_last``: None means "on when CUDA").

    Reproducible on a CPU: ``seed`` seeds Python, NumPy and PyTorch, and the
    generator that shuffles ``train_loader`` is rewound to its own seed (set
    by ``load_voc(seed=...)``), so calling ``fit`` twice with the same loaders
    and freshly built models gives the same history.

    With ``checkpoint_dir``, ``last.pt`` is written after every epoch and
    ``best.pt`` whenever ``val_miou`` improves, each atomically, holding the
    model, optimizer, schedule and scaler states, the history, the random
    streams and the run's settings (``config``: the model's class, the
    learning-rate recipe, plus ``run_config``, e.g. the crop and batch size).
    ``resume=True`` continues from ``last.pt`` exactly where it stopped (the
    returned history includes the earlier epochs), and refuses a ``last.pt``
    whose settings differ, listing them. Temporary files a hard kill left are
    removed first; Ctrl-C says in one line what was saved and is re-raised.

    A NaN or infinite loss raises :class:`TrainingDiverged` naming the epoch
    and step; the diverged epoch writes no checkpoint. ``progress`` shows tqdm
    bars (default: unless ``TQDM_DISABLE`` or ``CI`` is set); ``live_plot``
    redraws loss and mIoU in a notebook (default: only in one); ``log`` gets
    one line per epoch (``None`` for silence).

    Under ``torchrun`` (or inside a process group made by the caller) ``fit``
    trains on every process at once (see :mod:`segbook.distributed`):
    DistributedDataParallel, each process its own share of the training set
    and a batch of the loader's size from it at every step (the batch size is
    per process, the global batch N times larger), validation split across processes
    and summed, and logs, bars, live plots and checkpoints on rank 0 only;
    ``sync_batchnorm=True`` (CUDA) computes BatchNorm statistics over the
    whole global batch. Each process seeds its own random numbers with
    ``seed + rank`` (its dropout, its PointRend points) but shares the data
    order. Each process averages its loss over its own counted pixels and DDP
    averages the gradients: the mean of per-process means, equal to the mean
    over the global batch's pixels only when every process counts as many
    (see :mod:`segbook.distributed`). Resuming works the same way, and stops
    with an error when the processes did not all resume at the same epoch. A
    process group that ``fit`` made itself (from torchrun's variables) is
    destroyed when it returns; one the caller made is left to the caller.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}.")
    if schedule not in ("poly", None):
        raise ValueError(f"schedule={schedule!r}: use 'poly' or None (a fixed learning rate).")
    if warmup_steps and schedule is None:
        raise ValueError(f"warmup_steps={warmup_steps!r} needs schedule='poly' (the warm-up leads into the decay).")
    _length(train_loader)  # fails early, with a clear message, for a loader without a length
    device = torch.device(device) if device is not None else get_device()
    group = init_distributed(device)
    try:
        device = process_device(device, group)  # under torchrun: cuda means GPU LOCAL_RANK
        main = group is None or group.is_main
        say = log if log is not None and main else (lambda line: None)
        amp_dtype = _amp_dtype(amp, device)
        channels_last = default_channels_last(device) if channels_last is None else bool(channels_last)
        progress = progress_on(progress) and main
        seed_process(seed, group, train_loader)
        loader = shard_train_loader(train_loader, group, seed) if group is not None else train_loader
        val_loader = shard_val_loader(val_loader, group) if group is not None else val_loader
        steps_per_epoch = _length(loader)
        model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        optimizer, scheduler, scaler = _optimization(
            model, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, schedule=schedule,
            poly_power=poly_power, warmup_steps=warmup_steps, total_steps=epochs * steps_per_epoch,
            amp_dtype=amp_dtype, device=device)
        loss_fn = loss_fn or model_loss(model, aux_weights)
        config = {"model": type(model).__name__, "optimizer": type(optimizer).__name__, "lr": lr,
                  "momentum": momentum, "weight_decay": weight_decay, "schedule": schedule, "poly_power": poly_power,
                  "seed": seed, "epochs": epochs, **({"warmup_steps": warmup_steps} if warmup_steps else {}),
                  **(run_config or {})}  # no warm-up, no key: checkpoints written before it resume as they did
        last, best = _checkpoint_files(checkpoint_dir, say, clean=main)  # another rank's .tmp may be mid-write
        history, best_miou, start, kept_epoch = _starting_point(
            resume, last, model, optimizer, scheduler, scaler, train_loader, epochs, config, say, device, group)
        net = wrap_model(model, group, device, sync_batchnorm) if group is not None else model

        plot = LivePlot(live_plot if main else False)
        stop = epochs if rehearsal.limit("epochs", epochs) is None else min(epochs, rehearsal.EPOCHS)
        for epoch in range(start, stop + 1):
            began, lr_now = time.perf_counter(), optimizer.param_groups[0]["lr"]
            set_epoch(loader, epoch)
            try:
                stats = _train_one_epoch(net, loader, optimizer, scheduler, scaler, loss_fn, device, amp_dtype,
                                         channels_last, progress, desc=f"epoch {epoch}/{epochs}", group=group)
                if group is not None:
                    share_buffers(model)  # every process scores with rank 0's BatchNorm statistics
                val = evaluate(model, val_loader, num_classes=num_classes, loss_fn=loss_fn, amp=amp_dtype or False,
                               channels_last=channels_last, progress=progress, reduce=group is not None)
            except _NonFinite as bad:
                message = _diverged_message(epoch, bad.step, steps_per_epoch, bad.value,
                                            optimizer.param_groups[0]["lr"], amp_dtype, last, kept_epoch)
                raise TrainingDiverged(message, epoch=epoch, step=bad.step, loss=bad.value,
                                       checkpoint=last if kept_epoch is not None else None, history=history) from None
            except KeyboardInterrupt:
                say(_interrupted_message(epoch, last, kept_epoch))
                raise
            num_classes = val["confusion"].num_classes
            history.append({"epoch": epoch, **stats, "val_loss": val["loss"], "val_pixel_acc": val["pixel_acc"],
                            "val_miou": val["miou"], "lr": lr_now, "seconds": time.perf_counter() - began})
            improved = history[-1]["val_miou"] > best_miou  # NaN (no class seen) never counts as better
            best_miou = history[-1]["val_miou"] if improved else best_miou
            if last is not None:
                state = _epoch_state(model, optimizer, scheduler, scaler, train_loader, device, group, epoch=epoch,
                                     epochs=epochs, history=history, best_miou=best_miou, config=config)
                if main:  # rank 0 alone writes the files
                    _save(state, last, best if improved else None)
                kept_epoch = epoch
            plot.update(history)  # first, so that in a notebook the figure sits above the epoch lines
            say(_format_epoch(history[-1], epochs))
        if start > epochs:
            say(f"{short_path(last)} already holds {start - 1} epochs (epochs={epochs}); nothing to train")
        if group is not None and last is not None:
            wait_for_rank0()  # when fit returns in any process, rank 0's last.pt is whole
        return history
    finally:
        leave(group)  # only a process group that fit itself started


# -- fit's plumbing ---------------------------------------------------------------------------------------


def _length(train_loader) -> int:
    try:
        return len(train_loader)
    except TypeError:
        raise TypeError("fit needs a training loader with a length (a DataLoader over a map-style dataset), "
                        "to lay out the poly schedule.") from None


def _checkpoint_files(checkpoint_dir, say, clean: bool = True) -> tuple[Path | None, Path | None]:
    """``last.pt`` and ``best.pt`` in ``checkpoint_dir`` (made if needed), after clearing a killed run's temporaries."""
    if checkpoint_dir is None:
        return None, None
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(folder) if clean else []
    if stale:
        say(f"removed {', '.join(p.name for p in stale)} from {short_path(folder)}: "
            "left by a save that was killed; last.pt and best.pt are whole")
    return folder / "last.pt", folder / "best.pt"


def _epoch_state(model, optimizer, scheduler, scaler, train_loader, device: torch.device,
                 group: Distributed | None, **progress) -> dict:
    """What ``last.pt`` holds after an epoch; every process hands in its own random streams (a collective)."""
    processes = all_gather_states(process_rng_state(device)) if group is not None else None
    return checkpoint_state(model, optimizer, scheduler, scaler, train_loader,
                            rng=rng_state(train_loader, device, processes), **progress)


def _save(state: dict, last: Path, best: Path | None) -> None:
    """Write ``last.pt`` (and ``best.pt`` when the epoch improved); a Ctrl-C in here must not cut a file."""
    atomic_save(state, last)
    if best is not None:
        atomic_save(state, best)


_resume = resume  # fit's keyword of the same name hides the function inside it


def _optimization(model: nn.Module, optimizer: torch.optim.Optimizer | None, *, lr: float, momentum: float,
                  weight_decay: float, schedule: str | None, poly_power: float, warmup_steps: int,
                  total_steps: int, amp_dtype: torch.dtype | None, device: torch.device) -> tuple:
    """(optimizer, scheduler, scaler): the given optimizer or SGD, warm-up and poly per step, the float16 scaler."""
    optimizer = optimizer or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                                             momentum=momentum, weight_decay=weight_decay)
    scheduler = (torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(total_steps, poly_power, warmup_steps))
                 if schedule == "poly" else None)
    scaler = torch.amp.GradScaler(device.type, enabled=scaler_enabled(amp_dtype, device))  # off but for float16
    return optimizer, scheduler, scaler


def _starting_point(resume_: bool, last: Path | None, model, optimizer, scheduler, scaler, train_loader,
                    epochs: int, config: dict, say, device: torch.device, group: Distributed | None) -> tuple:
    """(history, best mIoU, first epoch to train, epoch ``last.pt`` holds): fresh, or from ``last.pt`` when resuming."""
    history, best_miou, start = [], -math.inf, 1
    if resume_:
        if last is None:
            raise ValueError("resume=True needs checkpoint_dir, the folder that holds last.pt.")
        history, best_miou, start = _resume(last, model, optimizer, scheduler, scaler, train_loader, epochs,
                                            config, say, device=device, rank=group.rank if group else 0)
        if group is not None:
            agree_on_resume(start, group, device)  # every process at the same epoch, or a clear error
    kept_epoch = history[-1]["epoch"] if history and last is not None and last.is_file() else None
    return history, best_miou, start, kept_epoch


def _interrupted_message(epoch: int, last: Path | None, kept_epoch: int | None) -> str:
    if last is not None and kept_epoch is not None:
        return (f"interrupted in epoch {epoch}: {short_path(last)} holds epoch {kept_epoch}; "
                "run again with resume=True (--resume) to continue")
    return f"interrupted in epoch {epoch}: nothing was saved"


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
                     progress: bool, desc: str, group: Distributed | None = None) -> dict[str, float]:
    """One pass over ``loader``; returns the mean total loss and the mean of each head's loss.

    With several processes the means are over all of them, and a non-finite
    loss in any process stops every process at the same step (one stopping
    alone would leave the others waiting for its gradients forever).
    """
    model.train()
    total, steps, part_sums = 0.0, 0, {}
    bar = progress_bar(loader, enabled=progress, desc=desc)
    cap = rehearsal.limit("steps", len(loader) if hasattr(loader, "__len__") else None)
    for step, (images, masks) in enumerate(bar, start=1):
        if cap is not None and step > cap:
            break
        images, masks = to_device(images, masks, device, channels_last)  # (B, 3, H, W), (B, H, W)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, parts = call_loss(loss_fn, model(images), masks)
        value = loss.item()  # one sync per step: the price of stopping at the step that diverged
        if group is not None:
            value = mean_over_processes(value, device)  # NaN anywhere makes the mean NaN everywhere
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
        if group is not None:
            stats.update({key: mean_over_processes(v, device) for key, v in stats.items() if key != "train_loss"})
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
