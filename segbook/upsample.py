"""Learnable upsampling: transposed convolution and its bilinear initialisation.

A segmentation network shrinks its input by 8 to 32 times before it decides
what each region is, yet it must answer for every input pixel. A transposed
convolution is the upsampling layer that can be learned; initialised with the
bilinear kernel it starts out as plain bilinear interpolation, which is what
FCN does (Long et al., 2015). Chapter 1 builds all of this from scratch; the
functions here are the tested versions the later chapters import.

What FCN itself did with these layers: the paper fixes the final 32x upsampling
to bilinear interpolation, and its released Caffe nets freeze every
deconvolution (``lr_mult: 0``), so none of its upsamplers actually learns; it
zero-initialises the class scorers of the skips. Here the weights are ordinary
parameters; freeze one with ``layer.weight.requires_grad_(False)`` to follow
the paper (chapter 3's exercises compare the two).

Two geometries are offered. :func:`bilinear_upsampler` (kernel ``2f - f % 2``,
padding ``f // 2``) scales a map by exactly ``f`` and puts input cell ``i`` at
output pixel ``f i + (f - 1) / 2``, where ``F.interpolate(align_corners=False)``
puts it. A ResNet's stride-``f`` map, however, is *centred* on input pixel
``f i`` (every strided layer pads by half its kernel). :class:`AlignedUpsampler`
(odd kernel ``2f - 1``, padding ``f - 1``, an explicit output size) puts cell
``i`` exactly on pixel ``f i``, which is what a segmentation head on such a
backbone needs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .sizes import as_pair

__all__ = [
    "AlignedUpsampler",
    "aligned_upsampler",
    "bilinear_kernel",
    "bilinear_upsampler",
    "conv_transpose2d_loop",
    "conv_transpose_output_size",
]


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> Tensor:
    """The weight that makes ``nn.ConvTranspose2d`` start as bilinear interpolation.

    Returns a tensor of shape ``(in_channels, out_channels, k, k)``, the layout of
    ``nn.ConvTranspose2d.weight``. Channel ``i`` is copied to output channel ``i``
    through the filter ``w(a, b) = (1 - |a - c| / f) * (1 - |b - c| / f)`` with
    ``f = (k + 1) // 2`` and centre ``c`` (``f - 1`` for odd ``k``, ``f - 0.5`` for
    even ``k``); every other channel pair gets zeros, so channels do not mix.

    Why this is bilinear interpolation: a transposed convolution with stride ``f``
    pastes one scaled copy of the kernel per input pixel, the copies ``f`` output
    pixels apart. Each copy is a tent that falls linearly from 1 at its input
    pixel's centre to 0 one input pixel (``f`` output pixels) away, so an output
    pixel receives exactly two weights per axis, ``1 - t`` and ``t``, from the two
    input pixels around it: linear interpolation along each axis, hence bilinear
    in 2D (the filter is an outer product of two 1-D tents). The centres sit where
    ``F.interpolate(..., align_corners=False)`` puts the input pixels when the
    padding is ``f // 2`` (see :func:`bilinear_upsampler`).

    ``in_channels`` and ``out_channels`` may differ (d2l's version needs them
    equal); the diagonal then covers ``min(in_channels, out_channels)`` pairs.
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

    With no dilation and no output padding this is ``(n - 1)s - 2p + k``: the
    ``n`` pasted kernels start ``s`` apart and the last one reaches ``k`` further,
    then ``p`` pixels are cut from each end. It is the inverse of the convolution's
    ``floor((n + 2p - d(k-1) - 1) / s) + 1``, which is why ``output_padding`` exists:
    a strided convolution maps several sizes to one, and ``output_padding`` picks
    which of them to return to.
    """
    if n < 1 or kernel_size < 1 or stride < 1 or dilation < 1 or padding < 0 or output_padding < 0:
        raise ValueError(f"conv_transpose_output_size got an invalid geometry: n={n}, k={kernel_size}, "
                         f"s={stride}, p={padding}, output_padding={output_padding}, d={dilation}.")
    return (n - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A ``channels -> channels`` transposed convolution that scales H and W by exactly ``factor``.

    Geometry: kernel ``2f - f % 2``, stride ``f``, padding ``f // 2`` (FCN's
    ``k=64, s=32, p=16`` for ``f=32``; ``k=3, s=2``-style odd kernels would leave
    uneven overlaps, see the checkerboard section of chapter 1). Then
    ``(n - 1)f - 2(f // 2) + 2f - f % 2 = nf`` for every ``n``, even and odd ``f``.

    The weight starts as :func:`bilinear_kernel`, so before training the layer
    equals ``F.interpolate(mode="bilinear", align_corners=False)`` except on a
    band of ``f // 2`` pixels along each edge: there interpolation repeats the edge
    pixel, while the transposed convolution sees zeros beyond the edge, so its
    weights there sum to less than one and the border darkens. The weight is an
    ordinary parameter (no bias), so training may move it away from bilinear.
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

    ``x`` is ``(B, C_in, H, W)`` and ``weight`` ``(C_in, C_out, kh, kw)``. Each input
    pixel pastes its channel vector times the kernel into the output, starting at
    ``(i * s_h, j * s_w)``; overlapping pastes add up. The padding is then cut from
    the borders: a transposed convolution's padding removes output, the opposite of
    a convolution's. The loop runs over input pixels only (batch and channels are
    one ``einsum``), so it is slow but plain.
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

    Geometry: kernel ``2f - 1`` (odd, so the tent has a centre tap), stride
    ``f``, padding ``f - 1``. Input cell ``i`` pastes its tent with the centre
    tap on output pixel ``f i - (f - 1) + (f - 1) = f i``, and neighbouring
    tents meet there with weights ``1 - t`` and ``t``: between cell centres
    this is linear interpolation on the grid ``0, f, 2f, ...``, that is
    ``F.interpolate(..., align_corners=True)`` onto ``(n - 1) f + 1`` pixels.

    That grid is where a torchvision ResNet centres its stride-``f`` cells
    (each strided layer pads by half its kernel, so cell ``i`` of ``layer4`` is
    centred on input pixel ``32 i``). An even kernel (:func:`bilinear_upsampler`,
    FCN's ``k=64, s=32, p=16``) puts the cell at ``32 i + 15.5`` instead, and
    no crop of whole pixels can remove a 15.5-pixel shift; this layer has none.

    ``forward(x, output_size)`` needs the size to return, because ``n`` cells
    cover any of ``(n - 1) f + 1 .. n f`` pixels (``n = ceil(H / f)`` for a
    map made by stride-``f`` rounding up). Pixels past the last cell centre
    (at most ``f - 1`` of them, bottom and right) get one tent only, falling
    off towards the edge: every class score there is scaled by the same
    positive factor, so the predicted class does not change.
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


def aligned_upsampler(channels: int, factor: int) -> AlignedUpsampler:
    """A ``channels -> channels`` :class:`AlignedUpsampler`; call it as ``layer(x, output_size)``."""
    return AlignedUpsampler(channels, factor)
