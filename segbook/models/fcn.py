"""FCN: a classification network turned into a per-pixel classifier (Long et al., 2015).

Drop ResNet's global pool and ``fc``, score every cell of the stride-32 map with
a 1x1 convolution, and upsample the scores back to the image with a transposed
convolution that starts as bilinear interpolation. ``skips=True`` adds FCN-8s's
finer paths from the stride-16 and stride-8 stages, which sharpen the borders.
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from segbook.models import register_model
from segbook.models.backbones import ResNetBackbone
from segbook.upsample import bilinear_upsampler

__all__ = ["FCN", "crop_to", "fcn8s"]


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Keep the first ``size[0]`` rows and ``size[1]`` columns: the top-left corner (see :class:`FCN`)."""
    height, width = size
    if x.shape[-2] < height or x.shape[-1] < width:
        raise ValueError(f"cannot crop a {tuple(x.shape[-2:])} map to {size}: it is smaller.")
    return x[..., :height, :width]


@register_model("fcn")
class FCN(nn.Module):
    """FCN-32s (or FCN-8s with ``skips=True``) on a torchvision ResNet; returns ``{"out": logits}``.

    Submodules: ``backbone`` (a :class:`ResNetBackbone` at stride 32), ``classifier``
    (1x1 conv, ``channels -> num_classes``), ``upsample`` (transposed conv, kernel
    ``2f``, stride ``f``, padding ``f/2``, bilinear-initialised: ``f = 32``, or 8
    after the skips) and, with ``skips=True``, ``skip_scores`` and
    ``skip_upsamplers`` keyed by stage.

    Any input size works, not only multiples of 32. The backbone rounds up: an
    ``H``-row image gives ``n = ceil(H / 32)`` rows of cells, and the upsampler
    returns exactly ``32 n >= H`` rows (``(n - 1) 32 - 2 * 16 + 64``). Both grids
    start at the image's top-left corner: the upsampler spreads cell ``i`` over
    rows ``32 i .. 32 i + 31`` (its bilinear tent peaks at ``32 i + 15.5``, where
    ``F.interpolate(align_corners=False)`` puts it), and the rounding-up only
    ever adds cells at the bottom and right. So the extra ``32 n - H`` rows are
    all at the bottom and we keep the first ``H`` rows and ``W`` columns; a
    centred crop, or resizing ``32 n`` rows down to ``H``, would shift or stretch
    every prediction. For multiples of 32 nothing is cropped and this is d2l's FCN
    (less the transposed conv's bias, which the classifier's bias makes redundant).

    What the crop does not remove: torchvision's ResNet pads each strided layer
    so that cell ``i`` of the stride-32 map is *centred* on input pixel ``32 i``,
    half a cell above-left of ``32 i + 15.5``. No integer crop of an even-sized
    bilinear kernel removes a 15.5-pixel shift; like torchvision's FCN (which uses
    ``F.interpolate``) we leave it to training, which can move features that far.

    FCN-8s (``skips=True``): the stride-16 and stride-8 stages (``layer3``,
    ``layer2``) each get a 1x1 score conv, zero-initialised as in the paper so
    that at first only the stride-32 scores speak and the skips learn a
    correction; the coarser scores go up 2x (bilinear transposed conv,
    ``k=4, s=2, p=1``), are cropped to the finer stage's size (the same top-left
    argument, one level down) and summed, and the stride-8 sum goes up 8x
    (``k=16, s=8, p=4``) and is cropped to the image. The chain puts cell ``i``
    at ``8 (2 (2 i + 0.5) + 0.5) + 3.5 = 32 i + 15.5``, where FCN-32s puts it, so
    at initialisation FCN-8s repeats FCN-32s's prediction exactly where the
    stride-32 scores vary linearly (away from a 28-pixel border band); elsewhere
    they differ, because three chained bilinear steps are not one 32x step.
    """

    def __init__(self, num_classes: int = 21, backbone: str = "resnet18",
                 pretrained_backbone: bool | str | Path = False, skips: bool = False) -> None:
        super().__init__()
        self.num_classes, self.skips = num_classes, skips
        self.backbone = ResNetBackbone(backbone, output_stride=32, pretrained=pretrained_backbone)
        channels = self.backbone.channels
        self.classifier = nn.Conv2d(channels["layer4"], num_classes, kernel_size=1)
        if skips:
            self.skip_scores = nn.ModuleDict({stage: nn.Conv2d(channels[stage], num_classes, kernel_size=1)
                                              for stage in ("layer3", "layer2")})
            for score in self.skip_scores.values():
                nn.init.zeros_(score.weight)
                nn.init.zeros_(score.bias)
            self.skip_upsamplers = nn.ModuleDict({stage: bilinear_upsampler(num_classes, 2)
                                                  for stage in ("layer3", "layer2")})
            self.upsample = bilinear_upsampler(num_classes, 8)
        else:
            self.upsample = bilinear_upsampler(num_classes, 32)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        size = images.shape[-2:]                                          # (H, W)
        features = self.backbone(images)                                  # layer1..layer4, strides 4..32
        scores = self.classifier(features["layer4"])                      # (B, K, ceil(H/32), ceil(W/32))
        if self.skips:
            for stage in ("layer3", "layer2"):
                skip = self.skip_scores[stage](features[stage])           # (B, K, ceil(H/16), ...) then /8
                up = self.skip_upsamplers[stage](scores)                  # (B, K, 2 ceil(H/32), ...) >= skip
                scores = crop_to(up, skip.shape[-2:]) + skip              # (B, K, ceil(H/16), ...) then /8
        logits = crop_to(self.upsample(scores), size)                     # (B, K, H, W)
        return {"out": logits}


@register_model("fcn8s")
def fcn8s(num_classes: int = 21, backbone: str = "resnet18",
          pretrained_backbone: bool | str | Path = False) -> FCN:
    """FCN-8s: :class:`FCN` with the stride-16 and stride-8 skips."""
    return FCN(num_classes, backbone, pretrained_backbone, skips=True)
