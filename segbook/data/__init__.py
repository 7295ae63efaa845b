"""Data for the book: real Pascal VOC2012 or its offline toy twin, behind one loader (this file only re-exports).

``voc`` reads VOC2012 (labels as palette indices), ``download`` fetches it,
``sources`` picks the data (``get_voc_dir``, ``load_voc``), ``transforms`` augments
image and mask together, ``loaders`` batches them, ``folder`` reads your own
images; ``toy``, ``context`` and ``synthetic`` generate the offline sets.
"""
from __future__ import annotations

from .download import download_voc2012
from .folder import FolderSegmentation, load_folder
from .loaders import PaddedBatch, SeededItems, SeededShuffle, default_num_workers, pad_collate, segmentation_loaders
from .sources import check_labels, find_voc_dir, get_voc_dir, load_voc, no_voc_message
from .toy import TOY_CLASSES, make_toy_voc
from .transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transforms, train_transforms
from .voc import (IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES, VOC_COLORMAP, VOCSegmentation, is_toy_voc, read_image,
                  read_label)

__all__ = [
    "VOC_CLASSES", "VOC_COLORMAP", "IGNORE_INDEX", "NUM_CLASSES", "TOY_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD",
    "read_image", "read_label", "VOCSegmentation", "FolderSegmentation", "download_voc2012", "make_toy_voc",
    "train_transforms", "eval_transforms", "denormalize", "find_voc_dir", "get_voc_dir", "pad_collate", "load_voc",
    "load_folder", "PaddedBatch", "SeededItems", "SeededShuffle", "check_labels", "default_num_workers", "is_toy_voc",
    "no_voc_message", "segmentation_loaders",
]
