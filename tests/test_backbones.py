"""ResNetBackbone and dilate_resnet_ against torchvision's own ResNets and hand-computed geometry.

References: torchvision's ``replace_stride_with_dilation`` (its rule for
Bottleneck ResNets), the undilated network's own output (a correctly dilated
network, subsampled, must reproduce it exactly), ``ceil(H / stride)`` and state
dicts that the tests save themselves (no network here).
"""
from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from urllib.error import URLError

import pytest
import torch
from torch import nn
from torchvision import models
from torchvision.models._api import WeightsEnum

from segbook.models.backbones import STAGES, ResNetBackbone, dilate_resnet_


FLAGS = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


def _conv_geometry(module: nn.Module) -> dict[str, tuple]:
    """(stride, dilation, padding) of every conv, by name."""
    return {name: (m.stride, m.dilation, m.padding) for name, m in module.named_modules()
            if isinstance(m, nn.Conv2d)}


def _shapes(module: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# --- output sizes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_stage_sizes_are_ceil_of_input_over_stride(name: str, output_stride: int) -> None:
    backbone = ResNetBackbone(name, output_stride).eval()
    assert backbone.output_stride == output_stride
    assert backbone.strides == {"layer1": 4, "layer2": 8, "layer3": min(16, output_stride),
                                "layer4": output_stride}
    with torch.no_grad():
        for height, width in [(33, 47), (64, 65), (40, 97)]:  # multiples of 32 and remainders
            features = backbone(torch.randn(1, 3, height, width))
            assert isinstance(features, OrderedDict) and list(features) == list(STAGES)
            for stage, fmap in features.items():
                stride = backbone.strides[stage]
                assert fmap.shape == (1, backbone.channels[stage], math.ceil(height / stride),
                                      math.ceil(width / stride)), (stage, height, width)
    assert backbone.channels == {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    assert not hasattr(backbone, "fc") and not hasattr(backbone, "avgpool")


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_resnet50_channels_and_layer4_size(output_stride: int) -> None:
    backbone = ResNetBackbone("resnet50", output_stride).eval()
    assert backbone.channels == {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    with torch.no_grad():
        layer4 = backbone(torch.randn(1, 3, 40, 66))["layer4"]
    assert layer4.shape == (1, 2048, math.ceil(40 / output_stride), math.ceil(66 / output_stride))


def test_invalid_arguments_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="32, 16 or 8, got 4"):
        ResNetBackbone("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50, resnet101"):
        ResNetBackbone("resnet152")
    with pytest.raises(ValueError, match="one flag per stage"):
        dilate_resnet_(models.resnet18(), [True, True])
    with pytest.raises(ValueError, match="layer4 has no strided 3x3 conv.*dilated already"):
        dilate_resnet_(dilate_resnet_(models.resnet18(), [False, False, True]), [False, False, False])


# --- dilation: torchvision's rule, same parameters, same function -----------------------------------

@pytest.mark.parametrize("flags", [list(f) for f in itertools.product([False, True], repeat=3)])
def test_dilate_resnet_matches_torchvision_on_bottleneck(flags: list[bool]) -> None:
    # Independent reference: torchvision builds dilated Bottleneck ResNets itself.
    ours = dilate_resnet_(models.resnet50(), flags)
    theirs = models.resnet50(replace_stride_with_dilation=flags)
    assert _conv_geometry(ours) == _conv_geometry(theirs)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_basicblock_follows_the_bottleneck_rule(output_stride: int) -> None:
    # In torchvision's dilated ResNet-50: layerN[0].conv2 is the conv that used to stride and
    # layerN[1].conv2 is "every later 3x3 conv". ResNet-18's striding conv is layerN[0].conv1 and
    # every other 3x3 conv (including layerN[0].conv2) is a "later" one.
    reference = models.resnet50(replace_stride_with_dilation=FLAGS[output_stride])
    backbone = ResNetBackbone("resnet18", output_stride)
    changed = 0
    for stage in STAGES[1:]:
        ref_stage, our_stage = getattr(reference, stage), getattr(backbone, stage)
        expect_strider = _conv_geometry(ref_stage[0].conv2)[""]
        expect_later = _conv_geometry(ref_stage[1].conv2)[""]
        assert _conv_geometry(our_stage[0].conv1)[""] == expect_strider
        for block_index, conv in [(0, "conv2"), (1, "conv1"), (1, "conv2")]:
            assert _conv_geometry(getattr(our_stage[block_index], conv))[""] == expect_later
        assert our_stage[0].downsample[0].stride == ref_stage[0].downsample[0].stride
        changed += expect_later[1] != (1, 1)
    assert changed == {16: 1, 8: 2}[output_stride]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_dilation_keeps_every_parameter_shape(name: str) -> None:
    shapes = {os_: _shapes(ResNetBackbone(name, os_)) for os_ in (32, 16, 8)}
    assert shapes[32] == shapes[16] == shapes[8]
    torchvision_keys = {k: v for k, v in _shapes(getattr(models, name)()).items() if not k.startswith("fc.")}
    assert shapes[8] == torchvision_keys  # ImageNet weights load into every output stride


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_dilated_network_subsampled_equals_strided_network(name: str) -> None:
    # The point of the rule: same weights, denser grid. Keeping every (32/os)-th cell of the
    # dilated layer4 must give the strided layer4 exactly (for any size: both pad with zeros).
    torch.manual_seed(0)
    strided = ResNetBackbone(name, 32).eval()
    x = torch.randn(1, 3, 48, 71)
    with torch.no_grad():
        expected = strided(x)
        for output_stride in ((16, 8) if name == "resnet18" else (8,)):
            dilated = ResNetBackbone(name, output_stride).eval()
            dilated.load_state_dict(strided.state_dict())
            got = dilated(x)
            for stage in ("layer3", "layer4"):
                step = strided.strides[stage] // dilated.strides[stage]
                torch.testing.assert_close(got[stage][..., ::step, ::step], expected[stage],
                                           rtol=1e-4, atol=1e-4)
        # and the rule matters: leaving layer4[0].conv2 at the previous dilation (what torchvision's
        # block(..., dilation=previous_dilation) would do to a BasicBlock's second conv) breaks it.
        if name == "resnet18":
            dilated = ResNetBackbone(name, 16).eval()
            dilated.load_state_dict(strided.state_dict())
            dilated.layer4[0].conv2.dilation, dilated.layer4[0].conv2.padding = (1, 1), (1, 1)
            assert not torch.allclose(dilated(x)["layer4"][..., ::2, ::2], expected["layer4"],
                                      rtol=1e-2, atol=1e-2)


def test_layer4_cell_i_is_centred_on_input_pixel_32i() -> None:
    # FCN's docstring relies on this: every strided layer of torchvision's ResNet is padded so that
    # output cell j looks at input pixels centred on 2j. With positive symmetric weights (and max
    # pooling swapped for average pooling of the same geometry, since a max picks a data-dependent
    # pixel) the network is mirror-symmetric about the cell's centre, so the input gradient's
    # centroid is that centre. Only the rows are measured; the cell's receptive field (435 px)
    # fits inside 512 rows around row 8.
    backbone = ResNetBackbone("resnet18").double().eval()
    backbone.maxpool = nn.AvgPool2d(3, stride=2, padding=1)
    with torch.no_grad():
        for conv in (m for m in backbone.modules() if isinstance(m, nn.Conv2d)):
            conv.weight.fill_(1.0 / conv.weight[0].numel())
    x = torch.ones(1, 3, 512, 32, dtype=torch.double, requires_grad=True)
    for row in (7, 8):
        x.grad = None
        backbone(x)["layer4"][0, :, row, 0].sum().backward()
        profile = x.grad.abs().sum(dim=(0, 1, 3))                      # (512,) weight of each input row
        centroid = (profile * torch.arange(512, dtype=torch.double)).sum() / profile.sum()
        assert centroid.item() == pytest.approx(32 * row, abs=1e-6)


# --- pretrained weights, all offline ---------------------------------------------------------------

def _fail_download(*args, **kwargs):
    raise URLError("no network in the tests")


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_false_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("pretrained=False must not download anything")
    monkeypatch.setattr(WeightsEnum, "get_state_dict", forbidden)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", forbidden)
    ResNetBackbone("resnet18", pretrained=False)
    ResNetBackbone("resnet18", pretrained=None)


def test_auto_offline_prints_one_line_and_starts_from_random(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(WeightsEnum, "get_state_dict", _fail_download)
    torch.manual_seed(0)
    fallback = ResNetBackbone("resnet18", pretrained="auto")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "resnet18" in lines[0] and "random init" in lines[0]
    torch.manual_seed(0)
    random_init = ResNetBackbone("resnet18", pretrained=False)
    for key, value in random_init.state_dict().items():
        assert torch.equal(fallback.state_dict()[key], value), key


def test_true_offline_raises_and_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WeightsEnum, "get_state_dict", _fail_download)
    with pytest.raises(RuntimeError, match=r"resnet18.*download\.pytorch\.org.*pretrained='path/to/resnet18"):
        ResNetBackbone("resnet18", pretrained=True)


@pytest.mark.parametrize("pretrained", [True, "auto"])
def test_downloaded_weights_are_loaded(monkeypatch: pytest.MonkeyPatch, pretrained) -> None:
    torch.manual_seed(1)
    imagenet = models.resnet18().state_dict()                         # stands in for the real file
    asked = []
    monkeypatch.setattr(WeightsEnum, "get_state_dict",
                        lambda self, *a, **kw: asked.append(self) or dict(imagenet))
    backbone = ResNetBackbone("resnet18", output_stride=8, pretrained=pretrained)
    assert asked == [models.ResNet18_Weights.IMAGENET1K_V1]
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, imagenet[key]), key


def test_state_dict_file_loads_into_a_dilated_backbone(tmp_path) -> None:
    torch.manual_seed(2)
    full = models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)                               # a full torchvision dict, fc included
    backbone = ResNetBackbone("resnet18", output_stride=16, pretrained=path)
    reference = _params(full)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, reference[key]), key
    # the loaded backbone computes what torchvision's network computes up to layer4
    full.eval(), backbone.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stem = full.maxpool(full.relu(full.bn1(full.conv1(x))))
        expected = full.layer4(full.layer3(full.layer2(full.layer1(stem))))
        torch.testing.assert_close(backbone(x)["layer4"][..., ::2, ::2], expected)
    # a backbone's own state dict (no fc) round-trips too, given as a str
    again = tmp_path / "backbone.pth"
    torch.save(backbone.state_dict(), again)
    reloaded = ResNetBackbone("resnet18", pretrained=str(again))
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in reloaded.state_dict().items())


def test_state_dict_without_batchnorm_counters_loads(tmp_path) -> None:
    # older checkpoints (and some hub files) lack BatchNorm's num_batches_tracked
    state = {k: v for k, v in models.resnet18().state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    backbone = ResNetBackbone("resnet18", pretrained=path)
    assert torch.equal(backbone.conv1.weight, state["conv1.weight"])


def test_wrong_architecture_names_the_file_and_the_keys(tmp_path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet34\.pth.*unexpected keys: layer1\.2\."):
        ResNetBackbone("resnet18", pretrained=path)
    path50 = tmp_path / "resnet50.pth"
    torch.save(models.resnet50().state_dict(), path50)
    with pytest.raises(ValueError, match=r"resnet50\.pth.*unexpected keys.*shape mismatches: "
                                         r"layer1\.0\.conv1\.weight: \(64, 64, 1, 1\) vs \(64, 64, 3, 3\)"):
        ResNetBackbone("resnet18", pretrained=path50)
    partial = {k: v for k, v in models.resnet18().state_dict().items() if not k.startswith("layer4.1.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth.*missing keys: layer4\.1\.conv1\.weight"):
        ResNetBackbone("resnet18", pretrained=tmp_path / "partial.pth")


def test_missing_corrupt_or_non_dict_files_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*no such file"):
        ResNetBackbone("resnet18", pretrained=tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt\.pth could not be read"):
        ResNetBackbone("resnet18", pretrained=corrupt)
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ValueError, match=r"tensor\.pth holds a Tensor, not a state dict"):
        ResNetBackbone("resnet18", pretrained=tensor_file)
    with pytest.raises(ValueError, match="pretrained must be"):
        ResNetBackbone("resnet18", pretrained=0.5)


def test_forward_feeds_the_stages_in_order() -> None:
    # The hand-written forward against torchvision's IntermediateLayerGetter on the same modules.
    from torchvision.models._utils import IntermediateLayerGetter
    backbone = ResNetBackbone("resnet18", 16).eval()
    getter = IntermediateLayerGetter(backbone, {s: s for s in STAGES}).eval()
    x = torch.randn(1, 3, 40, 52)
    with torch.no_grad():
        ours, theirs = backbone(x), getter(x)
    for stage in STAGES:
        torch.testing.assert_close(ours[stage], theirs[stage])
