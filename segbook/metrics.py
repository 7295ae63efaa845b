"""Segmentation metrics: pixel accuracy, per-class IoU and mIoU from one confusion matrix; Boundary IoU.

One ``K x K`` count over the whole validation set (rows: ground truth, columns:
prediction), not a mean of per-image scores, as the VOC benchmark does
(Everingham et al., 2010): classes weigh by their pixels, and several GPUs'
matrices simply add. mIoU averages over the classes in the ground truth or the
prediction: a hallucinated class scores 0, a class in neither is NaN, left out.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .data.voc import IGNORE_INDEX

__all__ = ["BoundaryIoU", "ConfusionMatrix", "boundary_dilation", "confusion_matrix", "inner_boundary"]

_MAX_LISTED = 10  # bad ids named in an error message


def not_ids_error(what: str, dtype, shape: Sequence[int]) -> TypeError:
    """The error for scores passed where class ids belong (shared with :mod:`segbook.viz`); a 4-d float gets a hint."""
    shape = tuple(shape)
    hint = " This looks like logits of shape (B, K, H, W): pass logits.argmax(1)." if len(shape) == 4 else ""
    return TypeError(f"{what} must hold integer class ids, got dtype {dtype} with shape {shape}.{hint}")


def _as_ids(x, what: str) -> torch.Tensor:
    """Check that ``x`` holds integer class ids; logits and probabilities get a pointed error."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a tensor (or NumPy array) of class ids, got {type(x).__name__}.")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise not_ids_error(what, x.dtype, x.shape)
    return x


def _out_of_range(values: torch.Tensor, num_classes: int) -> list[int]:
    """The distinct values outside ``0..num_classes-1`` (at most a few, for an error message)."""
    bad = values[(values < 0) | (values >= num_classes)]
    return bad.unique()[:_MAX_LISTED].tolist()


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """Count (target, prediction) pairs of class ids into an int64 ``(num_classes, num_classes)`` matrix.

    Pixels whose target is ``ignore_index`` are skipped; any other id out of range
    raises, so a label read through its RGB colours, or a model with the wrong
    number of outputs, does not pass quietly as a lower score.
    """
    pred, target = _as_ids(pred, "pred"), _as_ids(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got pred {tuple(pred.shape)} "
                         f"and target {tuple(target.shape)}.")
    if pred.device != target.device:
        raise ValueError(f"pred is on {pred.device} and target on {target.device}; move both to one device "
                         "(e.g. target.to(pred.device)).")
    counted = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    target, pred = target[counted].long(), pred.long()  # (N,) over counted pixels; pred checked everywhere
    bad_target = _out_of_range(target, num_classes)
    if bad_target:
        ignore = "" if ignore_index is None else f" and not the ignore index {ignore_index}"
        raise ValueError(f"target holds class ids {bad_target} outside 0..{num_classes - 1}{ignore}. "
                         "Read labels as palette indices (not RGB colours) and check num_classes.")
    bad_pred = _out_of_range(pred, num_classes)
    if bad_pred:
        raise ValueError(f"pred holds class ids {bad_pred} outside 0..{num_classes - 1}; "
                         f"the model should have {num_classes} output channels.")
    pairs = num_classes * target + pred[counted]  # (N,) one bin per (target, pred) pair
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` in float64, NaN where ``den`` is 0 (a class that never occurs has no score)."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))


def _mean_present(scores: torch.Tensor) -> float:
    """The mean over the classes that have a score (not NaN); NaN when none has."""
    present = ~scores.isnan()
    return float(scores[present].mean()) if present.any() else math.nan


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches and derives pixel accuracy, IoU and mIoU.

    ``update`` takes class ids (``logits.argmax(1)``): the decision the figures show.
    The counts stay on the data's device; the scores are CPU float64.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX,
                 class_names: Sequence[str] | None = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = self._check_names(class_names)
        self._matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @classmethod
    def from_matrix(cls, matrix, ignore_index: int | None = IGNORE_INDEX,
                    class_names: Sequence[str] | None = None) -> ConfusionMatrix:
        """Wrap counts made elsewhere (rows = target, columns = prediction), e.g. a hand-made example."""
        matrix = torch.as_tensor(matrix)
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"a confusion matrix must be square, got shape {tuple(matrix.shape)}.")
        if matrix.is_floating_point() or (matrix < 0).any():
            raise ValueError("a confusion matrix holds non-negative integer pixel counts.")
        cm = cls(matrix.shape[0], ignore_index=ignore_index, class_names=class_names)
        cm._matrix = matrix.to(torch.int64).clone()
        return cm

    def _check_names(self, names: Sequence[str] | None) -> tuple[str, ...] | None:
        if names is None:
            return None
        names = tuple(names)
        if len(names) != self.num_classes:
            raise ValueError(f"got {len(names)} class names for {self.num_classes} classes.")
        return names

    def update(self, pred, target) -> ConfusionMatrix:
        """Add one batch: ``pred`` and ``target`` are class ids of one shape, ``(B, H, W)`` or ``(H, W)``."""
        counts = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self._matrix = self._matrix.to(counts.device) + counts
        return self

    def reset(self) -> None:
        """Start counting again (at the start of each evaluation)."""
        self._matrix = torch.zeros_like(self._matrix)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. two halves of a validation set)."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge another ConfusionMatrix, got {type(other).__name__}.")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(f"cannot merge a matrix for {other.num_classes} classes (ignore {other.ignore_index}) "
                             f"into one for {self.num_classes} classes (ignore {self.ignore_index}).")
        self._matrix = self._matrix + other._matrix.to(self._matrix.device)
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    @property
    def matrix(self) -> torch.Tensor:
        """The counts as a CPU int64 ``(num_classes, num_classes)`` copy; rows = target, columns = prediction."""
        return self._matrix.detach().to("cpu", copy=True)

    @property
    def total(self) -> int:
        """Pixels counted so far (ignored pixels excluded)."""
        return int(self._matrix.sum())

    @property
    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted right; NaN before any pixel is counted."""
        m = self.matrix
        return float(_ratio(m.diagonal().sum(), m.sum()))

    @property
    def iou(self) -> torch.Tensor:
        """Per-class ``TP / (TP + FP + FN)``, float64 ``(K,)``; NaN (no score, not 0) for a class in neither."""
        m = self.matrix
        tp = m.diagonal()  # (K,)
        return _ratio(tp, m.sum(1) + m.sum(0) - tp)  # row sums: target pixels, column sums: predicted pixels

    @property
    def miou(self) -> float:
        """Mean IoU over the classes in the target or the prediction; NaN when there are none."""
        return _mean_present(self.iou)

    @property
    def class_accuracy(self) -> torch.Tensor:
        """Per-class recall ``TP / (TP + FN)``; NaN for a class absent from the target."""
        m = self.matrix
        return _ratio(m.diagonal(), m.sum(1))

    def as_dict(self) -> dict[str, float | list[float]]:
        """Plain Python floats, ready for a history list, JSON or a DataFrame."""
        return {"pixel_acc": self.pixel_accuracy, "miou": self.miou, "iou": self.iou.tolist()}

    def table(self, class_names: Sequence[str] | None = None, digits: int = 3) -> str:
        """Per-class IoU and target pixel counts; "-" marks a class in neither target nor prediction."""
        names = (self._check_names(class_names) or self.class_names
                 or tuple(f"class {i}" for i in range(self.num_classes)))
        iou, pixels = self.iou, self.matrix.sum(1)
        counts = [f"{count:,}" for count in pixels.tolist()]
        width = max(len("pixel accuracy"), *(len(n) for n in names))
        score_w, count_w = max(len("IoU"), digits + 2), max(len("pixels"), *(len(c) for c in counts))
        lines = [f"{'class':<{width}}  {'IoU':>{score_w}}  {'pixels':>{count_w}}"]
        for name, value, count in zip(names, iou.tolist(), counts):
            shown = "-" if math.isnan(value) else f"{value:.{digits}f}"
            lines.append(f"{name:<{width}}  {shown:>{score_w}}  {count:>{count_w}}")
        lines.append("-" * len(lines[0]))
        present = int((~iou.isnan()).sum())
        for label, value in (("mIoU", self.miou), ("pixel accuracy", self.pixel_accuracy)):
            shown = "-" if math.isnan(value) else f"{value:.{digits}f}"
            lines.append(f"{label:<{width}}  {shown:>{score_w}}")
        lines[-2] += f"  (mean over {present} of {self.num_classes} classes)"
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.total}, "
                f"pixel_acc={self.pixel_accuracy:.3f}, miou={self.miou:.3f})")


def boundary_dilation(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """Cheng et al.'s band width, ``round(dilation_ratio * diagonal)`` pixels (at least 1): it grows with the image."""
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def inner_boundary(masks: torch.Tensor, dilation: int) -> torch.Tensor:
    """The pixels of each bool mask (..., H, W) within ``dilation`` pixels of its contour: ``mask & ~erode(mask)``.

    The erosion is Cheng et al.'s ``cv2.erode`` with a 3x3 kernel d times, outside
    the image counting as background, computed as a separable max-pool of the
    background on the masks' device.
    """
    if dilation < 1:
        raise ValueError(f"dilation must be at least 1 pixel, got {dilation!r}.")
    if masks.dtype != torch.bool:
        raise TypeError(f"inner_boundary takes bool masks, got {masks.dtype}; pass labels == class_id.")
    height, width = masks.shape[-2:]
    background = (~masks).reshape(-1, 1, height, width).float()                     # (masks, 1, H, W)
    d, pool = dilation, torch.nn.functional.max_pool2d
    background = torch.nn.functional.pad(background, (d, d, d, d), value=1.0)       # (masks, 1, H + 2d, W + 2d)
    near = pool(background, kernel_size=(1, 2 * d + 1), stride=1)                  # (masks, 1, H + 2d, W)
    near = pool(near, kernel_size=(2 * d + 1, 1), stride=1)                        # (masks, 1, H, W)
    return masks & (near.reshape(masks.shape) > 0)                                 # (..., H, W)


class BoundaryIoU:
    """Boundary IoU (Cheng et al., 2021), accumulated per class over images like :class:`ConfusionMatrix`.

    mIoU barely moves when only borders are wrong (a 100 x 100 square without its
    1-pixel rim still scores 0.96). Boundary IoU compares only the bands within ``d``
    pixels of each mask's contour, ``BIoU_c = |G_d ∩ P_d| / |G_d ∪ P_d|`` for the
    masks ``target == c`` and ``pred == c``, summed over images before dividing.
    It is defined per object; here per class (this book's choice). Ignored pixels
    are left out of both bands. ``dilation_ratio``: d as a fraction of each image's
    diagonal (the paper: 0.02); ``dilation``: d in pixels, overriding it.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX, dilation_ratio: float = 0.02,
                 dilation: int | None = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
        if dilation is None and not dilation_ratio > 0:
            raise ValueError(f"dilation_ratio must be positive, got {dilation_ratio!r}.")
        if dilation is not None and (not isinstance(dilation, int) or dilation < 1):
            raise ValueError(f"dilation must be a whole number of pixels >= 1, got {dilation!r}.")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.dilation_ratio, self.dilation = dilation_ratio, dilation
        self._intersection = torch.zeros(num_classes, dtype=torch.int64)
        self._union = torch.zeros(num_classes, dtype=torch.int64)

    def update(self, pred, target) -> BoundaryIoU:
        """Add images: ``pred`` and ``target`` are class ids of one shape, ``(B, H, W)`` or ``(H, W)``."""
        confusion_matrix(pred, target, self.num_classes, self.ignore_index)  # the same checks (ids, shapes, device)
        pred, target = _as_ids(pred, "pred"), _as_ids(target, "target")
        if target.dim() == 2:
            pred, target = pred[None], target[None]                                 # (1, H, W)
        height, width = target.shape[-2:]
        d = self.dilation or boundary_dilation(height, width, self.dilation_ratio)
        device = target.device
        self._intersection, self._union = self._intersection.to(device), self._union.to(device)
        for p, t in zip(pred.reshape(-1, height, width), target.reshape(-1, height, width)):
            counted = torch.ones_like(t, dtype=torch.bool) if self.ignore_index is None else t != self.ignore_index
            classes = torch.cat([t[counted].long(), p.reshape(-1).long()]).unique()  # (k,) ids in t or p
            ids = classes.view(-1, 1, 1)
            t_band = inner_boundary(t == ids, d)                                    # (k, H, W); no ignored pixel is c
            p_band = inner_boundary(p == ids, d) & counted                          # (k, H, W)
            self._intersection.index_add_(0, classes, (t_band & p_band).sum((1, 2)))
            self._union.index_add_(0, classes, (t_band | p_band).sum((1, 2)))
        return self

    def reset(self) -> None:
        """Start counting again."""
        self._intersection.zero_()
        self._union.zero_()

    def merge(self, other: BoundaryIoU) -> BoundaryIoU:
        """Add another accumulator's counts (same classes, ignore index and band width rule)."""
        if not isinstance(other, BoundaryIoU):
            raise TypeError(f"can only merge another BoundaryIoU, got {type(other).__name__}.")
        mine = (self.num_classes, self.ignore_index, self.dilation_ratio, self.dilation)
        theirs = (other.num_classes, other.ignore_index, other.dilation_ratio, other.dilation)
        if mine != theirs:
            raise ValueError(f"cannot merge BoundaryIoU{theirs} into BoundaryIoU{mine} "
                             "(num_classes, ignore_index, dilation_ratio, dilation).")
        self._intersection = self._intersection + other._intersection.to(self._intersection.device)
        self._union = self._union + other._union.to(self._union.device)
        return self

    @property
    def intersection(self) -> torch.Tensor:
        """Per-class ``|G_d ∩ P_d|`` summed over images, CPU int64 ``(num_classes,)``."""
        return self._intersection.detach().to("cpu", copy=True)

    @property
    def union(self) -> torch.Tensor:
        """Per-class ``|G_d ∪ P_d|`` summed over images, CPU int64 ``(num_classes,)``."""
        return self._union.detach().to("cpu", copy=True)

    @property
    def iou(self) -> torch.Tensor:
        """Per-class boundary IoU, float64 ``(num_classes,)``; NaN for a class with no band in either mask."""
        return _ratio(self.intersection, self.union)

    @property
    def miou(self) -> float:
        """Mean boundary IoU over the classes with a band in the target or the prediction; NaN if none."""
        return _mean_present(self.iou)

    def as_dict(self) -> dict[str, float | list[float]]:
        """Plain floats for a history row: ``{"boundary_miou": ..., "boundary_iou": [...]}``."""
        return {"boundary_miou": self.miou, "boundary_iou": self.iou.tolist()}

    def __repr__(self) -> str:
        width = f"dilation={self.dilation}" if self.dilation else f"dilation_ratio={self.dilation_ratio}"
        return f"BoundaryIoU(num_classes={self.num_classes}, {width}, miou={self.miou:.3f})"

