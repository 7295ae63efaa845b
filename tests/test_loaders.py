"""get_voc_dir, load_voc, pad_collate and FolderSegmentation: which data, what shape, which errors."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

import segbook.data as data
from segbook.data import loaders, sources
from segbook.data import (FolderSegmentation, eval_transforms, get_voc_dir, load_voc, make_toy_voc, pad_collate,
                          read_image, read_label)
from segbook.data.toy import TOY_VERSION
from segbook.data.voc import TOY_MARKER
from segbook.env import short_path

SIZE = (6, 3)  # toy (train, val) images: small keeps the tests fast
SMALL_TOY = f"toy_voc_v{TOY_VERSION}_seed0_6x3"  # its folder in the data home


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own data home and no real VOC."""
    monkeypatch.setenv("SEGBOOK_DATA", str(tmp_path / "home"))
    monkeypatch.delenv("SEGBOOK_VOC_ROOT", raising=False)


@pytest.fixture(scope="module")
def voc_like(tmp_path_factory) -> Path:
    """A folder in VOC2012's layout that is not marked as toy: stands in for a real VOC on disk."""
    voc = make_toy_voc(tmp_path_factory.mktemp("voc"), num_train=6, num_val=3, seed=1)
    (voc / TOY_MARKER).unlink()
    return voc


# --------------------------------------------------------------------------- get_voc_dir
def test_toy_is_generated_once_then_reused(tmp_path, capsys, monkeypatch):
    voc = get_voc_dir("toy", toy_size=SIZE)
    home = tmp_path / "home"
    assert voc == home / SMALL_TOY / "VOCdevkit" / "VOC2012"
    assert [p.name for p in home.iterdir()] == [SMALL_TOY]  # no partial folder left
    line = capsys.readouterr().out
    assert line == ("dataset: toy VOC (5 classes + background, generated offline) | train 6, val 3 images "
                    f"| {short_path(voc)}\n")
    stamp = (voc / TOY_MARKER).stat().st_mtime_ns
    monkeypatch.setattr(data, "make_toy_voc", lambda *a, **k: pytest.fail("regenerated a cached toy set"))
    assert get_voc_dir("toy", toy_size=SIZE, verbose=False) == voc
    assert (voc / TOY_MARKER).stat().st_mtime_ns == stamp
    assert capsys.readouterr().out == ""


def test_default_toy_folder_is_named_by_version_and_seed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sources, "make_toy_voc", lambda root, **k: calls.append(k) or _fake_toy(root))
    voc = get_voc_dir("toy", toy_seed=4, verbose=False)
    assert voc.parents[1].name == f"toy_voc_v{TOY_VERSION}_seed4" and calls == [dict(num_train=200, num_val=50, seed=4)]


def _fake_toy(root):
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    voc.mkdir(parents=True)
    (voc / TOY_MARKER).write_text("{}")
    return voc


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(root, **kwargs):
        (Path(root) / "VOCdevkit" / "VOC2012" / "JPEGImages").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "make_toy_voc", interrupted)
    with pytest.raises(KeyboardInterrupt):
        get_voc_dir("toy", toy_size=SIZE)
    assert list((tmp_path / "home").iterdir()) == []


def test_a_half_made_toy_folder_is_refused_with_the_fix(tmp_path):
    (tmp_path / "home" / SMALL_TOY).mkdir(parents=True)
    with pytest.raises(FileExistsError, match=f"{SMALL_TOY} exists but is not a finished.*delete it"):
        get_voc_dir("toy", toy_size=SIZE)


def test_auto_falls_back_to_toy_when_no_voc_is_on_disk(capsys):
    voc = get_voc_dir("auto", toy_size=SIZE)
    assert (voc / TOY_MARKER).is_file() and "toy VOC" in capsys.readouterr().out


@pytest.mark.parametrize("level", ["holder", "voc2012"])
def test_segbook_voc_root_is_used_whichever_folder_it_names(voc_like, monkeypatch, capsys, level):
    monkeypatch.setenv("SEGBOOK_VOC_ROOT", str(voc_like.parents[1] if level == "holder" else voc_like))
    for source in ("auto", "voc"):
        assert get_voc_dir(source) == voc_like
        assert capsys.readouterr().out.startswith("dataset: Pascal VOC2012 | train 6, val 3 images")


def test_root_argument_wins_and_a_toy_set_is_never_taken_for_voc(voc_like, tmp_path):
    assert get_voc_dir("auto", root=voc_like.parent, verbose=False) == voc_like
    toy = make_toy_voc(tmp_path / "toy", num_train=2, num_val=1)
    assert data.find_voc_dir(toy) is None


def test_voc_offline_is_one_error_that_says_how_to_get_it(monkeypatch, capsys, tmp_path):
    def offline(root=None, **kwargs):
        raise ConnectionError("could not download VOC2012 (tried http://...). To get VOC2012 by hand: ...")

    monkeypatch.setattr(sources, "download_voc2012", offline)
    with pytest.raises(ConnectionError, match="To get VOC2012 by hand"):
        get_voc_dir("voc", toy_size=SIZE)
    assert capsys.readouterr().out == "" and not (tmp_path / "home").exists()  # no toy set in its place


def test_voc_download_goes_to_data_home(monkeypatch, voc_like, tmp_path):
    asked = []
    monkeypatch.setattr(sources, "download_voc2012", lambda root=None, **k: asked.append(root) or voc_like)
    assert get_voc_dir("voc", verbose=False) == voc_like
    assert asked == [tmp_path / "home" / "voc"]


def test_voc_without_download_names_the_fix(monkeypatch):
    monkeypatch.setattr(sources, "download_voc2012", lambda *a, **k: pytest.fail("downloaded with download=False"))
    with pytest.raises(FileNotFoundError, match=r"not on disk and download=False\. Get VOC2012 with "
                                                r"segbook\.data\.download_voc2012\(\)"):
        get_voc_dir("voc", download=False, toy_size=SIZE)


def test_unknown_source_lists_the_choices():
    with pytest.raises(ValueError, match=re.escape("source='real': use one of ('auto', 'voc', 'toy')")):
        get_voc_dir("real")


# --------------------------------------------------------------------------- pad_collate and load_voc
def test_pad_collate_pads_bottom_right_with_0_and_255():  # 0: ImageNet mean colour once normalised
    a = (torch.ones(3, 2, 3), torch.full((2, 3), 7))
    b = (torch.full((3, 4, 2), 2.0), torch.full((4, 2), 5))
    images, masks = pad_collate([a, b])
    assert images.shape == (2, 3, 4, 3) and masks.shape == (2, 4, 3) and masks.dtype == torch.int64
    expected_masks = torch.tensor([[[7, 7, 7], [7, 7, 7], [255, 255, 255], [255, 255, 255]],
                                   [[5, 5, 255], [5, 5, 255], [5, 5, 255], [5, 5, 255]]])
    assert torch.equal(masks, expected_masks)
    assert torch.equal(images[:, 0], torch.tensor([[[1.0, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]],
                                                   [[2.0, 2, 0], [2, 2, 0], [2, 2, 0], [2, 2, 0]]]))


def test_load_voc_shapes_dtypes_and_whole_image_validation(voc_like):
    train, val = load_voc(4, (48, 64), source="voc", root=voc_like, verbose=False)
    images, masks = next(iter(train))
    assert images.shape == (4, 3, 48, 64) and images.dtype == torch.float32
    assert masks.shape == (4, 48, 64) and masks.dtype == torch.int64
    assert len(train) == 1  # 6 images, batches of 4: the incomplete last batch is dropped
    val_images, val_masks = next(iter(val))
    assert val_images.shape[0] == 3 and val_images.shape[-2:] == val_masks.shape[-2:]
    ids = (voc_like / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    for k, image_id in enumerate(ids):  # each whole label sits at the top left, 255 around it
        label = read_label(voc_like / "SegmentationClass" / f"{image_id}.png")
        h, w = label.shape
        assert torch.equal(val_masks[k, :h, :w], label)
        assert (val_masks[k, h:] == 255).all() and (val_masks[k, :, w:] == 255).all()
        expected, _ = eval_transforms()(tv_tensors.Image(read_image(voc_like / "JPEGImages" / f"{image_id}.jpg")),
                                        tv_tensors.Mask(label))
        assert torch.allclose(val_images[k, :, :h, :w], expected)


def test_a_split_no_larger_than_a_batch_is_not_dropped(voc_like):
    train, _ = load_voc(8, 32, source="voc", root=voc_like, verbose=False)
    assert [len(m) for _, m in train] == [6]


def _first_batch(voc, seed, workers=0):
    train, _ = load_voc(3, (40, 56), source="voc", root=voc, seed=seed, num_workers=workers, verbose=False)
    return next(iter(train))


def test_same_seed_same_first_batch_whatever_the_workers_and_global_rng(voc_like):
    torch.manual_seed(0)
    first = _first_batch(voc_like, seed=5)
    torch.manual_seed(99)  # the global RNG plays no part
    again = _first_batch(voc_like, seed=5, workers=1)
    other = _first_batch(voc_like, seed=6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_loading_leaves_the_global_rng_alone(voc_like):
    train, val = load_voc(2, 32, source="voc", root=voc_like, verbose=False)
    state = torch.get_rng_state()
    for _ in train:
        pass
    for _ in val:
        pass
    assert torch.equal(torch.get_rng_state(), state)


def test_epochs_are_reshuffled(voc_like):
    train, _ = load_voc(6, 32, source="voc", root=voc_like, scale_range=None, verbose=False)
    first, second = (next(iter(train))[1] for _ in range(2))
    assert not torch.equal(first, second)


def test_default_workers_follow_the_cpu_count(monkeypatch):
    for cpus, workers in ((1, 0), (2, 0), (3, 3), (16, 4)):
        monkeypatch.setattr(loaders.os, "cpu_count", lambda: cpus)
        assert data.default_num_workers() == workers


# --------------------------------------------------------------------------- FolderSegmentation
def _write_pair(root: Path, split: str, stem: str, label: np.ndarray, *, suffix="", image_ext=".png", mode="L"):
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "labels").mkdir(parents=True, exist_ok=True)
    h, w = label.shape
    pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / split / "images" / f"{stem}{image_ext}")
    lbl = Image.fromarray(label.astype(np.uint8)).convert(mode) if mode != "L" else Image.fromarray(
        label.astype(np.uint8))
    lbl.save(root / split / "labels" / f"{stem}{suffix}.png")
    return pixels


def test_folder_items_match_the_files(tmp_path):
    label = np.arange(12).reshape(3, 4) % 5
    pixels = _write_pair(tmp_path, "train", "b", label)
    _write_pair(tmp_path, "train", "a", label.T.copy(), image_ext=".jpg")
    ds = FolderSegmentation(tmp_path, "train", num_classes=5)
    assert len(ds) == 2 and [p.name for p in ds.images] == ["a.jpg", "b.png"]
    image, target = ds[1]
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))  # PNG: lossless
    assert target.dtype == torch.int64 and torch.equal(target, torch.from_numpy(label))
    image, target = FolderSegmentation(tmp_path, "train", transforms=eval_transforms())[0]
    assert image.dtype == torch.float32 and image.shape == (3, 4, 3) and target.shape == (4, 3)


def test_folder_suffix_and_ignore_index(tmp_path):
    _write_pair(tmp_path, "val", "0001TP_006690", np.array([[0, 11], [3, 11]]), suffix="_L")
    ds = FolderSegmentation(tmp_path, "val", label_suffix="_L", num_classes=11, ignore_index=11)
    assert torch.equal(ds[0][1], torch.tensor([[0, 255], [3, 255]]))


def test_folder_unknown_class_ids_name_the_file(tmp_path):
    _write_pair(tmp_path, "train", "x", np.array([[0, 7], [9, 255]]))
    ds = FolderSegmentation(tmp_path, "train", num_classes=5)
    with pytest.raises(ValueError, match=r"labels/x\.png: label holds class ids \[7, 9\].*num_classes=5"):
        ds[0]


def test_folder_refuses_colour_labels(tmp_path):
    _write_pair(tmp_path, "train", "x", np.zeros((2, 2)), mode="RGB")
    with pytest.raises(ValueError, match=r"labels/x\.png: label PNG has mode 'RGB'.*single-channel"):
        FolderSegmentation(tmp_path, "train")[0]


def test_folder_missing_split_names_the_folder_and_the_layout(tmp_path):
    _write_pair(tmp_path, "train", "x", np.zeros((2, 2)))
    with pytest.raises(FileNotFoundError, match=r"val/images does not exist.*<split>/labels.*\['train'\]"):
        FolderSegmentation(tmp_path, "val")


@pytest.mark.parametrize("folder, name, mode, size, error, message", [
    ("images", "lonely.png", "RGB", (2, 2), FileNotFoundError, r"no label for 1 image\(s\): .*lonely\.png missing"),
    ("labels", "stray.png", "L", (2, 2), FileNotFoundError, r"1 label\(s\) have no image: .*stray\.png"),
    ("labels", "x.png", "L", (3, 2), ValueError, r"labels/x\.png is 3x2 \(WxH\) but its image .*images/x\.png is 2x2"),
])
def test_folder_unpaired_or_mismatched_files_are_named(tmp_path, folder, name, mode, size, error, message):
    """An image without a label, a label without an image, a label of another size: never dropped quietly."""
    _write_pair(tmp_path, "train", "x", np.zeros((2, 2)))
    Image.new(mode, size).save(tmp_path / "train" / folder / name)
    with pytest.raises(error, match=message):
        FolderSegmentation(tmp_path, "train")[0]


def test_folder_empty_images_folder_is_an_error(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "labels").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train/images holds no \.png/\.jpg/\.jpeg images"):
        FolderSegmentation(tmp_path, "train")


def test_folder_corrupt_label_names_the_file(tmp_path):
    _write_pair(tmp_path, "train", "x", np.zeros((2, 2)))
    (tmp_path / "train" / "labels" / "x.png").write_bytes(b"\x89PNG but cut short")
    with pytest.raises(ValueError, match=r"labels/x\.png: cannot decode this label PNG .*Replace the file"):
        FolderSegmentation(tmp_path, "train")[0]


# --------------------------------------------------------------------------- a root the caller names
def test_a_root_without_voc_is_never_swapped_for_other_data(tmp_path, monkeypatch):
    empty = tmp_path / "mine"
    empty.mkdir()
    monkeypatch.setattr(data, "make_toy_voc", lambda *a, **k: pytest.fail("fell back to a toy set"))
    for source in ("voc", "auto"):
        with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(empty))} holds no Pascal VOC2012 .*expected "
                                                    r"VOCdevkit/VOC2012/ inside it, or JPEGImages/"):
            get_voc_dir(source, root=empty, download=False)

    def offline(root=None, **kwargs):
        raise ConnectionError(f"could not download VOC2012 into {root}")

    monkeypatch.setattr(data, "download_voc2012", offline)
    with pytest.raises(ConnectionError, match="mine"):  # download into the root, or stop: no toy instead
        get_voc_dir("voc", root=empty)


def test_a_toy_root_is_toy_whatever_the_source_says(tmp_path, capsys):
    toy = make_toy_voc(tmp_path / "toy", num_train=2, num_val=1)
    with pytest.raises(ValueError, match=r"holds the generated toy VOC set, not Pascal VOC2012; use source 'toy'"):
        get_voc_dir("voc", root=toy.parents[1])
    for source in ("auto", "toy"):
        assert get_voc_dir(source, root=toy) == toy
        assert capsys.readouterr().out.startswith("dataset: toy VOC")
    assert data.is_toy_voc(toy)


def test_padded_batches_carry_sizes_through_pickling():
    import pickle

    batch = pad_collate([(torch.ones(3, 2, 3), torch.zeros(2, 3, dtype=torch.long)),
                         (torch.ones(3, 4, 2), torch.zeros(4, 2, dtype=torch.long))])
    images, masks = batch  # still unpacks as the pair
    assert batch.sizes == ((2, 3), (4, 2))
    again = pickle.loads(pickle.dumps(batch))  # how a worker process hands it over
    assert isinstance(again, data.PaddedBatch) and again.sizes == batch.sizes and torch.equal(again[0], images)
