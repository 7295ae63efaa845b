"""Attention entropy and relative weight change (``segbook.models.mit_diagnostics``) against cases known in closed form.

Zero queries give every key the same score, so the attention is exactly
uniform and its entropy is log(keys); huge query and key weights make it
nearly one-hot, entropy near 0. Scaling a group of weights by 1.5 moves it by
exactly half its size. The number of keys per stage follows from the
reduction ratios on a 97 x 131 image (25 x 33, 13 x 17, 7 x 9 and 4 x 5 maps).
"""
from __future__ import annotations

import math

import pytest
import torch

from segbook.models.mit import MixTransformer
from segbook.models.mit_diagnostics import MIT_WEIGHT_GROUPS, attention_entropy, relative_change
from segbook.models.segformer import SegFormer

KEYS_97x131 = {"stage1": 3 * 4, "stage2": 3 * 4, "stage3": 3 * 4, "stage4": 4 * 5}  # (h // r) * (w // r)


def encoder_and_images():
    torch.manual_seed(0)
    encoder = MixTransformer("mit_b0", drop_path_rate=0.0).train()
    return encoder, [torch.randn(3, 97, 131), torch.randn(3, 97, 131)]


def test_zero_queries_give_uniform_attention():
    encoder, images = encoder_and_images()
    with torch.no_grad():
        for stage in encoder.stages:
            for block in stage.blocks:
                block.attn.query.weight.zero_()
                block.attn.query.bias.zero_()
    stats = attention_entropy(encoder, images)
    for name, keys in KEYS_97x131.items():
        assert stats[name]["log_keys"] == pytest.approx(math.log(keys))
        assert stats[name]["entropy"] == pytest.approx(math.log(keys), abs=1e-5)
    assert encoder.training  # the mode is put back
    assert all(not block.attn._forward_hooks for stage in encoder.stages for block in stage.blocks)


def test_sharp_attention_has_low_entropy_and_init_is_near_uniform():
    encoder, images = encoder_and_images()
    at_init = attention_entropy(encoder, images)
    for name, keys in KEYS_97x131.items():  # std 0.02 weights: scores near 0, attention near uniform
        assert 0.9 * math.log(keys) < at_init[name]["entropy"] < math.log(keys)
    with torch.no_grad():
        for stage in encoder.stages:
            for block in stage.blocks:
                block.attn.query.weight.mul_(2000)
                block.attn.key.weight.mul_(2000)
    sharp = attention_entropy(encoder, images)
    assert all(sharp[name]["entropy"] < 0.2 * math.log(keys) for name, keys in KEYS_97x131.items())
    with pytest.raises(ValueError, match="at least one image"):
        attention_entropy(encoder, [])


def test_relative_change_of_scaled_groups():
    model = SegFormer(5, drop_path_rate=0.0)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn.query.weight", "attn.key.weight")):
                p.mul_(1.5)
            if name == "backbone.stages.0.embed.proj.weight":
                p.neg_()
    change = relative_change(model, initial, MIT_WEIGHT_GROUPS)
    assert change["query/key"] == pytest.approx(0.5)
    assert change["depthwise 3x3"] == 0.0
    stage1 = relative_change(model, initial, {"embed 1": r"^backbone\.stages\.0\.embed\.proj\.weight$"})
    assert stage1["embed 1"] == pytest.approx(2.0)  # w -> -w moves it by twice its size
    assert 0 < change["patch embedding"] < 2.0
    with pytest.raises(ValueError, match="'nothing'.*matches none"):
        relative_change(model, initial, {"nothing": r"\.no_such_layer\."})
