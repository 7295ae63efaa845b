"""segbook.viz: exact VOC colours, blending arithmetic, and the figures' layout."""
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from segbook.data.voc import IGNORE_INDEX, VOC_CLASSES, voc_palette  # noqa: E402
from segbook.viz import (IMAGENET_MEAN, IMAGENET_STD, class_legend, colorize, overlay, plot_history,  # noqa: E402
                         show_image_grid, show_samples, to_rgb)

# The colours of VOCdevkit's labelcolormap, written out (not derived from segbook's palette code).
VOC_DEVKIT_COLOURS = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
    (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128), (192, 0, 128),
    (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0), (0, 64, 128),
]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_colorize_uses_the_exact_voc_colours():
    ids = torch.tensor([list(range(21)) + [IGNORE_INDEX]])  # (1, 22)
    rgb = colorize(ids)
    assert rgb.shape == (1, 22, 3) and rgb.dtype == np.uint8
    assert [tuple(c) for c in rgb[0, :21].tolist()] == VOC_DEVKIT_COLOURS
    assert tuple(rgb[0, 21].tolist()) == (224, 224, 192)


def test_colorize_matches_pil_reading_a_voc_palette_png():
    ids = np.random.default_rng(0).choice([*range(21), IGNORE_INDEX], size=(9, 13)).astype(np.uint8)
    png = Image.fromarray(ids, mode="P")
    png.putpalette(voc_palette())
    buffer = io.BytesIO()
    png.save(buffer, format="PNG")
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    assert np.array_equal(colorize(ids), expected)
    assert np.array_equal(colorize(torch.from_numpy(ids).int()), expected)  # tensor, other dtype


def test_colorize_rejects_unknown_ids():
    with pytest.raises(ValueError, match=r"ids \[21, 99\] that are not VOC classes"):
        colorize(np.array([[0, 99], [21, 255]]))
    with pytest.raises(ValueError, match=r"ids \[-1\]"):
        colorize(torch.tensor([[-1, 0]]))
    with pytest.raises(TypeError, match=r"pass logits\.argmax\(1\)"):
        colorize(torch.randn(1, 21, 4, 4))


def test_to_rgb_layouts_and_denormalisation():
    hwc = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    assert np.array_equal(to_rgb(hwc), hwc)
    assert np.array_equal(to_rgb(chw), hwc)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    normalised = (chw.float() / 255 - mean) / std  # what transforms.v2.Normalize would give
    assert np.abs(to_rgb(normalised).astype(int) - hwc).max() <= 1  # float rounding only
    assert np.array_equal(to_rgb(chw.float() / 255, mean=(0, 0, 0), std=(1, 1, 1)), hwc)
    assert np.array_equal(to_rgb(normalised, denormalize=lambda x: chw), hwc)
    with pytest.raises(ValueError, match=r"pass one image: images\[i\]"):
        to_rgb(chw[None])


def test_overlay_shape_dtype_and_blend():
    image = torch.full((3, 4, 6), 200, dtype=torch.uint8)
    label = torch.zeros(4, 6, dtype=torch.long)
    label[1:3, 2:5] = 15  # person: (192, 128, 128)
    label[0, 0] = IGNORE_INDEX
    out = overlay(image, label)
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert tuple(out[1, 2]) == (196, 164, 164)  # (200 + 192) / 2, (200 + 128) / 2, (200 + 128) / 2
    assert tuple(out[3, 5]) == (100, 100, 100)  # (200 + 0) / 2 on background
    assert tuple(out[0, 0]) == (212, 212, 196)  # (200 + 224) / 2, (200 + 224) / 2, (200 + 192) / 2
    assert np.array_equal(overlay(image, label, alpha=0.0), image.permute(1, 2, 0).numpy())
    assert np.array_equal(overlay(image, label, alpha=1.0), colorize(label))


def test_overlay_errors():
    with pytest.raises(ValueError, match=r"image \(4, 6\) and label \(5, 6\) differ in size"):
        overlay(torch.zeros(3, 4, 6, dtype=torch.uint8), torch.zeros(5, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay(torch.zeros(3, 4, 6, dtype=torch.uint8), torch.zeros(4, 6, dtype=torch.long), alpha=1.5)


def _batch(b=3, h=16, w=20):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
    labels = torch.zeros(b, h, w, dtype=torch.long)
    labels[:, 4:10, 5:12] = VOC_CLASSES.index("cat")
    labels[0, 12:, :6] = VOC_CLASSES.index("dog")
    labels[:, 3] = IGNORE_INDEX
    return images, labels


def test_show_samples_layout_and_titles():
    images, labels = _batch(b=5)
    fig = show_samples(images, labels)  # max_rows=4 of 5 samples, 3 columns
    assert len(fig.axes) == 4 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "ground truth\ncat, dog", "overlay"]
    assert fig.axes[4].get_title() == "cat" and fig.axes[3].get_title() == ""
    assert all(not ax.axison for ax in fig.axes)
    preds = labels.clone()
    preds[1, 0, 0] = VOC_CLASSES.index("person")
    fig = show_samples(list(images[:2]), list(labels[:2]), preds[:2], titles=False)
    assert len(fig.axes) == 2 * 4 and all(ax.get_title() == "" for ax in fig.axes)
    assert np.array_equal(fig.axes[7].get_images()[0].get_array(), colorize(preds[1]))
    with pytest.raises(TypeError, match=r"pass logits\.argmax\(1\)"):
        show_samples(images, labels, torch.randn(3, 21, 16, 20))
    with pytest.raises(ValueError, match="5 images but 2 labels"):
        show_samples(images, labels[:2])


def test_class_legend_lists_the_given_classes():
    labels = [t.get_text() for t in class_legend().axes[0].get_legend().get_texts()]
    assert len(labels) == 22 and labels[15] == "15 person" and labels[-1] == "ignore (255)"
    _, labels_batch = _batch()
    texts = [t.get_text() for t in class_legend(labels_batch.unique()).axes[0].get_legend().get_texts()]
    assert texts == ["0 background", "8 cat", "12 dog", "ignore (255)"]
    with pytest.raises(ValueError, match=r"ids \[42\]"):
        class_legend([42])


def test_plot_history_partial_and_redraw():
    history = [{"epoch": 1, "train_loss": 2.0},  # validation not run yet
               {"epoch": 2, "train_loss": 1.5, "val_loss": 1.7, "val_miou": 0.2}]  # no pixel accuracy logged
    fig = plot_history(history)
    loss_ax, score_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train loss", "val loss"]
    assert loss_ax.get_lines()[0].get_xdata().tolist() == [1, 2]
    assert loss_ax.get_lines()[1].get_xdata().tolist() == [2]
    assert [line.get_label() for line in score_ax.get_lines()] == ["val mIoU"]
    history.append({"epoch": 3, "train_loss": torch.tensor(1.0), "val_miou": 0.4, "val_pixel_acc": 0.9})
    again = plot_history(history, axes=fig.axes)  # live redraw: the same figure, no stale lines
    assert again is fig and len(fig.axes) == 2
    assert len(loss_ax.get_lines()) == 2 and loss_ax.get_lines()[0].get_ydata().tolist() == [2.0, 1.5, 1.0]
    assert len(score_ax.get_lines()) == 2
    assert len(plot_history([]).axes) == 2  # nothing logged: still two panels
    only = plot_history(history, keys=["val_miou"])
    assert len(only.axes[0].get_lines()) == 0 and len(only.axes[1].get_lines()) == 1


def test_figures_are_deterministic():
    images, labels = _batch()

    def png(fig):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=40, metadata={"Software": None})
        return buffer.getvalue()

    assert png(show_samples(images, labels)) == png(show_samples(images, labels))


def test_show_image_grid_mixes_images_and_labels():
    images, labels = _batch(b=2)
    fig = show_image_grid([images[0], labels[0], images[1]], titles=["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 4 and [ax.get_title() for ax in fig.axes] == ["a", "b", "c", ""]
    assert np.array_equal(fig.axes[1].get_images()[0].get_array(), colorize(labels[0]))
    with pytest.raises(ValueError, match="2 titles for 3 images"):
        show_image_grid([images[0], labels[0], images[1]], titles=["a", "b"])
