"""What every segbook model is: the output contract, its own loss, and backbone + head + auxiliary head.

``forward(images)`` returns a dict whose ``"out"`` holds logits (B, K, H, W) at the
input's own size, plus ``"aux"`` in training mode when there is an auxiliary head.
Each model owns its loss (:meth:`Segmenter.loss`): a loss a caller must remember
to pick would, when forgotten, not crash but train worse.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from segbook.data.voc import IGNORE_INDEX

__all__ = ["DEFAULT_AUX_WEIGHTS", "FCNHead", "LossFn", "SegmentationModel", "Segmenter", "as_outputs", "model_loss",
           "resize_to", "segmentation_loss", "unwrap"]

DEFAULT_AUX_WEIGHTS = {"aux": 0.4}  # PSPNet's auxiliary head weight (Zhao et al., 2017)

LossFn = Callable[[Mapping[str, Tensor], Tensor], "Tensor | tuple[Tensor, dict[str, Tensor]]"]


def as_outputs(outputs: Mapping[str, Tensor] | Tensor) -> Mapping[str, Tensor]:
    """A model's outputs as the contract's dict; bare logits (a hand-built model's) are taken as ``"out"``."""
    if isinstance(outputs, Tensor):
        return {"out": outputs}
    if "out" not in outputs:
        raise KeyError(f"the model's outputs have no 'out' logits (keys: {sorted(outputs)}); "
                       "segbook models return a dict with 'out' of shape (B, K, H, W).")
    return outputs


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a (Distributed)DataParallel wrapper: the one whose state dict and loss are the model's."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def _pixel_ce(logits: Tensor, target: Tensor, ignore_index: int, name: str) -> Tensor:
    """Mean cross entropy over the pixels that are not ``ignore_index``; 0, not NaN, when every pixel is.

    A sum over a count clamped at 1: ``F.cross_entropy``'s mean gives 0/0 on such a
    batch, which would pass for a diverged run.
    """
    if logits.shape[-2:] != target.shape[-2:] or logits.shape[0] != target.shape[0]:
        raise ValueError(f"outputs[{name!r}] has shape {tuple(logits.shape)} but the target has {tuple(target.shape)}; "
                         "logits must be (B, K, H, W) at the target's own H and W (upsample them in the model).")
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")  # () over counted pixels
    counted = (target != ignore_index).sum().clamp_min(1)  # ()
    return total / counted


def segmentation_loss(outputs: Mapping[str, Tensor] | Tensor, target: Tensor, *,
                      aux_weights: Mapping[str, float] | None = None,
                      ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, dict[str, Tensor]]:
    """Pixel-wise cross entropy on ``outputs["out"]`` plus weighted cross entropy on auxiliary logits.

    ``aux_weights`` maps an extra key of ``outputs`` to its weight (default PSPNet's
    ``{"aux": 0.4}``); a key the outputs lack is skipped, since models drop their
    auxiliary heads in eval mode. Returns the total and each head's unweighted loss, detached.
    """
    outputs = as_outputs(outputs)
    main = _pixel_ce(outputs["out"], target, ignore_index, "out")
    total, parts = main, {"out": main.detach()}
    for key, weight in (DEFAULT_AUX_WEIGHTS if aux_weights is None else aux_weights).items():
        if key == "out" or key not in outputs:
            continue
        aux = _pixel_ce(outputs[key], target, ignore_index, key)
        total = total + weight * aux
        parts[key] = aux.detach()
    return total, parts


class Segmenter(nn.Module):
    """A segbook model: ``forward`` keeps the output contract, :meth:`loss` is what it trains with."""

    def loss(self, outputs: Mapping[str, Tensor], target: Tensor, *, aux_weights: Mapping[str, float] | None = None,
             ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss this model trains with: :func:`segmentation_loss`, unless the model says otherwise."""
        return segmentation_loss(outputs, target, aux_weights=aux_weights, ignore_index=ignore_index)


def model_loss(model: nn.Module, aux_weights: Mapping[str, float] | None = None,
               ignore_index: int = IGNORE_INDEX) -> LossFn:
    """``loss_fn(outputs, target)`` for ``model``: its own :meth:`Segmenter.loss`, else the plain one.

    One path for every caller: PointRend trained with the plain loss gives its point
    head no gradient, and under DDP hangs at the second step.
    """
    model = unwrap(model)
    loss = model.loss if isinstance(model, Segmenter) else segmentation_loss
    return partial(loss, aux_weights=aux_weights, ignore_index=ignore_index)


def resize_to(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize to ``size`` with ``align_corners=False``; unchanged when already that size."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)  # (B, K, H, W)


class FCNHead(nn.Sequential):
    """3x3 conv (C -> C/4) + BN + ReLU + dropout + 1x1 classifier: torchvision's FCN/auxiliary head."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        inter = max(in_channels // 4, 1)
        super().__init__(
            nn.Conv2d(in_channels, inter, kernel_size=3, padding=1, bias=False),  # (B, C/4, h, w)
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(inter, num_classes, kernel_size=1),                          # (B, K, h, w)
        )


class SegmentationModel(Segmenter):
    """torchvision's ``_SimpleSegmentationModel``: ``backbone`` -> ``head`` -> logits at the input size; ``aux_head``.

    ``backbone`` returns a mapping of stage name to feature map. ``head`` takes that
    whole mapping (a decoder may read several stages) and returns (B, K, h, w),
    resized here to (H, W); a head that upsamples itself sets ``returns_input_size =
    True`` and is called as ``head(features, (H, W))``. ``aux_head`` (or the
    :class:`FCNHead` that ``aux_classes`` builds) reads ``features[aux_stage]``; its
    loss helps the gradient reach the middle of a deep backbone (Zhao et al., 2017),
    so its logits ride in ``"aux"`` in training mode only.
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
