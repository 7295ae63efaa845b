"""DeepLabV3+: ASPP rates per output stride, the decoder's fusion, sizes, and the batch-of-one rule.

The decoder is checked against an independent recomputation: ``F.interpolate``
of torchvision's ASPP output to ``layer1``'s grid must be the first 256
channels of what the fusing convolutions read, and the model's ``"out"`` must be
the stride-4 logits resized with ``F.interpolate(align_corners=False)``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from segbook.models import MODELS, build_model
from segbook.models.deeplab import ATROUS_RATES, DeepLabV3Plus, aspp

K = 5


@pytest.fixture(scope="module")
def model() -> DeepLabV3Plus:
    torch.manual_seed(0)
    return DeepLabV3Plus(K, backbone="resnet18", aux=True)


def _rates(module: ASPP) -> list[int]:
    """The dilation of each 3x3 branch of an ASPP, read from its convolutions."""
    return [m.dilation[0] for m in module.convs.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


@pytest.mark.parametrize("stride, rates", [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_aspp_rates_follow_the_output_stride(stride: int, rates: list[int]) -> None:
    module = aspp(64, stride, out_channels=8)
    assert isinstance(module, ASPP) and _rates(module) == rates and list(ATROUS_RATES[stride]) == rates
    # five branches: 1x1, three atrous 3x3, image pooling (an AdaptiveAvgPool2d(1) first)
    assert len(module.convs) == 5 and isinstance(module.convs[-1][0], nn.AdaptiveAvgPool2d)
    torch.manual_seed(0)
    net = DeepLabV3Plus(K, backbone="resnet18", output_stride=stride)
    assert _rates(net.head.aspp) == rates and net.backbone.output_stride == stride


def test_other_strides_need_explicit_rates() -> None:
    with pytest.raises(ValueError, match="output_stride 16 or 8"):
        aspp(64, 32)
    assert _rates(aspp(64, 32, atrous_rates=(3, 6, 9))) == [3, 6, 9]


@pytest.mark.parametrize("stride", [16, 8])
@pytest.mark.parametrize("size", [(32, 32), (33, 47), (65, 33), (97, 130)])
def test_output_has_the_input_size(stride: int, size) -> None:
    torch.manual_seed(0)
    net = DeepLabV3Plus(K, backbone="resnet18", output_stride=stride, aspp_channels=16,
                        decoder_channels=16).eval()
    with torch.no_grad():
        outputs = net(torch.randn(1, 3, *size))
    assert set(outputs) == {"out"} and outputs["out"].shape == (1, K, *size)


def test_aux_only_in_training(model: DeepLabV3Plus) -> None:
    images = torch.randn(2, 3, 40, 56)
    model.train()
    outputs = model(images)
    assert set(outputs) == {"out", "aux"} and outputs["aux"].shape == (2, K, 40, 56)
    model.eval()
    with torch.no_grad():
        assert set(model(images)) == {"out"}
    torch.manual_seed(0)
    plain = DeepLabV3Plus(K, backbone="resnet18").train()
    assert set(plain(images)) == {"out"}


def test_decoder_fuses_upsampled_aspp_with_projected_layer1(model: DeepLabV3Plus) -> None:
    model.eval()
    images = torch.randn(1, 3, 45, 61)
    fused_input = []
    hook = model.head.fuse.register_forward_hook(lambda m, inp, out: fused_input.append(inp[0]))
    try:
        with torch.no_grad():
            features = model.backbone(images)
            out = model(images)["out"]
            maps = model.decode(images)
    finally:
        hook.remove()
    low = features["layer1"]
    assert low.shape[-2:] == (12, 16)                                  # ceil(45 / 4), ceil(61 / 4)
    projection = model.head.project[0]
    assert (projection.in_channels, projection.out_channels, projection.kernel_size) == (64, 48, (1, 1))
    convs = [m for m in model.head.fuse if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(304, 256, (3, 3)), (256, 256, (3, 3))]
    with torch.no_grad():
        context = F.interpolate(model.head.aspp(features["layer4"]), size=(12, 16), mode="bilinear",
                                align_corners=False)
        projected = model.head.project(low)
    torch.testing.assert_close(fused_input[0], torch.cat([context, projected], dim=1))
    # the exposed stride-4 maps, and "out" = their logits resized to the input
    assert maps["decoder"].shape == (1, 256, 12, 16) and maps["coarse"].shape == (1, K, 12, 16)
    assert "aux" not in maps
    torch.testing.assert_close(maps["coarse"], model.head.classifier(maps["decoder"]))
    torch.testing.assert_close(out, F.interpolate(maps["coarse"], size=(45, 61), mode="bilinear",
                                                  align_corners=False))


def test_a_batch_of_one_trains_with_a_clear_error_and_evaluates(model: DeepLabV3Plus) -> None:
    model.train()
    with pytest.raises(ValueError, match="batch of one image in training mode"):
        model(torch.randn(1, 3, 32, 32))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))["out"].shape == (1, K, 32, 32)


def test_registered() -> None:
    assert MODELS["deeplabv3plus"] is DeepLabV3Plus
    torch.manual_seed(0)
    net = build_model("deeplabv3plus", num_classes=3, backbone="resnet18", output_stride=8)
    assert isinstance(net, DeepLabV3Plus) and net.backbone.strides["layer4"] == 8
    assert net.head.classifier.out_channels == 3


def test_aspp_and_backbone_match_torchvisions_deeplabv3_where_they_coincide() -> None:
    """At output stride 8 torchvision's DeepLabV3 (ResNet-50, ``DeepLabHead``'s ASPP at rates 12/24/36)
    and segbook's DeepLabV3+ share the dilated backbone and the ASPP: with torchvision's weights
    copied across, ``layer4`` and the ASPP output agree to float tolerance in eval mode."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    theirs = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=K, aux_loss=False).eval()
    ours = DeepLabV3Plus(K, backbone="resnet50", output_stride=8).eval()
    # torchvision's DeepLabHead = ASPP(2048, (12, 24, 36)), 3x3 conv, BN, ReLU, 1x1 conv
    assert _rates(theirs.classifier[0]) == list(ATROUS_RATES[8]) == _rates(ours.head.aspp)
    ours.head.aspp.load_state_dict(theirs.classifier[0].state_dict())
    ours.backbone.load_state_dict(theirs.backbone.state_dict())  # same names: conv1 ... layer4
    images = torch.randn(1, 3, 64, 72)
    with torch.no_grad():
        deep_theirs = theirs.backbone(images)["out"]                     # (1, 2048, 8, 9)
        deep_ours = ours.backbone(images)["layer4"]                      # (1, 2048, 8, 9)
        torch.testing.assert_close(deep_ours, deep_theirs, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.head.aspp(deep_ours), theirs.classifier[0](deep_theirs),
                                   rtol=1e-4, atol=1e-5)
