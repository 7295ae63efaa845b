"""The toy VOC set: VOC's file conventions, checked with independent readers (PIL, torchvision)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from segbook.data.toy import TOY_CLASSES, make_toy_voc
from segbook.data.voc import TOY_MARKER
from segbook.data.voc import IGNORE_INDEX, VOC_CLASSES, voc_palette
from segbook.env import real_voc_available

TOY_IDS = {VOC_CLASSES.index(name) for name in TOY_CLASSES}
SMALL = dict(num_train=16, num_val=6)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_voc(tmp_path_factory.mktemp("toy"), seed=3, **SMALL)


def _ids(voc: Path, split: str) -> list[str]:
    return (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def _labels(voc: Path) -> dict[str, np.ndarray]:
    return {i: np.array(Image.open(voc / "SegmentationClass" / f"{i}.png")) for i in _ids(voc, "trainval")}


def test_layout_and_split_files(toy):
    assert toy.parts[-2:] == ("VOCdevkit", "VOC2012")
    train, val, trainval = _ids(toy, "train"), _ids(toy, "val"), _ids(toy, "trainval")
    assert len(train) == SMALL["num_train"] and len(val) == SMALL["num_val"]
    assert not set(train) & set(val) and sorted(train + val) == trainval
    assert train == sorted(train) and val == sorted(val)
    assert all(re.fullmatch(r"20(0[7-9]|1[0-2])_\d{6}", i) for i in trainval)  # VOC's "2007_000032"
    assert sorted(p.stem for p in (toy / "JPEGImages").iterdir()) == trainval
    assert sorted(p.stem for p in (toy / "SegmentationClass").iterdir()) == trainval
    assert (toy / TOY_MARKER).is_file()


def test_files_are_jpeg_and_palette_png_with_vocs_palette(toy):
    sizes = []
    for image_id in _ids(toy, "trainval"):
        with Image.open(toy / "JPEGImages" / f"{image_id}.jpg") as img:
            assert (img.format, img.mode) == ("JPEG", "RGB")
            sizes.append(img.size)
        with Image.open(toy / "SegmentationClass" / f"{image_id}.png") as lbl:
            assert (lbl.format, lbl.mode) == ("PNG", "P")
            assert lbl.size == sizes[-1]
            assert lbl.getpalette() == voc_palette()
    widths, heights = np.array(sizes).T
    assert widths.min() >= 110 and heights.min() >= 110 and max(widths.max(), heights.max()) <= 220
    assert (widths > heights).any() and (heights > widths).any()  # landscape and portrait


def test_label_values_are_toy_classes_background_and_255(toy):
    labels = _labels(toy)
    seen = set()
    for label in labels.values():
        values = set(np.unique(label).tolist())
        assert values <= {0, IGNORE_INDEX} | TOY_IDS
        assert values & TOY_IDS, "every image holds at least one object"
        seen |= values
    assert seen == {0, IGNORE_INDEX} | TOY_IDS  # every toy class appears in 22 images


def test_255_band_separates_every_pair_of_classes(toy):
    """No two touching pixels hold two different classes: a 255 band lies between, objects included."""
    for image_id, label in _labels(toy).items():
        for a, b in ((label[:, 1:], label[:, :-1]), (label[1:, :], label[:-1, :])):
            clash = (a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert not clash.any(), image_id
        band = label == IGNORE_INDEX
        assert band.mean() < 0.15, "the band is a thin outline, not a region"


def test_band_is_two_pixels_wide_across_a_straight_edge(toy):
    """Across an object's edge the band is `border`=1 pixel on each side: runs of 255 are short."""
    runs = []
    for label in _labels(toy).values():
        row_band = np.pad(label == IGNORE_INDEX, ((0, 0), (1, 1)))
        edges = np.diff(row_band.astype(np.int8), axis=1)
        starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
        runs.extend((ends[1] - starts[1]).tolist())
    assert np.median(runs) == 2


def test_objects_overlap_touch_borders_and_vary_in_size(toy):
    labels = _labels(toy)
    two_classes_meet = cut_by_border = False
    fractions = []
    for label in labels.values():
        edges = np.concatenate([label[0], label[-1], label[:, 0], label[:, -1]])
        cut_by_border |= bool(np.isin(edges, list(TOY_IDS)).any())
        near = {}
        for c in set(np.unique(label).tolist()) & TOY_IDS:
            grown = np.zeros(label.shape, bool)
            ys, xs = np.nonzero(label == c)
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    grown[np.clip(ys + dy, 0, label.shape[0] - 1), np.clip(xs + dx, 0, label.shape[1] - 1)] = True
            near[c] = grown
            fractions.append((label == c).mean())
        classes = list(near)
        two_classes_meet |= any((near[a] & near[b]).any() for a in classes for b in classes if a < b)
    assert two_classes_meet and cut_by_border
    assert min(fractions) < 0.05 and max(fractions) > 0.25  # small and large objects


def test_torchvision_reads_it_unchanged(toy):
    """torchvision's own VOC reader is the independent reference for the layout."""
    root = toy.parents[1]  # the folder that holds VOCdevkit
    for split in ("train", "val"):
        ds = torchvision.datasets.VOCSegmentation(str(root), year="2012", image_set=split, download=False)
        assert len(ds) == len(_ids(toy, split))
    image, target = ds[0]
    assert image.mode == "RGB" and target.mode == "P"
    ours = np.array(Image.open(toy / "SegmentationClass" / f"{_ids(toy, 'val')[0]}.png"))
    assert np.array_equal(np.array(target), ours)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    def files(voc):
        return {p.relative_to(voc).as_posix(): p.read_bytes() for p in sorted(voc.rglob("*")) if p.is_file()}

    first = files(make_toy_voc(tmp_path / "a", num_train=4, num_val=2, seed=7))
    again = files(make_toy_voc(tmp_path / "b", num_train=4, num_val=2, seed=7))
    other = files(make_toy_voc(tmp_path / "c", num_train=4, num_val=2, seed=8))
    assert first.keys() == again.keys() and all(first[k] == again[k] for k in first)
    jpegs = [k for k in first if k.endswith(".jpg")]
    assert all(first[k] != other[k] for k in jpegs)


def test_refuses_a_folder_that_holds_files(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=re.escape(str(voc)) + ".*Delete it"):
        make_toy_voc(tmp_path, num_train=1, num_val=1)


def test_refuses_an_empty_split(tmp_path):
    with pytest.raises(ValueError, match="num_val=0"):
        make_toy_voc(tmp_path, num_train=3, num_val=0)


def test_toy_set_is_never_taken_for_real_voc(toy, monkeypatch, tmp_path):
    """The marker keeps the profile logic honest: a toy set never switches on the full profile."""
    monkeypatch.setenv("SEGBOOK_DATA", str(tmp_path))
    monkeypatch.setenv("SEGBOOK_VOC_ROOT", str(toy.parents[1]))
    assert not real_voc_available()
