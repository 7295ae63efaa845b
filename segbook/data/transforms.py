"""Joint image + mask transforms for segmentation, on torchvision's transforms v2.

Called as ``t(tv_tensors.Image(img), tv_tensors.Mask(lbl))``, each transform draws
its random parameters once for both, resizes a Mask by nearest neighbour (ids 3
and 5 never blend into 4) and pads it with 255. The image is padded after
normalisation, with 0 (ImageNet's mean), as the sliding windows of prediction
and the padded validation batches are: the network meets one kind of padding.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..sizes import as_pair
from .voc import IGNORE_INDEX

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RandomScale", "ToPlainTensors", "train_transforms", "eval_transforms",
           "denormalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomScale(v2.Transform):
    """Resize image and mask by one factor from ``scale_range`` (DeepLab's 0.5-2.0), relative to the image itself."""

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range={scale_range}: need 0 < low <= high, e.g. (0.5, 2.0).")
        self.scale_range = (float(low), float(high))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = torch.empty(()).uniform_(*self.scale_range).item()  # the global torch RNG, seeded per item
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)


class ToPlainTensors(v2.Transform):
    """The last step: a plain float image (3, h, w) and a plain int64 mask (h, w), a (1, h, w) mask squeezed."""

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask, torch.Tensor)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            mask = inpt.as_subclass(torch.Tensor)
            if mask.ndim == 3 and mask.shape[0] == 1:
                mask = mask[0]  # (1, h, w) -> (h, w)
            return mask.to(torch.int64)
        return inpt.as_subclass(torch.Tensor)


def _normalize() -> list[v2.Transform]:
    """uint8 image -> float in [0, 1] -> ImageNet-normalised; the mask only becomes int64."""
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transforms(crop_size: int | Sequence[int], scale_range: tuple[float, float] | None = (0.5, 2.0),
                     hflip: bool = True) -> v2.Compose:
    """Random scale (``scale_range=None``: none), a ``crop_size`` crop, padded if the image is smaller, a flip."""
    steps: list[v2.Transform] = []
    if scale_range is not None:
        steps.append(RandomScale(scale_range))  # on uint8: the fast resize path
    steps += _normalize()
    steps.append(v2.RandomCrop(as_pair(crop_size, "crop_size"), pad_if_needed=True,
                               fill={tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE_INDEX}))
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return v2.Compose(steps + [ToPlainTensors()])


def eval_transforms() -> v2.Compose:
    """The whole image, untouched but for dtype and normalisation: evaluation sees what VOC's metric scores."""
    return v2.Compose(_normalize() + [ToPlainTensors()])


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation for display: (..., 3, H, W) float -> the same in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)  # (3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)  # (3, 1, 1)
    return (image * std + mean).clamp(0.0, 1.0)  # (..., 3, H, W)
