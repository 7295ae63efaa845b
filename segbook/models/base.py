"""One way to put a segmentation model together: backbone, head, optional auxiliary head.

Every model from PSPNet on is the same three parts, as in torchvision's
``_SimpleSegmentationModel``: a backbone that returns its stages by name, a head
that turns them into class scores, and (for training only) an auxiliary head
on an earlier stage whose loss helps the gradient reach the middle of a deep
backbone (Zhao et al., 2017). Writing the wiring once means a chapter's model is
just its head, and every model keeps the contract the tests and ``fit`` rely on:
``forward(images)`` returns ``{"out": (B, K, H, W)}`` at the input's own size,
plus ``"aux"`` in training mode.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FCNHead", "SegmentationModel", "resize_to"]


def resize_to(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize to ``size`` with ``align_corners=False`` (pixel centres line up; no corner pinning)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)  # (B, K, H, W)


class FCNHead(nn.Sequential):
    """3x3 conv (C -> C/4) + BN + ReLU + dropout + 1x1 classifier: torchvision's FCN/auxiliary head.

    Small on purpose: as the auxiliary head it only has to give ``layer3`` a
    loss of its own, and it is thrown away (skipped) at inference.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        inter = max(in_channels // 4, 1)
        super().__init__(
            nn.Conv2d(in_channels, inter, kernel_size=3, padding=1, bias=False),  # (B, C/4, h, w)
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(inter, num_classes, kernel_size=1),                          # (B, K, h, w)
        )


class SegmentationModel(nn.Module):
    """``backbone`` -> ``head`` -> logits at the input size; ``aux_head`` on ``aux_stage`` when training.

    Args:
        backbone: returns a mapping of stage name to feature map (e.g.
            :class:`~segbook.models.backbones.ResNetBackbone`: ``layer1`` .. ``layer4``).
        head: takes that whole mapping (so a decoder may read several stages, as
            FCN-8s and DeepLabV3+ do) and returns logits (B, K, h, w) on its own grid;
            the model resizes them to (H, W) bilinearly. A head that upsamples itself
            (FCN's transposed convolutions) sets the class attribute
            ``returns_input_size = True``; it is then called as ``head(features, (H, W))``
            and must return exactly (B, K, H, W).
        aux_head: optional; takes the single map ``features[aux_stage]`` (an
            :class:`FCNHead`, say). Its logits, resized to (H, W), ride in ``"aux"``
            in training mode only: evaluation and inference skip its cost.
        aux_stage: which stage the auxiliary head reads (PSPNet: ``layer3``).
        aux_classes: instead of ``aux_head``, build the usual one here: an
            :class:`FCNHead` from ``backbone.channels[aux_stage]`` to ``aux_classes``
            classes with dropout ``aux_dropout`` (PSPNet's, CCNet's and DeepLabV3+'s).
            ``None``: no auxiliary head unless ``aux_head`` is given.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None,
                 aux_stage: str = "layer3", *, aux_classes: int | None = None, aux_dropout: float = 0.1) -> None:
        super().__init__()
        if aux_classes is not None:
            if aux_head is not None:
                raise ValueError("pass aux_head or aux_classes, not both: aux_classes builds the FCNHead itself.")
            aux_head = FCNHead(backbone.channels[aux_stage], aux_classes, aux_dropout)  # (B, K, h', w')
        self.backbone, self.head, self.aux_head, self.aux_stage = backbone, head, aux_head, aux_stage

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        size = tuple(images.shape[-2:])                                       # (H, W)
        features: Mapping[str, Tensor] = self.backbone(images)                # stage -> (B, C, h, w)
        if getattr(self.head, "returns_input_size", False):
            out = self.head(features, size)                                   # (B, K, H, W)
            if tuple(out.shape[-2:]) != size:
                raise RuntimeError(f"{type(self.head).__name__} says returns_input_size but gave "
                                   f"{tuple(out.shape[-2:])} for a {size} input; crop or resize it to the input.")
        else:
            out = resize_to(self.head(features), size)                        # (B, K, h, w) -> (B, K, H, W)
        outputs = {"out": out}
        if self.aux_head is not None and self.training:
            if self.aux_stage not in features:
                raise KeyError(f"aux_stage={self.aux_stage!r} is not a backbone stage; "
                               f"the backbone returns {', '.join(features)}.")
            outputs["aux"] = resize_to(self.aux_head(features[self.aux_stage]), size)  # (B, K, H, W)
        return outputs
