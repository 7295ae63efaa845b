"""Segmentation models by name: ``build_model("fcn", num_classes=21)``.

Each chapter's model registers itself with ``@register_model(name)`` in its own
module, so the training code and the command line pick a model by a string
and a new chapter adds a model without touching them. Every model's forward
returns a dict whose ``"out"`` holds logits at the input's own size.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

__all__ = ["FCN", "MODELS", "ResNetBackbone", "build_model", "register_model"]

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: file a model class or factory under ``name`` in :data:`MODELS`.

    The factory must accept ``num_classes`` and ``pretrained_backbone`` keywords,
    which :func:`build_model` always passes. A name can be taken only once, so two
    chapters cannot silently overwrite each other's model.
    """
    def register(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"a model named {name!r} is already registered ({MODELS[name].__qualname__}); "
                             "pick another name.")
        MODELS[name] = factory
        return factory
    return register


def build_model(name: str, num_classes: int = 21, pretrained_backbone: bool | str | Path = False,
                **kwargs) -> nn.Module:
    """Build the model registered as ``name``; extra keywords go to its constructor."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the registered ones are: {', '.join(sorted(MODELS))}. "
                         "A new model needs @register_model(name) and an import in segbook/models/__init__.py.")
    return MODELS[name](num_classes=num_classes, pretrained_backbone=pretrained_backbone, **kwargs)


# Importing a model's module registers it; these imports come after register_model exists.
from segbook.models.backbones import ResNetBackbone  # noqa: E402
from segbook.models.fcn import FCN  # noqa: E402
from segbook.models.base import FCNHead, SegmentationModel  # noqa: E402
from segbook.models.pspnet import PSPNet, PyramidPoolingModule  # noqa: E402
from segbook.models.ccnet import CCNet, CrissCrossAttention  # noqa: E402
from segbook.models.deeplab import DeepLabV3Plus  # noqa: E402
from segbook.models.pointrend import PointRend  # noqa: E402
