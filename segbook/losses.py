"""The segmentation loss: pixel-wise cross entropy that skips VOC's 255 pixels, plus auxiliary heads.

Every chapter trains with it; getting it subtly wrong (counting the ignored
border, a NaN on an all-ignored batch, a forgotten auxiliary head) would not
crash, only train worse, so it is written once and tested.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from .data.voc import IGNORE_INDEX
from .inference import _as_outputs

__all__ = ["DEFAULT_AUX_WEIGHTS", "LossFn", "model_loss", "segmentation_loss"]

DEFAULT_AUX_WEIGHTS = {"aux": 0.4}  # PSPNet's auxiliary head weight (Zhao et al., 2017)

LossFn = Callable[[Mapping[str, Tensor], Tensor], "Tensor | tuple[Tensor, dict[str, Tensor]]"]


def _pixel_ce(logits: Tensor, target: Tensor, ignore_index: int, name: str) -> Tensor:
    """Mean cross entropy over the pixels that are not ``ignore_index``.

    ``F.cross_entropy(..., ignore_index=...)`` averages over the counted pixels
    already, but returns NaN (0/0) for a batch whose every pixel is ignored; a
    sum divided by a count clamped at 1 gives 0 there instead, so such a batch
    cannot pass for a diverged run.
    """
    if logits.shape[-2:] != target.shape[-2:] or logits.shape[0] != target.shape[0]:
        raise ValueError(f"outputs[{name!r}] has shape {tuple(logits.shape)} but the target has {tuple(target.shape)}; "
                         "logits must be (B, K, H, W) at the target's own H and W (upsample them in the model).")
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


def call_loss(loss_fn: LossFn, outputs, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """A custom ``loss_fn`` may return a tensor alone or ``(tensor, parts)``; this gives both forms one shape."""
    result = loss_fn(outputs, target)
    if isinstance(result, tuple):
        return result[0], dict(result[1])
    return result, {}


def model_loss(model: nn.Module, aux_weights: Mapping[str, float] | None = None,
               ignore_index: int = IGNORE_INDEX) -> LossFn:
    """The loss ``model`` trains with: its class's ``criterion`` if it has one, else :func:`segmentation_loss`.

    One path for every model, so that no caller (``fit``, ``evaluate``, the
    command line) can forget a model's own loss: PointRend trained with the
    plain loss gives its point head no gradient at all, and under DDP stops at
    the second step, waiting for gradients that never come.
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    criterion = getattr(type(model), "criterion", None) or segmentation_loss
    return partial(criterion, aux_weights=aux_weights, ignore_index=ignore_index)
