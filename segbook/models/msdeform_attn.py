"""Multi-scale deformable attention and Mask2Former's pixel decoder built on it (Zhu et al., 2021; Cheng et al., 2022).

Dense self-attention over the three coarser maps of a backbone (strides 8, 16
and 32) compares every cell with every other cell: for a 512 x 512 image that is
5376 cells and 29 million pairs per head and layer. Deformable attention keeps
the idea (each cell gathers what it needs from anywhere, at every scale) but
lets each cell *choose* a few places to look: per head and per level it predicts
P offsets from its own position and P weights, reads the value map there with
bilinear interpolation (``F.grid_sample``, the same operation as chapter 6's
``point_sample``) and sums. The cost grows with the number of cells, not with
its square.

Shape letters: B batch, C channels, h_l x w_l the map of level l, L levels,
S = sum of h_l w_l the cells of all levels laid end to end, N queries (in the
pixel decoder every one of the S cells is a query), M heads, P sampling points
per head and level. Coordinates are (x, y) in [0, 1] x [0, 1] over a map, read
with ``align_corners=False`` as in chapter 6: the centre of cell (row i, column j)
of an h x w map is ((j + 0.5) / w, (i + 0.5) / h).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbook.models.base import resize_to

__all__ = ["MSDeformAttnPixelDecoder", "MultiScaleDeformableAttention", "ms_deform_attn", "reference_points",
           "sine_position_embedding"]


def ms_deform_attn(value: Tensor, spatial_shapes: Sequence[tuple[int, int]] | Tensor, sampling_locations: Tensor,
                   attention_weights: Tensor) -> Tensor:
    """Read every level of ``value`` at each query's sampling points and sum with the attention weights.

    Args:
        value: (B, S, M, C/M) the projected values of all levels, level after level, each
            level's h_l x w_l cells in row-major order.
        spatial_shapes: the L pairs (h_l, w_l), in the order the levels lie in ``value``.
        sampling_locations: (B, N, M, L, P, 2) points (x, y) in [0, 1] x [0, 1] of each level's map;
            points outside read zeros (``padding_mode="zeros"``, as the CUDA kernel of Deformable DETR).
        attention_weights: (B, N, M, L, P), normally a softmax over the L * P points of a head.

    Returns:
        (B, N, C): the heads' results side by side (head m in channels m C/M .. (m + 1) C/M - 1).

    One ``grid_sample`` per level: the B * M (batch, head) pairs become grid_sample's
    batch, the N queries times P points its output grid.
    """
    b, s, m, head_channels = value.shape                                        # (B, S, M, C/M)
    _, n, _, levels, points, _ = sampling_locations.shape                       # (B, N, M, L, P, 2)
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    if len(shapes) != levels or sum(h * w for h, w in shapes) != s:
        raise ValueError(f"spatial_shapes {shapes} do not describe value's {s} cells in {levels} levels; "
                         "pass the (h, w) of every level, in the order the levels are concatenated.")
    grids = 2 * sampling_locations - 1                                          # (B, N, M, L, P, 2) in [-1, 1]
    per_level = value.split([h * w for h, w in shapes], dim=1)                  # L x (B, h_l w_l, M, C/M)
    sampled = []
    for level, (value_l, (h, w)) in enumerate(zip(per_level, shapes)):
        value_l = value_l.permute(0, 2, 3, 1).reshape(b * m, head_channels, h, w)  # (B M, C/M, h_l, w_l)
        grid_l = grids[:, :, :, level].transpose(1, 2).reshape(b * m, n, points, 2)  # (B M, N, P, 2)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))                      # (B M, C/M, N, P)
    sampled = torch.stack(sampled, dim=3)                                        # (B M, C/M, N, L, P)
    weights = attention_weights.transpose(1, 2).reshape(b * m, 1, n, levels, points)  # (B M, 1, N, L, P)
    out = (sampled * weights).flatten(3).sum(-1)                                 # (B M, C/M, N)
    return out.view(b, m * head_channels, n).transpose(1, 2).contiguous()        # (B, N, C)


def reference_points(spatial_shapes: Sequence[tuple[int, int]], device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """The centre of every cell of every level, (x, y) in [0, 1] x [0, 1]: (S, 2), level after level.

    A cell's sampling offsets are measured from its own centre; since the
    coordinates are fractions of the map, the same point lies at the same place
    of the image on every level.
    """
    centres = []
    for h, w in spatial_shapes:
        y = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h                # (h_l,)
        x = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w                # (w_l,)
        grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")                       # (h_l, w_l) each
        centres.append(torch.stack([grid_x, grid_y], dim=-1).reshape(h * w, 2))    # (h_l w_l, 2)
    return torch.cat(centres)                                                      # (S, 2)


def sine_position_embedding(height: int, width: int, channels: int, *, device: torch.device | None = None,
                            dtype: torch.dtype = torch.float32, temperature: float = 10000.0) -> Tensor:
    """DETR's sine embedding of each cell's row and column: (C, h, w), the same for every image.

    Attention by itself does not know where a cell is; this code tells it. Rows
    and columns are numbered 1..h and 1..w, scaled to (0, 2 pi], and each is
    written as C/2 sines and cosines of geometrically spaced frequencies (the
    row's C/2 channels first, then the column's). ``channels`` must be even.
    """
    if channels % 2:
        raise ValueError(f"the sine position embedding needs an even number of channels, got {channels}.")
    half, eps, scale = channels // 2, 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, device=device, dtype=dtype) / (height + eps) * scale   # (h,)
    x = torch.arange(1, width + 1, device=device, dtype=dtype) / (width + eps) * scale     # (w,)
    steps = torch.arange(half, device=device, dtype=torch.int64).to(dtype)
    frequencies = temperature ** (2 * torch.div(steps, 2, rounding_mode="floor") / half)   # (C/2,)

    def code(position: Tensor) -> Tensor:  # (n,) -> (n, C/2): sin of even channels, cos of odd, interleaved
        angles = position[:, None] / frequencies                                          # (n, C/2)
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)  # (n, C/2)

    rows = code(y).T[:, :, None].expand(half, height, width)                               # (C/2, h, w)
    cols = code(x).T[:, None, :].expand(half, height, width)                               # (C/2, h, w)
    return torch.cat([rows, cols])                                                          # (C, h, w)


class MultiScaleDeformableAttention(nn.Module):
    """Each query reads P points per head and level around its reference point, weighted: Deformable DETR's module.

    Args:
        channels: C, the width of queries and values.
        num_heads: M; C must be divisible by M.
        num_levels: L.
        num_points: P.

    ``sampling_offsets`` predicts the M L P (dx, dy) offsets in cells of each level,
    ``attention_weights`` the M L P weights (softmax over each head's L P points),
    ``value_proj`` and ``output_proj`` are the usual value and output projections.
    Initialised as Deformable DETR: offsets start on a ring, head m looking in
    direction 2 pi m / M at 1..P cells out, and the weights start uniform, so an
    untrained layer averages a neighbourhood.
    """

    def __init__(self, channels: int, num_heads: int = 8, num_levels: int = 3, num_points: int = 4) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads}).")
        self.channels, self.num_heads, self.num_levels, self.num_points = channels, num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(channels, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(channels, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        m, levels, points = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(m, dtype=torch.float32) * (2 * math.pi / m)               # (M,)
        ring = torch.stack([angles.cos(), angles.sin()], dim=-1)                        # (M, 2)
        ring = ring / ring.abs().max(-1, keepdim=True).values                           # on the square's edge
        ring = ring[:, None, None, :].repeat(1, levels, points, 1)                      # (M, L, P, 2)
        ring = ring * torch.arange(1, points + 1, dtype=torch.float32)[None, None, :, None]  # 1..P cells out
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, queries: Tensor, reference: Tensor, values: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """Args:
            queries: (B, N, C), position embedding already added.
            reference: (N, 2) or (B, N, 2) each query's reference point (x, y) in [0, 1] x [0, 1],
                the same place on every level.
            values: (B, S, C) the levels' cells, level after level (no position embedding).
            spatial_shapes: the L pairs (h_l, w_l).

        Returns (B, N, C).
        """
        b, n, c = queries.shape
        m, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(values).view(b, values.shape[1], m, c // m)          # (B, S, M, C/M)
        offsets = self.sampling_offsets(queries).view(b, n, m, levels, points, 2)     # (B, N, M, L, P, 2) in cells
        weights = self.attention_weights(queries).view(b, n, m, levels * points)      # (B, N, M, L P)
        weights = weights.softmax(-1).view(b, n, m, levels, points)                   # (B, N, M, L, P)
        cells = torch.tensor([[w, h] for h, w in spatial_shapes], device=queries.device,
                             dtype=queries.dtype)                                     # (L, 2): a cell is 1/w, 1/h
        reference = reference.expand(b, n, 2)                                         # (B, N, 2)
        locations = (reference[:, :, None, None, None, :]
                     + offsets / cells[None, None, None, :, None, :])                 # (B, N, M, L, P, 2)
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))  # (B, N, C)


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a feed-forward network; each with a residual and LayerNorm.

    Post-norm, as Deformable DETR and Mask2Former: ``x = norm(x + block(x))``.
    """

    def __init__(self, channels: int, num_heads: int, ffn_channels: int, num_levels: int = 3,
                 num_points: int = 4) -> None:
        super().__init__()
        self.attn = MultiScaleDeformableAttention(channels, num_heads, num_levels, num_points)
        self.attn_norm = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, ffn_channels), nn.ReLU(inplace=True),
                                 nn.Linear(ffn_channels, channels))
        self.ffn_norm = nn.LayerNorm(channels)

    def forward(self, tokens: Tensor, position: Tensor, reference: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        tokens = self.attn_norm(tokens + self.attn(tokens + position, reference, tokens, spatial_shapes))  # (B, S, C)
        return self.ffn_norm(tokens + self.ffn(tokens))                                                    # (B, S, C)


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    """detectron2's ``c2_xavier_fill``: Caffe2's Xavier (uniform, fan in), bias 0."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former's pixel decoder: deformable attention over strides 32, 16 and 8, then one FPN step to stride 4.

    Args:
        in_channels: the backbone's channels by stage name; four stages at strides
            4, 8, 16 and 32 (:class:`~segbook.models.backbones.ResNetBackbone`'s
            ``layer1`` .. ``layer4``), given finest first.
        channels: C, the width of everything here (the paper: 256). A multiple of 32
            (GroupNorm with 32 groups, as the paper).
        mask_channels: D, the width of the stride-4 mask features (the paper: 256).
        num_layers: deformable encoder layers (the paper: 6).
        num_heads, num_points: of the deformable attention (the paper: 8 and 4).
        ffn_channels: the encoder's feed-forward width (the paper: 1024).

    ``forward(features)`` returns ``(multi_scale, mask_features)``:
    ``multi_scale`` the encoder's three maps, coarsest first, each (B, C, h_l, w_l)
    at strides 32, 16, 8 (the transformer decoder's round robin reads them in this
    order); ``mask_features`` (B, D, h, w) at stride 4, where every query's mask is
    a dot product.
    """

    def __init__(self, in_channels: Mapping[str, int], channels: int = 256, mask_channels: int = 256,
                 num_layers: int = 6, num_heads: int = 8, num_points: int = 4, ffn_channels: int = 1024) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"the pixel decoder takes four backbone stages (strides 4, 8, 16, 32), "
                             f"got {list(in_channels)}.")
        if channels % 32:
            raise ValueError(f"channels must be a multiple of 32 (GroupNorm's 32 groups), got {channels}.")
        self.fine, *coarse = list(in_channels)                        # layer1; layer2, layer3, layer4
        self.levels = coarse[::-1]                                    # layer4, layer3, layer2: strides 32, 16, 8
        self.channels = channels
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[name], channels, kernel_size=1), nn.GroupNorm(32, channels))
            for name in self.levels)
        self.level_embed = nn.Parameter(torch.empty(len(self.levels), channels))
        self.encoder = nn.ModuleList(DeformableEncoderLayer(channels, num_heads, ffn_channels, len(self.levels),
                                                            num_points) for _ in range(num_layers))
        self.lateral = nn.Sequential(nn.Conv2d(in_channels[self.fine], channels, kernel_size=1, bias=False),
                                     nn.GroupNorm(32, channels))
        self.output = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
                                    nn.GroupNorm(32, channels), nn.ReLU(inplace=True))
        self.mask_proj = nn.Conv2d(channels, mask_channels, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As detectron2's ``MSDeformAttnPixelDecoder``: Xavier everywhere, deformable attention its own way."""
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        for p in self.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.encoder.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)
        for conv in (self.lateral[0], self.output[0], self.mask_proj):
            _c2_xavier_fill(conv)

    def forward(self, features: Mapping[str, Tensor]) -> tuple[list[Tensor], Tensor]:
        maps = [proj(features[name]) for proj, name in zip(self.input_proj, self.levels)]  # L x (B, C, h_l, w_l)
        b, c = maps[0].shape[:2]
        shapes = [tuple(x.shape[-2:]) for x in maps]                                     # L x (h_l, w_l)
        like = dict(device=maps[0].device, dtype=maps[0].dtype)
        tokens = torch.cat([x.flatten(2).transpose(1, 2) for x in maps], dim=1)           # (B, S, C)
        position = torch.cat([sine_position_embedding(h, w, c, **like).flatten(1).T + embed  # (h_l w_l, C)
                              for (h, w), embed in zip(shapes, self.level_embed)])        # (S, C)
        reference = reference_points(shapes, **like)                                       # (S, 2)
        for layer in self.encoder:
            tokens = layer(tokens, position, reference, shapes)                            # (B, S, C)
        multi_scale = [t.transpose(1, 2).reshape(b, c, h, w)                               # (B, C, h_l, w_l)
                       for t, (h, w) in zip(tokens.split([h * w for h, w in shapes], dim=1), shapes)]
        lateral = self.lateral(features[self.fine])                                        # (B, C, h, w): stride 4
        fine = self.output(lateral + resize_to(multi_scale[-1], tuple(lateral.shape[-2:])))  # (B, C, h, w)
        return multi_scale, self.mask_proj(fine)                                           # ..., (B, D, h, w)
