"""Learnable upsampling: transposed convolution and its bilinear initialisation (chapter 1 builds it).

Initialised with the bilinear kernel, a transposed convolution starts as plain
bilinear interpolation and can then learn (Long et al., 2015, froze it). Two
geometries: :func:`bilinear_upsampler` puts input cell ``i`` where
``F.interpolate(align_corners=False)`` does; :class:`AlignedUpsampler` on pixel
``f i``, where a torchvision ResNet centres its stride-``f`` cells.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .sizes import as_pair

__all__ = ["AlignedUpsampler", "bilinear_kernel", "bilinear_upsampler", "conv_transpose2d_loop",
           "conv_transpose_output_size"]


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> Tensor:
    """The (C_in, C_out, k, k) weight that makes ``nn.ConvTranspose2d`` start as bilinear interpolation.

    Channel ``i`` goes to channel ``i`` (unlike d2l's, C_in may differ from C_out)
    through the tent ``(1 - |a - c| / f) (1 - |b - c| / f)``, ``f = (k + 1) // 2``,
    ``c = f - 1`` (odd ``k``) or ``f - 0.5`` (even). Pasted ``f`` pixels apart,
    neighbouring tents weigh each output pixel ``1 - t`` and ``t`` per axis: bilinear.
    """
    if kernel_size < 1 or in_channels < 1 or out_channels < 1:
        raise ValueError(f"bilinear_kernel needs positive sizes, got in_channels={in_channels}, "
                         f"out_channels={out_channels}, kernel_size={kernel_size}.")
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = torch.arange(kernel_size, dtype=torch.float32)                        # (k,)
    tent = 1 - (taps - center).abs() / factor                                    # (k,) 1-D tent
    filt = torch.outer(tent, tent)                                               # (k, k) separable
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)    # (C_in, C_out, k, k)
    diag = torch.arange(min(in_channels, out_channels))
    weight[diag, diag] = filt
    return weight


def conv_transpose_output_size(n: int, kernel_size: int, stride: int = 1, padding: int = 0,
                               output_padding: int = 0, dilation: int = 1) -> int:
    """Length of one spatial axis after ``nn.ConvTranspose2d``: ``(n-1)s - 2p + d(k-1) + op + 1``.

    The inverse of a convolution's ``floor((n + 2p - d(k-1) - 1) / s) + 1``; since a
    strided convolution maps several sizes to one, ``output_padding`` picks which to return to.
    """
    if n < 1 or kernel_size < 1 or stride < 1 or dilation < 1 or padding < 0 or output_padding < 0:
        raise ValueError(f"conv_transpose_output_size got an invalid geometry: n={n}, k={kernel_size}, "
                         f"s={stride}, p={padding}, output_padding={output_padding}, d={dilation}.")
    return (n - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A ``channels -> channels`` transposed convolution that scales H and W by exactly ``factor``.

    Kernel ``2f - f % 2``, stride ``f``, padding ``f // 2`` (FCN's ``k=64, s=32, p=16``).
    It starts as :func:`bilinear_kernel`, i.e. ``F.interpolate(mode="bilinear",
    align_corners=False)`` but for a band of ``f // 2`` pixels along each edge, which
    darkens: the layer sees zeros beyond the image.
    """
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"bilinear_upsampler needs an integer factor >= 1, got {factor!r}.")
    if channels < 1:
        raise ValueError(f"bilinear_upsampler needs channels >= 1, got {channels!r}.")
    kernel_size = 2 * factor - factor % 2
    layer = nn.ConvTranspose2d(channels, channels, kernel_size, stride=factor,
                               padding=factor // 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, channels, kernel_size))
    return layer


def conv_transpose2d_loop(x: Tensor, weight: Tensor, stride: int | tuple[int, int] = 1,
                          padding: int | tuple[int, int] = 0) -> Tensor:
    """``F.conv_transpose2d`` (no bias, groups or dilation) as an explicit loop, for teaching and tests.

    Each input pixel pastes its channels times the kernel at ``(i s_h, j s_w)``; the padding is then cut off.
    """
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"conv_transpose2d_loop expects x (B, C_in, H, W) and weight (C_in, C_out, kh, kw), "
                         f"got shapes {tuple(x.shape)} and {tuple(weight.shape)}.")
    if x.shape[1] != weight.shape[0]:
        raise ValueError(f"x has {x.shape[1]} channels but weight expects {weight.shape[0]} "
                         "(weight is (C_in, C_out, kh, kw), nn.ConvTranspose2d's layout, not Conv2d's).")
    (sh, sw), (ph, pw) = as_pair(stride, "stride"), as_pair(padding, "padding", minimum=0)
    batch, _, height, width = x.shape
    kh, kw = weight.shape[2:]
    full_h, full_w = (height - 1) * sh + kh, (width - 1) * sw + kw
    if full_h - 2 * ph < 1 or full_w - 2 * pw < 1:
        raise ValueError(f"padding {padding!r} removes the whole {full_h}x{full_w} output; use a smaller padding.")
    out = x.new_zeros(batch, weight.shape[1], full_h, full_w)                    # (B, C_out, H', W') uncropped
    for i in range(height):
        for j in range(width):
            patch = torch.einsum("bc,cokl->bokl", x[:, :, i, j], weight)       # (B, C_out, kh, kw)
            out[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += patch
    return out[:, :, ph:full_h - ph, pw:full_w - pw]                           # (B, C_out, H_out, W_out)


class AlignedUpsampler(nn.ConvTranspose2d):
    """A bilinear transposed convolution that puts input cell ``i`` exactly on output pixel ``f i``.

    Kernel ``2f - 1`` (a centre tap), stride ``f``, padding ``f - 1``: bilinear on the
    grid ``0, f, 2f, ...`` where a torchvision ResNet centres its cells (an even
    kernel is ``(f - 1) / 2`` pixels off). ``forward(x, output_size)`` needs the size,
    since ``n`` cells cover ``(n - 1) f + 1 .. n f`` pixels; the at most ``f - 1`` past
    the last centre get one tent, every class score shrunk alike.
    """

    def __init__(self, channels: int, factor: int) -> None:
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"AlignedUpsampler needs an integer factor >= 1, got {factor!r}.")
        if channels < 1:
            raise ValueError(f"AlignedUpsampler needs channels >= 1, got {channels!r}.")
        kernel_size = 2 * factor - 1
        super().__init__(channels, channels, kernel_size, stride=factor, padding=factor - 1, bias=False)
        self.factor = factor
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(channels, channels, kernel_size))

    def forward(self, x: Tensor, output_size: tuple[int, int] | torch.Size) -> Tensor:  # type: ignore[override]
        h, w = x.shape[-2:]
        height, width = (int(v) for v in output_size[-2:])
        f = self.factor
        for n, size, axis in ((h, height, "rows"), (w, width, "columns")):
            if not (n - 1) * f + 1 <= size <= n * f:
                raise ValueError(f"AlignedUpsampler(factor={f}) maps {n} {axis} of cells to "
                                 f"{(n - 1) * f + 1}..{n * f} pixels, not {size}; the map should have "
                                 f"ceil({size} / {f}) = {-(-size // f)} {axis}.")
        return super().forward(x, output_size=[height, width])  # (B, C, height, width)

