"""DeepLabV3+: atrous spatial pyramid pooling for context, a light decoder for borders (Chen et al., 2017, 2018).

ASPP (torchvision's) looks at the stride-16 map through 3x3 convolutions with
rates 6, 12 and 18, a 1x1 branch and an image average: several scales at once.
The decoder gives back the detail lost to the stride: it upsamples ASPP's output
4x, appends ``layer1`` squeezed to 48 channels (to refine, not dominate) and
draws the border with two 3x3 convolutions. PointRend refines that output.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from segbook.data.voc import NUM_CLASSES
from segbook.models.registry import register_model
from segbook.models.backbones import ResNetBackbone
from segbook.models.base import FCNHead, SegmentationModel, resize_to

__all__ = ["ASPP", "ATROUS_RATES", "DeepLabV3Plus", "DeepLabV3PlusHead", "aspp"]

# output stride -> ASPP rates (DeepLabV3, Sec. 3.3): halving the stride doubles the rates, so each
# branch keeps its field of view in pixels of the image.
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def aspp(in_channels: int, output_stride: int = 16, out_channels: int = 256,
         atrous_rates: Sequence[int] | None = None) -> ASPP:
    """torchvision's ASPP; ``atrous_rates`` default to the paper's for ``output_stride`` (16: 6/12/18, 8: 12/24/36)."""
    if atrous_rates is None:
        if output_stride not in ATROUS_RATES:
            raise ValueError(f"DeepLab's rates are defined for output_stride 16 or 8, got {output_stride!r}; "
                             "pass atrous_rates=(...) to choose rates for another stride.")
        atrous_rates = ATROUS_RATES[output_stride]
    return ASPP(in_channels, tuple(atrous_rates), out_channels)


class DeepLabV3PlusHead(nn.Module):
    """ASPP on ``layer4``, then the decoder that fuses ``layer1``; :meth:`decode` gives features and logits at stride 4.

    A training batch of one is refused: ASPP's image pooling leaves BatchNorm one value per channel.
    """

    def __init__(self, in_channels: int, low_level_channels: int, num_classes: int, output_stride: int = 16,
                 atrous_rates: Sequence[int] | None = None, aspp_channels: int = 256,
                 low_level_projection: int = 48, decoder_channels: int = 256) -> None:
        super().__init__()
        self.aspp = aspp(in_channels, output_stride, aspp_channels, atrous_rates)
        self.project = nn.Sequential(  # 48 channels: few enough that layer1 refines, not dominates
            nn.Conv2d(low_level_channels, low_level_projection, kernel_size=1, bias=False),
            nn.BatchNorm2d(low_level_projection),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(aspp_channels + low_level_projection, decoder_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(decoder_channels, decoder_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)
        self.decoder_channels = decoder_channels

    def decode(self, features: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(decoder features (B, C, h, w), logits (B, K, h, w))`` on ``layer1``'s stride-4 grid."""
        deep, low = features["layer4"], features["layer1"]                 # (B, C, H/s, W/s), (B, C, h, w); s = stride
        if self.training and deep.shape[0] == 1:
            raise ValueError(
                "DeepLabV3+ got a batch of one image in training mode: ASPP's image-pooling branch leaves "
                "BatchNorm one value per channel, which it cannot normalise. Train with batch_size >= 2 (and "
                "drop_last=True so no final batch holds one image), or call model.eval() for inference.")
        context = self.aspp(deep)                                          # (B, 256, H/s, W/s)
        context = resize_to(context, tuple(low.shape[-2:]))                # (B, 256, h, w): "4x" to layer1's size
        low = self.project(low)                                            # (B, 48, h, w)
        decoded = self.fuse(torch.cat([context, low], dim=1))              # (B, C, h, w)
        return decoded, self.classifier(decoded)                           # (B, C, h, w), (B, K, h, w)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.decode(features)[1]                                    # (B, K, h, w)


@register_model("deeplabv3plus")
class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+ on a dilated ResNet (the paper: ResNet-101 or Xception): ``{"out": (B, K, H, W)}``.

    ``output_stride``: 16 (ASPP rates 6/12/18, the paper's training setting) or 8
    (12/24/36). ``aux`` adds an :class:`FCNHead` on ``layer3`` whose logits ride in
    ``"aux"`` in training (DeepLab has none; off by default).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, backbone: str = "resnet50", output_stride: int = 16,
                 aux: bool = False, pretrained_backbone: bool | str | Path = False,
                 atrous_rates: Sequence[int] | None = None, aspp_channels: int = 256,
                 low_level_projection: int = 48, decoder_channels: int = 256, dropout: float = 0.1) -> None:
        body = ResNetBackbone(backbone, output_stride=output_stride, pretrained=pretrained_backbone)
        head = DeepLabV3PlusHead(body.channels["layer4"], body.channels["layer1"], num_classes, output_stride,
                                 atrous_rates, aspp_channels, low_level_projection, decoder_channels)
        aux_head = FCNHead(body.channels["layer3"], num_classes, dropout) if aux else None
        super().__init__(body, head, aux_head, aux_stage="layer3")
        self.num_classes = num_classes

    def decode(self, images: Tensor) -> dict[str, Tensor]:
        """The stride-4 maps PointRend refines, plus the backbone stages.

        ``{"decoder": (B, C, h, w), "coarse": (B, K, h, w), "layer1": ..., "layer4": ...}``,
        plus ``"aux"`` on ``layer3``'s own grid (not resized) in training with an auxiliary head.
        """
        features = self.backbone(images)                                   # stage -> (B, C, h, w)
        decoded, coarse = self.head.decode(features)                      # (B, C, h, w), (B, K, h, w)
        maps = dict(features, decoder=decoded, coarse=coarse)
        if self.aux_head is not None and self.training:
            maps["aux"] = self.aux_head(features[self.aux_stage])          # (B, K, h', w') on layer3's grid
        return maps
