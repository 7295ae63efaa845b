"""Segmentation models by name: ``build_model("fcn", num_classes=21)``.

Each model registers itself with ``@register_model(name)`` in its own module
(:mod:`segbook.models.registry` holds the table); importing them here fills it.
"""
from __future__ import annotations

from segbook.models.registry import MODELS, build_model, register_model
from segbook.models.backbones import ResNetBackbone
from segbook.models.base import FCNHead, SegmentationModel, Segmenter, model_loss, segmentation_loss
from segbook.models.fcn import FCN
from segbook.models.pspnet import PSPNet, PyramidPoolingModule
from segbook.models.ccnet import CCNet, CrissCrossAttention
from segbook.models.deeplab import DeepLabV3Plus
from segbook.models.pointrend import PointRend
from segbook.models.mit import MixTransformer
from segbook.models.segformer import SegFormer
from segbook.models.mask2former import Mask2Former

__all__ = ["CCNet", "CrissCrossAttention", "DeepLabV3Plus", "FCN", "FCNHead", "MODELS", "Mask2Former", "MixTransformer",
           "PSPNet", "PointRend", "PyramidPoolingModule", "ResNetBackbone", "SegFormer", "SegmentationModel", "Segmenter",
           "build_model", "model_loss", "register_model", "segmentation_loss"]
