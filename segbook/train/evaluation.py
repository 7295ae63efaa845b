"""Scoring a model on a validation set: loss, pixel accuracy, per-class IoU and mIoU.

A network sees the padding that stacks images of different sizes (zero-padded convolutions, global
pooling), so scoring padded batches makes the mIoU depend on which images share a batch. Here every
image goes through the network alone, at its own size: one score per model and data, as VOC's protocol means.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from ..data.voc import IGNORE_INDEX
from ..metrics import ConfusionMatrix
from ..models.base import LossFn, as_outputs, model_loss
from .distributed import Processes
from .runtime import amp_dtype as _amp_dtype
from .runtime import default_channels_last, model_device, progress_bar, to_device

__all__ = ["evaluate", "single_images"]


def single_images(batch, per_image: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
    """The ``(1, 3, H, W)`` image and ``(1, H, W)`` mask of each item of ``batch``, at its own size.

    ``batch`` is a :class:`segbook.data.PaddedBatch` carrying each image's size (``load_voc``'s validation loader),
    lists of unpadded tensors, or stacked tensors of one size, which ``per_image=False`` passes on whole (faster)."""
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


def _images(loader: Iterable, per_image: bool, max_images: int | None, progress: bool | None):
    """The (image, mask) pairs to score, in order, stopping after ``max_images`` images."""
    scored = 0
    for batch in progress_bar(loader, enabled=progress, desc="val"):
        for images, masks in single_images(batch, per_image):
            if max_images is not None and scored >= max_images:
                return
            scored += images.shape[0]
            yield images, masks


def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None,
             num_classes: int | None = None, loss_fn: LossFn | None = None,
             amp: bool | str | torch.dtype | None = None, channels_last: bool | None = None,
             progress: bool | None = None, ignore_index: int = IGNORE_INDEX, per_image: bool = True,
             max_images: int | None = None, processes: Processes | None = None) -> dict:
    """Loss, pixel accuracy, per-class IoU and mIoU of ``model`` over ``loader``, one image per forward pass.

    Scores come from one confusion matrix over the whole set (the VOC protocol); the loss is averaged over counted
    pixels, not batches or images. ``device=None``: where the model is; ``num_classes=None``: K from the logits;
    ``loss_fn``: the model's own; ``per_image``: see :func:`single_images`; ``max_images`` stops early. Returns
    ``{"loss", "pixel_acc", "miou", "iou", "confusion"}`` (``iou`` a list, NaN for a class in neither target nor
    prediction). Under several ``processes`` each scores its share (maybe empty) and all get the whole's scores."""
    if device is not None:
        model.to(device)
    device = model_device(model)
    dtype = _amp_dtype(amp, device)
    channels_last = default_channels_last(device) if channels_last is None else channels_last
    loss_fn = loss_fn or model_loss(model, ignore_index=ignore_index)
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index) if num_classes else None
    loss_sum, pixels = torch.zeros((), dtype=torch.float64, device=device), 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for images, masks in _images(loader, per_image, max_images, progress):
                images, masks = to_device(images, masks, device, channels_last)  # (B, 3, H, W), (B, H, W)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    outputs = as_outputs(model(images))
                    result = loss_fn(outputs, masks)
                loss = result[0] if isinstance(result, tuple) else result
                logits = outputs["out"]  # (B, K, H, W)
                if confusion is None:
                    confusion = ConfusionMatrix(logits.shape[1], ignore_index=ignore_index)
                confusion.update(logits.argmax(1), masks)  # (B, H, W) ids
                counted = (masks != ignore_index).sum()
                loss_sum += loss.double() * counted
                pixels += counted
    finally:
        model.train(was_training)
    confusion, loss_sum, pixels = (processes or Processes()).sum_scores(confusion, loss_sum, pixels, ignore_index,
                                                                          device)
    if confusion is None:
        raise ValueError("the validation loader yielded no batches; check the split file and the loader's length.")
    return {"loss": float(loss_sum) / max(int(pixels), 1), "pixel_acc": confusion.pixel_accuracy,
            "miou": confusion.miou, "iou": confusion.iou.tolist(), "confusion": confusion}
