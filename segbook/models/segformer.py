"""SegFormer: a Mix Transformer encoder and an all-MLP decoder (Xie et al., 2021).

The decoder is light because the transformer already sees the whole image: 1x1
convolutions, bilinear upsampling to the stride-4 grid and no 3x3 convolution.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from segbook.data.voc import NUM_CLASSES
from segbook.models.registry import register_model
from segbook.models.base import SegmentationModel, resize_to
from segbook.models.mit import MIT_CONFIGS, MixTransformer, convert_segformer_state_dict
from segbook.models.weights import load_strict_

__all__ = ["AllMLPHead", "DECODER_CHANNELS", "SegFormer"]

DECODER_CHANNELS = {"mit_b0": 256, "mit_b1": 256, "mit_b2": 768}  # the paper's D per encoder


class AllMLPHead(nn.Module):
    """Project every stage to D channels, upsample to the stride-4 grid, concatenate coarsest first, fuse, classify."""

    def __init__(self, in_channels: Mapping[str, int], num_classes: int, channels: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.stages = list(in_channels)
        self.project = nn.ModuleList(nn.Conv2d(c, channels, kernel_size=1) for c in in_channels.values())
        self.fuse = nn.Sequential(nn.Conv2d(len(self.stages) * channels, channels, kernel_size=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        size = tuple(features[self.stages[0]].shape[-2:])                  # (h, w): stride 4
        maps = [resize_to(project(features[name]), size)                  # each (B, D, h, w)
                for name, project in zip(self.stages, self.project)]
        fused = self.fuse(torch.cat(maps[::-1], dim=1))                   # (B, D, h, w) from (B, 4D, h, w)
        return self.classifier(self.dropout(fused))                       # (B, K, h, w)


@register_model("segformer")
class SegFormer(SegmentationModel):
    """SegFormer: ``{"out": (B, K, H, W)}`` for any H, W >= 32; no auxiliary head.

    ``backbone``: ``"mit_b0"``, ``"mit_b1"`` or ``"mit_b2"``; ``decoder_channels``: D
    (``None``: the paper's, 256 for B0 and B1, 768 for B2); ``drop_path_rate``: the
    encoder's stochastic depth. :meth:`load_published` loads a whole published SegFormer.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, backbone: str = "mit_b0", decoder_channels: int | None = None,
                 drop_path_rate: float = 0.1, dropout: float = 0.1,
                 pretrained_backbone: bool | str | Path = False) -> None:
        if backbone not in MIT_CONFIGS:
            raise ValueError(f"SegFormer's backbone is a Mix Transformer ({', '.join(MIT_CONFIGS)}), "
                             f"got {backbone!r}.")
        body = MixTransformer(backbone, drop_path_rate, pretrained=pretrained_backbone)
        head = AllMLPHead(body.channels, num_classes, decoder_channels or DECODER_CHANNELS[backbone], dropout)
        super().__init__(body, head)
        self.num_classes = num_classes

    def load_published(self, state_dict: Mapping[str, Tensor], source: str = "the state dict") -> "SegFormer":
        """Load a whole published SegFormer (``segformer.*`` and ``decode_head.*`` names), strictly."""
        return load_strict_(self, convert_segformer_state_dict(state_dict), source, "this SegFormer")
