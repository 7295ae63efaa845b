"""The VOC reader against torchvision's, its errors, and d2l's RGB decoding it replaces."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from _voc_fixture import TINY_SPLITS, TINY_VOC, write_tiny_voc
from segbook.data.toy import make_toy_voc
from segbook.data.voc import (IGNORE_INDEX, VOC_BORDER_COLOR, VOC_COLORMAP, VOCSegmentation, decode_label_rgb,
                              read_image, read_label, voc_colormap2label, voc_palette)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """A tiny VOC the tests only read: root/VOCdevkit/VOC2012."""
    root = tmp_path_factory.mktemp("voc")
    write_tiny_voc(root)
    return root


@pytest.fixture
def voc_dir(tmp_path) -> Path:
    """A fresh tiny VOC a test may damage."""
    return write_tiny_voc(tmp_path)


def _palette_png(path: Path, ids: np.ndarray) -> Path:
    label = Image.fromarray(ids.astype(np.uint8))  # mode "L"; the palette makes it "P"
    label.putpalette(voc_palette())
    label.save(path)
    return path


def assert_matches_torchvision(root: Path, split: str) -> int:
    """Our items equal torchvision's (PIL image, PIL target) pixel for pixel; returns the 255-pixel count."""
    ours = VOCSegmentation(root / "VOCdevkit" / "VOC2012", split)
    theirs = torchvision.datasets.VOCSegmentation(str(root), year="2012", image_set=split, download=False)
    assert ours.ids == [Path(p).stem for p in theirs.images]
    assert len(ours) == len(theirs) > 0
    ignored = 0
    for i in range(len(ours)):
        image, label = ours[i]
        pil_image, pil_target = theirs[i]
        assert image.dtype == torch.uint8 and image.shape == (3, pil_image.height, pil_image.width)
        assert label.dtype == torch.int64 and label.shape == (pil_target.height, pil_target.width)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), np.asarray(pil_image))
        np.testing.assert_array_equal(label.numpy(), np.asarray(pil_target))
        assert set(label.unique().tolist()) <= set(range(21)) | {IGNORE_INDEX}
        ignored += int((label == IGNORE_INDEX).sum())
    return ignored


@pytest.mark.parametrize("split", ["train", "val"])
def test_reader_matches_torchvision(voc_root, split):
    assert assert_matches_torchvision(voc_root, split) > 0  # the 255 band survives reading


def test_toy_set_matches_torchvision(tmp_path):
    """The book's offline set goes through the same reader: both readers must agree on it too."""
    make_toy_voc(tmp_path, num_train=10, num_val=5)
    for split in ("train", "val"):
        assert assert_matches_torchvision(tmp_path, split) > 0


def test_nothing_dropped_and_paths(voc_root):
    val = VOCSegmentation(voc_root / "VOCdevkit" / "VOC2012", "val")
    assert val.ids == TINY_SPLITS["val"]
    width, height, _ = TINY_VOC["2007_000003"]  # smaller than any crop: still there
    image, label = val[1]
    assert image.shape == (3, height, width) and label.shape == (height, width)
    assert val.image_path(1).name == "2007_000003.jpg" and val.label_path(1).name == "2007_000003.png"
    assert val.image_path(1).is_file() and val.label_path(1).is_file()


def test_read_label_returns_the_stored_indices(tmp_path):
    ids = np.array([[0, 1, 255], [20, 15, 0]])  # hand-made, 255 included
    label = read_label(_palette_png(tmp_path / "hand.png", ids))
    assert label.dtype == torch.int64
    assert label.tolist() == ids.tolist()


def test_grey_jpeg_becomes_rgb(voc_root):
    image = read_image(voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2008_000004.jpg")
    assert image.shape == (3, 48, 64)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_transforms_get_image_and_mask_jointly(voc_root):
    seen = []

    def record(image, label):
        seen.append((type(image), type(label)))
        return image, label

    voc_dir = voc_root / "VOCdevkit" / "VOC2012"
    VOCSegmentation(voc_dir, "train", transforms=record)[0]
    assert seen == [(tv_tensors.Image, tv_tensors.Mask)]

    plain = VOCSegmentation(voc_dir, "train")[0]
    image, label = VOCSegmentation(voc_dir, "train", transforms=v2.RandomHorizontalFlip(p=1.0))[0]
    assert torch.equal(image, plain[0].flip(-1)) and torch.equal(label, plain[1].flip(-1))


# --------------------------------------------------------------------------- bad input
def test_missing_voc_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a VOC2012 folder \(missing JPEGImages.*"
                                                r"JPEGImages/<id>\.jpg.*download_voc2012.*SEGBOOK_VOC_ROOT.*"
                                                r"get_voc_dir\('toy'\)"):
        VOCSegmentation(tmp_path / "nowhere")


def test_archive_root_gets_a_hint(voc_root):
    with pytest.raises(FileNotFoundError, match=r"passed the archive's root: use .*VOCdevkit/VOC2012 instead"):
        VOCSegmentation(voc_root)


def test_unknown_split(voc_root):
    with pytest.raises(ValueError, match=r"unknown split 'test': .*test\.txt does not exist.*\['train', 'val'\]"):
        VOCSegmentation(voc_root / "VOCdevkit" / "VOC2012", "test")


@pytest.mark.parametrize("folder, suffix", [("JPEGImages", ".jpg"), ("SegmentationClass", ".png")])
def test_split_naming_a_missing_file(voc_dir, folder, suffix):
    (voc_dir / folder / f"2007_000001{suffix}").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{folder}/2007_000001\{suffix} is missing: the split file "
                                                r".*ImageSets/Segmentation/train\.txt names it"):
        VOCSegmentation(voc_dir, "train")
    assert len(VOCSegmentation(voc_dir, "val")) == 2  # a split that does not name it is fine


def test_label_size_differs_from_image(voc_dir):
    path = voc_dir / "SegmentationClass" / "2008_000005.png"
    _palette_png(path, np.zeros((30, 36)))
    dataset = VOCSegmentation(voc_dir, "val")  # found when the item is read, not at construction
    with pytest.raises(ValueError, match=r"2008_000005\.png is 36x30 \(WxH\) but its image .*2008_000005\.jpg "
                                         r"is 36x36"):
        dataset[0]


def test_corrupt_files(voc_dir):
    image = voc_dir / "JPEGImages" / "2007_000001.jpg"
    image.write_bytes(image.read_bytes()[:200])  # truncated mid-scan
    fix = r"Restore this one file from VOC's archive: run `tar -xf VOCtrainval_11-May-2012\.tar "
    with pytest.raises(ValueError, match=r"2007_000001\.jpg: cannot decode this image .*" + fix +
                       r"VOCdevkit/VOC2012/JPEGImages/2007_000001\.jpg` in "):
        read_image(image)
    label = voc_dir / "SegmentationClass" / "2007_000002.png"
    label.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"2007_000002\.png: cannot decode this label PNG.*" + fix +
                       r"VOCdevkit/VOC2012/SegmentationClass/2007_000002\.png`"):
        VOCSegmentation(voc_dir, "train")[0]


def test_missing_single_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gone\.jpg: image not found"):
        read_image(tmp_path / "gone.jpg")
    with pytest.raises(FileNotFoundError, match=r"gone\.png: label not found"):
        read_label(tmp_path / "gone.png")


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_read_label_refuses_non_palette_png(voc_root, tmp_path, mode):
    original = voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000001.png"
    resaved = tmp_path / "resaved.png"
    Image.open(original).convert(mode).save(resaved)  # what an image editor does
    with pytest.raises(ValueError, match=rf"resaved\.png: label PNG has mode '{mode}', but VOC labels are palette"):
        read_label(resaved)


def test_read_label_refuses_unknown_class_ids(tmp_path):
    path = _palette_png(tmp_path / "instances.png", np.array([[0, 30, 254], [255, 21, 3]]))
    with pytest.raises(ValueError, match=r"instances\.png: label holds class ids \[21, 30, 254\], but VOC labels "
                                         r"hold only 0\.\.20 and 255"):
        read_label(path)


# --------------------------------------------------------------------------- d2l's RGB decoding
def test_decode_label_rgb_loses_the_border(voc_root):
    """d2l's colour lookup agrees on the 21 classes but maps the 255 border to 0: d2l's bug, kept as reference."""
    table = voc_colormap2label()
    assert table.dtype == torch.int64 and table.nbytes == 128 * 2 ** 20
    for path in sorted((voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png")):
        ids = read_label(path)  # (H, W)
        rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)  # (3, H, W)
        decoded = decode_label_rgb(rgb, table)
        border = ids == IGNORE_INDEX
        assert border.any()
        assert torch.equal(decoded[~border], ids[~border])
        assert (decoded[border] == 0).all()
    border_pixel = torch.tensor(VOC_BORDER_COLOR, dtype=torch.uint8).view(3, 1, 1)
    assert decode_label_rgb(border_pixel).item() == 0
    for index, colour in enumerate(VOC_COLORMAP):
        assert decode_label_rgb(torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)).item() == index
