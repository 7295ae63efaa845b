"""A transformer's recipe in ``fit``: parameter groups without decay on norms and biases, a linear warm-up.

The references are written out independently: the groups from the layer types
(which parameters a LayerNorm, a BatchNorm or a bias holds), the schedule from
its formula, and AdamW's decoupled decay from one update done by hand.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from segbook.models import build_model
from segbook.train import param_groups_weight_decay, poly_schedule

from test_train import TinyNet, run


def test_groups_split_matrices_from_norms_and_biases():
    model = build_model("segformer", num_classes=5)
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.05)
    norms = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)) for p in m.parameters()}
    biases = {id(m.bias) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None}
    kernels = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert {id(p) for p in no_decay["params"]} == norms | biases
    assert {id(p) for p in decay["params"]} == kernels
    assert len(no_decay["params"]) + len(decay["params"]) == len(list(model.parameters()))


def test_listed_names_and_frozen_parameters():
    model = TinyNet()
    model.body[0].weight.requires_grad_(False)
    no_decay, decay = param_groups_weight_decay(model, 0.1, no_weight_decay_list=("head",))
    assert [p.shape for p in decay["params"]] == []  # body's kernel is frozen, head's is listed
    assert {id(p) for p in no_decay["params"]} == {id(model.body[0].bias), id(model.head.weight), id(model.head.bias)}
    no_decay, decay = param_groups_weight_decay(model, 0.1, no_weight_decay_list=("head.weight", "hea"))
    assert {id(p) for p in no_decay["params"]} == {id(model.body[0].bias), id(model.head.weight), id(model.head.bias)}
    with pytest.raises(TypeError, match=r"write \('head',\)"):
        param_groups_weight_decay(model, 0.1, no_weight_decay_list="head")


def test_adamw_decays_only_the_decay_group():
    """One AdamW step with zero gradients moves only the decayed weights, by lr * wd * w (decoupled decay)."""
    model = TinyNet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.5), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if name.endswith("weight") else before[name]
        torch.testing.assert_close(p.detach(), expected)


def test_warmup_then_poly():
    f = poly_schedule(12, 1.0, warmup_steps=4)
    assert [f(it) for it in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [f(it) for it in (4, 6, 8, 12, 13)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    g = poly_schedule(10, 0.9, warmup_steps=0)
    assert g(0) == 1 and g(5) == pytest.approx(0.5 ** 0.9)  # no warm-up: the curve of before
    for bad in (-1, 12, 1.5):
        with pytest.raises(ValueError, match="warmup_steps"):
            poly_schedule(12, warmup_steps=bad)


def test_fit_warms_up_every_group():
    model = TinyNet()
    groups = [{"params": model.body.parameters(), "lr": 0.02}, {"params": model.head.parameters(), "lr": 0.2}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    _, history = run(epochs=4, model=model, optimizer=opt, poly_power=1.0, warmup_steps=4)
    steps = 3  # 12 images, batches of 4: 12 steps in all
    factors = [poly_schedule(4 * steps, 1.0, 4)((row["epoch"] - 1) * steps) for row in history]
    assert factors == [0.25, 1.0, 0.75, 0.375]
    assert [row["lr"] for row in history] == pytest.approx([0.02 * f for f in factors])
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]  # both groups decayed to zero at the end
    with pytest.raises(ValueError, match="warmup_steps=12"):
        run(epochs=4, warmup_steps=12)
