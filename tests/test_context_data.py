"""The context set: VOC's layout (read back by segbook's and torchvision's readers) and its one promise,
that the object's pixels carry no information about its class, checked by swapping the scene."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from segbook.data import VOCSegmentation, find_voc_dir
from segbook.data.context import CONTEXT_CLASSES, SCENES, context_sample, get_context_voc_dir, make_context_voc
from segbook.data.voc import TOY_MARKER
from segbook.data.voc import IGNORE_INDEX, VOC_CLASSES, voc_palette

BOAT, CAR = VOC_CLASSES.index("boat"), VOC_CLASSES.index("car")
SMALL = dict(num_train=10, num_val=7, seed=3)


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    return make_context_voc(tmp_path_factory.mktemp("context"), **SMALL)


def _ids(voc: Path, split: str) -> list[str]:
    return (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def _files(voc: Path) -> dict[str, bytes]:
    return {p.relative_to(voc).as_posix(): p.read_bytes() for p in sorted(voc.rglob("*")) if p.is_file()}


def test_layout_files_and_palette(context: Path) -> None:
    assert context.parts[-2:] == ("VOCdevkit", "VOC2012")
    train, val, trainval = _ids(context, "train"), _ids(context, "val"), _ids(context, "trainval")
    assert (len(train), len(val)) == (SMALL["num_train"], SMALL["num_val"])
    assert not set(train) & set(val) and sorted(train + val) == trainval
    assert all(re.fullmatch(r"20(0[7-9]|1[0-2])_\d{6}", i) for i in trainval)
    for image_id in trainval:
        with Image.open(context / "JPEGImages" / f"{image_id}.jpg") as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (128, 96))
        with Image.open(context / "SegmentationClass" / f"{image_id}.png") as lbl:
            assert (lbl.format, lbl.mode, lbl.size) == ("PNG", "P", (128, 96))
            assert lbl.getpalette() == voc_palette()
    assert (context / TOY_MARKER).is_file()
    assert find_voc_dir(context) is None  # generated: never taken for the real VOC2012


def test_segbook_reader_one_object_per_image_classes_balanced(context: Path) -> None:
    for split in ("train", "val"):
        dataset = VOCSegmentation(context, split)
        classes = []
        for image, label in (dataset[i] for i in range(len(dataset))):
            assert image.dtype == torch.uint8 and image.shape == (3, 96, 128)
            values = set(label.unique().tolist())
            assert values <= {0, BOAT, CAR, IGNORE_INDEX} and IGNORE_INDEX in values
            present = values & {BOAT, CAR}
            assert len(present) == 1                                      # one object, one class
            classes.append(present.pop())
            share = (label == classes[-1]).float().mean().item()
            assert 0.01 < share < 0.15                                    # a minority of the image
        assert abs(classes.count(CAR) - classes.count(BOAT)) <= 1, split  # balanced (odd split: one more car)


def test_torchvision_reads_it_unchanged(context: Path) -> None:
    root = context.parents[1]
    for split in ("train", "val"):
        ds = torchvision.datasets.VOCSegmentation(str(root), year="2012", image_set=split, download=False)
        assert len(ds) == len(_ids(context, split))
    image, target = ds[0]
    assert image.mode == "RGB" and target.mode == "P"
    ours = VOCSegmentation(context, "val")[0][1]
    assert np.array_equal(np.array(target), ours.numpy())


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = _files(make_context_voc(tmp_path / "a", num_train=4, num_val=2, seed=7))
    again = _files(make_context_voc(tmp_path / "b", num_train=4, num_val=2, seed=7))
    other = _files(make_context_voc(tmp_path / "c", num_train=4, num_val=2, seed=8))
    assert first.keys() == again.keys() and [k for k in first if first[k] != again[k]] == []
    assert all(first[k] != other[k] for k in first if k.endswith(".jpg"))


@pytest.mark.parametrize("seed", range(6))
def test_swapping_the_scene_leaves_the_object_and_its_surroundings_untouched(seed: int) -> None:
    # The set's promise: the object, its mat and its near field are drawn without knowing the scene. The
    # same seed on road and on water gives the same outline and the very same pixels within margin + ring
    # of the object (sensor noise included); only the far scene's pixels and the label's class id differ.
    # So everything a small receptive field around the object sees has one distribution for cars and boats.
    margin, ring = 3.0, 8.0
    road, road_label = context_sample(seed, "road", margin=margin, ring=ring)
    water, water_label = context_sample(np.random.SeedSequence(seed), "water", margin=margin, ring=ring)
    assert np.array_equal(road_label == CAR, water_label == BOAT)
    assert np.array_equal(road_label == IGNORE_INDEX, water_label == IGNORE_INDEX)
    assert set(np.unique(road_label)) == {0, CAR, IGNORE_INDEX} and set(np.unique(water_label)) == {0, BOAT,
                                                                                                   IGNORE_INDEX}
    same = (road == water).all(-1)                                      # (H, W) pixels identical in both
    obj = road_label == CAR
    ys, xs = np.nonzero(obj)
    yy, xx = np.mgrid[0:obj.shape[0], 0:obj.shape[1]]
    distance = np.sqrt(((yy.ravel()[:, None] - ys) ** 2 + (xx.ravel()[:, None] - xs) ** 2).min(1))  # (H*W,)
    near = distance.reshape(obj.shape) <= margin + ring - 0.5           # half a pixel for rounding
    assert near.sum() > 2 * obj.sum() and same[near].all()
    # and the far scenes do differ, over most of the image
    assert (~same).mean() > 0.5
    road_bg, water_bg = road[~same].astype(float), water[~same].astype(float)
    assert (water_bg[:, 2] - water_bg[:, 0]).mean() > 30 > (road_bg[:, 2] - road_bg[:, 0]).mean()  # blue vs grey


def test_the_near_field_is_either_scene_whatever_the_class() -> None:
    # Half the objects sit in a ring of the other scene's texture: nearby texture says nothing about the class.
    near_is_water = []
    for seed in range(40):
        image, label = context_sample(seed, "road", margin=3.0, ring=8.0)
        obj = label == CAR
        ys, xs = np.nonzero(obj)
        ring_pixels = image[max(ys.min() - 8, 0):ys.max() + 9, max(xs.min() - 8, 0):xs.max() + 9].astype(float)
        near_is_water.append((ring_pixels[..., 2] - ring_pixels[..., 0]).mean() > 20)
    assert 10 <= sum(near_is_water) <= 30


def test_the_written_set_uses_that_scene_blind_generator(context: Path) -> None:
    # Every labelled file is context_sample(child seed, scene) for its id's child seed: the set inherits the
    # property above rather than restating it. The label PNGs are lossless, so compare them exactly.
    ids = _ids(context, "trainval")
    children = np.random.SeedSequence(SMALL["seed"]).spawn(1 + len(ids))[1:]
    for image_id, child in zip(ids, children):
        label = np.array(Image.open(context / "SegmentationClass" / f"{image_id}.png"))
        scene = "road" if (label == CAR).any() else "water"
        _, expected = context_sample(child, scene)
        assert np.array_equal(label, expected), image_id


def test_context_decides_the_class(context: Path) -> None:
    # A trivial global feature, the mean blue-minus-red over the image, separates car from boat perfectly;
    # the same feature on the object's own pixels does not follow the class.
    rows = []
    for image, label in (VOCSegmentation(context, "trainval")[i] for i in range(SMALL["num_train"] + SMALL["num_val"])):
        pixels = image.float()                                          # (3, H, W)
        is_car = bool((label == CAR).any())
        obj = (label == CAR) | (label == BOAT)                          # (H, W)
        blueness = (pixels[2] - pixels[0])                              # (H, W)
        rows.append((is_car, blueness.mean().item(), blueness[obj].mean().item()))
    cars = [r for r in rows if r[0]]
    boats = [r for r in rows if not r[0]]
    assert max(r[1] for r in cars) < min(r[1] for r in boats)           # the whole image: perfectly separable
    assert not (max(r[2] for r in cars) < min(r[2] for r in boats))     # the object alone: not


def test_get_context_voc_dir_generates_once(tmp_path: Path) -> None:
    voc = get_context_voc_dir(tmp_path, num_train=2, num_val=2, seed=1)
    assert voc.parts[-3:] == ("context_voc_v1_seed1_2x2", "VOCdevkit", "VOC2012")
    stamp = (voc / TOY_MARKER).stat().st_mtime_ns
    assert get_context_voc_dir(tmp_path, num_train=2, num_val=2, seed=1) == voc
    assert (voc / TOY_MARKER).stat().st_mtime_ns == stamp                # reused, not rewritten
    other = get_context_voc_dir(tmp_path, num_train=2, num_val=2, seed=1, margin=5.0)
    assert other != voc and other.parts[-3] == "context_voc_v1_seed1_2x2_margin5.0"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folders left


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one car and one boat"):
        make_context_voc(tmp_path, num_train=1, num_val=2)
    with pytest.raises(ValueError, match="scene='sky'.*road, water"):
        context_sample(0, "sky")
    voc = tmp_path / "x" / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="Delete it"):
        make_context_voc(tmp_path / "x", num_train=2, num_val=2)
    assert set(SCENES.values()) == set(CONTEXT_CLASSES)
