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
from segbook.viz import (IMAGENET_MEAN, IMAGENET_STD, class_legend, colorize, make_palette, overlay,  # noqa: E402
                         plot_history, show_image_grid, show_samples, to_rgb)

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


# --- any number of classes --------------------------------------------------------------------------

CAMVID_NAMES = ["sky", "road", "car", "tree"]
CAMVID_PALETTE = [(128, 128, 128), (128, 64, 128), (64, 0, 128), (128, 128, 0)]
IGNORE_COLOUR = (224, 224, 192)


def test_make_palette_extends_voc_s_colours():
    assert make_palette(21) == VOC_DEVKIT_COLOURS
    many = make_palette(255)
    assert many[:21] == VOC_DEVKIT_COLOURS and make_palette(40) == many[:40]
    assert len(set(many)) == 255 and IGNORE_COLOUR not in many            # distinct, never the ignore colour
    assert all(isinstance(v, int) and 0 <= v <= 255 for colour in many for v in colour)
    for bad in (0, 256):
        with pytest.raises(ValueError, match=r"num_classes must be 1\.\.255"):
            make_palette(bad)


def test_colorize_with_a_palette_of_any_length():
    ids = np.array([[0, 1, 2], [3, IGNORE_INDEX, 1]])
    rgb = colorize(ids, CAMVID_PALETTE)
    assert [tuple(c) for c in rgb.reshape(-1, 3).tolist()] == [CAMVID_PALETTE[i] for i in (0, 1, 2, 3)] + \
        [IGNORE_COLOUR, CAMVID_PALETTE[1]]
    assert np.array_equal(colorize(torch.from_numpy(ids), class_names=CAMVID_NAMES, palette=CAMVID_PALETTE), rgb)
    with pytest.raises(ValueError, match=r"ids \[4, 21\] that are not ids of the 4 classes \(0\.\.3\)"):
        colorize(np.array([[4, 21]]), CAMVID_PALETTE)


def test_names_without_a_palette_get_generated_colours():
    names = [f"c{i}" for i in range(30)]
    ids = np.arange(30).reshape(5, 6)
    assert [tuple(c) for c in colorize(ids, class_names=names).reshape(-1, 3).tolist()] == make_palette(30)
    voc_ids = np.array([list(range(21)) + [IGNORE_INDEX]])
    assert np.array_equal(colorize(voc_ids, class_names=VOC_CLASSES), colorize(voc_ids))  # VOC as before
    assert np.array_equal(colorize(voc_ids, make_palette(21)), colorize(voc_ids))
    with pytest.raises(ValueError, match=r"ids \[21\] that are not VOC classes"):
        colorize(np.array([[21]]))                                         # the default is still VOC's 21


def test_palette_and_names_must_agree():
    with pytest.raises(ValueError, match=r"3 class_names for a palette of 4 colours"):
        colorize(np.zeros((2, 2), dtype=np.int64), CAMVID_PALETTE, class_names=CAMVID_NAMES[:3])
    with pytest.raises(ValueError, match=r"palette must be a list of \(r, g, b\) tuples of integers 0\.\.255"):
        colorize(np.zeros((2, 2), dtype=np.int64), [(0, 0, 300)])
    with pytest.raises(ValueError, match=r"palette must be a list of \(r, g, b\)"):
        colorize(np.zeros((2, 2), dtype=np.int64), [(0, 0)])
    with pytest.raises(ValueError, match=r"3 class_names for a palette of 4 colours"):
        show_samples(*_batch(b=1), class_names=CAMVID_NAMES[:3], palette=CAMVID_PALETTE)


def test_overlay_uses_the_palette():
    image = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    label = torch.tensor([[1, 3], [0, IGNORE_INDEX]])
    out = overlay(image, label, palette=CAMVID_PALETTE)
    assert tuple(out[0, 0]) == (114, 82, 114)                             # ((100, 100, 100) + (128, 64, 128)) / 2
    assert tuple(out[1, 1]) == (162, 162, 146)                            # the ignore colour, as for VOC


def _camvid_batch():
    images = torch.randint(0, 256, (2, 3, 6, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(2, 6, 8, dtype=torch.long)                        # sky everywhere
    labels[0, 3:, :] = 1
    labels[1, :, :2] = IGNORE_INDEX
    return images, labels


def test_show_samples_with_another_dataset_s_classes():
    images, labels = _camvid_batch()
    preds = labels.clone()
    preds[1, 0, 4] = 2
    fig = show_samples(images, labels, preds, class_names=CAMVID_NAMES, palette=CAMVID_PALETTE)
    assert fig.axes[1].get_title() == "ground truth\nsky, road"           # class 0 is a class here, not background
    assert fig.axes[7].get_title() == "sky, car"
    assert np.array_equal(fig.axes[1].get_images()[0].get_array(), colorize(labels[0], CAMVID_PALETTE))
    assert np.array_equal(fig.axes[7].get_images()[0].get_array(), colorize(preds[1], CAMVID_PALETTE))
    only_ignore = torch.full((1, 6, 8), IGNORE_INDEX)
    assert show_samples(images[:1], only_ignore, class_names=CAMVID_NAMES).axes[1].get_title() == \
        "ground truth\nignore"
    with pytest.raises(ValueError, match=r"preds holds ids \[4\] that are not ids of the 4 classes"):
        show_samples(images, labels, torch.full((2, 6, 8), 4), class_names=CAMVID_NAMES)


def test_class_legend_for_another_dataset():
    legend = class_legend(class_names=CAMVID_NAMES, palette=CAMVID_PALETTE).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["0 sky", "1 road", "2 car", "3 tree", "ignore (255)"]
    colours = [tuple(round(v * 255) for v in patch.get_facecolor()[:3]) for patch in legend.get_patches()]
    assert colours == CAMVID_PALETTE + [IGNORE_COLOUR]
    texts = [t.get_text() for t in class_legend([3, 0], class_names=CAMVID_NAMES).axes[0].get_legend().get_texts()]
    assert texts == ["3 tree", "0 sky"]
    with pytest.raises(ValueError, match=r"ids \[7\]"):
        class_legend([7], class_names=CAMVID_NAMES)


def test_show_image_grid_draws_labels_in_the_palette():
    images, labels = _camvid_batch()
    fig = show_image_grid([images[0], labels[0]], palette=CAMVID_PALETTE)
    assert np.array_equal(fig.axes[1].get_images()[0].get_array(), colorize(labels[0], CAMVID_PALETTE))


def test_add_class_legend_names_exactly_the_classes_shown():
    import matplotlib.pyplot as plt
    from segbook.viz import add_class_legend
    fig, axes = plt.subplots(1, 2)
    axes[0].set_title("a", fontsize=8)
    labels = [torch.tensor([[0, 7], [255, 7]]), torch.tensor([[15]])]
    add_class_legend(fig, labels)
    legend = fig.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["0 background", "7 car", "15 person", "ignore (255)"]
    assert axes[0].title.get_fontsize() == 10
    plt.close(fig)
