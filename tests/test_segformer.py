"""SegFormer against an independent reference: Hugging Face ``transformers``' own SegFormer.

The reference is built offline from a config object (MiT-B0's sizes, no
download); the same random weights go into both models through segbook's key
map, and the logits must agree to float tolerance on the decoder's stride-4
grid, for a size that is a multiple of 32 and one that is not. The published
checkpoint's names (``nvidia/mit-b0``, written by transformers 4) are checked
on a file the test builds with those names, which transformers itself must
accept as a legacy checkpoint. ``transformers`` is a test-only dependency
(requirements.txt, which the README's set-up and CI install); it is imported
plainly, not skipped when absent, so that a CI without it fails instead of
passing without the check.
"""
from __future__ import annotations

import math
import re
from urllib.error import URLError


import pytest
import torch

from segbook.models import build_model
from segbook.models.mit import MIT_URLS, MixTransformer, convert_segformer_state_dict
from segbook.models.segformer import SegFormer

from tools.make_rehearsal_data import B0, published_names  # tools/: the hub's names, rebuilt from transformers'
from transformers import SegformerConfig, SegformerForImageClassification, SegformerForSemanticSegmentation



def _reference(num_classes: int, seed: int = 0) -> SegformerForSemanticSegmentation:
    """HF's SegFormer-B0 with every weight and BatchNorm statistic perturbed away from its init.

    Fresh LayerNorms are (1, 0) and fresh BatchNorm statistics (0, 1): a key map
    that swapped two norms, or a model that ignored the running statistics,
    would still agree on those. Perturbed, every tensor matters; and weights
    larger than the init's make the activations large enough that an
    approximation (tanh GELU for the exact one) shows in the logits.
    """
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=num_classes, **B0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            else:
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=g))
    return model.eval()


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", [(64, 96), (97, 131)])  # a multiple of 32, and not
def test_logits_agree_with_the_reference(size: tuple[int, int]) -> None:
    reference = _reference(21)
    ours = build_model("segformer", num_classes=21).eval()
    ours.load_published(reference.state_dict(), "the reference")
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))  # (B, 3, H, W)
    with torch.no_grad():
        expected = reference(pixel_values=images).logits                # (B, K, h, w)
        got = ours.head(ours.backbone(images))                           # (B, K, h, w): before the upsampling
        out = ours(images)["out"]                                         # (B, K, H, W)
    quarter = (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    assert expected.shape == got.shape == (2, 21, *quarter)              # 25 x 33 for 97 x 131
    scale = expected.abs().max().item()
    assert scale > 10                                                    # logits of some size, not near 0
    # float32 round-off: about 2e-6 of the largest logit; a tanh GELU gives 1e-4 of it
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5 * scale)
    assert out.shape == (2, 21, *size)
    torch.testing.assert_close(out, torch.nn.functional.interpolate(
        expected, size=size, mode="bilinear", align_corners=False), rtol=0, atol=2e-5 * scale)


def test_norms_and_activations_are_the_references() -> None:
    # LayerNorm's eps is too small a change to show reliably in float32 logits, so compare it
    # directly: the reference uses PyTorch's default everywhere (the original code uses 1e-6 in places)
    reference = SegformerForSemanticSegmentation(SegformerConfig(num_labels=21, **B0))
    ours = build_model("segformer", num_classes=21)
    eps = {type(m).__name__: set() for m in (torch.nn.LayerNorm(1), torch.nn.BatchNorm2d(1))}
    for model in (reference, ours):
        for kind in eps:
            eps[kind].add(frozenset(m.eps for m in model.modules() if type(m).__name__ == kind))
    assert eps == {"LayerNorm": {frozenset({1e-5})}, "BatchNorm2d": {frozenset({1e-5})}}
    gelus = [m for m in ours.modules() if isinstance(m, torch.nn.GELU)]
    assert len(gelus) == 8 and all(m.approximate == "none" for m in gelus)
    assert reference.config.hidden_act == "gelu"                         # transformers' exact (erf) GELU


def test_stage_maps_agree_with_the_reference_encoder() -> None:
    reference = _reference(21)
    ours = build_model("segformer", num_classes=21).eval()
    ours.load_published(reference.state_dict())
    images = torch.randn(1, 3, 65, 70, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = reference.segformer(images, output_hidden_states=True).hidden_states
        features = ours.backbone(images)
    assert len(theirs) == len(features) == 4
    for (name, fmap), expected in zip(features.items(), theirs):
        stride = ours.backbone.strides[name]
        assert fmap.shape == expected.shape == (1, ours.backbone.channels[name], math.ceil(65 / stride),
                                                math.ceil(70 / stride))
        torch.testing.assert_close(fmap, expected, rtol=0, atol=2e-5 * expected.abs().max().item())


@pytest.mark.parametrize("num_classes, total", [(150, 3_752_694), (21, 3_719_541)])
def test_parameter_count_equals_the_reference(num_classes: int, total: int) -> None:
    ours = build_model("segformer", num_classes=num_classes)
    reference = SegformerForSemanticSegmentation(SegformerConfig(num_labels=num_classes, **B0))
    assert _params(ours) == _params(reference) == total                  # 3.753 M and 3.720 M
    assert _params(ours.backbone) == _params(reference.segformer) == 3_319_392  # the MiT-B0 encoder
    assert set(convert_segformer_state_dict(reference.state_dict())) == set(ours.state_dict())


def test_training_mode_differs_and_eval_mode_is_deterministic() -> None:
    # drop path, dropout and batch statistics act in training only; eval must repeat exactly
    model = build_model("segformer", num_classes=5)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        first, second = model(images)["out"], model(images)["out"]
        model.train()
        trained = model(images)
    assert torch.equal(first, second)
    assert set(trained) == {"out"} and not torch.allclose(trained["out"], first)


@pytest.mark.parametrize("size", [(32, 32), (32, 45), (50, 97)])
def test_output_is_at_the_input_size_for_any_size_from_32(size: tuple[int, int]) -> None:
    model = build_model("segformer", num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))["out"]
    assert out.shape == (1, 3, *size)


# --- the published checkpoint's names ---------------------------------------------------------------

@pytest.fixture(scope="module")
def mit_b0_checkpoint(tmp_path_factory) -> tuple:
    """A file laid out as nvidia/mit-b0's: an ImageNet classifier's weights under the published names."""
    folder = tmp_path_factory.mktemp("mit-b0")
    torch.manual_seed(3)
    config = SegformerConfig(num_labels=1000, **B0)
    classifier = SegformerForImageClassification(config)
    with torch.no_grad():
        for tensor in classifier.state_dict().values():
            tensor.add_(0.05 * torch.randn(tensor.shape))
    state_dict = published_names(classifier.state_dict())
    assert "segformer.encoder.block.1.0.attention.self.sr.weight" in state_dict
    assert state_dict["segformer.encoder.patch_embeddings.0.proj.weight"].shape == (32, 3, 7, 7)
    assert state_dict["classifier.weight"].shape == (1000, 256)
    config.save_pretrained(folder)
    torch.save(state_dict, folder / "pytorch_model.bin")
    return folder, classifier.eval()


def test_constructed_checkpoint_has_the_published_names(mit_b0_checkpoint) -> None:
    # transformers reads hub checkpoints through its own renaming of the old names: if the file's
    # names were not the published ones, it would report them missing or unexpected.
    folder, original = mit_b0_checkpoint
    loaded, info = SegformerForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for key, value in original.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_published_checkpoint_loads_into_the_encoder(mit_b0_checkpoint) -> None:
    folder, original = mit_b0_checkpoint
    model = build_model("segformer", num_classes=21, pretrained_backbone=folder / "pytorch_model.bin").eval()
    images = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = original.segformer(images, output_hidden_states=True).hidden_states
        features = model.backbone(images)
    for got, want in zip(features.values(), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_wrong_variant_names_the_keys(tmp_path) -> None:
    path = tmp_path / "b0.pth"
    torch.save(published_names(SegformerForImageClassification(
        SegformerConfig(**B0)).state_dict()), path)
    with pytest.raises(ValueError, match=r"b0\.pth does not hold the weights of a mit_b1 encoder.*shape mismatches"):
        MixTransformer("mit_b1", pretrained=path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        MixTransformer(pretrained=tmp_path / "nope.bin")
    with pytest.raises(ValueError, match="backbone is a Mix Transformer"):
        SegFormer(backbone="resnet18")


def _offline(*args, **kwargs):
    raise URLError("no network in tests")


def test_auto_offline_prints_one_line_and_starts_from_random(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    torch.manual_seed(0)
    fallback = MixTransformer("mit_b0", pretrained="auto")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "ImageNet weights for mit_b0 are unavailable" in lines[0]
    torch.manual_seed(0)
    random_init = MixTransformer("mit_b0")
    for a, b in zip(fallback.state_dict().values(), random_init.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match=re.escape(MIT_URLS["mit_b0"])):
        MixTransformer("mit_b0", pretrained=True)


def test_download_goes_through_the_key_map(monkeypatch, mit_b0_checkpoint) -> None:
    folder, original = mit_b0_checkpoint
    asked = []

    def fake_download(url, **kwargs):
        asked.append(url)
        return torch.load(folder / "pytorch_model.bin", weights_only=True)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    encoder = MixTransformer("mit_b0", pretrained=True)
    assert asked == ["https://huggingface.co/nvidia/mit-b0/resolve/main/pytorch_model.bin"]
    published = torch.load(folder / "pytorch_model.bin", weights_only=True)
    weight = published["segformer.encoder.block.2.1.attention.self.query.weight"]
    assert torch.equal(encoder.stages[2].blocks[1].attn.query.weight, weight)


def test_encoder_starts_from_the_authors_initialisation() -> None:
    # trunc-normal(0.02) linear layers, He (fan-out) convolutions, zero biases, LayerNorm (1, 0);
    # PyTorch's defaults would give a 32-wide linear layer a std of about 0.10
    torch.manual_seed(0)
    encoder = MixTransformer("mit_b0")
    linear = torch.cat([m.weight.flatten() for m in encoder.modules() if isinstance(m, torch.nn.Linear)])
    assert abs(linear.std().item() - 0.02) < 0.002
    fc1 = encoder.stages[0].blocks[0].ffn.fc1
    assert torch.equal(fc1.bias, torch.zeros_like(fc1.bias))
    embed = encoder.stages[0].embed.proj                             # 7x7, 32 outputs: fan-out 1568
    assert abs(embed.weight.std().item() - (2 / (7 * 7 * 32)) ** 0.5) < 0.004
    dwconv = encoder.stages[3].blocks[0].ffn.dwconv                  # depthwise: fan-out 9 per group
    assert abs(dwconv.weight.std().item() - (2 / 9) ** 0.5) < 0.03
