"""PyramidPoolingModule and PSPNet against hand-computed pooling, BatchNorm by formula and geometry.

References: a global mean computed with ``Tensor.mean`` pushed through the
branch's own weights with the functional ops (``F.conv2d``, BatchNorm written
out as its formula), channel arithmetic from the paper, and
``ceil(H / stride)`` for the grid. No ResNet beyond resnet18 on small inputs.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbook.models import MODELS, build_model
from segbook.models.base import FCNHead, SegmentationModel
from segbook.models.pspnet import PSPHead, PSPNet, PyramidPoolingModule
from segbook.train import segmentation_loss

K = 5


@pytest.fixture(scope="module")
def psp18() -> PSPNet:
    torch.manual_seed(0)
    return PSPNet(K, backbone="resnet18", output_stride=8, channels=64)


def _randomise_bn_(module: nn.Module) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters, so eval-mode BN is not ~identity."""
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)


# --- the pyramid pooling module --------------------------------------------------------------------------

@pytest.mark.parametrize("in_channels, pool_sizes, branch", [
    (64, (1, 2, 3, 6), 16), (512, (1, 2, 3, 6), 128), (2048, (1, 2, 3, 6), 512),
    (96, (1, 3), 48), (100, (1, 2, 3), 33), (32, (6,), 32)])
def test_ppm_channels_and_shape(in_channels: int, pool_sizes: tuple, branch: int) -> None:
    ppm = PyramidPoolingModule(in_channels, pool_sizes).eval()
    assert ppm.out_channels == in_channels + len(pool_sizes) * branch
    assert [b[1].out_channels for b in ppm.branches] == [branch] * len(pool_sizes)
    assert [b[0].output_size for b in ppm.branches] == list(pool_sizes)
    assert all(b[1].bias is None and b[1].kernel_size == (1, 1) for b in ppm.branches)
    with torch.no_grad():
        for h, w in [(5, 7), (12, 16), (9, 9)]:
            out = ppm(torch.randn(2, in_channels, h, w))
            assert out.shape == (2, ppm.out_channels, h, w)
    if pool_sizes == (1, 2, 3, 6):
        assert ppm.out_channels == 2 * in_channels  # the paper's doubling


def test_ppm_keeps_the_input_as_its_first_channels_and_empty_pyramid_is_identity() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 64, 6, 9)
    ppm = PyramidPoolingModule(64).eval()
    with torch.no_grad():
        assert torch.equal(ppm(x)[:, :64], x)
        identity = PyramidPoolingModule(64, ())
        assert identity.out_channels == 64 and torch.equal(identity(x), x)


@pytest.mark.parametrize("training", [False, True])
def test_global_branch_is_the_image_mean_through_conv_bn_relu(training: bool) -> None:
    # Independent reference: mean over all cells, the branch's weights applied with F.conv2d and BatchNorm as
    # its formula (running stats in eval; the batch's own mean and biased variance in training).
    torch.manual_seed(2)
    ppm = PyramidPoolingModule(64, (1, 2, 3, 6))
    _randomise_bn_(ppm)
    ppm.train(training)
    x = torch.randn(4, 64, 7, 10)
    conv, bn = ppm.branches[0][1], ppm.branches[0][2]
    with torch.no_grad():
        got = ppm(x)[:, 64:80]                                          # (4, 16, 7, 10): the 1x1 branch
        pooled = x.mean(dim=(2, 3), keepdim=True)                       # (4, 64, 1, 1)
        z = F.conv2d(pooled, conv.weight)                               # (4, 16, 1, 1)
        if training:
            mean, var = z.mean(dim=(0, 2, 3), keepdim=True), z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        else:
            mean, var = bn.running_mean.view(1, -1, 1, 1), bn.running_var.view(1, -1, 1, 1)
        z = (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        expected = z.clamp(min=0).expand(-1, -1, 7, 10)                 # (4, 16, 7, 10)
    torch.testing.assert_close(got, expected)
    assert (got[:, :, 0, 0] > 0).any()                                  # the reference is not trivially zero
    # every cell carries the same global summary (bilinear weights from one value sum to 1 up to rounding)
    torch.testing.assert_close(got, got[:, :, :1, :1].expand_as(got))


def test_a_branch_with_one_bin_per_cell_is_a_per_cell_conv() -> None:
    # With s = h = w the adaptive pool is the identity and the upsampling too: the branch is conv-BN-ReLU per cell.
    torch.manual_seed(3)
    ppm = PyramidPoolingModule(32, (1, 6))
    _randomise_bn_(ppm)
    ppm.eval()
    x = torch.randn(2, 32, 6, 6)
    conv, bn = ppm.branches[1][1], ppm.branches[1][2]
    with torch.no_grad():
        expected = F.relu(F.batch_norm(F.conv2d(x, conv.weight), bn.running_mean, bn.running_var, bn.weight,
                                       bn.bias, eps=bn.eps))            # (2, 16, 6, 6)
        torch.testing.assert_close(ppm(x)[:, 48:], expected)


def test_pyramid_reaches_across_the_map_and_the_plain_head_does_not() -> None:
    # The point of the module: a change in one corner of layer4 moves the logits in the opposite corner
    # (through the 1x1 bin). Without the pyramid the head is a 3x3 conv: the far corner cannot move.
    torch.manual_seed(4)
    x = torch.randn(2, 32, 12, 16)
    poked = x.clone()
    poked[:, :, :3, :3] += 5.0
    for pool_sizes, reaches in [((1, 2, 3, 6), True), ((), False)]:
        head = PSPHead(32, K, pool_sizes, channels=16).eval()
        with torch.no_grad():
            before = head(OrderedDict(layer4=x))[..., -4:, -4:]         # (2, K, 4, 4) far corner
            after = head(OrderedDict(layer4=poked))[..., -4:, -4:]
        assert (before - after).abs().max() > 1e-4 if reaches else torch.equal(before, after), pool_sizes


def test_invalid_pool_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="positive bin counts"):
        PyramidPoolingModule(64, (0, 2))
    with pytest.raises(ValueError, match="too few"):
        PyramidPoolingModule(3, (1, 2, 3, 6))


# --- a batch of one in training ----------------------------------------------------------------------------

def test_batch_of_one_in_training_says_what_to_do() -> None:
    ppm = PyramidPoolingModule(32).train()
    with pytest.raises(ValueError, match=r"batch of one image in training mode.*1x1 bin.*batch_size >= 2.*"
                                         r"model\.eval\(\)"):
        ppm(torch.randn(1, 32, 6, 8))
    # without the check PyTorch's own message would be the cryptic one
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        ppm.branches[0](torch.randn(1, 32, 6, 8))
    ppm(torch.randn(2, 32, 6, 8))                                       # two images: fine
    ppm.eval()(torch.randn(1, 32, 6, 8))                                # inference on one image: fine
    PyramidPoolingModule(32, (2, 3, 6)).train()(torch.randn(1, 32, 6, 8))  # no 1x1 bin: BN sees 4+ values


def test_pspnet_batch_of_one(psp18: PSPNet) -> None:
    psp18.train()
    with pytest.raises(ValueError, match="batch of one image in training mode"):
        psp18(torch.randn(1, 3, 64, 64))
    psp18.eval()
    with torch.no_grad():
        assert psp18(torch.randn(1, 3, 64, 64))["out"].shape == (1, K, 64, 64)


# --- PSPNet ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(33, 47), (65, 97), (64, 64)])
def test_pspnet_out_at_input_size_and_aux_in_training_only(psp18: PSPNet, size: tuple[int, int]) -> None:
    height, width = size
    psp18.eval()
    with torch.no_grad():
        features = psp18.backbone(torch.randn(1, 3, height, width))
        out = psp18(torch.randn(1, 3, height, width))
    assert features["layer4"].shape[-2:] == (math.ceil(height / 8), math.ceil(width / 8))  # output stride 8
    assert set(out) == {"out"} and out["out"].shape == (1, K, height, width)
    psp18.train()
    out = psp18(torch.randn(2, 3, height, width))
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, K, height, width)


def test_pspnet_is_registered_and_wired_as_the_paper_says() -> None:
    assert MODELS["pspnet"] is PSPNet
    model = build_model("pspnet", num_classes=K, backbone="resnet18")
    assert isinstance(model, SegmentationModel) and isinstance(model.head, PSPHead)
    assert model.backbone.output_stride == 8 and model.backbone.layer4[1].conv2.dilation == (4, 4)
    assert model.head.ppm.pool_sizes == (1, 2, 3, 6) and model.head.ppm.out_channels == 1024
    conv, bn, _, drop = model.head.bottleneck
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (1024, 512, (3, 3)) and drop.p == 0.1
    assert model.head.classifier.out_channels == K
    assert isinstance(model.aux_head, FCNHead) and model.aux_stage == "layer3"
    assert model.aux_head[0].in_channels == model.backbone.channels["layer3"] == 256
    no_aux = build_model("pspnet", num_classes=K, backbone="resnet18", aux=False, pool_sizes=(), output_stride=16)
    assert no_aux.aux_head is None and no_aux.head.ppm.out_channels == 512 and no_aux.backbone.output_stride == 16


def test_default_is_resnet50_with_2048_channels_pooled() -> None:
    model = PSPNet(K)
    assert model.backbone.name == "resnet50" and model.head.ppm.out_channels == 4096
    assert [b[1].out_channels for b in model.head.ppm.branches] == [512] * 4
    assert model.aux_head[0].in_channels == 1024


def test_gradients_reach_every_parameter(psp18: PSPNet) -> None:
    psp18.train()
    psp18.zero_grad()
    torch.manual_seed(5)
    images, target = torch.randn(2, 3, 48, 64), torch.randint(0, K, (2, 48, 64))
    loss, parts = segmentation_loss(psp18(images), target)
    assert set(parts) == {"out", "aux"}
    loss.backward()
    for name, param in psp18.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# --- the branches' normalisation (an option; the paper's BatchNorm is the default) -----------------------

def test_pool_norm_default_is_batchnorm_and_the_options_build_what_they_say() -> None:
    assert PSPNet(K, backbone="resnet18").head.ppm.norm == "batch"
    for norm, kind, bias in [("batch", nn.BatchNorm2d, False), ("group", nn.GroupNorm, False),
                             ("none", nn.Identity, True)]:
        model = build_model("pspnet", num_classes=K, backbone="resnet18", channels=32, pool_norm=norm)
        for branch in model.head.ppm.branches:
            assert isinstance(branch[2], kind) and (branch[1].bias is not None) == bias, norm
    assert build_model("pspnet", num_classes=K, backbone="resnet18",
                       pool_norm="group").head.ppm.branches[0][2].num_groups == 32
    assert PyramidPoolingModule(64, norm="group").branches[0][2].num_groups == 4  # 16 channels: groups of 4
    with pytest.raises(ValueError, match="norm='layer'.*'batch'"):
        PyramidPoolingModule(32, norm="layer")


@pytest.mark.parametrize("norm", ["group", "none"])
def test_batch_independent_branches_train_on_one_image_and_match_the_formula(norm: str) -> None:
    torch.manual_seed(6)
    ppm = PyramidPoolingModule(64, (1, 2, 3, 6), norm=norm).train()
    x = torch.randn(3, 64, 7, 10)
    ppm(x[:1])                                                          # a batch of one: fine without BN
    conv = ppm.branches[0][1]
    with torch.no_grad():
        z = F.conv2d(x.mean(dim=(2, 3), keepdim=True), conv.weight, conv.bias)  # (3, 16, 1, 1)
        if norm == "group":
            gn = ppm.branches[0][2]
            g = z.view(3, gn.num_groups, -1)
            g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + gn.eps)
            z = g.view_as(z) * gn.weight.view(1, -1, 1, 1) + gn.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(ppm(x)[:, 64:80], z.clamp(min=0).expand(-1, -1, 7, 10))
        # each image's summary is its own: no statistics shared across the batch
        torch.testing.assert_close(ppm(x)[1:2], ppm(x[1:2]))
