"""The table of models by name: ``register_model`` files a model, ``build_model`` builds one.

A module of its own, below every model module, so that a model registers itself
by importing this and nothing above it: the imports go one way.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from segbook.data.voc import NUM_CLASSES

__all__ = ["MODELS", "build_model", "register_model"]

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: file a model factory under ``name``; a taken name is refused, so no chapter overwrites another's.

    The factory must accept ``num_classes`` and ``pretrained_backbone``, which :func:`build_model` always passes.
    """
    def register(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"a model named {name!r} is already registered ({MODELS[name].__qualname__}); "
                             "pick another name.")
        MODELS[name] = factory
        return factory
    return register


def build_model(name: str, num_classes: int = NUM_CLASSES, pretrained_backbone: bool | str | Path = False,
                **kwargs) -> nn.Module:
    """Build the model registered as ``name``; extra keywords go to its constructor."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the registered ones are: {', '.join(sorted(MODELS))}. "
                         "A new model needs @register_model(name) and an import in segbook/models/__init__.py.")
    return MODELS[name](num_classes=num_classes, pretrained_backbone=pretrained_backbone, **kwargs)
