"""The Mix Transformer (MiT), SegFormer's encoder: four stages of attention without positional encodings.

Overlapping patch embeddings put the stages at strides 4 to 32, like a ResNet's
(Xie et al., 2021). Keys and values come from a map shrunk ``r`` times per side
(N = h*w tokens attend to N/r^2), and the Mix-FFN's 3x3 depthwise convolution
tells a cell where it is, so the encoder runs at any input size. The names are
segbook's (:func:`convert_segformer_state_dict` maps the published ones); LayerNorm
eps 1e-5 and exact GELU, as the reference.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .weights import fetch_pretrained, load_strict_

__all__ = ["MIT_CONFIGS", "MIT_URLS", "EfficientSelfAttention", "MiTBlock", "MixFFN", "MixTransformer",
           "OverlapPatchEmbed", "convert_segformer_state_dict", "init_weights_"]

# variant -> widths, blocks per stage, heads, key/value reduction ratios (SegFormer, Table 6)
MIT_CONFIGS = {
    "mit_b0": dict(channels=(32, 64, 160, 256), depths=(2, 2, 2, 2), heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1)),
    "mit_b1": dict(channels=(64, 128, 320, 512), depths=(2, 2, 2, 2), heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1)),
    "mit_b2": dict(channels=(64, 128, 320, 512), depths=(3, 4, 6, 3), heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1)),
}
# ImageNet-1k weights published by the SegFormer authors on the Hugging Face hub (nvidia/mit-b0, ...)
MIT_URLS = {name: f"https://huggingface.co/nvidia/{name.replace('_', '-')}/resolve/main/pytorch_model.bin"
            for name in MIT_CONFIGS}
STAGES = ("stage1", "stage2", "stage3", "stage4")


def tokens_to_map(tokens: Tensor, h: int, w: int) -> Tensor:
    """(B, N, C) with N = h*w in row-major order -> (B, C, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def init_weights_(module: nn.Module) -> None:
    """The SegFormer authors' initialisation (``module.apply(init_weights_)``).

    Linear weights get std 0.02; PyTorch's default gives a 32-wide layer weights
    five times larger, which a from-scratch run feels.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=(2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class OverlapPatchEmbed(nn.Module):
    """A ``patch_size`` convolution with a smaller ``stride`` (patches overlap), then LayerNorm."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)                                   # (B, C, h, w)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)  # (B, N, C), N = h*w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention with keys and values from a map ``sr_ratio`` times smaller per side."""

    def __init__(self, channels: int, heads: int, sr_ratio: int = 1) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be a multiple of heads ({heads}).")
        self.heads, self.sr_ratio = heads, sr_ratio
        self.scale = (channels // heads) ** -0.5
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        if sr_ratio > 1:
            self.reduce = nn.Conv2d(channels, channels, kernel_size=sr_ratio, stride=sr_ratio)
            self.reduce_norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        b, n, c = x.shape                                                  # (B, N, C)
        attention, v = self.weights_and_values(x, size)                   # (B, heads, N, N/r^2), (B, heads, N/r^2, d)
        out = (attention @ v).transpose(1, 2).reshape(b, n, c)            # (B, N, C)
        return self.proj(out)                                              # (B, N, C)

    def weights_and_values(self, x: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The softmax weights (B, heads, N, N/r^2) and the values they mix: forward's first half, for inspection."""
        b, n, _ = x.shape                                                  # (B, N, C)
        kv = x
        if self.sr_ratio > 1:
            kv = self.reduce(tokens_to_map(x, *size))                      # (B, C, h/r, w/r)
            kv = self.reduce_norm(kv.flatten(2).transpose(1, 2))           # (B, N/r^2, C)
        q = self.query(x).view(b, n, self.heads, -1).transpose(1, 2)      # (B, heads, N, d)
        k = self.key(kv).view(b, kv.shape[1], self.heads, -1).transpose(1, 2)    # (B, heads, N/r^2, d)
        v = self.value(kv).view(b, kv.shape[1], self.heads, -1).transpose(1, 2)  # (B, heads, N/r^2, d)
        return (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1), v  # (B, heads, N, N/r^2), v

    def extra_repr(self) -> str:
        return f"heads={self.heads}, sr_ratio={self.sr_ratio}"


class MixFFN(nn.Module):
    """``fc1`` (C -> 4C), a 3x3 depthwise convolution, GELU, ``fc2`` (4C -> C): the MLP that knows where it is."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as the reference
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.fc1(x)                                                    # (B, N, 4C)
        x = self.dwconv(tokens_to_map(x, *size)).flatten(2).transpose(1, 2)  # (B, N, 4C): 3x3 neighbours mixed
        return self.fc2(self.act(x))                                       # (B, N, C)


class MiTBlock(nn.Module):
    """Pre-norm transformer block, ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``, with stochastic depth."""

    def __init__(self, channels: int, heads: int, sr_ratio: int, mlp_ratio: int = 4,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = EfficientSelfAttention(channels, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(channels)
        self.ffn = MixFFN(channels, channels * mlp_ratio)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))            # (B, N, C)
        return x + self.drop_path(self.ffn(self.norm2(x), size))          # (B, N, C)


class MiTStage(nn.Module):
    """Patch embedding, ``depth`` blocks, LayerNorm; returns the stage's map (B, C, h, w)."""

    def __init__(self, in_channels: int, channels: int, patch_size: int, stride: int, depth: int, heads: int,
                 sr_ratio: int, drop_paths: list[float]) -> None:
        super().__init__()
        self.embed = OverlapPatchEmbed(in_channels, channels, patch_size, stride)
        self.blocks = nn.ModuleList(MiTBlock(channels, heads, sr_ratio, drop_path=p) for p in drop_paths)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        x, (h, w) = self.embed(x)                                          # (B, N, C)
        for block in self.blocks:
            x = block(x, (h, w))                                           # (B, N, C)
        return tokens_to_map(self.norm(x), h, w)                           # (B, C, h, w)


class MixTransformer(nn.Module):
    """MiT encoder; ``forward`` returns ``OrderedDict(stage1=..., ..., stage4=...)`` at strides 4, 8, 16, 32.

    ``variant``: a key of :data:`MIT_CONFIGS` (``"mit_b0"``: 3.3 M parameters).
    ``drop_path_rate``: stochastic depth, rising linearly to this at the last block.
    ``pretrained``: see :mod:`segbook.models.weights`; a path may be a published
    checkpoint (mapped with :func:`convert_segformer_state_dict`).
    """

    def __init__(self, variant: str = "mit_b0", drop_path_rate: float = 0.1,
                 pretrained: bool | str | Path = False, progress: bool = True) -> None:
        super().__init__()
        if variant not in MIT_CONFIGS:
            raise ValueError(f"unknown Mix Transformer {variant!r}; choose one of {', '.join(MIT_CONFIGS)}.")
        cfg = MIT_CONFIGS[variant]
        self.variant = variant
        depth = sum(cfg["depths"])
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        stages, in_channels, first = [], 3, 0
        for i, (channels, blocks) in enumerate(zip(cfg["channels"], cfg["depths"])):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            stages.append(MiTStage(in_channels, channels, patch, stride, blocks, cfg["heads"][i],
                                   cfg["sr_ratios"][i], rates[first:first + blocks]))
            in_channels, first = channels, first + blocks
        self.stages = nn.ModuleList(stages)
        self.channels = dict(zip(STAGES, cfg["channels"]))
        self.strides = dict(zip(STAGES, (4, 8, 16, 32)))
        self.apply(init_weights_)
        self._load_pretrained(pretrained, progress)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features: OrderedDict[str, Tensor] = OrderedDict()
        for name, stage in zip(STAGES, self.stages):
            x = stage(x)                                                   # (B, C_i, H/4, W/4) .. (B, C_4, H/32, W/32)
            features[name] = x
        return features

    def _load_pretrained(self, pretrained: bool | str | Path, progress: bool) -> None:
        url = MIT_URLS[self.variant]
        found = fetch_pretrained(pretrained, what=self.variant, url=url,
                                 download=lambda: torch.hub.load_state_dict_from_url(
                                     url, map_location="cpu", progress=progress, weights_only=True,
                                     file_name=f"nvidia_{self.variant.replace('_', '-')}.bin"))
        if found is not None:
            mapped = convert_segformer_state_dict(found[0])
            encoder = {k.removeprefix("backbone."): v for k, v in mapped.items() if k.startswith("backbone.")}
            load_strict_(self, encoder, found[1], f"a {self.variant} encoder")


# Published names -> segbook's. Two generations of names: the checkpoints on the hub (written by
# transformers 4: ``encoder.block.0.1.attention.self.query``) and transformers 5's own
# (``stages.0.blocks.1.attention.q_proj``). Applied in order; each rule rewrites one part of a name.
_RENAMES = [
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.", r"backbone.stages.\1.embed."),
    (r"^segformer\.stages\.(\d+)\.patch_embeddings\.", r"backbone.stages.\1.embed."),
    (r"^segformer\.encoder\.block\.(\d+)\.(\d+)\.", r"backbone.stages.\1.blocks.\2."),
    (r"^segformer\.stages\.(\d+)\.blocks\.(\d+)\.", r"backbone.stages.\1.blocks.\2."),
    (r"^segformer\.encoder\.layer_norm\.(\d+)\.", r"backbone.stages.\1.norm."),
    (r"^segformer\.stages\.(\d+)\.layer_norm\.", r"backbone.stages.\1.norm."),
    (r"\.embed\.layer_norm\.", ".embed.norm."),
    (r"\.(?:layer_norm_1|layernorm_before)\.", ".norm1."),
    (r"\.(?:layer_norm_2|layernorm_after)\.", ".norm2."),
    (r"\.attention\.(?:self\.query|q_proj)\.", ".attn.query."),
    (r"\.attention\.(?:self\.key|k_proj)\.", ".attn.key."),
    (r"\.attention\.(?:self\.value|v_proj)\.", ".attn.value."),
    (r"\.attention\.(?:self\.sr|sequence_reduction\.sequence_reduction)\.", ".attn.reduce."),
    (r"\.attention\.(?:self\.layer_norm|sequence_reduction\.layer_norm)\.", ".attn.reduce_norm."),
    (r"\.attention\.(?:output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.mlp\.(?:dense1|fc1)\.", ".ffn.fc1."),
    (r"\.mlp\.dwconv\.dwconv\.", ".ffn.dwconv."),
    (r"\.mlp\.(?:dense2|fc2)\.", ".ffn.fc2."),
    (r"^decode_head\.(?:linear_c|linear_projections)\.(\d+)\.proj\.", r"head.project.\1."),
    (r"^decode_head\.linear_fuse\.", "head.fuse.0."),
    (r"^decode_head\.batch_norm\.", "head.fuse.1."),
    (r"^decode_head\.classifier\.", "head.classifier."),
]


def convert_segformer_state_dict(theirs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A published SegFormer/MiT state dict with segbook's names (``backbone.*``, ``head.*``), classifier dropped.

    The decoder's linear weights become 1x1 convolutions. An unrecognised key is
    kept, so the strict load that follows names it.
    """
    ours = {}
    for key, value in theirs.items():
        if key.startswith("classifier."):
            continue
        new = key
        for pattern, replacement in _RENAMES:
            new = re.sub(pattern, replacement, new)
        if re.fullmatch(r"head\.project\.\d+\.weight", new) and value.dim() == 2:
            value = value[:, :, None, None]                                # (C', C) -> (C', C, 1, 1)
        ours[new] = value
    return ours
