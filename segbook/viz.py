"""Pictures of segmentations: label maps in colour, overlays, sample grids and training curves.

Everything returns a ``Figure`` whose PNG depends only on the data; label maps
use VOC's palette unless a dataset passes its ``class_names`` and ``palette``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .data.voc import IGNORE_INDEX, NUM_CLASSES, VOC_BORDER_COLOR, VOC_CLASSES, voc_palette
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .metrics import not_ids_error

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LivePlot", "add_class_legend", "class_legend", "colorize", "make_palette",
           "overlay", "plot_history", "show_image_grid", "show_samples", "to_rgb"]

_VOC_COLOURS = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)  # VOCdevkit's colour map, ids 0..255

_HISTORY_KEYS = ("train_loss", "val_loss", "val_pixel_acc", "val_miou")  # what plot_history draws by default
_NICE_NAMES = {"train_loss": "train loss", "val_loss": "val loss", "val_pixel_acc": "val pixel acc",
               "val_miou": "val mIoU", "train_miou": "train mIoU", "train_pixel_acc": "train pixel acc"}


def _numpy(x) -> np.ndarray:
    """A CPU NumPy view of a tensor (any device) or array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def make_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """``num_classes`` (at most 255) RGB colours for a dataset that brings none: VOCdevkit's colour map, extended."""
    if not 1 <= num_classes <= IGNORE_INDEX:
        raise ValueError(f"num_classes must be 1..{IGNORE_INDEX} (id {IGNORE_INDEX} is the ignore index), "
                         f"got {num_classes}.")
    return [tuple(int(v) for v in colour) for colour in _VOC_COLOURS[:num_classes]]


def _class_table(class_names: Sequence[str] | None, palette) -> tuple[list[str], np.ndarray]:
    """(names, lookup table) for K classes, K from the palette, the names or VOC's 21; 255 in the ignore colour."""
    if palette is None:
        colours = np.asarray(make_palette(NUM_CLASSES if class_names is None else len(class_names)), dtype=np.uint8)
    else:
        colours = np.asarray(palette)
        if colours.ndim != 2 or colours.shape[1] != 3 or not np.issubdtype(colours.dtype, np.integer) \
                or colours.min(initial=0) < 0 or colours.max(initial=0) > 255:
            raise ValueError(f"palette must be a list of (r, g, b) tuples of integers 0..255, one per class; "
                             f"got an array of shape {colours.shape} and dtype {colours.dtype}.")
    k = len(colours)
    if not 1 <= k <= IGNORE_INDEX:
        raise ValueError(f"a palette needs 1..{IGNORE_INDEX} colours (id {IGNORE_INDEX} is the ignore index), got {k}.")
    if class_names is None:
        names = list(VOC_CLASSES) if palette is None else [str(i) for i in range(k)]
    elif len(class_names) != k:
        raise ValueError(f"{len(class_names)} class_names for a palette of {k} colours; give one name and one "
                         "colour per class id, or palette=None for generated colours.")
    else:
        names = list(class_names)
    table = np.zeros((256, 3), dtype=np.uint8)  # class id -> RGB; ids K..254 never reach it (_class_ids refuses them)
    table[:k] = colours
    table[IGNORE_INDEX] = VOC_BORDER_COLOR
    return names, table


def _class_ids(label, what: str = "label", num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``label`` as an int64 array of class ids; anything but 0..K-1 and 255 raises, naming the values."""
    ids = _numpy(label)
    if not np.issubdtype(ids.dtype, np.integer):
        raise not_ids_error(what, ids.dtype, ids.shape)
    ids = ids.astype(np.int64, copy=False)
    bad = np.unique(ids[((ids < 0) | (ids >= num_classes)) & (ids != IGNORE_INDEX)])
    if bad.size:
        classes = "VOC classes" if num_classes == NUM_CLASSES else f"ids of the {num_classes} classes"
        raise ValueError(f"{what} holds ids {bad[:10].tolist()} that are not {classes} (0..{num_classes - 1}) "
                         f"or the ignore index {IGNORE_INDEX}; read labels as palette indices, not RGB colours, "
                         "and pass class_names/palette with one entry per class.")
    return ids


def colorize(label, palette=None, *, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Colours for class ids: ``(..., H, W)`` -> ``(..., H, W, 3)`` uint8, 255 in the ignore colour.

    ``palette``: one (r, g, b) per class, else VOC's colours (:func:`make_palette`)
    for ``len(class_names)`` classes or VOC's 21. Ids outside the classes raise.
    """
    names, table = _class_table(class_names, palette)
    return table[_class_ids(label, num_classes=len(names))]


def to_rgb(image, *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
           denormalize: Callable | None = None) -> np.ndarray:
    """One image as ``(H, W, 3)`` uint8 for matplotlib: uint8 as it is, a float one denormalised.

    uint8 tensors are (3, H, W), arrays (H, W, 3). A float image is taken as
    normalised: undone by ``denormalize``, else by ``x * std + mean``.
    """
    if denormalize is not None:
        image = denormalize(image)
    chw = isinstance(image, torch.Tensor)
    x = _numpy(image)
    if x.ndim != 3 or 3 not in (x.shape[0], x.shape[-1]):
        hint = " For a batch, pass one image: images[i]." if x.ndim == 4 else ""
        raise ValueError(f"expected one RGB image, (3, H, W) or (H, W, 3), got shape {x.shape}.{hint}")
    if x.shape[-1] != 3 or (chw and x.shape[0] == 3):
        x = x.transpose(1, 2, 0)  # (H, W, 3)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"an image is uint8 in 0..255 or float (normalised), got dtype {x.dtype}.")
    if denormalize is None:
        x = x * np.asarray(std, dtype=np.float64) + np.asarray(mean, dtype=np.float64)  # (H, W, 3) in [0, 1]
    return (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def overlay(image, label, alpha: float = 0.5, *, palette=None, class_names: Sequence[str] | None = None,
            mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
            denormalize: Callable | None = None) -> np.ndarray:
    """The label's colours over the image, ``(H, W, 3)`` uint8: a label shifted or flipped apart shows at once."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    rgb = to_rgb(image, mean=mean, std=std, denormalize=denormalize)  # (H, W, 3)
    colours = colorize(label, palette, class_names=class_names)  # (H, W, 3)
    if rgb.shape != colours.shape:
        raise ValueError(f"image {rgb.shape[:2]} and label {colours.shape[:2]} differ in size (H, W); "
                         "transform them together (segbook.data.transforms) so they stay aligned.")
    blend = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colours.astype(np.float64)
    return blend.round().astype(np.uint8)


def _names_in(ids: np.ndarray, class_names: Sequence[str], most: int = 3) -> str:
    """The classes present in a label map, for a panel title; ignore, and a class 0 named "background", left out."""
    first = 1 if class_names[0] == "background" else 0
    present = [int(i) for i in np.unique(ids) if first <= i < len(class_names)]
    names = [class_names[i] for i in present[:most]]
    if len(present) > most:
        names.append(f"+{len(present) - most}")
    return ", ".join(names) if names else (class_names[0] if first else "ignore")


def show_samples(images, labels, preds=None, *, max_rows: int = 4, titles: bool = True,
                 class_names: Sequence[str] = VOC_CLASSES, palette=None, alpha: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 denormalize: Callable | None = None) -> Figure:
    """One row per sample: image, ground truth, ground truth over the image, and the prediction when given.

    ``images``: (B, 3, H, W) or a list (see :func:`to_rgb`); ``labels``, ``preds``:
    class ids (B, H, W). With ``titles`` each label panel lists its classes.
    """
    class_names, _ = _class_table(class_names, palette)  # checks that names and colours agree
    images, labels = list(images), list(labels)  # a batch or a sequence: one item per sample
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels.")
    if preds is not None:
        if isinstance(preds, (torch.Tensor, np.ndarray)):
            preds = _class_ids(preds, "preds", len(class_names))  # a whole batch: catches logits with a hint
        preds = list(preds)
        if len(preds) != len(images):
            raise ValueError(f"got {len(images)} images but {len(preds)} predictions.")
    rows = min(len(images), max_rows)
    if rows == 0:
        raise ValueError("show_samples needs at least one sample.")
    columns = ["image", "ground truth", "overlay"] + (["prediction"] if preds is not None else [])
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.6 * len(columns), 2.6 * rows), squeeze=False)
    for r in range(rows):
        panels = {"image": to_rgb(images[r], mean=mean, std=std, denormalize=denormalize),
                  "ground truth": colorize(labels[r], palette, class_names=class_names),
                  "overlay": overlay(images[r], labels[r], alpha, palette=palette, class_names=class_names,
                                     mean=mean, std=std, denormalize=denormalize)}
        captions = {"ground truth": _names_in(_class_ids(labels[r], num_classes=len(class_names)), class_names)}
        if preds is not None:
            panels["prediction"] = colorize(preds[r], palette, class_names=class_names)
            captions["prediction"] = _names_in(_class_ids(preds[r], "preds", len(class_names)), class_names)
        for ax, column in zip(axes[r], columns):
            ax.imshow(panels[column], interpolation="nearest")
            ax.set_axis_off()
            if titles:
                lines = ([column] if r == 0 else []) + ([captions[column]] if column in captions else [])
                ax.set_title("\n".join(lines), fontsize=10)
    fig.tight_layout()
    return fig


def class_legend(class_ids=None, ax: Axes | None = None, *, class_names: Sequence[str] = VOC_CLASSES,
                 palette=None, ncol: int = 4) -> Figure:
    """A legend of class colours: the given ids (e.g. ``label.unique()``), else every class and the ignore band."""
    class_names, table = _class_table(class_names, palette)
    if class_ids is None:
        ids = list(range(len(class_names))) + [IGNORE_INDEX]
    else:
        ids = list(dict.fromkeys(_class_ids(np.atleast_1d(_numpy(class_ids)), "class_ids",
                                            len(class_names)).tolist()))
    handles = [Patch(facecolor=table[i] / 255.0, edgecolor="0.4",
                     label=f"ignore ({IGNORE_INDEX})" if i == IGNORE_INDEX else f"{i} {class_names[i]}")
               for i in ids]
    if ax is None:
        rows = max(1, -(-len(handles) // ncol))
        fig, ax = plt.subplots(figsize=(1.8 * min(ncol, max(1, len(handles))), 0.3 * rows + 0.2))
    ax.set_axis_off()
    ax.legend(handles=handles, loc="center", ncol=min(ncol, max(1, len(handles))), frameon=False,
              fontsize=9, handlelength=1.2)
    return ax.figure


def add_class_legend(fig: Figure, labels, *, class_names: Sequence[str] = VOC_CLASSES, palette=None,
                     ncol: int = 7) -> Figure:
    """Put a legend of the classes that occur in ``labels`` under ``fig``, and lift every panel title to 10 pt."""
    ids = np.unique(np.concatenate([np.asarray(_numpy(label)).ravel() for label in labels]))
    for ax in fig.axes:
        ax.title.set_fontsize(max(10, ax.title.get_fontsize()))
    rows = -(-len(ids) // ncol)  # legend rows of up to ncol entries
    tall = 0.3 * rows / fig.get_figheight()  # the legend's height as a share of the figure's
    class_legend(ids, ax=fig.add_axes([0.0, -tall, 1.0, tall]), class_names=class_names, palette=palette,
                 ncol=min(len(ids), ncol))
    return fig


def _series(history: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for the epochs that logged ``key``; the epoch is 1-based when not logged."""
    xs, ys = [], []
    for i, entry in enumerate(history):
        value = entry.get(key)
        if value is None:
            continue
        value = float(value)
        if value == value:  # NaN: nothing to draw
            xs.append(float(entry.get("epoch", i + 1)))
            ys.append(value)
    return xs, ys


def plot_history(history: Sequence[Mapping], *, keys: Sequence[str] | None = None,
                 axes: Sequence[Axes] | None = None) -> Figure:
    """Training curves: losses on the left, the other ``keys`` (default pixel accuracy and mIoU) on the right.

    Missing keys or epochs of ``fit``'s history are skipped, so it can be drawn after
    the first epoch; the two ``axes`` of an earlier call are redrawn in place.
    """
    keys = tuple(keys) if keys is not None else _HISTORY_KEYS
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    if len(axes) != 2:
        raise ValueError(f"plot_history draws two panels (losses, scores); got {len(axes)} axes.")
    loss_ax, score_ax = axes
    for ax, panel_keys, ylabel in ((loss_ax, [k for k in keys if k.endswith("loss")], "loss"),
                                   (score_ax, [k for k in keys if not k.endswith("loss")], "score")):
        ax.clear()
        drawn = 0
        for key in panel_keys:
            xs, ys = _series(history, key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=_NICE_NAMES.get(key, key))
                drawn += 1
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing logged yet", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    score_ax.set_ylim(0.0, 1.0)  # accuracy and IoU are fractions: a fixed scale keeps runs comparable
    loss_ax.set_title("loss")
    score_ax.set_title("scores")
    fig = loss_ax.figure
    fig.tight_layout()
    return fig


def show_image_grid(images, titles: Sequence[str] | None = None, ncols: int = 4, *,
                    palette=None, class_names: Sequence[str] | None = None,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    denormalize: Callable | None = None) -> Figure:
    """A grid of pictures; 2-D integer arrays are drawn as label maps (colours as in :func:`colorize`)."""
    items = list(images)
    if not items:
        raise ValueError("show_image_grid needs at least one image.")
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"got {len(titles)} titles for {len(items)} images.")
    ncols = max(1, min(ncols, len(items)))
    nrows = -(-len(items) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(items):
            continue
        x = _numpy(items[i])
        is_label = x.ndim == 2 and np.issubdtype(x.dtype, np.integer)
        picture = (colorize(x, palette, class_names=class_names) if is_label
                   else to_rgb(items[i], mean=mean, std=std, denormalize=denormalize))
        ax.imshow(picture, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=10)
    fig.tight_layout()
    return fig


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


class LivePlot:
    """Loss and mIoU curves in a notebook (``enabled=None``: only there), redrawn in place after each epoch.

    The figure is closed in pyplot at once, so the inline backend does not show it again when the cell ends.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = _in_notebook() if enabled is None else bool(enabled)
        self.handle = self.figure = None

    def update(self, history: Sequence[Mapping]) -> None:
        if not self.enabled:
            return
        from IPython.display import display

        if self.figure is None:
            self.figure = plot_history(history)
            plt.close(self.figure)
            self.handle = display(self.figure, display_id=True)
        else:
            plot_history(history, axes=self.figure.axes[:2])
            self.handle.update(self.figure)
