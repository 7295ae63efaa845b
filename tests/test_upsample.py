"""Transposed convolution and the bilinear upsampler against independent references.

References: hand-computed values (d2l's worked examples), PyTorch's own
``F.conv_transpose2d`` / ``nn.ConvTranspose2d`` / ``F.interpolate``, and a
convolution matrix built entry by entry from index arithmetic.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from segbook.upsample import (bilinear_kernel, bilinear_upsampler, conv_transpose2d_loop,
                              conv_transpose_output_size)

FAST = settings(max_examples=60, deadline=None)


def _border_mask(height: int, width: int, border: int) -> torch.Tensor:
    """True on the ``border``-pixel band along each edge of an (height, width) grid."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    if border:
        mask[:border] = mask[-border:] = True
        mask[:, :border] = mask[:, -border:] = True
    return mask


# --- the explicit loop ---------------------------------------------------------------------------

def test_loop_reproduces_hand_computed_values():
    # d2l 14.10.1: every input pixel pastes a scaled copy of the (not flipped) kernel.
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)
    k = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)
    assert conv_transpose2d_loop(x, k).squeeze().tolist() == [[0, 0, 1], [0, 4, 6], [4, 12, 9]]
    assert conv_transpose2d_loop(x, k, stride=2).squeeze().tolist() == [
        [0, 0, 0, 1], [0, 0, 2, 3], [0, 2, 0, 3], [4, 6, 6, 9]]
    # padding removes output: only the centre of the 3x3 result survives padding 1.
    assert conv_transpose2d_loop(x, k, padding=1).squeeze().tolist() == 4.0


@FAST
@given(batch=st.integers(1, 2), c_in=st.integers(1, 3), c_out=st.integers(1, 3),
       height=st.integers(1, 5), width=st.integers(1, 5), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_loop_matches_torch(batch, c_in, c_out, height, width, kh, kw, sh, sw, ph, pw, seed):
    assume((height - 1) * sh + kh - 2 * ph >= 1 and (width - 1) * sw + kw - 2 * pw >= 1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, height, width, generator=gen, dtype=torch.float64)
    w = torch.randn(c_in, c_out, kh, kw, generator=gen, dtype=torch.float64)
    ours = conv_transpose2d_loop(x, w, stride=(sh, sw), padding=(ph, pw))
    theirs = F.conv_transpose2d(x, w, stride=(sh, sw), padding=(ph, pw))
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs)


def test_loop_rejects_bad_input_with_a_fix():
    x = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"\(B, C_in, H, W\)"):
        conv_transpose2d_loop(x[0], torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="nn.ConvTranspose2d's layout"):
        conv_transpose2d_loop(x, torch.zeros(1, 2, 2, 2))  # a Conv2d-layout weight
    with pytest.raises(ValueError, match="smaller padding"):
        conv_transpose2d_loop(x, torch.zeros(2, 1, 2, 2), padding=2)
    with pytest.raises(ValueError, match=r"stride=0: give an int >= 1"):
        conv_transpose2d_loop(x, torch.zeros(2, 1, 2, 2), stride=0)
    with pytest.raises(ValueError, match=r"padding=-1: give an int >= 0"):
        conv_transpose2d_loop(x, torch.zeros(2, 1, 2, 2), padding=-1)


# --- the matrix view -----------------------------------------------------------------------------

def _conv_matrix(kernel: torch.Tensor, n: int, stride: int, padding: int) -> torch.Tensor:
    """The (m*m, n*n) matrix of a single-channel cross-correlation, built from index arithmetic."""
    k = kernel.shape[0]
    m = (n + 2 * padding - k) // stride + 1
    matrix = torch.zeros(m * m, n * n, dtype=kernel.dtype)
    for a in range(m):
        for b in range(m):
            for u in range(k):
                for v in range(k):
                    row, col = a * stride - padding + u, b * stride - padding + v
                    if 0 <= row < n and 0 <= col < n:
                        matrix[a * m + b, row * n + col] += kernel[u, v]
    return matrix


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 7), k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_transposed_conv_is_the_transpose_of_the_conv_matrix(n, k, stride, padding, seed):
    assume(k <= n + 2 * padding and padding < k)
    gen = torch.Generator().manual_seed(seed)
    kernel = torch.randn(k, k, generator=gen, dtype=torch.float64)
    matrix = _conv_matrix(kernel, n, stride, padding)                          # (m*m, n*n)
    m = int(round(matrix.shape[0] ** 0.5))
    x = torch.randn(1, 1, n, n, generator=gen, dtype=torch.float64)
    conv = F.conv2d(x, kernel[None, None], stride=stride, padding=padding)
    torch.testing.assert_close(matrix @ x.flatten(), conv.flatten())
    y = torch.randn(1, 1, m, m, generator=gen, dtype=torch.float64)
    # A strided conv maps several input sizes to m; output_padding picks n again.
    extra = n - conv_transpose_output_size(m, k, stride, padding)
    assert 0 <= extra < stride
    back = F.conv_transpose2d(y, kernel[None, None], stride=stride, padding=padding, output_padding=extra)
    torch.testing.assert_close(matrix.T @ y.flatten(), back.flatten())
    if extra == 0:  # the loop has no output_padding
        torch.testing.assert_close(matrix.T @ y.flatten(),
                                   conv_transpose2d_loop(y, kernel[None, None], stride, padding).flatten())


# --- output sizes --------------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 12), k=st.integers(1, 7), s=st.integers(1, 5), p=st.integers(0, 4),
       op=st.integers(0, 4), d=st.integers(1, 3))
def test_output_size_formula_matches_conv_transpose(n, k, s, p, op, d):
    assume(op < max(s, d))  # PyTorch's rule for output_padding
    expected = conv_transpose_output_size(n, k, s, p, op, d)
    assume(expected >= 1)
    layer = torch.nn.ConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=op, dilation=d, bias=False)
    assert layer(torch.zeros(1, 1, n, n + 1)).shape[-2:] == (expected, conv_transpose_output_size(n + 1, k, s, p, op, d))
    if d == 1 and op == 0:
        assert expected == (n - 1) * s - 2 * p + k
    # ... and the convolution with the same geometry maps the result back to n
    # (an output_padding below the stride only fills what its floor division drops).
    assert op >= s or F.conv2d(torch.zeros(1, 1, expected, expected), torch.zeros(1, 1, k, k), stride=s, padding=p,
                    dilation=d).shape[-1] == n


@pytest.mark.parametrize("s", [2, 4, 8, 16, 32])
def test_kernel_2s_stride_s_padding_half_s_scales_by_exactly_s(s):
    for n in range(1, 25):
        assert conv_transpose_output_size(n, 2 * s, s, s // 2) == s * n
    layer = torch.nn.ConvTranspose2d(1, 1, 2 * s, stride=s, padding=s // 2, bias=False)
    assert layer(torch.zeros(1, 1, 3, 5)).shape[-2:] == (3 * s, 5 * s)


def test_fcn_32x_geometry():
    layer = torch.nn.ConvTranspose2d(2, 2, kernel_size=64, stride=32, padding=16, bias=False)
    assert layer(torch.zeros(1, 2, 10, 15)).shape[-2:] == (320, 480)  # d2l's 320x480 crop


def test_output_size_rejects_bad_geometry():
    with pytest.raises(ValueError, match="invalid geometry"):
        conv_transpose_output_size(0, 3)
    with pytest.raises(ValueError, match="invalid geometry"):
        conv_transpose_output_size(4, 3, stride=0)


# --- the bilinear kernel -------------------------------------------------------------------------

@pytest.mark.parametrize("k, tent", [
    (1, [1.0]), (2, [0.5, 0.5]), (3, [0.5, 1.0, 0.5]), (4, [0.25, 0.75, 0.75, 0.25]),
    (5, [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]), (6, [1 / 6, 1 / 2, 5 / 6, 5 / 6, 1 / 2, 1 / 6])])
def test_bilinear_kernel_hand_computed_and_separable(k, tent):
    tent = torch.tensor(tent)
    weight = bilinear_kernel(2, 2, k)
    assert weight.shape == (2, 2, k, k)
    for i in range(2):
        torch.testing.assert_close(weight[i, i], torch.outer(tent, tent))
    assert not weight[0, 1].any() and not weight[1, 0].any()
    torch.testing.assert_close(weight[0, 0], weight[0, 0].T)
    # separable: the filter is the outer product of its own row and column sums (over the total)
    filt = weight[0, 0]
    torch.testing.assert_close(filt, torch.outer(filt.sum(1), filt.sum(0)) / filt.sum())


@pytest.mark.parametrize("c_in, c_out", [(3, 5), (5, 3), (1, 1)])
def test_bilinear_kernel_unequal_channels(c_in, c_out):
    weight = bilinear_kernel(c_in, c_out, 4)
    assert weight.shape == (c_in, c_out, 4, 4)
    nonzero = weight.flatten(2).abs().sum(-1) > 0                             # (C_in, C_out)
    assert torch.equal(nonzero, torch.eye(c_in, c_out, dtype=torch.bool))


@pytest.mark.parametrize("factor", range(1, 10))
def test_bilinear_weights_sum_to_one_per_output_pixel(factor):
    """Every phase of the kernel (taps s apart) sums to 1, so a constant image stays constant inside."""
    k = 2 * factor - factor % 2
    kernel = bilinear_kernel(1, 1, k)[0, 0]
    for r in range(factor):
        for c in range(factor):
            assert kernel[r::factor, c::factor].sum().item() == pytest.approx(1.0, abs=1e-6)
    out = bilinear_upsampler(1, factor)(torch.ones(1, 1, 6, 7)).detach()[0, 0]
    border = factor // 2
    inside = ~_border_mask(*out.shape, border)
    torch.testing.assert_close(out[inside], torch.ones(int(inside.sum())))
    if border:
        assert (out[~inside] < 1 - 1e-3).all()  # zero padding: the edge band darkens


def test_bilinear_kernel_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive sizes"):
        bilinear_kernel(3, 3, 0)


# --- the upsampler -------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [*range(1, 10), 16, 32])
def test_upsampler_geometry_scales_by_exactly_factor(factor):
    layer = bilinear_upsampler(3, factor)
    assert layer.kernel_size == (2 * factor - factor % 2,) * 2
    assert layer.stride == (factor, factor) and layer.padding == (factor // 2, factor // 2)
    assert layer.bias is None and layer.weight.requires_grad
    for n in (1, 2, 3, 7):
        assert layer(torch.zeros(1, 3, n, n + 2)).shape == (1, 3, factor * n, factor * (n + 2))


@FAST
@given(factor=st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 16]), height=st.integers(1, 9),
       width=st.integers(1, 9), channels=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_upsampler_equals_interpolate_except_a_border_of_half_the_factor(factor, height, width, channels, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, channels, height, width, generator=gen) + 0.5          # positive: edges must differ
    with torch.no_grad():
        ours = bilinear_upsampler(channels, factor)(x)                          # (1, C, fH, fW)
    theirs = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    diff = (ours - theirs).abs().amax(dim=(0, 1))                               # (fH, fW)
    band = _border_mask(factor * height, factor * width, factor // 2)
    assert torch.cat([diff[~band], torch.zeros(1)]).max() < 1e-5
    assert torch.cat([diff[band], torch.ones(1)]).min() > 1e-3
    # Replicating the edge pixel once (then cutting the extra f pixels with padding) removes it all.
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    fixed = F.conv_transpose2d(padded, bilinear_kernel(channels, channels, 2 * factor - factor % 2),
                               stride=factor, padding=factor // 2 + factor)
    torch.testing.assert_close(fixed, theirs, atol=1e-5, rtol=0)


def test_upsampler_does_not_mix_channels_and_keeps_the_device_and_dtype():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    x[0, 1] = 1.0
    layer = bilinear_upsampler(3, 2).double()
    out = layer(x).detach()
    assert out.dtype == torch.float64
    assert not out[0, 0].any() and not out[0, 2].any() and out[0, 1].sum() > 0


def test_upsampler_rejects_bad_factor():
    for bad in (0, -2, 2.0):
        with pytest.raises(ValueError, match="integer factor >= 1"):
            bilinear_upsampler(3, bad)
    with pytest.raises(ValueError, match="channels >= 1"):
        bilinear_upsampler(0, 2)


# --- checkerboard overlap --------------------------------------------------------------------------

@pytest.mark.parametrize("k, s", [(2, 2), (3, 2), (4, 2), (3, 3), (5, 3), (6, 3), (4, 3)])
def test_overlap_is_even_exactly_when_the_kernel_is_a_multiple_of_the_stride(k, s):
    """How many kernel taps land on each output pixel, away from the edges (Odena et al., 2016)."""
    counts = conv_transpose2d_loop(torch.ones(1, 1, 8, 8), torch.ones(1, 1, k, k), stride=s)[0, 0]
    inner = counts[k:-k, k:-k]
    assert (inner.min() == inner.max()) == (k % s == 0)


# --- the aligned upsampler --------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(factor=st.integers(1, 9), rows=st.integers(1, 5), cols=st.integers(1, 5), seed=st.integers(0, 2 ** 16))
def test_aligned_upsampler_is_align_corners_interpolation_on_the_fi_grid(factor, rows, cols, seed):
    from segbook.upsample import AlignedUpsampler
    torch.manual_seed(seed)
    x = torch.randn(1, 2, rows, cols)                                           # (1, C, h, w)
    height = (rows - 1) * factor + 1 + torch.randint(0, factor, ()).item()     # any size the cells cover
    width = (cols - 1) * factor + 1 + torch.randint(0, factor, ()).item()
    with torch.no_grad():
        out = AlignedUpsampler(2, factor)(x, (height, width))                   # (1, C, height, width)
    assert out.shape == (1, 2, height, width)
    core = F.interpolate(x, size=((rows - 1) * factor + 1, (cols - 1) * factor + 1), mode="bilinear",
                         align_corners=True)                                     # the grid 0, f, 2f, ...
    torch.testing.assert_close(out[..., :core.shape[-2], :core.shape[-1]], core)
