"""Pascal VOC2012 segmentation: class names, the palette, and the reader.

VOC stores each label as a *palette* PNG: every pixel holds a class index
(0..20, or 255 for the "difficult" border band), and the palette only says how
to draw it. Reading the indices directly is both faster and exact; decoding the
RGB colours back to classes (as many tutorials do) is slower and silently turns
the 255 border into background.
"""
from __future__ import annotations

IGNORE_INDEX = 255  # VOC's border / "difficult" band: ignored by the loss and the metrics

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
NUM_CLASSES = len(VOC_CLASSES)  # 21


def _voc_color(index: int) -> tuple[int, int, int]:
    """VOC's palette: the bits of the index spread over R, G and B, most significant first."""
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= ((index >> 0) & 1) << shift
        g |= ((index >> 1) & 1) << shift
        b |= ((index >> 2) & 1) << shift
        index >>= 3
    return r, g, b


VOC_COLORMAP = tuple(_voc_color(i) for i in range(NUM_CLASSES))  # (0, 0, 0), (128, 0, 0), ...
VOC_BORDER_COLOR = _voc_color(IGNORE_INDEX)  # (224, 224, 192): how VOC draws index 255


def voc_palette() -> list[int]:
    """The full 256-entry palette as PIL wants it (768 ints), identical to VOC's PNGs."""
    return [channel for i in range(256) for channel in _voc_color(i)]
