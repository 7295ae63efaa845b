"""Pretrained weights for every backbone: one switch, one file reader, one strict load that says what is wrong.

``pretrained`` is ``False``/``None`` (random init, no network), ``True`` (the
published ImageNet weights or an error), ``"auto"`` (those if they can be had,
else one line and random init) or a state dict's path. A half-loaded backbone
trains but quietly underperforms, so every load is strict.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor, nn

__all__ = ["fetch_pretrained", "load_strict_", "read_state_dict"]


def read_state_dict(path: str | Path) -> Mapping[str, Tensor]:
    """A state dict from ``path``: a ``torch.save`` file, or ``.safetensors`` (needs the ``safetensors`` package)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained={str(path)!r}: no such file. Pass the path of a saved state dict "
                                "(torch.save(model.state_dict(), path)), or pretrained=False for random init.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional: only for .safetensors files
            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as err:
        raise ImportError(f"{path} is a .safetensors file; pip install safetensors to read it.") from err
    except Exception as err:  # a truncated or foreign file: unpickling fails in many ways
        raise ValueError(f"{path} could not be read as a state dict ({type(err).__name__}: {err}). "
                         "Re-save it with torch.save(model.state_dict(), path).") from err
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state dict; "
                         "save model.state_dict(), not the model.")
    return state_dict


def load_strict_(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, what: str) -> nn.Module:
    """Load ``state_dict`` into ``module``; every key must match but BatchNorm's ``num_batches_tracked`` counters."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state_dict.items()
                if k in own and v.shape != own[k].shape]
    problems = [f"{label}: {', '.join(keys[:5])}" + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches", reshaped)) if keys]
    if problems:
        raise ValueError(f"{source} does not hold the weights of {what} ({'; '.join(problems)}). "
                         "Save the weights of a model built the same way (the same name or variant), "
                         "or pass another file.")
    module.load_state_dict(state_dict, strict=False)  # only num_batches_tracked can be absent here
    return module


def fetch_pretrained(pretrained: bool | str | Path | None, *, what: str, url: str,
                     download: Callable[[], Mapping[str, Tensor]]) -> tuple[Mapping[str, Tensor], str] | None:
    """``(state_dict, source)`` as ``pretrained`` asks (``download()`` fetches the published ones), or None."""
    if pretrained is False or pretrained is None:
        return None
    if isinstance(pretrained, (str, Path)) and pretrained != "auto":
        return read_state_dict(pretrained), str(pretrained)
    if pretrained not in (True, "auto"):
        raise ValueError(f"pretrained must be False, True, 'auto' or a path, got {pretrained!r}.")
    try:
        return download(), url
    except (URLError, OSError, RuntimeError) as err:
        if pretrained == "auto":
            print(f"ImageNet weights for {what} are unavailable ({type(err).__name__}; "
                  "pretrained=True shows why); starting from random init.")
            return None
        raise RuntimeError(f"could not get the ImageNet weights for {what} from {url} ({type(err).__name__}: "
                           f"{err}). Connect to the internet, or download that file and pass "
                           f"pretrained='path/to/{url.rsplit('/', 1)[-1]}', or use pretrained='auto' "
                           "to fall back to random init.") from err
