"""Mask2Former against Hugging Face ``transformers``' own, and the contract every segbook model keeps.

The reference is built offline from a small config (no download). Both models
are fed the same four backbone maps (the backbones differ: a Swin there, a
ResNet here), after the reference's pixel decoder, transformer decoder and
class head are copied into segbook's through the key map below and loaded
strictly; every layer's class and mask logits must then agree to float
round-off, at a size that is a multiple of 32 and one that is not. The weights
are perturbed so that the masked attention really masks: some queries see a
part of a level, some nothing (and fall back to everything), some all of it;
the test asserts that mix, so it cannot pass with the masking switched off.

The matching and the loss are compared with ``Mask2FormerHungarianMatcher``
and ``Mask2FormerLoss`` with the random points replaced, on both sides, by the
same fixed points away from the maps' edges (where this book reads maps with
border padding and the reference with zeros; see
:mod:`segbook.models.set_criterion`). ``transformers`` is a test-only
dependency, imported plainly so that a CI without it fails.
"""
from __future__ import annotations

import math
import re
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
import torchvision
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
from transformers.models.mask2former import modeling_mask2former as reference_module
from transformers.models.mask2former.image_processing_mask2former import (
    convert_segmentation_map_to_binary_masks_fast as reference_binary_masks)

from segbook.models import MODELS, build_model
from segbook.models import set_criterion
from segbook.models.mask2former import Mask2Former, attention_mask, semantic_inference
from segbook.models.msdeform_attn import ms_deform_attn, sine_position_embedding
from segbook.models.set_criterion import mask2former_loss, semantic_targets

K, N, LAYERS = 5, 10, 4  # classes, queries, masked-attention layers (the reference's decoder_layers counts 5)
SMALL = dict(backbone="resnet18", hidden_dim=64, num_queries=N, decoder_layers=LAYERS, encoder_layers=2,
             num_heads=4, ffn_channels=128, encoder_ffn_channels=96)
STAGES = ("layer1", "layer2", "layer3", "layer4")
CHANNELS, STRIDES = (64, 128, 256, 512), (4, 8, 16, 32)  # ResNet-18's stages = a Swin with embed_dim 64

# The key map: the reference's names (left, a regular expression) -> segbook's (right). The cross-attention's
# fused in_proj (q, k and v stacked) is split in three by convert_reference below.
KEY_MAP = [
    (r"model\.pixel_level_module\.decoder\.level_embed", "pixel_decoder.level_embed"),
    (r"model\.pixel_level_module\.decoder\.input_projections\.(\d)\.", r"pixel_decoder.input_proj.\1."),
    (r"model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn\.", r"pixel_decoder.encoder.\1.attn."),
    (r"model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.",
     r"pixel_decoder.encoder.\1.attn_norm."),
    (r"model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc1\.", r"pixel_decoder.encoder.\1.ffn.0."),
    (r"model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc2\.", r"pixel_decoder.encoder.\1.ffn.2."),
    (r"model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.",
     r"pixel_decoder.encoder.\1.ffn_norm."),
    (r"model\.pixel_level_module\.decoder\.mask_projection\.", "pixel_decoder.mask_proj."),
    (r"model\.pixel_level_module\.decoder\.adapter_1\.", "pixel_decoder.lateral."),
    (r"model\.pixel_level_module\.decoder\.layer_1\.", "pixel_decoder.output."),
    (r"model\.transformer_module\.queries_embedder\.", "decoder.query_embed."),
    (r"model\.transformer_module\.queries_features\.", "decoder.query_feat."),
    (r"model\.transformer_module\.level_embed\.", "decoder.level_embed."),
    (r"model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.", r"decoder.layers.\1.self_attn."),
    (r"model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"decoder.layers.\1.self_norm."),
    (r"model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn\.out_proj\.",
     r"decoder.layers.\1.cross_attn.out_proj."),
    (r"model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn_layer_norm\.", r"decoder.layers.\1.cross_norm."),
    (r"model\.transformer_module\.decoder\.layers\.(\d+)\.fc1\.", r"decoder.layers.\1.ffn.0."),
    (r"model\.transformer_module\.decoder\.layers\.(\d+)\.fc2\.", r"decoder.layers.\1.ffn.2."),
    (r"model\.transformer_module\.decoder\.layers\.(\d+)\.final_layer_norm\.", r"decoder.layers.\1.ffn_norm."),
    (r"model\.transformer_module\.decoder\.layernorm\.", "decoder.norm."),
    (r"model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.",
     lambda m: f"decoder.mask_embed.{2 * int(m[1])}."),                     # Linear i of the MLP: Sequential 2i
    (r"class_predictor\.", "decoder.class_head."),
]
_FUSED = re.compile(r"model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn\.in_proj_(weight|bias)")
_SKIPPED = ("model.pixel_level_module.encoder.", "criterion.")  # the Swin backbone; the loss's class-weight buffer


def convert_reference(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's pixel decoder, transformer decoder and class head under segbook's names."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(_SKIPPED):
            continue
        fused = _FUSED.fullmatch(key)
        if fused:
            for name, part in zip("qkv", value.chunk(3)):
                converted[f"decoder.layers.{fused[1]}.cross_attn.{name}_proj.{fused[2]}"] = part
            continue
        for pattern, replacement in KEY_MAP:
            new, found = re.subn("^" + pattern, replacement, key)
            if found:
                converted[new] = value
                break
        else:
            raise KeyError(f"no rule in KEY_MAP for the reference's {key}")
    return converted


def reference_config(**extra) -> Mask2FormerConfig:
    swin = SwinConfig(embed_dim=64, depths=[1, 1, 1, 1], num_heads=[2, 4, 8, 16],
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    return Mask2FormerConfig(backbone_config=swin, feature_size=64, mask_feature_size=64, hidden_dim=64,
                             encoder_feedforward_dim=96, dim_feedforward=128, encoder_layers=2,
                             decoder_layers=LAYERS + 1, num_attention_heads=4, num_queries=N, num_labels=K, **extra)


@pytest.fixture(scope="module")
def pair() -> tuple[Mask2FormerForUniversalSegmentation, Mask2Former]:
    """The reference with perturbed weights, and segbook's model holding the same weights (strict load)."""
    torch.manual_seed(0)
    reference = Mask2FormerForUniversalSegmentation(reference_config()).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in reference.state_dict().items():
            if tensor.is_floating_point() and not name.startswith("criterion."):
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=g))
        # a constant channel in the mask features and a per-query offset on it: masks from empty to full
        pixel_decoder = reference.model.pixel_level_module.decoder
        pixel_decoder.mask_projection.weight[0] = 0
        pixel_decoder.mask_projection.bias[0] = 1
        last = reference.model.transformer_module.decoder.mask_predictor.mask_embedder.layers[2].layers[0]
        last.weight[0] = torch.randn(last.weight.shape[1], generator=g)
        last.bias[0] = -3
    ours = build_model("mask2former", num_classes=K, **SMALL).eval()
    weights = convert_reference(reference.state_dict())
    weights.update({f"backbone.{k}": v for k, v in ours.backbone.state_dict().items()})
    ours.load_state_dict(weights, strict=True)
    return reference, ours


def _features(size: tuple[int, int], seed: int = 1) -> list[torch.Tensor]:
    """Four random backbone maps at strides 4..32, each ceil(H / stride) x ceil(W / stride), as both backbones round."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, math.ceil(size[0] / s), math.ceil(size[1] / s), generator=g)
            for c, s in zip(CHANNELS, STRIDES)]


@pytest.mark.parametrize("size", [(64, 96), (97, 131)])  # a multiple of 32, and not
def test_every_layers_class_and_mask_logits_agree_with_the_reference(pair, size) -> None:
    reference, ours = pair
    features = _features(size)
    with torch.no_grad():
        theirs = reference.model.pixel_level_module.decoder(features)
        decoded = reference.model.transformer_module(theirs.multi_scale_features, theirs.mask_features,
                                                     output_hidden_states=True)
        their_logits = [reference.class_predictor(s.transpose(0, 1)) for s in decoded.intermediate_hidden_states]
        multi_scale, mask_features = ours.pixel_decoder(dict(zip(STAGES, features)))
        predictions = ours.decoder(multi_scale, mask_features)
    quarter = (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    assert mask_features.shape == theirs.mask_features.shape == (2, 64, *quarter)
    torch.testing.assert_close(mask_features, theirs.mask_features, rtol=0, atol=1e-5)
    for mine, their in zip(multi_scale, theirs.multi_scale_features):       # strides 32, 16, 8
        torch.testing.assert_close(mine, their, rtol=0, atol=1e-5)
    assert len(predictions) == len(their_logits) == len(decoded.masks_queries_logits) == LAYERS + 1
    for prediction, logits, masks in zip(predictions, their_logits, decoded.masks_queries_logits):
        assert prediction["pred_logits"].shape == (2, N, K + 1) and prediction["pred_masks"].shape == (2, N, *quarter)
        scale = masks.abs().max().item()
        assert scale > 5                                                     # logits of some size
        # float32 round-off: about 1e-6 of the largest logit (a mask missed by one cell moves them by ~1)
        torch.testing.assert_close(prediction["pred_masks"], masks, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(prediction["pred_logits"], logits, rtol=0, atol=1e-5)
    # the masked attention was exercised: rows partly masked, empty rows (the fallback), full rows
    rows = []
    for i, prediction in enumerate(predictions[:-1]):
        level = multi_scale[i % 3]
        probs = F.interpolate(prediction["pred_masks"], size=level.shape[-2:], mode="bilinear", align_corners=False)
        rows.append((probs.sigmoid() >= 0.5).flatten(2).float().mean(-1))  # (B, N) share of cells attended
    rows = torch.cat([r.flatten() for r in rows])
    assert (rows == 0).sum() >= 5 and (rows == 1).sum() >= 5 and ((rows > 0) & (rows < 1)).sum() >= 5


def test_parameter_counts_equal_the_reference(pair) -> None:
    reference, ours = pair
    def count(model, skip):
        return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(skip))
    head = count(ours, "backbone.")
    assert head == count(reference, "model.pixel_level_module.encoder.") == 379_686
    assert sum(p.numel() for p in ours.pixel_decoder.parameters()) == sum(
        p.numel() for p in reference.model.pixel_level_module.decoder.parameters()) == 164_256
    resnet18 = sum(p.numel() for p in torchvision.models.resnet18().parameters())
    assert sum(p.numel() for p in ours.parameters()) - head == resnet18 - 513_000     # torchvision's, less its fc


def test_the_papers_configuration_has_the_references_parameter_count() -> None:
    # transformers' default Mask2FormerConfig is the paper's (C = 256, 100 queries, 6 + 9 layers) on a backbone
    # with ResNet-50's channels; a one-block-per-stage ResNet there keeps the build cheap (it is not compared)
    from transformers import ResNetConfig
    from segbook.models.mask2former import PAPER_SETTINGS
    stand_in = ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[1, 1, 1, 1],
                            layer_type="bottleneck", out_features=["stage1", "stage2", "stage3", "stage4"])
    reference = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=stand_in, num_labels=150))
    ours = build_model("mask2former", num_classes=150, **PAPER_SETTINGS)
    head = sum(p.numel() for name, p in ours.named_parameters() if not name.startswith("backbone."))
    assert head == sum(p.numel() for name, p in reference.named_parameters()
                       if not name.startswith("model.pixel_level_module.encoder.")) == 20_533_335
    assert round(sum(p.numel() for p in ours.parameters()) / 1e6) == 44                # the paper's R50: 44M


def test_sine_position_embedding_is_the_references() -> None:
    embed = reference_module.Mask2FormerSinePositionEmbedding(num_position_features=32, normalize=True)
    for h, w in [(3, 4), (13, 17)]:
        expected = embed((1, 64, h, w), "cpu", torch.float32)[0]               # (C, h, w)
        torch.testing.assert_close(sine_position_embedding(h, w, 64), expected, rtol=0, atol=1e-6)


def test_deformable_attention_equals_the_reference() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 9), (4, 5), (2, 3)]                                          # L = 3 levels
    b, n, m, ch, points = 2, 11, 4, 8, 4
    value = torch.randn(b, sum(h * w for h, w in shapes), m, ch, generator=g)  # (B, S, M, C/M)
    locations = torch.rand(b, n, m, len(shapes), points, 2, generator=g) * 1.2 - 0.1  # some outside the maps
    weights = torch.randn(b, n, m, len(shapes) * points, generator=g).softmax(-1).view(b, n, m, len(shapes), points)
    out = ms_deform_attn(value, shapes, locations, weights)                   # (B, N, C)
    expected = reference_module.multi_scale_deformable_attention(value, shapes, locations, weights)
    assert out.shape == (b, n, m * ch)
    torch.testing.assert_close(out, expected)                                  # float32's default tolerance
    # one query, one head, one point on level 0: the value read bilinearly there, and nothing else
    one = torch.zeros_like(weights)
    one[:, :, :, 0, 0] = 1
    read = ms_deform_attn(value, shapes, locations, one)[0, 3, :ch]           # query 3, head 0
    level0 = value[0, :63, 0].T.reshape(ch, 7, 9)                              # (C/M, h_0, w_0)
    x, y = locations[0, 3, 0, 0, 0]
    by_hand = F.grid_sample(level0[None], torch.stack([2 * x - 1, 2 * y - 1]).view(1, 1, 1, 2), align_corners=False)
    torch.testing.assert_close(read, by_hand.flatten())
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value, shapes[:2], locations, weights)


# -- the matching and the loss against the reference's ---------------------------------------------------------


def _target(size: tuple[int, int] = (64, 96), seed: int = 0) -> torch.Tensor:
    """Two label maps of rectangles on background: 3 and 4 regions, no ignored pixel (the reference has none)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(2, *size, dtype=torch.int64)
    for image, classes in zip(target, ([1, 3], [2, 3, 4])):
        for c in classes:
            top = int(torch.randint(0, size[0] // 2, (1,), generator=g))
            left = int(torch.randint(0, size[1] // 2, (1,), generator=g))
            image[top:top + size[0] // 2, left:left + size[1] // 2] = c
    return target


def _inner_points(count: int, num_points: int, seed: int) -> torch.Tensor:
    """(count, P, 2) points at least half a stride-4 cell from the edges, where both paddings read alike."""
    g = torch.Generator().manual_seed(seed)
    return 0.05 + 0.9 * torch.rand(count, num_points, 2, generator=g)


def _predictions(seed: int = 2, layers: int = 3, size=(16, 24)) -> dict:
    g = torch.Generator().manual_seed(seed)
    made = [{"pred_logits": torch.randn(2, N, K + 1, generator=g),
             "pred_masks": 3 * torch.randn(2, N, *size, generator=g)} for _ in range(layers)]
    return {**made[-1], "aux_outputs": made[:-1]}


def test_semantic_targets_are_the_references_binary_masks() -> None:
    target = _target()
    target[1, :5] = 255
    regions, counted = semantic_targets(target, K)
    for label, (classes, masks) in zip(target, regions):
        their_masks, their_classes = reference_binary_masks(label, ignore_index=255)
        assert torch.equal(classes, their_classes) and torch.equal(masks, their_masks)
    assert torch.equal(counted, (target != 255).float())


def test_matching_equals_the_references(monkeypatch) -> None:
    outputs, target = _predictions(), _target()
    num_points = 600
    fixed = _inner_points(1, num_points, seed=3)
    regions, counted = semantic_targets(target, K)
    monkeypatch.setattr(set_criterion, "uniform_points", lambda *args, **kw: fixed)
    ours = set_criterion.hungarian_match(outputs["pred_logits"], outputs["pred_masks"], regions, counted,
                                         num_points=num_points)
    matcher = reference_module.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0,
                                                           num_points=num_points)
    with mock.patch.object(torch, "rand", lambda *shape, **kw: fixed):
        theirs = matcher(outputs["pred_masks"], outputs["pred_logits"], [m for _, m in regions],
                         [c for c, _ in regions])
    for (queries, targets), (their_queries, their_targets), (classes, _) in zip(ours, theirs, regions):
        assert len(queries) == len(classes) and torch.equal(queries, their_queries)
        assert torch.equal(targets, their_targets)
    assert any(not torch.equal(t, torch.arange(len(t))) or not torch.equal(q, torch.arange(len(q)))
               for q, t in ours)                                              # not a trivial assignment


def test_loss_equals_the_references_on_the_same_points(monkeypatch) -> None:
    outputs, target = _predictions(), _target()
    num_points = 500
    uniform, chosen = _inner_points(1, num_points, seed=4), _inner_points(7, num_points, seed=5)  # R = 3 + 4 regions
    regions, _ = semantic_targets(target, K)
    monkeypatch.setattr(set_criterion, "uniform_points", lambda *args, **kw: uniform)
    monkeypatch.setattr(set_criterion, "get_uncertain_point_coords_with_randomness",
                        lambda logits, *args, **kw: chosen[:len(logits)])
    total, parts = mask2former_loss(outputs, target, num_points=num_points)
    criterion = reference_module.Mask2FormerLoss(reference_config(train_num_points=num_points),
                                                 {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0})
    criterion.sample_points_using_uncertainty = lambda logits, *args, **kw: chosen[:len(logits)]
    aux = [{"masks_queries_logits": layer["pred_masks"], "class_queries_logits": layer["pred_logits"]}
           for layer in outputs["aux_outputs"]]
    with mock.patch.object(torch, "rand", lambda *shape, **kw: uniform):
        losses = criterion(outputs["pred_masks"], outputs["pred_logits"], [m for _, m in regions],
                           [c for c, _ in regions], aux)
    weight = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    expected = sum(weight[re.sub(r"_\d+$", "", key)] * value for key, value in losses.items())
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(parts["class"], losses["loss_cross_entropy"])
    torch.testing.assert_close(parts["mask"], losses["loss_mask"])
    torch.testing.assert_close(parts["dice"], losses["loss_dice"])
    assert len(losses) == 3 * 3 and parts["aux"] > 0                          # final + two earlier layers


def test_ignored_pixels_count_for_no_mask(monkeypatch) -> None:
    outputs, target = _predictions(layers=1), _target()
    target[:, 16:48, 24:72] = 255                                             # a block of 32 x 48 pixels ignored
    points = _inner_points(8, 400, seed=6)                                    # up to 8 regions below
    monkeypatch.setattr(set_criterion, "uniform_points", lambda *args, **kw: points[:1])
    monkeypatch.setattr(set_criterion, "get_uncertain_point_coords_with_randomness",
                        lambda logits, *args, **kw: points[:len(logits)])
    before, _ = mask2former_loss(outputs, target, num_points=400)
    changed = {**outputs, "pred_masks": outputs["pred_masks"].clone()}
    changed["pred_masks"][:, :, 5:11, 7:17] = 50.0                            # cells whose reads touch only 255 pixels
    after, _ = mask2former_loss(changed, target, num_points=400)
    assert after.item() == before.item()
    regions, counted = semantic_targets(target, K)
    (classes, masks), counted = regions[0], counted[0]
    costs = [set_criterion.matching_cost(o["pred_logits"][0], o["pred_masks"][0], classes, masks, counted, points[:1])
             for o in (outputs, changed)]
    assert torch.equal(costs[0], costs[1])                                    # the matching ignores them too
    unmasked, _ = mask2former_loss(changed, target.clamp_max(K - 1), num_points=400)  # the block counted
    assert unmasked.item() != before.item()


def test_the_dense_loss_is_the_point_loss_at_every_cell_centre(monkeypatch) -> None:
    g = torch.Generator().manual_seed(7)
    matched = 3 * torch.randn(3, 9, 12, generator=g)                          # (R, h, w): a 33 x 47 label's grid
    target = _target((33, 47))[1]
    target[:6] = 255                                                          # rows that read cell row 0
    regions, counted = semantic_targets(target[None], K)
    (classes, masks), = regions
    masks, counted = masks[:3], counted.expand(3, -1, -1)
    y, x = torch.meshgrid((torch.arange(9) + 0.5) / 9, (torch.arange(12) + 0.5) / 12, indexing="ij")
    centres = torch.stack([x, y], -1).reshape(1, 108, 2).expand(3, -1, -1)    # (R, h w, 2)
    monkeypatch.setattr(set_criterion, "get_uncertain_point_coords_with_randomness", lambda *a, **kw: centres)
    on_points = set_criterion.point_mask_losses(matched, masks, counted, 2, num_points=108)
    dense = set_criterion.dense_mask_losses(matched, masks, counted, 2)
    torch.testing.assert_close(dense, on_points)
    # MaskFormer's: the logits upsampled to the label's size, every pixel scored; ignored pixels still count for nothing
    full = set_criterion.dense_mask_losses(matched, masks, counted, 2, size=(33, 47))
    changed = matched.clone()
    changed[:, 0] = 50.0                                                      # cell row 0: pixel rows 0..4 only
    torch.testing.assert_close(set_criterion.dense_mask_losses(changed, masks, counted, 2, size=(33, 47)), full)


def test_a_region_at_the_edge_reads_whole_there() -> None:
    # border padding: a point on the image's corner reads the corner pixel; zero padding would read 1/4
    masks, counted = torch.ones(1, 8, 8), torch.ones(1, 8, 8)
    corner = torch.zeros(1, 1, 2)
    assert set_criterion._read(masks, corner).item() == 1.0
    label = set_criterion._counted_labels(set_criterion._read(masks, corner), set_criterion._read(counted, corner))
    assert label.item() == 1.0


def test_a_point_beside_ignored_pixels_reads_the_counted_ones() -> None:
    # row: class 1, class 1, 255, 255; a point halfway between pixels 1 and 2 sees one counted neighbour
    regions, counted = semantic_targets(torch.tensor([[[1, 1, 255, 255]]]), K)
    (classes, masks), = regions
    point = torch.tensor([[[0.5, 0.5]]])                                      # x = 2 / 4: between columns 1 and 2
    weight = set_criterion._read(counted, point)
    label = set_criterion._counted_labels(set_criterion._read(masks, point), weight)
    assert classes.tolist() == [1] and weight.item() == 0.5 and label.item() == 1.0  # not 0.5: 255 is not "no"


def test_a_batch_with_no_region_is_all_no_object() -> None:
    outputs = _predictions(layers=2)
    for layer in [outputs, *outputs["aux_outputs"]]:
        layer["pred_logits"].requires_grad_(True)
        layer["pred_masks"].requires_grad_(True)
    total, parts = mask2former_loss(outputs, torch.full((2, 64, 96), 255))
    expected = F.cross_entropy(outputs["pred_logits"].transpose(1, 2), torch.full((2, N), K))  # every query: class K
    torch.testing.assert_close(parts["class"], expected.detach())
    assert parts["mask"] == 0 and parts["dice"] == 0 and torch.isfinite(total)
    total.backward()
    assert outputs["pred_masks"].grad is not None and outputs["pred_masks"].grad.abs().max() == 0


def test_a_class_id_out_of_range_is_an_error() -> None:
    target = _target()
    target[0, 0, 0] = K                                                       # neither a class nor 255
    with pytest.raises(ValueError, match=rf"class ids \[{K}\] outside 0\.\.{K - 1} .*num_classes"):
        mask2former_loss(_predictions(layers=1), target)


# -- the model: output contract, gradients, training through fit ----------------------------------------------


@pytest.fixture(scope="module")
def model() -> Mask2Former:
    torch.manual_seed(0)
    return build_model("mask2former", num_classes=K)


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (65, 97)])
def test_out_is_at_the_input_size_in_eval(model, size) -> None:
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    quarter = (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    assert set(out) == {"out", "pred_logits", "pred_masks", "aux_outputs"}
    assert out["out"].shape == (1, K, *size) and out["out"].dtype == torch.float32
    assert out["pred_logits"].shape == (1, model.num_queries, K + 1)
    assert out["pred_masks"].shape == (1, model.num_queries, *quarter)
    assert len(out["aux_outputs"]) == 3 and all(a["pred_masks"].shape == out["pred_masks"].shape
                                                for a in out["aux_outputs"])
    # MaskFormer's rule, written out: sum over queries of p(class) sigmoid(mask at the input size)
    masks = F.interpolate(out["pred_masks"], size=size, mode="bilinear", align_corners=False).sigmoid()
    expected = (out["pred_logits"].softmax(-1)[0, :, :K, None, None] * masks[0, :, None]).sum(0)  # (K, H, W)
    torch.testing.assert_close(out["out"][0], expected)


def test_eval_scores_do_not_depend_on_batch_neighbours(model) -> None:
    model.eval()
    images = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        together = model(images)["out"]
        alone = torch.cat([model(images[i:i + 1])["out"] for i in range(2)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_no_object_adds_nothing() -> None:
    probs_logits = torch.zeros(1, 3, K + 1)
    probs_logits[0, 0, -1] = 100.0                                            # query 0: surely "no object"
    masks = torch.randn(1, 3, 4, 5)
    scores = semantic_inference(probs_logits, masks, (8, 10))
    without = semantic_inference(probs_logits[:, 1:], masks[:, 1:], (8, 10))
    torch.testing.assert_close(scores, without)
    assert scores.shape == (1, K, 8, 10) and scores.max() < 2                 # two queries, probabilities < 1


def test_attention_mask_falls_back_to_everything_for_an_empty_mask() -> None:
    logits = torch.full((1, 3, 4, 4), -5.0)                                   # query 0: empty
    logits[0, 1, :2] = 5.0                                                    # query 1: the top half
    logits[0, 2] = 5.0                                                        # query 2: everything
    attend = attention_mask(logits, (2, 2))                                   # (1, 3, 4)
    assert attend[0, 0].all() and attend[0, 2].all()
    assert attend[0, 1].tolist() == [True, True, False, False]


def test_one_training_step_reaches_every_parameter(model) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"out", "pred_logits", "pred_masks", "aux_outputs"}
    assert out["out"].shape == (2, K, 64, 64) and not out["out"].requires_grad  # the loss is on the sets
    target = torch.randint(0, K, (2, 64, 64))
    target[:, :8] = 255
    total, parts = model.loss(out, target)
    assert set(parts) == {"class", "mask", "dice", "aux"}
    total.backward()
    unreached = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not unreached, unreached[:5]
    model.zero_grad(set_to_none=True)


def test_registered_with_a_loss_fit_finds(tmp_path) -> None:
    from segbook.models.base import model_loss
    assert MODELS["mask2former"] is Mask2Former
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), tmp_path / "r18.pt")
    built = build_model("mask2former", num_classes=3, pretrained_backbone=tmp_path / "r18.pt", decoder_layers=1,
                        encoder_layers=1)
    assert torch.equal(built.backbone.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert model_loss(built).func == built.loss


def test_fit_trains_and_validates_it() -> None:
    from torch.utils.data import DataLoader, TensorDataset
    from segbook.train import fit
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 64, 64, generator=g)
    masks = torch.zeros(4, 64, 64, dtype=torch.int64)
    masks[:, 16:48, 16:48] = 1
    masks[:, 15] = 255
    data = TensorDataset(images, masks)
    torch.manual_seed(0)
    net = build_model("mask2former", num_classes=2, decoder_layers=1, encoder_layers=1, num_queries=4)
    optimizer = torch.optim.AdamW(net.param_groups(1e-4))
    history = fit(net, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2), epochs=1, optimizer=optimizer,
                  device="cpu", log=None, progress=False, live_plot=False)
    row = history[0]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"]) and 0 <= row["val_miou"] <= 1
    assert {"train_loss_class", "train_loss_mask", "train_loss_dice", "train_loss_aux"} <= set(row)


def test_param_groups_lower_the_backbone_and_spare_norms_from_decay(model) -> None:
    groups = model.param_groups(1e-4)
    seen = [id(p) for group in groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())      # every parameter exactly once
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr"] == pytest.approx(1e-5 if in_backbone.pop() else 1e-4)
    no_decay = {id(p) for group in groups if group["weight_decay"] == 0 for p in group["params"]}
    assert id(model.decoder.query_feat.weight) in no_decay and id(model.decoder.norm.weight) in no_decay
    assert id(model.backbone.bn1.weight) in no_decay and id(model.decoder.class_head.weight) not in no_decay
