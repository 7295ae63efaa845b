"""Scoring a model on a validation set: loss, pixel accuracy, per-class IoU and mIoU.

Validation images differ in size, and a batch of them has to be padded to
stack. A network sees that padding (zero-padded convolutions, global pooling),
so scoring padded batches makes the mIoU depend on which images share a batch.
Here every image goes through the network alone, at its own size, whatever
the loader's batch size: one score per model and data, as VOC's protocol means.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from . import rehearsal
from .data.voc import IGNORE_INDEX
from .inference import _as_outputs, _model_device
from .losses import LossFn, call_loss, model_loss
from .metrics import ConfusionMatrix
from .runtime import amp_dtype as _amp_dtype
from .runtime import default_channels_last, progress_bar, to_device

__all__ = ["evaluate", "single_images"]


def single_images(batch, per_image: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
    """The ``(1, 3, H, W)`` image and ``(1, H, W)`` mask of each item of ``batch``, at its own size.

    Understands three batch forms: a padded batch that carries each image's
    size (:class:`segbook.data.PaddedBatch`, what ``load_voc``'s validation
    loader gives), lists of unpadded tensors, and plain stacked tensors (e.g. a
    ``TensorDataset``, whose images share one size). ``per_image=False`` passes
    stacked tensors through whole, padding and all, for speed on equal sizes.
    """
    images, masks = batch
    sizes = getattr(batch, "sizes", None)
    if isinstance(images, (list, tuple)):
        for image, mask in zip(images, masks):
            yield image[None], mask[None]  # (1, 3, H, W), (1, H, W)
    elif not per_image:
        yield images, masks  # (B, 3, H, W), (B, H, W)
    elif sizes is not None:
        for k, (height, width) in enumerate(sizes):
            yield images[k:k + 1, :, :height, :width], masks[k:k + 1, :height, :width]  # padding cut off
    else:
        for k in range(images.shape[0]):
            yield images[k:k + 1], masks[k:k + 1]


def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None,
             num_classes: int | None = None, aux_weights: Mapping[str, float] | None = None,
             loss_fn: LossFn | None = None, amp: bool | str | torch.dtype | None = None,
             channels_last: bool | None = None, progress: bool | None = None,
             ignore_index: int = IGNORE_INDEX, per_image: bool = True, reduce: bool = False) -> dict:
    """Loss, pixel accuracy, per-class IoU and mIoU of ``model`` over ``loader``, one image per forward pass.

    Scores come from one confusion matrix over the whole set (the VOC
    protocol), and the loss is averaged over counted pixels rather than
    batches or images. Each image is scored alone and without padding (see
    :func:`single_images`), so the result does not depend on the batch size;
    ``per_image=False`` forwards stacked batches whole, for loaders of
    equal-sized images. ``device=None`` evaluates where the model already is;
    ``num_classes=None`` reads it from the logits. Returns ``{"loss",
    "pixel_acc", "miou", "iou", "confusion"}`` (``iou`` a list of floats, NaN
    for a class in neither target nor prediction; ``confusion`` the
    :class:`~segbook.metrics.ConfusionMatrix`).

    ``reduce=True``, inside a ``torch.distributed`` process group, sums the
    counts and the loss of every process before scoring: each process passes
    its own share of the validation set, and all get the scores of the whole.
    Shares may differ in length or be empty (fewer images than processes): a
    process that scored nothing joins the sums with zeros. The default loss is
    the model's own (:func:`segbook.losses.model_loss`).
    """
    if device is not None:
        model.to(device)
    device = _model_device(model)
    dtype = _amp_dtype(amp, device)
    channels_last = default_channels_last(device) if channels_last is None else channels_last
    loss_fn = loss_fn or model_loss(model, aux_weights, ignore_index)
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index) if num_classes else None
    loss_sum, pixels = torch.zeros((), dtype=torch.float64, device=device), 0
    was_training = model.training
    model.eval()
    try:
        cap, scored = rehearsal.limit("images"), 0
        with torch.inference_mode():
            for batch in progress_bar(loader, enabled=progress, desc="val"):
                for images, masks in single_images(batch, per_image):
                    if cap is not None and scored >= cap:
                        break
                    scored += images.shape[0]
                    images, masks = to_device(images, masks, device, channels_last)  # (B, 3, H, W), (B, H, W)
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        outputs = _as_outputs(model(images))
                        loss, _ = call_loss(loss_fn, outputs, masks)
                    logits = outputs["out"]  # (B, K, H, W)
                    if confusion is None:
                        confusion = ConfusionMatrix(logits.shape[1], ignore_index=ignore_index)
                    confusion.update(logits.argmax(1), masks)  # (B, H, W) ids
                    counted = (masks != ignore_index).sum()
                    loss_sum += loss.double() * counted
                    pixels += counted
                if cap is not None and scored >= cap:
                    break
    finally:
        model.train(was_training)
    if reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
        confusion = _counts_of_every_process(confusion, ignore_index, device)
        totals = torch.stack([loss_sum, torch.as_tensor(float(pixels), dtype=torch.float64, device=device)])
        torch.distributed.all_reduce(totals)
        loss_sum, pixels = totals[0], totals[1]
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


def _counts_of_every_process(confusion: ConfusionMatrix | None, ignore_index: int,
                             device: torch.device) -> ConfusionMatrix | None:
    """Sum every process's confusion matrix; a process whose share was empty takes part with zeros.

    With fewer validation images than processes, or shares of unequal length,
    some process may have scored nothing and not know the number of classes.
    It must still join every collective the others make (or they wait for it
    for ever), so the processes first agree on K, the largest any of them saw.
    """
    known = torch.tensor([confusion.num_classes if confusion is not None else 0], device=device)
    torch.distributed.all_reduce(known, op=torch.distributed.ReduceOp.MAX)
    if int(known) == 0:
        return None  # no process saw an image: the caller's error, raised in every process alike
    if confusion is None:
        confusion = ConfusionMatrix(int(known), ignore_index=ignore_index)
    return confusion.all_reduce()
