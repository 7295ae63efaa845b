"""PSPNet: give every pixel a summary of the whole image (Zhao et al., 2017).

A dilated FCN's effective receptive field is much smaller than its theoretical
one, yet a boat and a car of one shape differ only by the water or road around
them. The pyramid pooling module appends to every pixel's features the map's
averages over 1x1, 2x2, 3x3 and 6x6 bins.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from segbook.data.voc import NUM_CLASSES
from segbook.models.registry import register_model
from segbook.models.backbones import ResNetBackbone
from segbook.models.base import SegmentationModel, resize_to

__all__ = ["PSPHead", "PSPNet", "PyramidPoolingModule"]


class PyramidPoolingModule(nn.Module):
    """Average-pool to ``s x s`` bins for each ``s`` in ``pool_sizes``, reduce, upsample, concatenate after the input.

    Each branch has ``in_channels // len(pool_sizes)`` channels (``2 * in_channels``
    out for the paper's four sizes); ``pool_sizes=()`` is the identity, the ablation
    "PSPNet without the pyramid". ``norm``: ``"batch"`` (the paper's), ``"group"`` or
    ``"none"``. BatchNorm sees one value per channel and image in the 1x1 bin, so its
    statistics are noisy on small batches and a training batch of one is refused.
    """

    def __init__(self, in_channels: int, pool_sizes: Sequence[int] = (1, 2, 3, 6), norm: str = "batch") -> None:
        super().__init__()
        self.pool_sizes = tuple(int(s) for s in pool_sizes)
        if any(s < 1 for s in self.pool_sizes):
            raise ValueError(f"pool_sizes must be positive bin counts, got {tuple(pool_sizes)!r}.")
        if norm not in ("batch", "group", "none"):
            raise ValueError(f"norm={norm!r}: use 'batch' (the paper's), 'group' or 'none'.")
        self.norm = norm
        branch_channels = in_channels // len(self.pool_sizes) if self.pool_sizes else 0
        if self.pool_sizes and branch_channels < 1:
            raise ValueError(f"in_channels={in_channels} is too few for {len(self.pool_sizes)} branches.")
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(size),                                          # (B, C, s, s)
                nn.Conv2d(in_channels, branch_channels, kernel_size=1, bias=norm == "none"),  # (B, C/n, s, s)
                _branch_norm(norm, branch_channels),
                nn.ReLU(inplace=True),
            )
            for size in self.pool_sizes)
        self.in_channels = in_channels
        self.out_channels = in_channels + branch_channels * len(self.pool_sizes)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1 and 1 in self.pool_sizes and self.norm == "batch":
            raise ValueError(
                "PyramidPoolingModule got a batch of one image in training mode: its 1x1 bin leaves BatchNorm "
                "one value per channel, which it cannot normalise. Train with batch_size >= 2 (and "
                "drop_last=True so no final batch holds one image), or call model.eval() for inference.")
        size = tuple(x.shape[-2:])                                          # (h, w)
        pyramid = [x] + [resize_to(branch(x), size) for branch in self.branches]  # (B, C, h, w), n x (B, C/n, h, w)
        return torch.cat(pyramid, dim=1)                                    # (B, C + n (C/n), h, w)


def _branch_norm(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":  # up to 32 groups of at least 4 channels: the 1x1 bin gives each group 4+ values
        groups = min(32, max(1, channels // 4))
        while channels % groups:
            groups -= 1
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class PSPHead(nn.Module):
    """Pyramid pooling on ``features[stage]``, a 3x3 conv (``channels``: 512 in the paper) and a classifier."""

    def __init__(self, in_channels: int, num_classes: int, pool_sizes: Sequence[int] = (1, 2, 3, 6),
                 channels: int = 512, dropout: float = 0.1, stage: str = "layer4", pool_norm: str = "batch") -> None:
        super().__init__()
        self.stage = stage
        self.ppm = PyramidPoolingModule(in_channels, pool_sizes, pool_norm)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        x = self.ppm(features[self.stage])  # (B, 2C, h, w) for four pool sizes
        x = self.bottleneck(x)              # (B, channels, h, w)
        return self.classifier(x)           # (B, K, h, w)


@register_model("pspnet")
class PSPNet(SegmentationModel):
    """PSPNet on a dilated ResNet: ``{"out": (B, K, H, W)}``, plus ``"aux"`` (from ``layer3``) in training.

    The paper uses ``"resnet50"``/``"resnet101"`` at ``output_stride`` 8 and an
    auxiliary :class:`~segbook.models.base.FCNHead` on ``layer3`` (weight 0.4 in the
    loss). ``pool_sizes`` and ``pool_norm``: see :class:`PyramidPoolingModule`;
    ``channels``: the width of the head's 3x3 conv.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, backbone: str = "resnet50", output_stride: int = 8,
                 pool_sizes: Sequence[int] = (1, 2, 3, 6), aux: bool = True, dropout: float = 0.1,
                 pretrained_backbone: bool | str | Path = False, channels: int = 512,
                 pool_norm: str = "batch") -> None:
        body = ResNetBackbone(backbone, output_stride=output_stride, pretrained=pretrained_backbone)
        head = PSPHead(body.channels["layer4"], num_classes, pool_sizes, channels, dropout, pool_norm=pool_norm)
        super().__init__(body, head, aux_stage="layer3", aux_classes=num_classes if aux else None,
                         aux_dropout=dropout)
        self.num_classes = num_classes
