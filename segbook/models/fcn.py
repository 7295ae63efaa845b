"""FCN: a classification network turned into a per-pixel classifier (Long et al., 2015).

Drop ResNet's global pool and ``fc``, score every cell of the stride-32 map with
a 1x1 convolution, and upsample the scores back to the image with a transposed
convolution that starts as bilinear interpolation. ``skips=True`` adds FCN-8s's
finer paths from the stride-16 and stride-8 stages, which sharpen the borders.
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from segbook.data.voc import NUM_CLASSES
from segbook.models.registry import register_model
from segbook.models.base import SegmentationModel
from segbook.models.backbones import ResNetBackbone
from segbook.upsample import AlignedUpsampler, bilinear_upsampler

__all__ = ["FCN", "FCNScores", "crop_to", "fcn8s"]

SKIP_STAGES = ("layer3", "layer2")  # FCN-8s's finer stages, coarse to fine (strides 16 and 8)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Keep the first ``size[0]`` rows and ``size[1]`` columns: the top-left corner (see :class:`FCN`)."""
    height, width = size
    if x.shape[-2] < height or x.shape[-1] < width:
        raise ValueError(f"cannot crop a {tuple(x.shape[-2:])} map to {size}: it is smaller.")
    return x[..., :height, :width]


def _upsampler(num_classes: int, factor: int, aligned: bool) -> nn.ConvTranspose2d:
    return AlignedUpsampler(num_classes, factor) if aligned else bilinear_upsampler(num_classes, factor)


class FCNScores(nn.Module):
    """FCN's head: 1x1 class scores on ``layer4`` (plus FCN-8s's skips), upsampled to the image (see :class:`FCN`)."""

    returns_input_size = True

    def __init__(self, channels: dict[str, int], num_classes: int, skips: bool = False,
                 aligned: bool = True) -> None:
        super().__init__()
        self.skips, self.aligned = skips, aligned
        self.classifier = nn.Conv2d(channels["layer4"], num_classes, kernel_size=1)
        if skips:
            self.skip_scores = nn.ModuleDict({stage: nn.Conv2d(channels[stage], num_classes, kernel_size=1)
                                              for stage in SKIP_STAGES})
            for score in self.skip_scores.values():
                nn.init.zeros_(score.weight)
                nn.init.zeros_(score.bias)
            self.skip_upsamplers = nn.ModuleDict({stage: _upsampler(num_classes, 2, aligned)
                                                  for stage in SKIP_STAGES})
        self.upsample = _upsampler(num_classes, 8 if skips else 32, aligned)

    def up(self, layer: nn.ConvTranspose2d, x: Tensor, size) -> Tensor:
        """``x`` upsampled onto a map of ``size``: aligned, or even kernel then top-left crop."""
        return layer(x, size) if self.aligned else crop_to(layer(x), size)

    def forward(self, features: dict[str, Tensor], size: tuple[int, int]) -> Tensor:
        scores = self.classifier(features["layer4"])                      # (B, K, h, w) = ceil((H, W) / 32)
        if self.skips:
            for stage in SKIP_STAGES:
                skip = self.skip_scores[stage](features[stage])           # (B, K, ceil(H/16), ...), then /8
                scores = self.up(self.skip_upsamplers[stage], scores, skip.shape[-2:]) + skip  # the same
        return self.up(self.upsample, scores, size)                       # (B, K, H, W)


@register_model("fcn")
class FCN(SegmentationModel):
    """FCN-32s (or FCN-8s with ``skips=True``) on a torchvision ResNet; returns ``{"out": logits}``.

    ``aligned=True``: every upsampler is an :class:`~segbook.upsample.AlignedUpsampler`,
    which puts cell ``i`` of a stride-``s`` map back on pixel ``s i``, where the ResNet
    centred it, at the input's own size: no crop, no shift, FCN-8s's streams on one
    grid. ``aligned=False`` is d2l's geometry: the top-left ``H x W`` of ``f n >= H``
    rows is kept, and training must absorb a 15.5-pixel shift (chapter 3 measures
    both). FCN-8s's skip scorers start at zero, as in the paper, so at first only the
    stride-32 scores speak. The upsamplers have no bias: the classifier has one.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, backbone: str = "resnet18",
                 pretrained_backbone: bool | str | Path = False, skips: bool = False,
                 aligned: bool = True) -> None:
        resnet = ResNetBackbone(backbone, output_stride=32, pretrained=pretrained_backbone)
        super().__init__(resnet, FCNScores(resnet.channels, num_classes, skips, aligned))
        self.num_classes, self.skips, self.aligned = num_classes, skips, aligned


@register_model("fcn8s")
def fcn8s(num_classes: int = NUM_CLASSES, backbone: str = "resnet18",
          pretrained_backbone: bool | str | Path = False, aligned: bool = True) -> FCN:
    """FCN-8s: :class:`FCN` with the stride-16 and stride-8 skips."""
    return FCN(num_classes, backbone, pretrained_backbone, skips=True, aligned=aligned)
