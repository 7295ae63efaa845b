"""ResNet backbones that return named stages, at output stride 32, 16 or 8.

torchvision's ResNet as it is (its ImageNet weights load unchanged), without
``avgpool`` and ``fc``. A finer output stride trades the last stages' stride for
dilation (Yu & Koltun, 2016; DeepLab): the same weights, a denser grid.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn
from torchvision import models
from torchvision.models.resnet import ResNet

from .weights import fetch_pretrained, load_strict_

__all__ = ["RESNETS", "STAGES", "ResNetBackbone", "dilate_resnet_"]

STAGES = ("layer1", "layer2", "layer3", "layer4")

# name -> (torchvision builder, ImageNet weights). V1 weights: the ones FCN/DeepLab backbones use.
RESNETS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1),
}

_BASIC_BLOCK_RESNETS = ("resnet18", "resnet34")

# output stride -> torchvision's replace_stride_with_dilation for (layer2, layer3, layer4)
_DILATION_FOR_STRIDE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    """Dilate a 3x3 conv and pad it by the same amount, so a stride-1 conv keeps the map's size."""
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)


def dilate_resnet_(model: ResNet, replace_stride_with_dilation: Sequence[bool]) -> ResNet:
    """Turn the stride of ``layer2..layer4`` into dilation in place, also for BasicBlock ResNets (torchvision refuses).

    torchvision's ``_make_layer`` rule: the conv that used to stride (and its
    ``downsample``) gets stride 1 and keeps the previous dilation, since it still
    reads the map at the previous spacing; every later 3x3 conv reads a map twice as
    dense, so its dilation doubles. Subsampled every ``2**k``-th pixel, the dilated
    network computes what the strided one does (tests check it).
    """
    flags = list(replace_stride_with_dilation)
    if len(flags) != 3:
        raise ValueError("replace_stride_with_dilation needs one flag per stage (layer2, layer3, layer4), "
                         f"got {replace_stride_with_dilation!r}.")
    dilation = 1
    for name, dilate in zip(STAGES[1:], flags):
        stage: nn.Sequential = getattr(model, name)
        first = stage[0]
        convs = [m for m in first.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        strider = next((conv for conv in convs if conv.stride != (1, 1)), None)
        if strider is None:
            raise ValueError(f"{name} has no strided 3x3 conv; dilate_resnet_ needs an undilated ResNet "
                             "(was this one dilated already?).")
        previous = dilation
        if dilate:
            dilation *= strider.stride[0]
        for block in stage:
            for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)):
                if conv is strider:
                    _set_dilation(conv, previous)
                    if dilate:
                        conv.stride = (1, 1)
                else:
                    _set_dilation(conv, dilation)
        if dilate:
            first.stride = 1
            if first.downsample is not None:
                first.downsample[0].stride = (1, 1)
    return model


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without ``avgpool``/``fc`` whose forward returns its four stages by name.

    ``name``: resnet18, 34, 50 or 101. ``output_stride``: 32, 16 (``layer4`` dilated)
    or 8 (``layer3`` too). ``pretrained``: see :mod:`segbook.models.weights`.
    Stages have strides ``self.strides``, channels ``self.channels`` and are
    ``ceil(H / stride)`` cells high. Submodule names are torchvision's, so the state
    dict is a torchvision ResNet's minus ``fc``.
    """

    def __init__(self, name: str = "resnet18", output_stride: int = 32,
                 pretrained: bool | str | Path = False, progress: bool = True) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(RESNETS)}.")
        if output_stride not in _DILATION_FOR_STRIDE:
            raise ValueError(f"output_stride must be 32, 16 or 8, got {output_stride!r}.")
        build, weights = RESNETS[name]
        flags = _DILATION_FOR_STRIDE[output_stride]
        if name in _BASIC_BLOCK_RESNETS:  # torchvision's BasicBlock refuses dilation at build time
            resnet = dilate_resnet_(build(weights=None), flags)
        else:
            resnet = build(weights=None, replace_stride_with_dilation=flags)
        self.name, self.output_stride = name, output_stride
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        width = 64 * resnet.layer1[0].expansion
        self.channels = {stage: width * 2 ** i for i, stage in enumerate(STAGES)}
        self.strides = {"layer1": 4, "layer2": 8, "layer3": min(16, output_stride), "layer4": output_stride}
        self._load_pretrained(pretrained, weights, progress)

    def _load_pretrained(self, pretrained: bool | str | Path, weights: models.WeightsEnum, progress: bool) -> None:
        found = fetch_pretrained(pretrained, what=self.name, url=weights.url,
                                 download=lambda: weights.get_state_dict(progress=progress))
        if found is not None:
            state_dict, source = found
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}  # the classifier
            load_strict_(self, state_dict, source, f"a {self.name} backbone")

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        features: OrderedDict[str, Tensor] = OrderedDict()
        for name in STAGES:
            x = getattr(self, name)(x)                        # (B, channels[name], H/stride, W/stride)
            features[name] = x
        return features
