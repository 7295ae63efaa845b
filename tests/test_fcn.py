"""FCN-32s / FCN-8s and the model registry, against F.interpolate, bilinear_kernel and hand geometry.

The alignment claims of FCN's docstring are checked against independent
references: where the backbone centres a cell is measured from the gradient of
one cell of a ResNet whose weights are all positive constants (a symmetric
receptive field); where the upsampler puts it is read off by replacing the
classifier's scores with a random map and comparing the logits with
``F.interpolate`` (``align_corners=True`` on the ``32 i`` grid for the aligned
geometry, ``align_corners=False`` for the textbook one).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision import models

from segbook.models import FCN, MODELS, ResNetBackbone, build_model, register_model
from segbook.models.fcn import crop_to
from segbook.upsample import AlignedUpsampler, bilinear_kernel


NUM_CLASSES = 5


@pytest.fixture(scope="module")
def fcn32() -> FCN:
    torch.manual_seed(0)
    return FCN(NUM_CLASSES).eval()


@pytest.fixture(scope="module")
def fcn8() -> FCN:
    torch.manual_seed(0)
    return FCN(NUM_CLASSES, skips=True).eval()


@pytest.fixture(scope="module")
def textbook32() -> FCN:
    torch.manual_seed(0)
    return FCN(NUM_CLASSES, aligned=False).eval()


@pytest.fixture(scope="module")
def textbook8() -> FCN:
    torch.manual_seed(0)
    return FCN(NUM_CLASSES, skips=True, aligned=False).eval()


def _logits_for_scores(model: FCN, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The model's logits when its classifier outputs ``scores`` (a forward hook replaces them)."""
    handle = model.head.classifier.register_forward_hook(lambda module, inputs, output: scores)
    try:
        with torch.no_grad():
            return model(torch.randn(1, 3, *size))["out"]
    finally:
        handle.remove()


# --- sizes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("skips", [False, True])
@pytest.mark.parametrize("aligned", [True, False])
def test_output_has_the_input_size_for_any_size(skips: bool, aligned: bool) -> None:
    torch.manual_seed(0)
    model = FCN(NUM_CLASSES, skips=skips, aligned=aligned).eval()
    with torch.no_grad():
        for height, width in [(32, 32), (33, 65), (65, 33), (97, 130), (130, 97), (321, 479)]:
            out = model(torch.randn(1, 3, height, width))
            assert set(out) == {"out"}
            assert out["out"].shape == (1, NUM_CLASSES, height, width), (height, width)


def test_chapter_shapes_320x480(textbook32: FCN) -> None:
    # The chapter prints these for d2l's geometry: 320x480 -> 10x15 cells -> 320x480, nothing
    # cropped, and the forward is exactly backbone -> classifier -> upsample.
    images = torch.randn(1, 3, 320, 480)
    with torch.no_grad():
        features = textbook32.backbone(images)["layer4"]
        scores = textbook32.head.classifier(features)
        upsampled = textbook32.head.upsample(scores)
        out = textbook32(images)["out"]
    assert features.shape == (1, 512, 10, 15) and scores.shape == (1, NUM_CLASSES, 10, 15)
    assert upsampled.shape == out.shape == (1, NUM_CLASSES, 320, 480)
    assert torch.equal(out, upsampled)


def test_crop_to_refuses_to_grow() -> None:
    x = torch.zeros(1, 2, 10, 15)
    assert crop_to(x, (7, 15)).shape == (1, 2, 7, 15)
    with pytest.raises(ValueError, match=r"cannot crop a \(10, 15\) map to \(11, 15\)"):
        crop_to(x, (11, 15))


# --- where the backbone centres a cell ----------------------------------------------------------

def test_backbone_centres_cell_i_on_pixel_32i() -> None:
    # Independent of any formula: with every conv weight a positive constant and BatchNorm the
    # identity, each cell's receptive field is symmetric about its centre, so the gradient of one
    # interior cell with respect to the input has its centre of mass exactly on that centre. The
    # max pool is swapped for an average pool of the same geometry (a max over ties would send
    # the whole gradient to the first of them), and the image is large enough that the
    # 435-pixel field of the cell is not clipped.
    backbone = ResNetBackbone("resnet18", output_stride=32).eval()
    backbone.maxpool = torch.nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.fill_(0.01)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.reset_parameters()
                module.reset_running_stats()
    image = torch.ones(1, 3, 576, 608, dtype=torch.float64, requires_grad=True)
    backbone.double()
    cell = backbone(image)["layer4"]                                      # (1, 512, 18, 19)
    cell[0, :, 9, 10].sum().backward()
    grad = image.grad[0].sum(0)                                           # (576, 608)
    rows = torch.arange(grad.shape[0], dtype=torch.float64)
    cols = torch.arange(grad.shape[1], dtype=torch.float64)
    centre_row = (grad.sum(1) * rows).sum() / grad.sum()
    centre_col = (grad.sum(0) * cols).sum() / grad.sum()
    assert abs(centre_row.item() - 32 * 9) < 1e-6 and abs(centre_col.item() - 32 * 10) < 1e-6


# --- bilinear initialisation and alignment --------------------------------------------------------

def test_upsamplers_start_as_bilinear_kernels(fcn32: FCN, fcn8: FCN, textbook32: FCN, textbook8: FCN) -> None:
    for model, factor in ((fcn32, 32), (fcn8, 8)):
        up = model.head.upsample
        assert isinstance(up, AlignedUpsampler)
        k = 2 * factor - 1
        assert (up.kernel_size, up.stride, up.padding) == ((k, k), (factor, factor), (factor - 1, factor - 1))
        torch.testing.assert_close(up.weight.detach(), bilinear_kernel(NUM_CLASSES, NUM_CLASSES, k))
    for stage, up2 in fcn8.head.skip_upsamplers.items():
        assert (up2.kernel_size, up2.stride, up2.padding) == ((3, 3), (2, 2), (1, 1)), stage
    up = textbook32.head.upsample
    assert (up.kernel_size, up.stride, up.padding) == ((64, 64), (32, 32), (16, 16))
    torch.testing.assert_close(up.weight.detach(), bilinear_kernel(NUM_CLASSES, NUM_CLASSES, 64))
    up8 = textbook8.head.upsample
    assert (up8.kernel_size, up8.stride, up8.padding) == ((16, 16), (8, 8), (4, 4))
    for stage, up2 in textbook8.head.skip_upsamplers.items():
        assert (up2.kernel_size, up2.stride, up2.padding) == ((4, 4), (2, 2), (1, 1)), stage
        torch.testing.assert_close(up2.weight.detach(), bilinear_kernel(NUM_CLASSES, NUM_CLASSES, 4))


@pytest.mark.parametrize("size", [(64, 96), (97, 130), (161, 47), (321, 479)])
def test_aligned_fcn_puts_cell_i_on_pixel_32i(size: tuple[int, int], fcn32: FCN) -> None:
    # Whatever the classifier says, the logits are linear interpolation between cell centres at
    # 32i (F.interpolate with align_corners=True onto (n-1)*32+1 pixels), up to the last centre.
    height, width = size
    rows, cols = math.ceil(height / 32), math.ceil(width / 32)
    torch.manual_seed(3)
    scores = torch.randn(1, NUM_CLASSES, rows, cols)
    logits = _logits_for_scores(fcn32, scores, size)
    expected = F.interpolate(scores, size=(32 * (rows - 1) + 1, 32 * (cols - 1) + 1), mode="bilinear",
                             align_corners=True)
    torch.testing.assert_close(logits[..., :expected.shape[-2], :expected.shape[-1]], expected)
    torch.testing.assert_close(logits[..., ::32, ::32], scores)          # cell i sits on pixel 32i


def test_aligned_upsampler_past_the_last_centre_keeps_the_argmax(fcn32: FCN) -> None:
    # Past the last cell centre one tent alone reaches: every class score is scaled by one
    # positive factor, so the predicted class is the last cell's.
    torch.manual_seed(8)
    scores = torch.randn(1, NUM_CLASSES, 3, 3)
    logits = _logits_for_scores(fcn32, scores, (96, 96))                  # centres at 0, 32, 64
    tail = logits[0, :, 65:, 64]                                          # (K, 31) below the last centre
    ratio = tail / scores[0, :, 2, 2, None]
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))         # one factor for every class
    assert (ratio > 0).all() and torch.equal(tail.argmax(0), scores[0, :, 2, 2].argmax().expand(31))


def test_aligned_upsampler_refuses_a_size_its_cells_cannot_cover() -> None:
    layer = AlignedUpsampler(2, 32)
    with pytest.raises(ValueError, match=r"maps 3 rows of cells to 65..96 pixels, not 97"):
        layer(torch.zeros(1, 2, 3, 3), (97, 96))


@pytest.mark.parametrize("size", [(64, 96), (97, 130), (161, 47), (321, 479)])
def test_textbook_crop_keeps_the_top_left_where_the_cells_are(size: tuple[int, int], textbook32: FCN) -> None:
    # d2l's geometry: F.interpolate's bilinear reading of cell i as rows 32i..32i+31 (centre
    # 32i+15.5), cropped at the bottom/right. A centred crop would be off by (32n - H) / 2 rows
    # and fail for H = 97, 161, 321 on this random map.
    height, width = size
    rows, cols = math.ceil(height / 32), math.ceil(width / 32)
    torch.manual_seed(3)
    scores = torch.randn(1, NUM_CLASSES, rows, cols)
    logits = _logits_for_scores(textbook32, scores, size)
    expected = F.interpolate(scores, scale_factor=32, mode="bilinear", align_corners=False)
    expected = expected[..., :height, :width]
    inside = (slice(None), slice(None), slice(16, min(height, 32 * rows - 16)),
              slice(16, min(width, 32 * cols - 16)))            # the bilinear kernel's 16-px edge band
    assert logits[inside].numel() > 0
    torch.testing.assert_close(logits[inside], expected[inside])


def test_aligned_fcn8s_at_init_repeats_fcn32s_exactly(fcn32: FCN, fcn8: FCN) -> None:
    # The three aligned grids are nested (32i within 16j within 8k), and linear interpolation of a
    # piecewise-linear map at its own grid points reproduces it: so with zero skips FCN-8s equals
    # FCN-32s for ANY scores, up to the last cell centre.
    assert all(not conv.weight.any() and not conv.bias.any() for conv in fcn8.head.skip_scores.values())
    height, width = 200, 161
    rows, cols = math.ceil(height / 32), math.ceil(width / 32)            # 7, 6
    torch.manual_seed(4)
    scores = torch.randn(1, NUM_CLASSES, rows, cols)
    inside = (..., slice(0, 32 * (rows - 1) + 1), slice(0, 32 * (cols - 1) + 1))
    torch.testing.assert_close(_logits_for_scores(fcn8, scores, (height, width))[inside],
                               _logits_for_scores(fcn32, scores, (height, width))[inside])


def test_textbook_fcn8s_at_init_repeats_fcn32s_on_linear_scores_only(textbook32: FCN, textbook8: FCN) -> None:
    height, width = 200, 161
    rows, cols = math.ceil(height / 32), math.ceil(width / 32)      # 7, 6
    # The chained 2x, 2x, 8x steps are exact only away from a band of 3 stride-8 cells + 4 px.
    inside = (..., slice(28, min(height, 32 * rows - 28)), slice(28, min(width, 32 * cols - 28)))
    ii, jj = torch.meshgrid(torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32),
                            indexing="ij")
    ramp = torch.stack([0.7 * ii - 1.3 * jj + c for c in range(NUM_CLASSES)])[None]
    torch.testing.assert_close(_logits_for_scores(textbook8, ramp, (height, width))[inside],
                               _logits_for_scores(textbook32, ramp, (height, width))[inside])
    # On a general map they differ: three even-kernel steps are not one 32x step.
    torch.manual_seed(4)
    scores = torch.randn(1, NUM_CLASSES, rows, cols)
    gap = (_logits_for_scores(textbook8, scores, (height, width)) -
           _logits_for_scores(textbook32, scores, (height, width)))[inside].abs().max()
    assert gap > 0.1


# --- training behaviour ---------------------------------------------------------------------------

@pytest.mark.parametrize("skips", [False, True])
@pytest.mark.parametrize("aligned", [True, False])
def test_gradients_reach_every_parameter(skips: bool, aligned: bool) -> None:
    torch.manual_seed(5)
    model = FCN(NUM_CLASSES, skips=skips, aligned=aligned).train()
    images = torch.randn(2, 3, 64, 80)
    target = torch.randint(0, NUM_CLASSES, (2, 64, 80))
    F.cross_entropy(model(images)["out"], target).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_eval_mode_is_deterministic(fcn8: FCN) -> None:
    images = torch.randn(2, 3, 48, 70)
    with torch.no_grad():
        first, second = fcn8(images)["out"], fcn8(images)["out"]
        alone = fcn8(images[1:])["out"]                                # no dependence on the batch
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[1:])


def test_other_backbones_change_the_classifier_width() -> None:
    model = FCN(3, backbone="resnet50", skips=True)
    assert model.head.classifier.in_channels == 2048
    assert {stage: conv.in_channels for stage, conv in model.head.skip_scores.items()} == {"layer3": 1024,
                                                                                      "layer2": 512}
    assert model.backbone.output_stride == 32


# --- the registry ---------------------------------------------------------------------------------

def test_build_model_by_name() -> None:
    assert {"fcn", "fcn8s"} <= set(MODELS)
    fcn = build_model("fcn", num_classes=4)
    assert isinstance(fcn, FCN) and not fcn.skips and fcn.head.classifier.out_channels == 4
    fcn8s = build_model("fcn8s", num_classes=4, backbone="resnet34")
    assert isinstance(fcn8s, FCN) and fcn8s.skips and len(fcn8s.backbone.layer3) == 6
    assert isinstance(fcn.backbone, ResNetBackbone)


def test_build_model_passes_the_pretrained_backbone(tmp_path) -> None:
    torch.manual_seed(6)
    weights = models.resnet18().state_dict()
    torch.save(weights, tmp_path / "resnet18.pth")
    model = build_model("fcn", pretrained_backbone=tmp_path / "resnet18.pth")
    assert torch.equal(model.backbone.layer4[1].conv2.weight, weights["layer4.1.conv2.weight"])


def test_unknown_or_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'fcn16s'.*fcn, fcn8s"):
        build_model("fcn16s")
    with pytest.raises(ValueError, match=r"'fcn' is already registered \(FCN\)"):
        register_model("fcn")(FCN)
    name = "_test_tiny"
    try:
        @register_model(name)
        def tiny(num_classes: int, pretrained_backbone=False, width: int = 3) -> torch.nn.Module:
            return torch.nn.Conv2d(3, num_classes * width, 1)
        assert build_model(name, num_classes=2, width=4).out_channels == 8
    finally:
        MODELS.pop(name, None)
