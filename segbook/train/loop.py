"""The training loop every chapter uses: ``fit``, and ``train_one_epoch`` inside it.

FCN, PSPNet, CCNet and DeepLab share one recipe: the model's own loss, SGD with momentum and the "poly" decay of
DeepLab and PSPNet, mixed precision on a GPU, an mIoU after each epoch. What is easy to get subtly wrong lives
behind :class:`Checkpoints` and :class:`Processes`, so that ``fit`` reads as chapter 3's loop. Its options:

**The recipe.** ``optimizer``, or SGD (momentum 0.9, weight decay 1e-4) at ``lr``; the rate follows
:func:`poly_schedule` per step (``poly_power=0``: fixed) after ``warmup_steps`` of linear warm-up; ``clip_grad_norm``
clips the gradient norm. For a transformer: ``warmup_steps``, ``poly_power=1.0`` and
``optimizer=torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=...)``. The loss: the model's own
(:func:`segbook.models.base.model_loss`: cross entropy skipping 255, plus PointRend's point loss) or
``loss_fn(outputs, target)``. ``amp``/``channels_last``: float16 autocast/channels-last tensors (None: on with CUDA).

**Reproducible on a CPU.** ``seed`` seeds Python, NumPy and PyTorch and rewinds the generator that shuffles
``train_loader`` to its own seed (``load_voc(seed=...)``): the same loaders and fresh models give the same history.

**Checkpoints.** With ``checkpoint_dir``, atomically: ``last.pt`` after every epoch and ``best.pt`` when
``val_miou`` improves, with all a bit-for-bit resume needs and the run's settings (the recipe and ``run_config``,
e.g. crop and batch size). ``resume=True`` continues from ``last.pt`` (its history included) and refuses one written
with other settings, listing them. Ctrl-C says what was saved; a non-finite loss raises :class:`TrainingDiverged`.

**Several processes.** Under ``torchrun`` (or in the caller's group) every process trains at once, a batch of the
loader's size each (see :class:`Processes`; its ``sync_batchnorm`` and ``global_pixel_mean`` change two defaults).

**Output and limits.** ``log`` gets one line per epoch (None: silence); ``progress`` tqdm bars (default: unless
``TQDM_DISABLE`` is set); ``live_plot`` redraws loss and mIoU (default: in a notebook only). As Lightning's
``limit_train_batches``, ``max_steps_per_epoch`` and ``max_val_images`` cut epochs and validations short to see that
a setting runs (the schedule still spans whole epochs). ``seconds`` in the history is wall time, never printed.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from ..data.voc import IGNORE_INDEX
from ..models.base import LossFn, model_loss
from ..viz import LivePlot
from .checkpoints import Checkpoints
from .distributed import Processes
from .evaluation import evaluate
from .runtime import amp_dtype as _amp_dtype
from .runtime import default_channels_last, progress_bar, progress_on, to_device

__all__ = ["SGD_MOMENTUM", "SGD_WEIGHT_DECAY", "TrainingDiverged", "fit", "param_groups_weight_decay", "poly_schedule",
           "train_one_epoch"]

SGD_MOMENTUM, SGD_WEIGHT_DECAY = 0.9, 1e-4  # fit's optimizer when none is given (FCN, PSPNet, DeepLab)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint is left as it was.

    ``epoch``, ``step``, ``loss``: where; ``checkpoint``: what survives (path or None); ``history``: epochs done."""

    def __init__(self, message: str, *, epoch: int | None = None, step: int | None = None, loss: float = math.nan,
                 checkpoint: os.PathLike | None = None, history: list[dict] | None = None) -> None:
        super().__init__(message)
        self.epoch, self.step, self.loss, self.checkpoint, self.history = epoch, step, loss, checkpoint, history or []


def poly_schedule(max_iters: int, power: float = 0.9, warmup_steps: int = 0) -> Callable[[int], float]:
    """The factor ``(1 - it / max_iters) ** power`` for ``LambdaLR``, one step per iteration, after a warm-up.

    DeepLab's and PSPNet's decay: smoothly to zero at the last iteration, faster than linear near the end
    (``power=1.0`` linear, ``power=0`` fixed). ``warmup_steps`` first raise it as ``(it + 1) / warmup_steps``, then
    the decay runs over the rest (SegFormer's recipe): Adam's first steps, with second moments from a handful of
    gradients, can throw a transformer off. A plain function: ``LambdaLR`` saves only its step count, and a resumed
    run rebuilds the curve for the epochs it is asked to reach."""
    max_iters = max(1, int(max_iters))
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < max_iters:
        raise ValueError(f"warmup_steps={warmup_steps!r}: use an int from 0 to {max_iters - 1} "
                         f"(fewer than the {max_iters} steps of the whole run).")

    def factor(it: int) -> float:
        if it < warmup_steps:
            return (it + 1) / warmup_steps
        return max(0.0, 1.0 - (it - warmup_steps) / (max_iters - warmup_steps)) ** power

    return factor


def param_groups_weight_decay(model: nn.Module, weight_decay: float, no_weight_decay_list: Iterable[str] = ()) -> list[dict]:
    """Two optimizer groups, as timm's: ``[{no decay}, {"weight_decay": weight_decay}]``.

    Decay is a regulariser on weight matrices and kernels; on a norm's scale and
    shift or a bias it only shrinks activations the next layer must re-learn, so
    every 1-D parameter, and every parameter named (or lying in a module named)
    in ``no_weight_decay_list`` (a position table), gets none. Frozen parameters
    are left out. Use: ``torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=...)``.
    """
    if isinstance(no_weight_decay_list, str):
        raise TypeError(f"no_weight_decay_list must be a list of names, got the string {no_weight_decay_list!r}; "
                        f"write ({no_weight_decay_list!r},).")
    skip = set(no_weight_decay_list)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            listed = any(name == item or name.startswith(item + ".") for item in skip)
            (no_decay if param.ndim <= 1 or listed else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


class _NonFinite(Exception):
    def __init__(self, step: int, value: float) -> None:
        self.step, self.value = step, value


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                    device: torch.device, *, scheduler=None, scaler: torch.amp.GradScaler | None = None,
                    amp: torch.dtype | None = None, channels_last: bool = False, clip_grad_norm: float | None = None,
                    max_steps: int | None = None, processes: Processes | None = None, progress: bool = False,
                    desc: str = "train") -> dict[str, float]:
    """One pass over ``loader``: the mean loss, and the mean of each head's loss when there are several.

    The scheduler steps per iteration. A non-finite loss in any process stops all at the same step (one stopping
    alone would leave the others waiting for its gradients forever); ``max_steps`` ends the epoch."""
    processes = processes or Processes()
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    model.train()
    total, steps, part_sums = 0.0, 0, {}
    bar = progress_bar(loader, enabled=progress, desc=desc)
    for step, (images, masks) in enumerate(bar, start=1):
        if max_steps is not None and step > max_steps:
            break
        images, masks = to_device(images, masks, device, channels_last)  # (B, 3, H, W), (B, H, W)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss, parts = _call_loss(loss_fn, model(images), masks)
            loss = loss * processes.loss_weight(masks, IGNORE_INDEX)
        value = processes.mean(loss.item(), device)  # one sync per step: the price of stopping where it diverged
        if not math.isfinite(value):
            raise _NonFinite(step, value)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
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
        stats.update({f"train_loss_{key}": processes.mean(float(value) / steps, device)
                      for key, value in part_sums.items()})
    return stats


def _call_loss(loss_fn: LossFn, outputs, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """A custom ``loss_fn`` may return a tensor alone or ``(tensor, parts)``; this gives both forms one shape."""
    result = loss_fn(outputs, target)
    return (result[0], dict(result[1])) if isinstance(result, tuple) else (result, {})


def fit(model: nn.Module, train_loader, val_loader, *, epochs: int, lr: float = 0.01, optimizer=None,
        poly_power: float = 0.9, warmup_steps: int = 0, clip_grad_norm: float | None = None, loss_fn=None,
        num_classes: int | None = None, device: torch.device | str | None = None, amp: bool | str | None = None,
        channels_last: bool | None = None, processes: Processes | None = None, checkpoint_dir=None,
        resume: bool = False, run_config: Mapping | None = None, seed: int = 0, max_steps_per_epoch: int | None = None,
        max_val_images: int | None = None, log: Callable[[str], object] | None = print, progress: bool | None = None,
        live_plot: bool | None = None) -> list[dict]:
    """Train ``model`` for ``epochs`` epochs, validating after each; returns one dict per epoch.

    Each dict holds ``epoch``, ``train_loss`` (and each head's, when the loss has parts), ``val_loss``,
    ``val_pixel_acc``, ``val_miou``, ``lr`` and ``seconds``; the options are described in the module's text."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}.")
    _length(train_loader)  # fails early, with a clear message, for a loader without a length
    processes = processes or Processes()
    with processes.joined(device) as device:  # under torchrun: cuda means GPU LOCAL_RANK
        say = processes.on_main(log) or (lambda line: None)  # log=None, or not rank 0: silence
        amp, progress = _amp_dtype(amp, device), processes.on_main(progress_on(progress), False)
        channels_last = default_channels_last(device) if channels_last is None else channels_last
        processes.seed(seed, train_loader)
        loader, val_loader = processes.shard_train(train_loader, seed), processes.shard_val(val_loader)
        steps_per_epoch = _length(loader)
        model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        optimizer, scheduler, scaler = _optimization(model, optimizer, lr, poly_power, warmup_steps,
                                                     epochs * steps_per_epoch, amp, device)
        loss_fn = loss_fn or model_loss(model)
        config = {"model": type(model).__name__, "optimizer": type(optimizer).__name__, "lr": lr,
                  "poly_power": poly_power, "warmup_steps": warmup_steps, "seed": seed, "epochs": epochs,
                  **(run_config or {})}
        checkpoints = Checkpoints(checkpoint_dir, (model, optimizer, scheduler, scaler, train_loader), config,
                                  processes, device, say)
        history, best_miou, start = checkpoints.start(resume, epochs)
        net, plot = processes.wrap(model, device), LivePlot(processes.on_main(live_plot, False))
        for epoch in range(start, epochs + 1):
            began, lr_now = time.perf_counter(), optimizer.param_groups[0]["lr"]
            processes.set_epoch(loader, epoch)
            try:
                stats = train_one_epoch(net, loader, optimizer, loss_fn, device, scheduler=scheduler, scaler=scaler,
                                        amp=amp, channels_last=channels_last, clip_grad_norm=clip_grad_norm,
                                        max_steps=max_steps_per_epoch, processes=processes, progress=progress,
                                        desc=f"epoch {epoch}/{epochs}")
                processes.sync_buffers(model)  # every process scores with rank 0's BatchNorm statistics
                val = evaluate(model, val_loader, num_classes=num_classes, loss_fn=loss_fn, amp=amp or False,
                               channels_last=channels_last, progress=progress, max_images=max_val_images,
                               processes=processes)
            except _NonFinite as bad:
                raise _diverged(epoch, bad, steps_per_epoch, optimizer, amp, checkpoints, history) from None
            except KeyboardInterrupt:
                say(checkpoints.interrupted(epoch))
                raise
            num_classes = val["confusion"].num_classes
            history.append({"epoch": epoch, **stats, "val_loss": val["loss"], "val_pixel_acc": val["pixel_acc"],
                            "val_miou": val["miou"], "lr": lr_now, "seconds": time.perf_counter() - began})
            improved = history[-1]["val_miou"] > best_miou  # NaN (no class seen) never counts as better
            best_miou = history[-1]["val_miou"] if improved else best_miou
            checkpoints.save(epoch, epochs, history, best_miou, improved)
            plot.update(history)  # first, so that in a notebook the figure sits above the epoch lines
            say(_format_epoch(history[-1], epochs))
        checkpoints.finish(start, epochs)
        return history


def _length(loader) -> int:
    try:
        return len(loader)
    except TypeError:
        raise TypeError("fit needs a training loader with a length (a DataLoader over a map-style dataset), "
                        "to lay out the poly schedule.") from None


def _optimization(model: nn.Module, optimizer: torch.optim.Optimizer | None, lr: float, poly_power: float,
                  warmup_steps: int, total_steps: int, amp: torch.dtype | None, device: torch.device) -> tuple:
    """(optimizer, scheduler, scaler): the given optimizer or SGD, the schedule per step, the float16 scaler."""
    optimizer = optimizer or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                                             momentum=SGD_MOMENTUM, weight_decay=SGD_WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(total_steps, poly_power, warmup_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)  # bfloat16 needs none
    return optimizer, scheduler, scaler


def _format_epoch(row: dict, epochs: int) -> str:
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    parts += [f"{key.removeprefix('train_loss_')} {row[key]:.4f}" for key in row if key.startswith("train_loss_")]
    parts += [f"val_loss {row['val_loss']:.4f}", f"pixel_acc {row['val_pixel_acc']:.4f}", f"mIoU {row['val_miou']:.4f}"]
    return " | ".join(parts)


def _diverged(epoch: int, bad: _NonFinite, steps: int, optimizer, amp, checkpoints: Checkpoints,
              history: list[dict]) -> TrainingDiverged:
    lr = optimizer.param_groups[0]["lr"]
    lines = [f"training diverged: the loss is {bad.value} at epoch {epoch}, step {bad.step} of {steps}.",
             f"Try a lower learning rate (this step used lr={lr:.3g}; e.g. fit(..., lr={lr / 10:.3g}))."]
    if amp == torch.float16:
        lines.append("Mixed precision was float16; if a lower lr does not help, try amp='bfloat16' or amp=False.")
    kept = checkpoints.last if checkpoints.kept_epoch is not None else None
    return TrainingDiverged("\n".join([*lines, checkpoints.after_divergence()]), epoch=epoch, step=bad.step,
                            loss=bad.value, checkpoint=kept, history=history)
