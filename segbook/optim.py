"""Parameter groups for a transformer's optimiser: weight decay on the weight matrices only.

Weight decay pulls every weight towards zero. On a convolution's or a linear
layer's weight matrix that is the regulariser it is meant to be; on a
LayerNorm's or BatchNorm's scale and on a bias it is not: those set the size
and the offset of a layer's output, and decaying them shrinks activations
the next layer then has to re-learn. Transformers are therefore trained with
no decay on them (timm's ``param_groups_weight_decay``, BERT's and ViT's
recipes). :func:`param_groups_weight_decay` builds the two groups an
optimiser takes::

    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=3e-4)
    fit(model, train_loader, val_loader, epochs=3, optimizer=optimizer, warmup_steps=15)
"""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["param_groups_weight_decay"]


def param_groups_weight_decay(model: nn.Module, weight_decay: float,
                              no_weight_decay_list: Iterable[str] = ()) -> list[dict]:
    """Two parameter groups: ``weight_decay`` for weight matrices and kernels, 0 for the rest.

    A parameter gets no decay when it has one dimension (norm scales and
    shifts, biases) or when its name, or the name of a module it lies in, is in
    ``no_weight_decay_list`` (e.g. ``"pos_embed"`` for a position table).
    Frozen parameters (``requires_grad=False``) are left out. The groups are
    ``[{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]``,
    in the order of ``model.named_parameters()``, as timm returns them.
    """
    if isinstance(no_weight_decay_list, str):
        raise TypeError(f"no_weight_decay_list must be a list of names, got the string {no_weight_decay_list!r}; "
                        f"write ({no_weight_decay_list!r},).")
    skip = set(no_weight_decay_list)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        listed = any(name == item or name.startswith(item + ".") for item in skip)
        (no_decay if param.ndim <= 1 or listed else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
