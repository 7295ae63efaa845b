"""SegmentationModel's wiring against F.interpolate, and the contract every registered model keeps.

The wiring is checked on a tiny hand-made backbone and heads (so a failure
points at the base, not at a ResNet); the contract (a dict, ``"out"`` at the
input's own size for odd sizes, ``"aux"`` only in training, no dependence on
batch neighbours in eval) runs on every name in :data:`CONTRACT_MODELS`: add a
chapter's model there with small settings.
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segbook.models  # noqa: F401  (registers the models)
from segbook.models import MODELS, build_model
from segbook.models.base import FCNHead, SegmentationModel, resize_to
from segbook.train import segmentation_loss

K = 3

# name -> small constructor keywords. The lead adds "fcn", "fcn8s", "ccnet", "deeplabv3plus" here.
CONTRACT_MODELS = {
    "fcn": dict(backbone="resnet18"),
    "fcn8s": dict(backbone="resnet18"),
    "pspnet": dict(backbone="resnet18", output_stride=8),
    "ccnet": dict(backbone="resnet18", output_stride=8),
    "deeplabv3plus": dict(backbone="resnet18", output_stride=16),
    "segformer": dict(backbone="mit_b0"),
}
ODD_SIZES = [(32, 32), (33, 47), (65, 97)]


# --- a tiny backbone and heads: the base's wiring on its own -------------------------------------------------

class TinyBackbone(nn.Module):
    """Two named stages at strides 2 and 4, like a ResNet's stages but a few parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.stage2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        a = self.stage1(x)                                   # (B, 4, ceil(H/2), ceil(W/2))
        return OrderedDict(stage1=a, stage2=self.stage2(a))  # + (B, 6, ceil(H/4), ceil(W/4))


class TwoStageHead(nn.Module):
    """Reads two stages (as FCN-8s or a DeepLabV3+ decoder would): coarse scores upsampled plus fine ones."""

    def __init__(self) -> None:
        super().__init__()
        self.coarse, self.fine = nn.Conv2d(6, K, 1), nn.Conv2d(4, K, 1)

    def forward(self, features):
        fine = self.fine(features["stage1"])                                       # (B, K, h1, w1)
        return fine + resize_to(self.coarse(features["stage2"]), fine.shape[-2:])  # (B, K, h1, w1)


class SelfUpsamplingHead(nn.Module):
    """Upsamples itself, as FCN's transposed convolutions do: 4x, then a top-left crop to the input."""
    returns_input_size = True

    def __init__(self, crop: bool = True) -> None:
        super().__init__()
        self.score, self.up, self.crop = nn.Conv2d(6, K, 1), nn.ConvTranspose2d(K, K, 8, stride=4, padding=2), crop

    def forward(self, features, size):
        up = self.up(self.score(features["stage2"]))        # (B, K, 4 ceil(H/4), 4 ceil(W/4))
        return up[..., :size[0], :size[1]] if self.crop else up  # (B, K, H, W)


def _tiny(head: nn.Module, aux: bool = True) -> SegmentationModel:
    torch.manual_seed(0)
    return SegmentationModel(TinyBackbone(), head, nn.Conv2d(4, K, 1) if aux else None, aux_stage="stage1")


def test_out_is_the_heads_logits_resized_bilinearly() -> None:
    model = _tiny(TwoStageHead()).eval()
    x = torch.randn(2, 3, 37, 50)
    with torch.no_grad():
        logits = model.head(model.backbone(x))                                      # (2, K, 19, 25)
        expected = F.interpolate(logits, size=(37, 50), mode="bilinear", align_corners=False)
        out = model(x)
    assert logits.shape == (2, K, 19, 25)
    assert set(out) == {"out"}
    torch.testing.assert_close(out["out"], expected)
    # align_corners=True would be a different (corner-pinned) resize: the test can tell them apart
    pinned = F.interpolate(logits, size=(37, 50), mode="bilinear", align_corners=True)
    assert not torch.allclose(out["out"], pinned, atol=1e-3)


def test_aux_rides_along_in_training_only_and_reads_its_stage() -> None:
    model = _tiny(TwoStageHead()).train()
    x = torch.randn(2, 3, 37, 50)
    out = model(x)
    assert set(out) == {"out", "aux"}
    with torch.no_grad():
        expected = F.interpolate(model.aux_head(model.backbone(x)["stage1"]), size=(37, 50), mode="bilinear",
                                 align_corners=False)
    torch.testing.assert_close(out["aux"].detach(), expected)
    model.eval()
    with torch.no_grad():
        assert set(model(x)) == {"out"}
    assert set(_tiny(TwoStageHead(), aux=False).train()(x)) == {"out"}


def test_aux_head_is_skipped_in_eval() -> None:
    model = _tiny(TwoStageHead()).eval()
    calls = []
    model.aux_head.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert calls == []                                                  # no cost at inference


def test_a_head_that_upsamples_itself_is_given_the_size_and_left_alone() -> None:
    model = _tiny(SelfUpsamplingHead()).eval()
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        features = model.backbone(x)
        expected = model.head(features, (37, 50))
        out = model(x)["out"]
    assert out.shape == (1, K, 37, 50)
    assert torch.equal(out, expected)


def test_a_self_upsampling_head_that_misses_the_size_is_an_error() -> None:
    model = _tiny(SelfUpsamplingHead(crop=False)).eval()
    with pytest.raises(RuntimeError, match=r"SelfUpsamplingHead says returns_input_size but gave \(40, 52\) "
                                           r"for a \(37, 50\) input"):
        model(torch.randn(1, 3, 37, 50))


def test_unknown_aux_stage_names_the_stages() -> None:
    model = SegmentationModel(TinyBackbone(), TwoStageHead(), nn.Conv2d(4, K, 1), aux_stage="layer3").train()
    with pytest.raises(KeyError, match="aux_stage='layer3'.*stage1, stage2"):
        model(torch.randn(2, 3, 32, 32))


def test_aux_classes_builds_the_usual_fcn_head_on_the_aux_stage() -> None:
    # PSPNet and CCNet ask the base for their auxiliary head; it must be the FCNHead they used to build
    # themselves, created at the same point (after the head), so seeded weights are unchanged.
    from segbook.models.backbones import ResNetBackbone

    def built(by_hand: bool) -> SegmentationModel:
        torch.manual_seed(0)
        body = ResNetBackbone("resnet18", output_stride=8)
        head = nn.Conv2d(512, K, 1)
        if by_hand:
            return SegmentationModel(body, head, FCNHead(256, K, 0.2), aux_stage="layer3")
        return SegmentationModel(body, head, aux_stage="layer3", aux_classes=K, aux_dropout=0.2)

    ours, theirs = built(False), built(True)
    assert isinstance(ours.aux_head, FCNHead) and ours.aux_head[0].in_channels == 256
    assert ours.aux_head[3].p == 0.2 and ours.aux_head[4].out_channels == K
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), name
    assert SegmentationModel(TinyBackbone(), TwoStageHead()).aux_head is None
    with pytest.raises(ValueError, match="not both"):
        SegmentationModel(TinyBackbone(), TwoStageHead(), nn.Conv2d(4, K, 1), aux_classes=K)


def test_resize_to_is_a_no_op_at_the_right_size() -> None:
    x = torch.randn(1, K, 5, 7)
    assert resize_to(x, (5, 7)) is x
    assert resize_to(x, (9, 13)).shape == (1, K, 9, 13)


def test_fcn_head_layout() -> None:
    head = FCNHead(256, 5, dropout=0.25)
    conv, bn, relu, drop, classifier = head
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding, conv.bias) == (256, 64, (3, 3),
                                                                                               (1, 1), None)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 64 and isinstance(relu, nn.ReLU)
    assert isinstance(drop, nn.Dropout2d) and drop.p == 0.25
    assert (classifier.in_channels, classifier.out_channels, classifier.kernel_size) == (64, 5, (1, 1))
    assert head.eval()(torch.randn(2, 256, 7, 9)).shape == (2, 5, 7, 9)


# --- the contract of every registered model ------------------------------------------------------------------

def check_segmentation_contract(model: nn.Module, num_classes: int, sizes=ODD_SIZES) -> None:
    """What every registered model promises (``segbook.models.base``); the AssertionError names what broke."""
    model.eval()
    with torch.no_grad():
        for height, width in sizes:
            out = model(torch.randn(1, 3, height, width))
            assert isinstance(out, dict), f"forward returned {type(out).__name__}, not a dict"
            assert "aux" not in out, "'aux' in eval mode"
            assert out["out"].shape == (1, num_classes, height, width), (out["out"].shape, height, width)
            assert out["out"].dtype == torch.float32 and torch.isfinite(out["out"]).all()
        # a score never depends on which images share the batch
        images = torch.randn(2, 3, *sizes[-1])
        together = model(images)["out"]
        alone = torch.cat([model(images[i:i + 1])["out"] for i in range(2)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    model.train()
    height, width = sizes[1]
    out = model(torch.randn(2, 3, height, width))
    assert isinstance(out, dict) and out["out"].shape == (2, num_classes, height, width)
    if getattr(model, "aux_head", None) is not None:
        assert out["aux"].shape == (2, num_classes, height, width), "aux head present but no 'aux' at input size"
    else:
        assert "aux" not in out
    target = torch.randint(0, num_classes, (2, height, width))
    segmentation_loss(out, target)[0].backward()
    unreached = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unreached, f"parameters outside the loss's graph: {unreached[:5]}"


@pytest.mark.parametrize("name", sorted(CONTRACT_MODELS))
def test_registered_model_keeps_the_contract(name: str) -> None:
    assert name in MODELS
    torch.manual_seed(0)
    check_segmentation_contract(build_model(name, num_classes=K, **CONTRACT_MODELS[name]), K)


def test_the_contract_check_catches_broken_models() -> None:
    # The checker itself must fail on what it is meant to catch.
    class Floor32(nn.Module):  # rounds the size down to a multiple of 32: wrong for odd sizes
        def forward(self, x):
            h, w = x.shape[-2] // 32 * 32, x.shape[-1] // 32 * 32
            return {"out": torch.zeros(x.shape[0], K, h, w)}

    class AuxAlways(SegmentationModel):  # leaks "aux" into eval
        def forward(self, x):
            out = super().forward(x)
            out.setdefault("aux", out["out"])
            return out

    class BatchStats(SegmentationModel):  # uses batch statistics in eval: depends on the neighbours
        def forward(self, x):
            out = super().forward(x)
            return {"out": out["out"] - out["out"].mean(0, keepdim=True), **{k: v for k, v in out.items()
                                                                            if k != "out"}}

    with pytest.raises(AssertionError):
        check_segmentation_contract(Floor32(), K)
    with pytest.raises(AssertionError, match="'aux' in eval mode"):
        check_segmentation_contract(AuxAlways(TinyBackbone(), TwoStageHead(), nn.Conv2d(4, K, 1), "stage1"), K)
    with pytest.raises(AssertionError):
        check_segmentation_contract(BatchStats(TinyBackbone(), TwoStageHead()), K)
    check_segmentation_contract(_tiny(TwoStageHead()), K)  # and passes a correct one
