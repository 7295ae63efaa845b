"""What training did to a Mix Transformer: how sharp its attention is, and how far its weights moved.

Measurements instead of a story about why a transformer did (not) learn:
:func:`attention_entropy` is each query's softmax entropy in nats, at most
``log n`` for uniform attention over ``n`` keys (near it, the attention still
averages everything, as at initialisation); :func:`relative_change` is
``||w - w0|| / ||w0||``, how far a group of weights moved in units of its size.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from segbook.models.mit import STAGES, EfficientSelfAttention, MixTransformer

__all__ = ["MIT_WEIGHT_GROUPS", "attention_entropy", "relative_change"]

# label -> pattern on SegFormer's parameter names (the encoder's, under "backbone.")
MIT_WEIGHT_GROUPS = {"query/key": r"\.attn\.(query|key)\.weight$",
                     "depthwise 3x3": r"\.ffn\.dwconv\.weight$",
                     "patch embedding": r"\.embed\.proj\.weight$"}


@torch.no_grad()
def attention_entropy(encoder: MixTransformer, images: Iterable[Tensor]) -> dict[str, dict[str, float]]:
    """Per stage: the mean attention entropy (``entropy``, nats) and the mean ``log_keys``, its uniform maximum.

    Means over the stage's blocks, heads and queries and over ``images`` (each
    (3, H, W), run alone at its own size, which sets the number of keys).
    """
    sums = {name: [0.0, 0.0, 0] for name in STAGES}  # entropy, log keys, count

    def record(stage: str):
        def hook(module: EfficientSelfAttention, args, output) -> None:
            weights, _ = module.weights_and_values(*args)                  # (1, heads, N, N/r^2)
            entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1)  # (1, heads, N)
            sums[stage][0] += entropy.mean().item()
            sums[stage][1] += math.log(weights.shape[-1])
            sums[stage][2] += 1
        return hook

    handles = [block.attn.register_forward_hook(record(name))
               for name, stage in zip(STAGES, encoder.stages) for block in stage.blocks]
    was_training = encoder.training
    try:
        encoder.eval()
        for image in images:
            encoder(image[None])                                           # (1, 3, H, W)
    finally:
        encoder.train(was_training)
        for handle in handles:
            handle.remove()
    if not sums[STAGES[0]][2]:
        raise ValueError("attention_entropy needs at least one image.")
    return {name: {"entropy": e / n, "log_keys": k / n} for name, (e, k, n) in sums.items()}


def relative_change(model: nn.Module, initial: Mapping[str, Tensor], groups: Mapping[str, str]) -> dict[str, float]:
    """For each ``label: pattern``, ``||w - w0|| / ||w0||`` over all parameters whose name matches, taken together.

    ``initial`` is ``{name: tensor}`` from before training (a cloned
    ``state_dict``); a pattern that matches no parameter raises, naming it.
    """
    params = dict(model.named_parameters())
    change = {}
    for label, pattern in groups.items():
        names = [n for n in params if re.search(pattern, n)]
        if not names:
            raise ValueError(f"{label!r}: the pattern {pattern!r} matches none of the model's parameter names.")
        moved = sum((params[n].detach() - initial[n]).pow(2).sum() for n in names)
        size = sum(initial[n].pow(2).sum() for n in names)
        change[label] = (moved / size).sqrt().item()
    return change
