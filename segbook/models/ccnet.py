"""CCNet: criss-cross attention, full-image context at a fraction of non-local's cost (Huang et al., 2019).

Non-local attention is ``(hw) x (hw)``: 88.5 million entries per image on CCNet's
97x97 map. Criss-cross attention lets each pixel attend to its own row and column;
applied twice with the same weights (R = 2), any pixel reaches any other. C' = C/8.
Three formulations compute the same thing: einsum (the model's), a widely copied
tutorial implementation's bmm, and dense attention masked to the cross (the tests' reference).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbook.data.voc import NUM_CLASSES
from segbook.models.registry import register_model
from segbook.models.backbones import ResNetBackbone
from segbook.models.base import SegmentationModel

__all__ = ["CCNet", "CrissCrossAttention", "NonLocalBlock", "RCCAModule", "criss_cross_attention",
           "criss_cross_attention_bmm", "dense_masked_attention", "non_local_attention"]


def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    """Queries and keys share (B, C', h, w); values share B, h, w (any channel count)."""
    if query.dim() != 4 or query.shape != key.shape:
        raise ValueError(f"query and key must both be (B, C', h, w), got {tuple(query.shape)} and {tuple(key.shape)}.")
    if value.dim() != 4 or value.shape[0] != query.shape[0] or value.shape[2:] != query.shape[2:]:
        raise ValueError(f"value must be (B, C, h, w) with the query's B, h and w; got {tuple(value.shape)} "
                         f"for a query of shape {tuple(query.shape)}.")


def _self_in_column(h: int, device: torch.device) -> Tensor:
    """``True`` where a column key is the query pixel itself (the row branch already holds it), on ``device``."""
    return torch.eye(h, dtype=torch.bool, device=device)  # (h, h): [query row i, key row k]


def criss_cross_attention(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """Each pixel's weighted sum of the values in its own row and column, the pixel itself counted once.

    ``query``, ``key``: (B, C', h, w); ``value``: (B, C, h, w). Returns out (B, C, h, w)
    and the attention (B, h, w, h + w): for pixel (i, j), the weights of its column
    ``(0, j) .. (h-1, j)``, then of its row ``(i, 0) .. (i, w-1)``, summing to 1; its
    own column entry ``[b, i, j, i]`` is exactly 0, its row entry counts.
    """
    _check_qkv(query, key, value)
    h, w = query.shape[-2:]
    # energy of pixel (i, j) with the pixel (k, j) of its column, and with the pixel (i, k) of its row
    energy_col = torch.einsum("bcij,bckj->bijk", query, key)          # (B, h, w, h)
    energy_col = energy_col.masked_fill(_self_in_column(h, query.device)[:, None, :], float("-inf"))  # (B, h, w, h)
    energy_row = torch.einsum("bcij,bcik->bijk", query, key)          # (B, h, w, w)
    attention = F.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)  # (B, h, w, h+w): one softmax
    attention_col, attention_row = attention.split([h, w], dim=-1)    # (B, h, w, h), (B, h, w, w)
    out_col = torch.einsum("bijk,bckj->bcij", attention_col, value)   # (B, C, h, w)
    out_row = torch.einsum("bijk,bcik->bcij", attention_row, value)   # (B, C, h, w)
    return out_col + out_row, attention                               # (B, C, h, w), (B, h, w, h+w)


def criss_cross_attention_bmm(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`criss_cross_attention` as a widely copied tutorial implementation writes it, with ``torch.bmm``.

    The tutorial builds its ``-inf`` diagonal with ``.cuda()``, which fails on a CPU;
    here it is built on the input's device.
    """
    _check_qkv(query, key, value)
    b, c, h, w = value.shape
    cq = query.shape[1]
    # columns as sequences: one per (b, j)
    query_col = query.permute(0, 3, 2, 1).reshape(b * w, h, cq)        # (B*w, h, C')
    key_col = key.permute(0, 3, 1, 2).reshape(b * w, cq, h)            # (B*w, C', h)
    value_col = value.permute(0, 3, 1, 2).reshape(b * w, c, h)         # (B*w, C, h)
    # rows as sequences: one per (b, i)
    query_row = query.permute(0, 2, 3, 1).reshape(b * h, w, cq)        # (B*h, w, C')
    key_row = key.permute(0, 2, 1, 3).reshape(b * h, cq, w)            # (B*h, C', w)
    value_row = value.permute(0, 2, 1, 3).reshape(b * h, c, w)         # (B*h, C, w)

    energy_col = torch.bmm(query_col, key_col)                         # (B*w, h, h)
    energy_col = energy_col.masked_fill(_self_in_column(h, query.device), float("-inf"))  # (B*w, h, h)
    energy_col = energy_col.view(b, w, h, h).permute(0, 2, 1, 3)       # (B, h, w, h)
    energy_row = torch.bmm(query_row, key_row).view(b, h, w, w)        # (B, h, w, w)
    attention = F.softmax(torch.cat([energy_col, energy_row], dim=3), dim=3)  # (B, h, w, h+w)

    attention_col = attention[..., :h].permute(0, 2, 1, 3).reshape(b * w, h, h)  # (B*w, h, h)
    attention_row = attention[..., h:].reshape(b * h, w, w)            # (B*h, w, w)
    out_col = torch.bmm(value_col, attention_col.transpose(1, 2))      # (B*w, C, h)
    out_col = out_col.view(b, w, c, h).permute(0, 2, 3, 1)             # (B, C, h, w)
    out_row = torch.bmm(value_row, attention_row.transpose(1, 2))      # (B*h, C, w)
    out_row = out_row.view(b, h, c, w).permute(0, 2, 1, 3)            # (B, C, h, w)
    return out_col + out_row, attention                                # (B, C, h, w), (B, h, w, h+w)


def _dense_attention(query: Tensor, key: Tensor, value: Tensor, allowed: Tensor | None) -> tuple[Tensor, Tensor]:
    """Softmax attention of every pixel over all ``h*w`` pixels, optionally over ``allowed`` ones only."""
    _check_qkv(query, key, value)
    b, c, h, w = value.shape
    energy = torch.einsum("bcp,bcq->bpq", query.flatten(2), key.flatten(2))  # (B, hw, hw): [query p, key q]
    if allowed is not None:
        energy = energy.masked_fill(~allowed, float("-inf"))            # (B, hw, hw)
    attention = F.softmax(energy, dim=-1)                               # (B, hw, hw)
    out = torch.einsum("bpq,bcq->bcp", attention, value.flatten(2))     # (B, C, hw)
    return out.view(b, c, h, w), attention                              # (B, C, h, w), (B, hw, hw)


def dense_masked_attention(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """The criss-cross result the slow, obvious way: full attention masked to the row and column, (B, hw, hw)."""
    h, w = query.shape[-2:]
    rows = torch.arange(h, device=query.device).repeat_interleave(w)  # (hw,): the row of pixel p
    cols = torch.arange(w, device=query.device).repeat(h)             # (hw,): the column of pixel p
    allowed = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])  # (hw, hw)
    return _dense_attention(query, key, value, allowed)


def non_local_attention(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """Non-local (self-)attention: every pixel over all ``h*w`` pixels; out (B, C, h, w), attention (B, hw, hw)."""
    return _dense_attention(query, key, value, None)


class _QueryKeyValue(nn.Module):
    """1x1 convs to queries, keys (C/8) and values (C), and ``gamma``: at 0 a new block cannot disturb a trained net."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels < 8:
            raise ValueError(f"in_channels must be at least 8 (queries and keys get in_channels // 8), "
                             f"got {in_channels}.")
        self.in_channels = in_channels
        self.query_conv = nn.Conv2d(in_channels, in_channels // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels, in_channels // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _attend(self, attend, x: Tensor, return_attention: bool) -> Tensor | tuple[Tensor, Tensor]:
        query = self.query_conv(x)                                      # (B, C', h, w)
        key = self.key_conv(x)                                          # (B, C', h, w)
        value = self.value_conv(x)                                      # (B, C, h, w)
        out, attention = attend(query, key, value)                      # (B, C, h, w), attention
        out = self.gamma * out + x                                      # (B, C, h, w)
        return (out, attention) if return_attention else out

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}"


class CrissCrossAttention(_QueryKeyValue):
    """Criss-cross attention block, ``gamma * attention(x) + x``; ``return_attention`` also returns the weights."""

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return self._attend(criss_cross_attention, x, return_attention)


class NonLocalBlock(_QueryKeyValue):
    """A non-local block with criss-cross attention's shapes (DANet's position attention): the dense reference."""

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return self._attend(non_local_attention, x, return_attention)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (padding 1, no bias: BN has one), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class RCCAModule(nn.Module):
    """CCNet's head: reduce to C/4 (attention gets cheap), criss-cross attention R times with shared weights, classify.

    ``bottleneck`` fuses the context with the head's input, so the classifier sees
    local features beside it; logits stay at the map's size (upsampling K channels
    is cheaper than C/4). The official code (speedinghzl/CCNet) gives ``bottleneck``
    512 outputs; here C/4, the same for ResNet-50/101, narrower on a ResNet-18.
    ``forward`` takes the map or the backbone's stages (reading ``stage``).
    """

    def __init__(self, in_channels: int, num_classes: int, recurrence: int = 2, dropout: float = 0.1,
                 stage: str = "layer4") -> None:
        super().__init__()
        if recurrence < 0:
            raise ValueError(f"recurrence must be >= 0, got {recurrence}.")
        inter = in_channels // 4
        self.recurrence, self.stage = recurrence, stage
        self.reduce = _conv_bn_relu(in_channels, inter)
        self.cca = CrissCrossAttention(inter)
        self.project = _conv_bn_relu(inter, inter)
        self.bottleneck = nn.Sequential(_conv_bn_relu(in_channels + inter, inter), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(inter, num_classes, kernel_size=1)

    def forward(self, features: Tensor | Mapping[str, Tensor]) -> Tensor:
        x = features if isinstance(features, Tensor) else features[self.stage]  # (B, C, h, w)
        context = self.reduce(x)                                        # (B, C/4, h, w)
        for _ in range(self.recurrence):
            context = self.cca(context)                                 # (B, C/4, h, w), R times
        context = self.project(context)                                 # (B, C/4, h, w)
        fused = self.bottleneck(torch.cat([x, context], dim=1))         # (B, C/4, h, w) from (B, C + C/4, h, w)
        return self.classifier(fused)                                   # (B, K, h, w)


@register_model("ccnet")
class CCNet(SegmentationModel):
    """CCNet on a dilated ResNet (``"resnet101"`` in the paper): ``{"out": (B, K, H, W)}``, plus ``"aux"`` in training.

    ``output_stride`` 8 gives the paper's 97x97 map for a 769x769 crop; ``recurrence``
    is R (2 in the paper); ``aux`` adds an :class:`~segbook.models.base.FCNHead` on ``layer3``.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, backbone: str = "resnet50", output_stride: int = 8,
                 recurrence: int = 2, aux: bool = True, dropout: float = 0.1,
                 pretrained_backbone: bool | str | Path = False) -> None:
        body = ResNetBackbone(backbone, output_stride=output_stride, pretrained=pretrained_backbone)
        head = RCCAModule(body.channels["layer4"], num_classes, recurrence, dropout)
        super().__init__(body, head, aux_stage="layer3", aux_classes=num_classes if aux else None,
                         aux_dropout=dropout)
        self.num_classes = num_classes
