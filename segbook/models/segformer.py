"""SegFormer: a Mix Transformer encoder and an all-MLP decoder (Xie et al., 2021).

The encoder (:mod:`segbook.models.mit`) gives four maps at strides 4, 8, 16
and 32. The decoder is deliberately light, because the transformer already
sees the whole image: each stage is projected to the same width by a linear
layer (a 1x1 convolution), the three coarser maps are upsampled bilinearly to
the stride-4 grid, the four are concatenated (coarsest first) and fused by a
1x1 convolution with BatchNorm and ReLU, and a last 1x1 convolution
classifies. No 3x3 convolution and no dilation anywhere in the head.

Shape letters as everywhere in the book: B batch, K classes, C channels,
H x W the input, h x w the stride-4 grid, D the decoder's width (256 for B0).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from segbook.models.registry import register_model
from segbook.models.base import SegmentationModel, resize_to
from segbook.models.mit import MIT_CONFIGS, MixTransformer, convert_segformer_state_dict
from segbook.models.weights import load_strict_

__all__ = ["AllMLPHead", "DECODER_CHANNELS", "SegFormer"]

DECODER_CHANNELS = {"mit_b0": 256, "mit_b1": 256, "mit_b2": 768}  # the paper's D per encoder


class AllMLPHead(nn.Module):
    """Project every stage to ``channels`` (D), upsample to the finest stage's grid, concatenate, fuse, classify.

    ``project``: one 1x1 convolution per stage (a linear layer on each cell's
    channels); ``fuse``: 1x1 convolution (4D -> D, no bias) + BatchNorm + ReLU;
    ``classifier``: 1x1 convolution to K after dropout. ``forward(features)``
    takes the encoder's mapping of stages and returns (B, K, h, w) on the
    first stage's grid (stride 4).
    """

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

    Args:
        num_classes: K.
        backbone: a Mix Transformer variant, ``"mit_b0"`` (the default), ``"mit_b1"`` or ``"mit_b2"``.
        decoder_channels: D; ``None`` takes the paper's (256 for B0 and B1, 768 for B2).
        drop_path_rate: the encoder's stochastic depth (0.1, as in the paper).
        dropout: before the classifier.
        pretrained_backbone: see :class:`~segbook.models.mit.MixTransformer`'s ``pretrained``.

    The decoder scores the stride-4 grid (``ceil(H/4) x ceil(W/4)``); the logits
    are then resized bilinearly to the input's own size. :meth:`load_published`
    loads a whole published SegFormer (encoder and decoder).
    """

    def __init__(self, num_classes: int = 21, backbone: str = "mit_b0", decoder_channels: int | None = None,
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
