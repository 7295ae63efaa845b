"""Receptive fields: the recurrence against hand arithmetic and against measured gradients.

The independent reference for :func:`receptive_field` is the gradient itself:
with every conv weight a positive constant, BatchNorm the identity and the max
pool swapped for an average pool of the same geometry, no path can cancel,
so the input pixels with a non-zero gradient for one cell are exactly its
theoretical field. The input is tall (the field fits unclipped along the rows)
and narrow (so the dilated networks stay cheap); the rows are measured.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from segbook.models import ResNetBackbone, build_model
from segbook.receptive_field import effective_receptive_field, receptive_field, resnet_path


def _positive(backbone: ResNetBackbone) -> ResNetBackbone:
    backbone.maxpool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)  # max over ties picks one input
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(0.01)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
                module.reset_running_stats()
    return backbone.eval().double()


def _measured_rows(backbone: ResNetBackbone, stage: str, height: int, width: int = 33) -> int:
    image = torch.ones(1, 3, height, width, dtype=torch.float64, requires_grad=True)
    cells = backbone(image)[stage]                                          # (1, C, h, w)
    cells[0, :, cells.shape[2] // 2, cells.shape[3] // 2].sum().backward()
    rows = (image.grad[0].abs().sum((0, 2)) > 0).nonzero().flatten()        # rows the cell can see
    assert rows[0] > 0 and rows[-1] < height - 1, "the field was clipped: use a taller image"
    return int(rows[-1] - rows[0] + 1)


def test_hand_arithmetic_resnet18_and_resnet50() -> None:
    # ResNet-18: stem 7 (jump 2), max pool +2*2 = 11 (jump 4); layer1 four 3x3: +4*2*4 = 43;
    # layer2 +2*4 +3*2*8 = 99 (jump 8); layer3 +2*8 +3*2*16 = 211; layer4 +2*16 +3*2*32 = 435.
    # ResNet-50 has one 3x3 per block (3, 4, 6, 3 blocks): 11 +24 = 35, +8 +48 = 91,
    # +16 +160 = 267, +32 +128 = 427.
    expected = {"resnet18": {"layer1": 43, "layer2": 99, "layer3": 211, "layer4": 435},
                "resnet50": {"layer1": 35, "layer2": 91, "layer3": 267, "layer4": 427}}
    for name, stages in expected.items():
        for output_stride in (32, 8):
            backbone = ResNetBackbone(name, output_stride=output_stride)
            for stage, size in stages.items():
                field, jump = receptive_field(resnet_path(backbone, stage))
                assert field == size, (name, output_stride, stage)
                assert jump == backbone.strides[stage], (name, output_stride, stage)


@pytest.mark.parametrize("output_stride, stage, height", [(32, "layer2", 129), (32, "layer4", 481),
                                                          (8, "layer3", 257), (8, "layer4", 481)])
def test_recurrence_matches_the_gradient(output_stride: int, stage: str, height: int) -> None:
    backbone = _positive(ResNetBackbone("resnet18", output_stride=output_stride))
    field, _ = receptive_field(resnet_path(backbone, stage))
    assert _measured_rows(backbone, stage, height) == field


def test_receptive_field_rejects_what_it_cannot_handle() -> None:
    with pytest.raises(TypeError, match="Linear"):
        receptive_field([nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="not square"):
        receptive_field([nn.Conv2d(1, 1, (3, 5))])
    with pytest.raises(ValueError, match="stage='layer5'"):
        resnet_path(ResNetBackbone("resnet18"), "layer5")
    assert receptive_field([]) == (1, 1)
    assert receptive_field([nn.Conv2d(1, 1, 3, dilation=4), nn.MaxPool2d(2)]) == (10, 2)  # 1 + 2*4, + 1


def test_effective_field_is_a_distribution_centred_on_the_pixel() -> None:
    # A 5x5 box filter "network": the gradient of its centre output is the box itself.
    class Box(nn.Module):
        def forward(self, x):
            return {"out": nn.functional.avg_pool2d(x, 5, stride=1, padding=2)}
    field = effective_receptive_field(Box(), torch.randn(2, 3, 11, 13))
    assert field.shape == (11, 13) and torch.isclose(field.sum(), torch.tensor(1.0))
    expected = torch.zeros(11, 13)
    expected[3:8, 4:9] = 1 / 25
    torch.testing.assert_close(field, expected)


def test_pyramid_pooling_reaches_the_whole_image() -> None:
    # The 1x1 bin averages the whole map, so even a far corner pixel moves the centre logit;
    # the same network without the pyramid leaves the far columns at exactly zero gradient:
    # its field (435 pixels, +16 for the head's 3x3 conv at stride 8, + the final bilinear
    # resize) is narrower than the 481-pixel-wide image.
    torch.manual_seed(0)
    images = torch.randn(1, 3, 97, 481)
    fields = {}
    for pool_sizes in ((), (1, 2, 3, 6)):
        model = build_model("pspnet", num_classes=3, backbone="resnet18", output_stride=8,
                            pool_sizes=pool_sizes, channels=32).eval()
        fields[pool_sizes] = effective_receptive_field(model, images)
    assert fields[()][:, :4].sum() == 0 and fields[()][:, -4:].sum() == 0
    assert fields[(1, 2, 3, 6)][:, :4].sum() > 0 and fields[(1, 2, 3, 6)][:, -4:].sum() > 0
