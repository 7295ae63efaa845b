"""Mask2Former: N queries, each a mask and a class, refined by attention within their own masks (Cheng et al., 2022).

Every model before this chapter classifies pixels. MaskFormer (Cheng et al.,
2021) classifies *masks* instead: N learned queries each predict a class
distribution over K + 1 classes (the last is "no object") and a mask, a dot
product of the query's embedding with every cell of a stride-4 feature map. A
semantic map is then the sum over queries of class probability times mask
probability. Mask2Former adds three things that make this train well:

* a pixel decoder with multi-scale deformable attention
  (:mod:`segbook.models.msdeform_attn`), whose maps at strides 32, 16 and 8
  feed the transformer decoder and whose stride-4 map holds the masks;
* **masked attention**: in each decoder layer, a query's cross-attention sees
  only the cells inside the mask it predicted after the previous layer
  (probability >= 0.5), one scale per layer in round robin (32, 16, 8, 32, ...);
  a query whose mask is empty sees everything;
* the loss on sampled points (:mod:`segbook.models.set_criterion`).

Shape letters: B batch, K classes, N queries, C the decoder's width, D the mask
features' width, H x W the input, h x w the stride-4 grid, h_l x w_l the grid of
the level a layer reads, S = h_l w_l its cells, M heads.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbook.data.voc import IGNORE_INDEX
from segbook.models.backbones import ResNetBackbone
from segbook.models.base import Segmenter, resize_to
from segbook.models.msdeform_attn import MSDeformAttnPixelDecoder, sine_position_embedding
from segbook.models.registry import register_model
from segbook.models.set_criterion import mask2former_loss

__all__ = ["PAPER_SETTINGS", "Mask2Former", "MaskedAttentionDecoder", "MultiHeadAttention", "attention_mask",
           "semantic_inference"]

# The paper's semantic-segmentation model with a ResNet-50 (Cheng et al., 2022, and its detectron2 configs):
# build_model("mask2former", **PAPER_SETTINGS). Trained there with AdamW (lr 1e-4, weight decay 0.05, the
# backbone's lr x 0.1), poly decay, batch 16, 512 x 512 crops, 160k iterations on ADE20K.
PAPER_SETTINGS = dict(backbone="resnet50", hidden_dim=256, num_queries=100, decoder_layers=9, encoder_layers=6,
                      num_heads=8, ffn_channels=2048, encoder_ffn_channels=1024)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with M heads, query/key/value/output projections, and an optional mask.

    ``forward(query (B, N, C), key (B, S, C), value (B, S, C), attend=None)``
    returns (B, N, C); ``attend`` (B, N, S) bool says which keys each query may
    see (True: may). Every query must be allowed at least one key.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.q_proj, self.k_proj = nn.Linear(channels, channels), nn.Linear(channels, channels)
        self.v_proj, self.out_proj = nn.Linear(channels, channels), nn.Linear(channels, channels)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attend: Tensor | None = None) -> Tensor:
        b, n, c = query.shape
        s, m = key.shape[1], self.num_heads
        q = self.q_proj(query).view(b, n, m, c // m).transpose(1, 2)             # (B, M, N, C/M)
        k = self.k_proj(key).view(b, s, m, c // m).transpose(1, 2)               # (B, M, S, C/M)
        v = self.v_proj(value).view(b, s, m, c // m).transpose(1, 2)             # (B, M, S, C/M)
        mask = attend[:, None] if attend is not None else None                   # (B, 1, N, S)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)            # (B, M, N, C/M)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))               # (B, N, C)


class MaskedDecoderLayer(nn.Module):
    """Masked cross-attention to one level, then self-attention among the queries, then an FFN (post-norm).

    Mask2Former's order: cross-attention first, so that the learnable query
    features, which know nothing of the image yet, look at it before they talk to
    each other. Position embeddings go into queries and keys, never into values.
    """

    def __init__(self, channels: int, num_heads: int, ffn_channels: int) -> None:
        super().__init__()
        self.cross_attn, self.cross_norm = MultiHeadAttention(channels, num_heads), nn.LayerNorm(channels)
        self.self_attn, self.self_norm = MultiHeadAttention(channels, num_heads), nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, ffn_channels), nn.ReLU(inplace=True),
                                 nn.Linear(ffn_channels, channels))
        self.ffn_norm = nn.LayerNorm(channels)

    def forward(self, queries: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                attend: Tensor) -> Tensor:
        """queries, query_pos: (B, N, C); memory, memory_pos: (B, S, C) and (S, C); attend: (B, N, S)."""
        seen = self.cross_attn(queries + query_pos, memory + memory_pos, memory, attend)  # (B, N, C)
        queries = self.cross_norm(queries + seen)                                          # (B, N, C)
        q = queries + query_pos                                                            # (B, N, C)
        queries = self.self_norm(queries + self.self_attn(q, q, queries))                  # (B, N, C)
        return self.ffn_norm(queries + self.ffn(queries))                                  # (B, N, C)


def attention_mask(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Which cells of a level each query may attend to: its predicted mask there, or everything if it is empty.

    Args:
        mask_logits: (B, N, h, w) the previous prediction's mask logits.
        size: (h_l, w_l) of the level the next layer reads.

    Returns:
        (B, N, h_l w_l) bool, True where sigmoid(bilinearly resized logit) >= 0.5. A
        query with no such cell is allowed every cell: an all-False row would leave
        its softmax nothing to normalise (0 / 0). Carries no gradient.
    """
    resized = resize_to(mask_logits.detach(), size)                              # (B, N, h_l, w_l)
    attend = resized.sigmoid().flatten(2) >= 0.5                                 # (B, N, h_l w_l)
    return attend | ~attend.any(-1, keepdim=True)                                # empty rows: all True


class MaskedAttentionDecoder(nn.Module):
    """The transformer decoder: N queries refined layer by layer, with a class and mask prediction after each.

    Args:
        in_channels: the pixel decoder's width (a 1x1 projection is added only if it differs from C).
        num_classes: K (the class head has K + 1 outputs, "no object" last).
        hidden_dim: C. num_queries: N. num_layers: masked-attention layers (the paper: 9,
            three rounds over the three levels). num_heads: M. ffn_channels: the FFN's width.
        mask_channels: D, the mask features' width (the mask embedding's output).

    ``forward(multi_scale, mask_features)`` takes the pixel decoder's levels, coarsest
    first, and its (B, D, h, w) mask features, and returns ``num_layers + 1``
    predictions, each ``{"pred_logits": (B, N, K + 1), "pred_masks": (B, N, h, w)}``: the
    first from the learnable query features alone, then one after each layer.
    """

    num_levels = 3

    def __init__(self, in_channels: int, num_classes: int, hidden_dim: int = 256, num_queries: int = 100,
                 num_layers: int = 9, num_heads: int = 8, ffn_channels: int = 2048, mask_channels: int = 256) -> None:
        super().__init__()
        self.query_feat = nn.Embedding(num_queries, hidden_dim)     # what each query starts as
        self.query_embed = nn.Embedding(num_queries, hidden_dim)    # its position embedding, in every layer
        self.level_embed = nn.Embedding(self.num_levels, hidden_dim)
        self.input_proj = nn.ModuleList(nn.Conv2d(in_channels, hidden_dim, kernel_size=1) if in_channels != hidden_dim
                                        else nn.Identity() for _ in range(self.num_levels))
        self.layers = nn.ModuleList(MaskedDecoderLayer(hidden_dim, num_heads, ffn_channels) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.class_head = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, mask_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the paper's code: Xavier for the layers' matrices, zero attention biases, Caffe2 Xavier projections."""
        for layer in self.layers:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            for attn in (layer.cross_attn, layer.self_attn):
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
                    nn.init.zeros_(proj.bias)
        for proj in self.input_proj:
            if isinstance(proj, nn.Conv2d):
                nn.init.kaiming_uniform_(proj.weight, a=1)
                nn.init.zeros_(proj.bias)

    def predict(self, queries: Tensor, mask_features: Tensor,
                size: tuple[int, int]) -> tuple[dict[str, Tensor], Tensor]:
        """Class logits and mask logits of the queries, and the attention mask they give the next layer at ``size``."""
        queries = self.norm(queries)                                                   # (B, N, C)
        masks = torch.einsum("bnd,bdhw->bnhw", self.mask_embed(queries), mask_features)  # (B, N, h, w)
        return {"pred_logits": self.class_head(queries), "pred_masks": masks}, attention_mask(masks, size)

    def forward(self, multi_scale: list[Tensor], mask_features: Tensor) -> list[dict[str, Tensor]]:
        memories, positions, sizes = [], [], []
        for level, x in enumerate(multi_scale):                                        # (B, C', h_l, w_l)
            h, w = x.shape[-2:]
            sizes.append((h, w))
            memory = self.input_proj[level](x).flatten(2).transpose(1, 2)             # (B, S, C)
            memories.append(memory + self.level_embed.weight[level])                  # (B, S, C)
            positions.append(sine_position_embedding(h, w, memory.shape[-1], device=x.device,
                                                     dtype=x.dtype).flatten(1).T)     # (S, C)
        b = mask_features.shape[0]
        queries = self.query_feat.weight.expand(b, -1, -1)                             # (B, N, C)
        query_pos = self.query_embed.weight.expand(b, -1, -1)                          # (B, N, C)
        prediction, attend = self.predict(queries, mask_features, sizes[0])
        predictions = [prediction]
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels                                                # 32, 16, 8, 32, ...
            queries = layer(queries, query_pos, memories[level], positions[level], attend)  # (B, N, C)
            prediction, attend = self.predict(queries, mask_features, sizes[(i + 1) % self.num_levels])
            predictions.append(prediction)
        return predictions


def semantic_inference(pred_logits: Tensor, pred_masks: Tensor, size: tuple[int, int]) -> Tensor:
    """MaskFormer's semantic scores: sum over queries of p(class) x sigmoid(mask), "no object" dropped.

    Args:
        pred_logits: (B, N, K + 1). pred_masks: (B, N, h, w) logits.
        size: (H, W); the mask logits are resized there bilinearly before the sigmoid.

    Returns:
        (B, K, H, W) scores in [0, N]; their argmax is the class map. A query
        sure of "no object" adds nothing, whatever its mask.
    """
    probs = pred_logits.softmax(-1)[..., :-1]                                    # (B, N, K)
    scores = []
    for image_probs, masks in zip(probs, pred_masks):  # one image at a time: N full-size maps can be large
        masks = resize_to(masks[None], size)[0].sigmoid()                        # (N, H, W)
        scores.append(torch.einsum("nk,nhw->khw", image_probs, masks))           # (K, H, W)
    return torch.stack(scores)                                                   # (B, K, H, W)


@register_model("mask2former")
class Mask2Former(Segmenter):
    """Mask2Former for semantic segmentation on a ResNet: pixel decoder, masked-attention decoder, set loss.

    Args:
        num_classes: K.
        backbone: a ResNet of :class:`~segbook.models.backbones.ResNetBackbone` (stages at strides 4..32).
        hidden_dim: C, the width of the pixel decoder, the queries and the mask features.
        num_queries: N. decoder_layers: masked-attention layers. encoder_layers: deformable encoder layers.
        num_heads: M, in both. ffn_channels, encoder_ffn_channels: the two feed-forward widths.
        pretrained_backbone: as :class:`~segbook.models.backbones.ResNetBackbone`'s ``pretrained``.

    The defaults are a quick model that trains on the toy set on a CPU (ResNet-18,
    C = 64, 16 queries, 3 decoder and 2 encoder layers); :data:`PAPER_SETTINGS` holds
    the paper's. ``decoder_layers`` counts the layers; detectron2's ``DEC_LAYERS``
    and ``transformers``' ``decoder_layers`` count one more, for the prediction the
    query features make before the first layer.

    ``forward(images)`` returns, in training and in eval, ``"out"`` (B, K, H, W) the
    semantic scores of :func:`semantic_inference` (without gradient in training: the
    loss is on the sets), ``"pred_logits"`` (B, N, K + 1), ``"pred_masks"``
    (B, N, h, w) and ``"aux_outputs"``, the earlier layers' predictions, for the
    loss (:meth:`loss`, which ``fit`` uses). ``loss_settings`` overrides any of
    :data:`~segbook.models.set_criterion.LOSS_SETTINGS` (e.g. ``num_points``; the
    paper's values by default).
    """

    def loss(self, outputs: Mapping, target: Tensor, *, aux_weights: Mapping[str, float] | None = None,
             ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, dict[str, Tensor]]:
        """:func:`~segbook.models.set_criterion.mask2former_loss`: Hungarian matching, then the set's loss."""
        return mask2former_loss(outputs, target, aux_weights=aux_weights, ignore_index=ignore_index,
                                **self.loss_settings)

    def __init__(self, num_classes: int = 21, backbone: str = "resnet18", hidden_dim: int = 64,
                 num_queries: int = 16, decoder_layers: int = 3, encoder_layers: int = 2, num_heads: int = 4,
                 ffn_channels: int = 256, encoder_ffn_channels: int = 256,
                 pretrained_backbone: bool | str | Path = False, loss_settings: Mapping | None = None) -> None:
        super().__init__()
        self.loss_settings = dict(loss_settings or {})
        self.backbone = ResNetBackbone(backbone, output_stride=32, pretrained=pretrained_backbone)
        self.pixel_decoder = MSDeformAttnPixelDecoder(self.backbone.channels, hidden_dim, hidden_dim, encoder_layers,
                                                      num_heads, ffn_channels=encoder_ffn_channels)
        self.decoder = MaskedAttentionDecoder(hidden_dim, num_classes, hidden_dim, num_queries, decoder_layers,
                                              num_heads, ffn_channels, mask_channels=hidden_dim)
        self.num_classes, self.num_queries = num_classes, num_queries

    def forward(self, images: Tensor) -> dict:
        size = tuple(images.shape[-2:])                                          # (H, W)
        multi_scale, mask_features = self.pixel_decoder(self.backbone(images))   # 3 x (B, C, h_l, w_l), (B, D, h, w)
        *earlier, final = self.decoder(multi_scale, mask_features)              # each (B, N, K + 1), (B, N, h, w)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.training):
            out = semantic_inference(final["pred_logits"], final["pred_masks"], size)  # (B, K, H, W)
        return {"out": out, **final, "aux_outputs": earlier}

    def param_groups(self, lr: float, weight_decay: float = 0.05, backbone_lr_factor: float = 0.1) -> list[dict]:
        """AdamW parameter groups as the paper: the backbone at ``lr x backbone_lr_factor``, no decay on norms.

        Norms and embeddings (the queries) get no weight decay, as in the paper's code. Pass the
        groups to ``torch.optim.AdamW``; ``fit``'s poly decay scales every group's rate alike.
        """
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for module_name, module in self.named_modules():
            no_decay = isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.Embedding))
            for p in module.parameters(recurse=False):
                if p.requires_grad:
                    key = (module_name.startswith("backbone"), no_decay)
                    groups.setdefault(key, []).append(p)
        return [{"params": params, "lr": lr * (backbone_lr_factor if in_backbone else 1.0),
                 "weight_decay": 0.0 if no_decay else weight_decay}
                for (in_backbone, no_decay), params in sorted(groups.items())]
