"""Criss-cross attention against a dense masked reference, and CCNet's composition.

The independent reference is :func:`dense_masked_attention`: a full
``(hw) x (hw)`` softmax with everything off the pixel's row and column masked,
in which every pixel is a key exactly once. Criss-cross attention's
``(B, h, w, h + w)`` weights are scattered back onto that ``(hw) x (hw)`` grid by
plain loops here, so a wrong index, a diagonal counted twice or two softmaxes
instead of one all show up as a mismatch. float64 throughout where exactness matters.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segbook.models import MODELS, build_model
from segbook.models.base import FCNHead, SegmentationModel
from segbook.models.ccnet import (CCNet, CrissCrossAttention, NonLocalBlock, RCCAModule, criss_cross_attention,
                                  criss_cross_attention_bmm, dense_masked_attention, non_local_attention)

SIZES = [(5, 7), (1, 9), (9, 1), (4, 4), (1, 1)]


def _qkv(b: int, h: int, w: int, cq: int = 3, c: int = 5, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(b, cq, h, w, generator=g, dtype=dtype)
    key = torch.randn(b, cq, h, w, generator=g, dtype=dtype)
    value = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    return query, key, value


def _cross_to_dense(attention: torch.Tensor) -> torch.Tensor:
    """(B, h, w, h + w) criss-cross weights -> (B, hw, hw): column entry k is pixel (k, j), row entry k is (i, k)."""
    b, h, w, _ = attention.shape
    dense = torch.zeros(b, h, w, h, w, dtype=attention.dtype)
    for i in range(h):
        for j in range(w):
            for k in range(h):
                dense[:, i, j, k, j] += attention[:, i, j, k]
            for k in range(w):
                dense[:, i, j, i, k] += attention[:, i, j, h + k]
    return dense.reshape(b, h * w, h * w)


# --- the three formulations agree ---------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_criss_cross_equals_dense_masked_reference(size) -> None:
    h, w = size
    query, key, value = _qkv(3, h, w)
    out, attention = criss_cross_attention(query, key, value)
    ref_out, ref_attention = dense_masked_attention(query, key, value)
    assert out.shape == (3, 5, h, w) and attention.shape == (3, h, w, h + w)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_cross_to_dense(attention), ref_attention, rtol=1e-12, atol=1e-12)


def test_dense_reference_keeps_only_the_cross() -> None:
    # The reference itself: weights off the row and column are 0, on it positive; nothing else is checked
    # against it if this does not hold.
    h, w = 4, 6
    _, attention = dense_masked_attention(*_qkv(2, h, w))
    attention = attention.view(2, h, w, h, w)
    for i, j, k, m in [(1, 2, 1, 5), (1, 2, 3, 2), (0, 0, 0, 0)]:
        assert (attention[:, i, j, k, m] > 0).all()
    assert (attention[:, 1, 2, 0, 0] == 0).all() and (attention[:, 1, 2, 3, 5] == 0).all()
    assert (attention[:, 1, 2] > 0).sum() == 2 * (h + w - 1)


@pytest.mark.parametrize("size", SIZES)
def test_bmm_formulation_equals_einsum(size) -> None:
    h, w = size
    query, key, value = _qkv(2, h, w, seed=1)
    out, attention = criss_cross_attention(query, key, value)
    out_bmm, attention_bmm = criss_cross_attention_bmm(query, key, value)
    torch.testing.assert_close(out_bmm, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(attention_bmm, attention, rtol=1e-12, atol=1e-12)


def test_gradients_match_the_reference() -> None:
    inputs = [t.requires_grad_() for t in _qkv(2, 5, 7, seed=2)]
    weights = torch.randn(2, 5, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = {}
    for name, attend in (("cc", criss_cross_attention), ("bmm", criss_cross_attention_bmm),
                         ("dense", dense_masked_attention)):
        out, _ = attend(*inputs)
        grads[name] = torch.autograd.grad((out * weights).sum(), inputs)
    for name in ("cc", "bmm"):
        for got, expected in zip(grads[name], grads["dense"]):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in grads["cc"])


def test_gradcheck_on_a_tiny_map() -> None:
    inputs = tuple(t.requires_grad_() for t in _qkv(2, 3, 4, cq=2, c=3, seed=4))
    assert torch.autograd.gradcheck(lambda q, k, v: criss_cross_attention(q, k, v)[0], inputs)


# --- what the attention holds -------------------------------------------------------------------------

def test_each_pixel_weights_sum_to_one_and_count_itself_once() -> None:
    h, w = 5, 7
    _, attention = criss_cross_attention(*_qkv(2, h, w, seed=5))
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, h, w, dtype=torch.float64))
    assert (attention >= 0).all()
    for i in range(h):
        for j in range(w):
            assert (attention[:, i, j, i] == 0).all()        # the column's copy of the pixel is masked out
            assert (attention[:, i, j, h + j] > 0).all()     # the row's copy carries its weight
    # the other column entries are all positive: only the diagonal is masked
    column = attention[..., :h]
    assert (column > 0).sum() == 2 * w * h * (h - 1)


def test_mask_follows_the_input_device_and_dtype() -> None:
    # On the meta device nothing is computed, but a mask made on another device (the tutorial's
    # .cuda(), or a CPU tensor) fails to combine with it: this runs the device logic without a GPU.
    query, key, value = (t.to("meta") for t in _qkv(2, 5, 7))
    for attend in (criss_cross_attention, criss_cross_attention_bmm):
        out, attention = attend(query, key, value)
        assert out.device.type == "meta" and attention.shape == (2, 5, 7, 12)
    q, k, v = _qkv(1, 5, 7, dtype=torch.bfloat16)
    out, attention = criss_cross_attention(q, k, v)
    assert out.dtype == attention.dtype == torch.bfloat16
    expected, _ = criss_cross_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(out.double(), expected, rtol=0.05, atol=0.05)


def test_shape_errors_name_the_shapes() -> None:
    query, key, value = _qkv(2, 5, 7)
    with pytest.raises(ValueError, match=r"query and key must both be \(B, C', h, w\)"):
        criss_cross_attention(query, key[..., :6], value)
    with pytest.raises(ValueError, match=r"value must be \(B, C, h, w\).*\(2, 5, 5, 6\)"):
        criss_cross_attention(query, key, value[..., :6])


# --- the module ---------------------------------------------------------------------------------------

def _block(cls, channels: int = 16, gamma: float = 0.0, seed: int = 6):
    torch.manual_seed(seed)
    block = cls(channels).double()
    with torch.no_grad():
        block.gamma.fill_(gamma)
    return block


def test_module_layout_and_gamma_starts_at_zero() -> None:
    block = CrissCrossAttention(64)
    assert (block.query_conv.out_channels, block.key_conv.out_channels, block.value_conv.out_channels) == (8, 8, 64)
    assert all(conv.kernel_size == (1, 1) for conv in (block.query_conv, block.key_conv, block.value_conv))
    assert block.gamma.shape == (1,) and block.gamma.item() == 0.0
    with pytest.raises(ValueError, match="at least 8"):
        CrissCrossAttention(4)


@pytest.mark.parametrize("cls", [CrissCrossAttention, NonLocalBlock])
def test_gamma_zero_is_the_identity(cls) -> None:
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    assert torch.equal(_block(cls)(x), x)
    assert not torch.allclose(_block(cls, gamma=0.5)(x), x)


@pytest.mark.parametrize("cls, attend", [(CrissCrossAttention, criss_cross_attention),
                                         (NonLocalBlock, non_local_attention)])
def test_module_is_gamma_times_attention_plus_input(cls, attend) -> None:
    block = _block(cls, gamma=0.7)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    out, attention = block(x, return_attention=True)
    expected, expected_attention = attend(block.query_conv(x), block.key_conv(x), block.value_conv(x))
    torch.testing.assert_close(out, 0.7 * expected + x)
    torch.testing.assert_close(attention, expected_attention)
    torch.testing.assert_close(block(x), out)


def test_non_local_attends_to_every_pixel() -> None:
    _, attention = non_local_attention(*_qkv(2, 5, 7, seed=7))
    assert attention.shape == (2, 35, 35) and (attention > 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 35, dtype=torch.float64))


def _reach(block: CrissCrossAttention, recurrence: int, size=(5, 7), pixel=(1, 2)) -> torch.Tensor:
    """(h, w) bool: which input pixels the output at ``pixel`` depends on, after ``recurrence`` passes."""
    x = torch.randn(1, 16, *size, dtype=torch.float64, requires_grad=True)
    out = x
    for _ in range(recurrence):
        out = block(out)
    out[0, :, pixel[0], pixel[1]].sum().backward()
    return x.grad[0].abs().sum(0) > 0                                   # (h, w)


def test_one_pass_reaches_the_row_and_column_two_reach_everything() -> None:
    block = _block(CrissCrossAttention, gamma=1.0)
    h, w, (i, j) = 5, 7, (1, 2)
    cross = torch.zeros(h, w, dtype=torch.bool)
    cross[i, :] = True
    cross[:, j] = True
    assert torch.equal(_reach(block, 1), cross)
    assert _reach(block, 2).all()
    itself = torch.zeros(h, w, dtype=torch.bool)
    itself[i, j] = True
    assert torch.equal(_reach(_block(CrissCrossAttention, gamma=0.0), 2), itself)  # gamma = 0: the identity


def test_rcca_module_shapes_and_shared_weights() -> None:
    torch.manual_seed(8)
    head = RCCAModule(64, num_classes=3, recurrence=2).eval()
    assert head.reduce[0].out_channels == 16 and head.cca.in_channels == 16
    assert head.bottleneck[0][0].in_channels == 64 + 16 and head.classifier.out_channels == 3
    calls = []
    head.cca.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape))
    with torch.no_grad():
        logits = head(torch.randn(2, 64, 5, 7))
    assert logits.shape == (2, 3, 5, 7) and calls == [(2, 16, 5, 7)] * 2
    one = RCCAModule(64, num_classes=3, recurrence=1)
    assert sum(p.numel() for p in one.parameters()) == sum(p.numel() for p in head.parameters())
    with pytest.raises(ValueError, match="recurrence"):
        RCCAModule(64, 3, recurrence=-1)


def test_rcca_recurrence_reaches_every_pixel_through_the_head() -> None:
    # With gamma opened, the head's logit at cell (5, 6) depends on the whole map for R = 2. For R = 1 it
    # depends on a thickened cross: the three 3x3 convs widen the row band to rows 2..8 and the column
    # band to columns 3..9, and the corner (0, 0) stays out of reach.
    torch.manual_seed(9)
    reach = {}
    for recurrence in (1, 2):
        head = RCCAModule(64, 3, recurrence=recurrence).double().eval()
        with torch.no_grad():
            head.cca.gamma.fill_(1.0)
        x = torch.randn(1, 64, 11, 13, dtype=torch.float64, requires_grad=True)
        head(x)[0, :, 5, 6].sum().backward()
        reach[recurrence] = x.grad[0].abs().sum(0) > 0                  # (h, w)
    assert reach[2].all()
    assert not reach[1].all() and not reach[1][0, 0] and reach[1][0, 6] and reach[1][5, 0]


def test_rcca_classifier_sees_the_input_beside_the_context() -> None:
    # Cut the attention path (reduce outputs zeros): the logits must still follow the input, which
    # reaches the bottleneck through the concatenation alone.
    torch.manual_seed(10)
    head = RCCAModule(64, 3).eval()
    head.reduce.register_forward_hook(lambda module, inputs, output: torch.zeros_like(output))
    with torch.no_grad():
        first, second = head(torch.randn(1, 64, 5, 7)), head(torch.randn(1, 64, 5, 7))
    assert not torch.allclose(first, second)


# --- the model ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ccnet() -> CCNet:
    torch.manual_seed(11)
    return CCNet(4, backbone="resnet18")


def test_ccnet_output_at_input_size_and_aux_in_training_only(ccnet: CCNet) -> None:
    images = torch.randn(2, 3, 65, 47)                                 # odd, not multiples of 8
    ccnet.train()
    out = ccnet(images)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 4, 65, 47)
    F.cross_entropy(out["out"], torch.randint(0, 4, (2, 65, 47))).backward()
    assert ccnet.head.cca.gamma.grad is not None                       # the attention is on the loss's path
    ccnet.eval()
    with torch.no_grad():
        out = ccnet(images[:1, :, :33, :39])
    assert set(out) == {"out"} and out["out"].shape == (1, 4, 33, 39)


def test_ccnet_composition(ccnet: CCNet) -> None:
    assert isinstance(ccnet, SegmentationModel) and ccnet.backbone.output_stride == 8
    assert isinstance(ccnet.head, RCCAModule) and ccnet.head.recurrence == 2
    assert ccnet.head.reduce[0].in_channels == 512 and ccnet.head.cca.in_channels == 128
    assert isinstance(ccnet.aux_head, FCNHead) and ccnet.aux_stage == "layer3"
    assert ccnet.aux_head[0].in_channels == 256
    assert CCNet(3, backbone="resnet18", aux=False).aux_head is None
    # the head scores the stride-8 grid, which the model resizes: 65x47 -> 9x6 cells
    with torch.no_grad():
        features = ccnet.eval().backbone(torch.randn(1, 3, 65, 47))
        assert ccnet.head(features).shape == (1, 4, 9, 6)


def test_ccnet_is_registered() -> None:
    assert MODELS["ccnet"] is CCNet
    model = build_model("ccnet", num_classes=3, backbone="resnet18", recurrence=1, output_stride=16, aux=False)
    assert isinstance(model, CCNet) and model.head.recurrence == 1 and model.backbone.output_stride == 16
