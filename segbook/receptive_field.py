"""Receptive fields: how much of the image one output cell can see, and how much it uses.

The theoretical field grows along a chain of layers as ``r <- r + (k - 1) d j``,
``j <- j s`` (``j``: the current map's cell spacing in input pixels). The
effective field (Luo et al., 2016), the gradient of one output with respect to
the input, falls off like a Gaussian far inside it, which is why PSPNet (Zhao et
al., 2017) adds explicitly global features.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from segbook.sizes import as_pair

__all__ = ["effective_receptive_field", "receptive_field", "resnet_path"]


def _geometry(layer: nn.Module) -> tuple[int, int, int]:
    """``(kernel, stride, dilation)`` of a square conv or pool, along one axis."""
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        kernel = as_pair(layer.kernel_size, "kernel_size")
        stride = as_pair(layer.stride, "stride")
        dilation = as_pair(getattr(layer, "dilation", 1), "dilation")
        if kernel[0] != kernel[1] or stride[0] != stride[1] or dilation[0] != dilation[1]:
            raise ValueError(f"{layer} is not square; receptive_field handles square layers only.")
        return kernel[0], stride[0], dilation[0]
    raise TypeError(f"receptive_field takes Conv2d, MaxPool2d and AvgPool2d layers, got {type(layer).__name__}.")


def receptive_field(layers: Iterable[nn.Module]) -> tuple[int, int]:
    """``(size, jump)`` of a chain of convs and pools: the input square reaching one cell, and the cells' spacing."""
    size, jump = 1, 1
    for layer in layers:
        kernel, stride, dilation = _geometry(layer)
        size += (kernel - 1) * dilation * jump  # the kernel's reach, in this map's cells, in input pixels
        jump *= stride
    return size, jump


def resnet_path(backbone: nn.Module, stage: str = "layer4") -> list[nn.Module]:
    """The layers on a ResNet's widest path up to ``stage``: stem conv, max pool, each block's convs (no shortcuts)."""
    path = [backbone.conv1, backbone.maxpool]
    for name in ("layer1", "layer2", "layer3", "layer4"):
        for block in getattr(backbone, name):
            path += [m for n, m in block.named_children() if n.startswith("conv")]
        if name == stage:
            return path
    raise ValueError(f"stage={stage!r}: use layer1, layer2, layer3 or layer4.")


def effective_receptive_field(model: nn.Module, images: Tensor, output: str = "out") -> Tensor:
    """Mean ``|d logit / d input|`` for the summed logits at the centre pixel: an (H, W) map that sums to one.

    The model runs as it is (call ``.eval()`` first); its parameters' gradients are untouched.
    """
    images = images.detach().clone().requires_grad_(True)         # (B, 3, H, W)
    logits = model(images)[output]                                # (B, K, h, w)
    height, width = logits.shape[-2:]
    centre = logits[:, :, height // 2, width // 2].sum()
    (grad,) = torch.autograd.grad(centre, images)                 # (B, 3, H, W)
    field = grad.abs().sum(1).mean(0)                             # (H, W)
    total = field.sum()
    if total == 0:
        raise ValueError("the centre logits do not depend on the input at all (a dead network?).")
    return field / total
