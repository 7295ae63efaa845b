"""The Mix Transformer (MiT), SegFormer's encoder: four stages of attention without positional encodings.

SegFormer (Xie et al., 2021) replaces the ResNet of the earlier chapters with a
hierarchical transformer. Each stage starts with an *overlapping patch
embedding* (a strided convolution whose kernel is larger than its stride: 7x7
stride 4 first, then 3x3 stride 2), so the stages sit at strides 4, 8, 16 and
32 of the input, like a ResNet's. Inside a stage every block is

* *efficient self-attention*: queries at every one of the ``hw`` cells, but
  keys and values from a map shrunk ``r`` times in each direction by an ``r x r``
  stride-``r`` convolution (the reduction ratios 8, 4, 2, 1), so the attention
  matrix is ``hw x hw/r^2`` instead of ``hw x hw``;
* *Mix-FFN*: the transformer's MLP with a 3x3 depthwise convolution between its
  two linear layers. That convolution (with its zero padding) is where a cell
  learns where it is; there is no table of positional encodings, so the encoder
  runs at any input size without interpolating anything.

Shape letters, as in every chapter: B batch, C channels, H x W the input, h x w
a stage's map; and here N = h*w tokens, r the reduction ratio, heads the
attention heads, d = C / heads the width of one head.

The module names are segbook's own; :func:`convert_segformer_state_dict` maps
the names of the published checkpoints (Hugging Face ``nvidia/mit-b0`` and the
names ``transformers`` uses today) onto them. Numerics follow that reference:
``nn.LayerNorm``'s default eps (1e-5) everywhere and the exact (erf) GELU.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

__all__ = ["MIT_CONFIGS", "MIT_URLS", "EfficientSelfAttention", "MiTBlock", "MixFFN", "MixTransformer",
           "OverlapPatchEmbed", "convert_segformer_state_dict", "init_weights_", "load_weights_file"]

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

    Linear layers: truncated normal with std 0.02, bias 0; LayerNorm: 1 and 0;
    convolutions: normal with std ``sqrt(2 / fan_out)`` (He, fan-out counted per
    group), bias 0. PyTorch's own default gives a 32-wide linear layer weights
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
    """A ``patch_size`` x ``patch_size`` convolution with a smaller ``stride``, then LayerNorm over channels.

    Padding ``patch_size // 2`` makes neighbouring patches overlap and gives
    ``ceil(h / stride)`` rows for any ``h`` (25 for a 97-pixel input and stride 4).
    ``forward`` returns the tokens (B, N, C) and the map's (h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)                                   # (B, C, h, w)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)  # (B, N, C), N = h*w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a map ``sr_ratio`` times smaller.

    ``reduce`` is an ``r x r`` convolution with stride ``r`` (then ``reduce_norm``):
    it turns the (h, w) map into (h/r, w/r) cells (rounded down), so each query
    compares itself with ``N / r^2`` keys. With ``sr_ratio=1`` this is ordinary
    self-attention. ``query``, ``key``, ``value`` and ``proj`` are linear layers
    on the channels.
    """

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
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``.

    ``drop_path`` is stochastic depth (torchvision's ``StochasticDepth``, per
    sample): in training each residual branch is dropped for a sample with that
    probability; in evaluation it is the identity.
    """

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

    Args:
        variant: a key of :data:`MIT_CONFIGS` (``"mit_b0"``: 3.3 M parameters).
        drop_path_rate: stochastic depth, rising linearly from 0 at the first block
            to this at the last (0.1 in the paper).
        pretrained: ``False``/``None`` (random init), ``"auto"`` (ImageNet weights if they
            can be had, else one line saying so and random init), ``True`` (ImageNet
            weights or an error), or the path of a published checkpoint (its names are
            mapped with :func:`convert_segformer_state_dict`).

    Stage ``i`` has ``self.channels[f"stage{i}"]`` channels and ``ceil(H / stride)`` rows.
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
        if pretrained is False or pretrained is None:
            return
        url = MIT_URLS[self.variant]
        if isinstance(pretrained, (str, Path)) and pretrained != "auto":
            source, state_dict = str(pretrained), load_weights_file(pretrained)
        elif pretrained in (True, "auto"):
            source = url
            try:
                state_dict = torch.hub.load_state_dict_from_url(
                    url, map_location="cpu", progress=progress, weights_only=True,
                    file_name=f"nvidia_{self.variant.replace('_', '-')}.bin")
            except (URLError, OSError, RuntimeError) as err:
                if pretrained == "auto":
                    print(f"ImageNet weights for {self.variant} are unavailable ({type(err).__name__}; "
                          "pretrained=True shows why); starting from random init.")
                    return
                raise RuntimeError(f"could not get the ImageNet weights for {self.variant} from {url} "
                                   f"({type(err).__name__}: {err}). Connect to the internet, or download that "
                                   "file and pass its path, or use pretrained='auto' to fall back to random "
                                   "init.") from err
        else:
            raise ValueError(f"pretrained must be False, True, 'auto' or a path, got {pretrained!r}.")
        mapped = convert_segformer_state_dict(state_dict)
        encoder = {k.removeprefix("backbone."): v for k, v in mapped.items() if k.startswith("backbone.")}
        load_strict_(self, encoder, source, what=f"a {self.variant} encoder")


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
    """A published SegFormer/MiT state dict with segbook's names (``backbone.*`` and ``head.*``).

    The ImageNet classifier of an MiT checkpoint (``classifier.*``) is dropped;
    the decoder's linear projections become 1x1 convolutions (a weight (C', C)
    becomes (C', C, 1, 1)). A key that no rule recognises is kept as it is, so
    the strict load that follows names it.
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


def load_weights_file(path: str | Path) -> Mapping[str, Tensor]:
    """A state dict from ``path``: ``.safetensors`` (needs the ``safetensors`` package) or a ``torch.save`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained={str(path)!r}: no such file. Pass the path of a downloaded "
                                "checkpoint (e.g. nvidia/mit-b0's pytorch_model.bin), or pretrained=False.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional: only for .safetensors files
            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as err:
        raise ImportError(f"{path} is a .safetensors file; pip install safetensors to read it.") from err
    except Exception as err:  # a truncated or foreign file: unpickling fails in many ways
        raise ValueError(f"{path} could not be read as a state dict ({type(err).__name__}: {err}).") from err
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state dict.")
    return state_dict


def load_strict_(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, what: str) -> nn.Module:
    """``module.load_state_dict`` that names (up to five of) the missing, unexpected and reshaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state_dict.items()
                if k in own and v.shape != own[k].shape]
    problems = [f"{label}: {', '.join(keys[:5])}" + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped))
                if keys]
    if problems:
        raise ValueError(f"{source} does not hold the weights of {what} ({'; '.join(problems)}). "
                         "Check that the checkpoint is of the same variant.")
    module.load_state_dict(state_dict, strict=False)  # only num_batches_tracked can be absent here
    return module
