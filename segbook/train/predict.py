"""Inference: the class map of one image at its own size, by sliding windows when it is large.

A model trained on crops sees objects at the crops' scale; cutting a large test image into crop-sized,
overlapping windows keeps that scale, and averaging the overlaps removes the seams.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2.functional import normalize

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..models.base import as_outputs
from ..sizes import as_pair
from .runtime import model_device

__all__ = ["predict", "predict_logits", "sliding_windows"]


def sliding_windows(height: int, width: int, crop_size: int | Sequence[int],
                    stride: int | Sequence[int] | None = None) -> list[tuple[int, int, int, int]]:
    """``(top, left, bottom, right)`` of crop-sized windows covering a ``height x width`` image.

    Windows start every ``stride`` pixels (default: two thirds of the crop); the last on each axis is moved back to
    end at the border, so none hangs over, but the one window of an axis shorter than the crop (the caller pads)."""
    ch, cw = as_pair(crop_size, "crop_size")
    sh, sw = as_pair(stride, "stride") if stride is not None else (max(1, round(ch * 2 / 3)), max(1, round(cw * 2 / 3)))
    if sh > ch or sw > cw:
        raise ValueError(f"stride {(sh, sw)} is larger than the crop {(ch, cw)}: windows would leave gaps.")

    def starts(size: int, crop: int, step: int) -> list[int]:
        if size <= crop:
            return [0]
        count = math.ceil((size - crop) / step) + 1
        return sorted({min(i * step, size - crop) for i in range(count)})

    return [(top, left, top + ch, left + cw) for top in starts(height, ch, sh) for left in starts(width, cw, sw)]


def _as_model_input(image: Tensor) -> Tensor:
    """A normalised float (3, H, W) image; a uint8 one is normalised with ImageNet's mean and std."""
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"predict takes one image of shape (3, H, W), got {shape}; "
                         "for a batch, call the model, or predict each image.")
    if image.dtype == torch.uint8:
        return normalize(image.float() / 255, IMAGENET_MEAN, IMAGENET_STD)  # what eval_transforms does
    if not image.is_floating_point():
        raise ValueError(f"predict takes a uint8 image or a normalised float one, got dtype {image.dtype}.")
    return image


def predict_logits(model: nn.Module, image: Tensor, *, crop_size: int | Sequence[int] | None = None,
                   stride: int | Sequence[int] | None = None, device: torch.device | str | None = None,
                   batch_size: int = 4) -> Tensor:
    """Class scores ``(K, H, W)`` for one image, by sliding windows when it is larger than ``crop_size``.

    Overlapping windows are summed and each pixel divided by how many covered it; an axis shorter than the crop is
    padded with zeros and cut back. Without ``crop_size``, the whole image at once; float32, on the image's device."""
    x = _as_model_input(image)  # (3, H, W)
    if device is not None:
        model.to(device)
    run_on = model_device(model)
    height, width = x.shape[-2:]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = x.to(run_on, dtype=torch.float32)
            ch, cw = as_pair(crop_size, "crop_size") if crop_size is not None else (height, width)
            if height <= ch and width <= cw:
                logits = _forward_logits(model, x[None])[0]  # (K, H, W)
                return logits.float().to(image.device)
            # 0 is ImageNet's mean colour once normalised: the fill of training crops and padded validation batches
            padded = F.pad(x, (0, max(cw - width, 0), 0, max(ch - height, 0)))  # (3, H', W'), H' >= ch, W' >= cw
            windows = sliding_windows(padded.shape[-2], padded.shape[-1], (ch, cw), stride)
            summed = count = None
            for first in range(0, len(windows), batch_size):
                chunk = windows[first:first + batch_size]
                batch = torch.stack([padded[:, t:b, l:r] for t, l, b, r in chunk])  # (n, 3, ch, cw)
                scores = _forward_logits(model, batch).float()  # (n, K, ch, cw)
                if summed is None:
                    summed = padded.new_zeros((scores.shape[1], *padded.shape[-2:]))  # (K, H', W')
                    count = padded.new_zeros((1, *padded.shape[-2:]))  # (1, H', W')
                for (t, l, b, r), window_scores in zip(chunk, scores):
                    summed[:, t:b, l:r] += window_scores
                    count[:, t:b, l:r] += 1
            logits = (summed / count)[:, :height, :width]  # (K, H, W); every pixel has count >= 1
            return logits.to(image.device)
    finally:
        model.train(was_training)


def _forward_logits(model: nn.Module, batch: Tensor) -> Tensor:
    logits = as_outputs(model(batch))["out"]  # (B, K, h, w)
    if logits.shape[-2:] != batch.shape[-2:]:
        raise ValueError(f"the model returned logits of size {tuple(logits.shape[-2:])} for an input of "
                         f"{tuple(batch.shape[-2:])}; segbook models return 'out' at the input's own size.")
    return logits


def predict(model: nn.Module, image: Tensor, *, crop_size: int | Sequence[int] | None = None,
            stride: int | Sequence[int] | None = None, device: torch.device | str | None = None) -> Tensor:
    """The class map ``(H, W)`` (int64) of one image at its own size; see :func:`predict_logits`.

    ``image`` is ``(3, H, W)``, normalised float (as ``eval_transforms`` gives) or uint8 (normalised here with
    ImageNet's mean and std). The model runs where it is unless ``device`` is given."""
    return predict_logits(model, image, crop_size=crop_size, stride=stride, device=device).argmax(0)
