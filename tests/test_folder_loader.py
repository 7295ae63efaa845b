"""load_folder and FolderSegmentation's CamVid layout: a tree written here is read back, pixel for pixel.

The loaders must be the ones ``load_voc`` builds (same transforms, seeded
sampler and validation collate), so they are compared with a pipeline put
together by hand from those pieces, and with ``load_voc``'s own loaders.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import segbook.data as data
from segbook.data import FolderSegmentation, eval_transforms, load_voc, make_toy_voc, train_transforms
from segbook.data.folder import load_folder
from segbook.data.voc import TOY_MARKER

CAMVID_NAMES = ["sky", "road", "car", "tree"]
PALETTE = [(128, 128, 128), (128, 64, 128), (64, 0, 128), (128, 128, 0)]


def _write(root: Path, image_dir: str, label_dir: str, stem: str, label: np.ndarray, seed: int) -> np.ndarray:
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / label_dir).mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*label.shape, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / image_dir / f"{stem}.png")
    Image.fromarray(label.astype(np.uint8), mode="L").save(root / label_dir / f"{stem}.png")
    return pixels


def _labels(h: int, w: int, seed: int, num_classes: int = 4) -> np.ndarray:
    label = np.random.default_rng(seed).integers(0, num_classes, (h, w))
    label[0, 0] = 255                                                   # an ignore pixel passes through
    return label


@pytest.fixture
def camvid(tmp_path) -> tuple[Path, dict]:
    """The tutorial's layout: train_images/, train_labels/, valid_images/, valid_labels/ (class-index PNGs)."""
    written = {}
    for split, count, size in (("train", 5, (12, 16)), ("valid", 2, (10, 13))):
        for k in range(count):
            stem = f"0001TP_{k:06d}"
            label = _labels(*size, seed=k + 10 * len(split))
            pixels = _write(tmp_path, f"{split}_images", f"{split}_labels", stem, label, seed=k)
            written[split, stem] = (pixels, label)
    return tmp_path, written


def test_camvid_layout_is_read_pixel_for_pixel(camvid) -> None:
    root, written = camvid
    ds = FolderSegmentation(root, "valid", layout="camvid", num_classes=4)
    assert len(ds) == 2 and ds.image_dir == root / "valid_images" and ds.label_dir == root / "valid_labels"
    for k, path in enumerate(ds.images):
        pixels, label = written["valid", path.stem]
        image, target = ds[k]
        assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))
        assert target.dtype == torch.int64 and torch.equal(target, torch.from_numpy(label))


def test_load_folder_batches_and_whole_image_validation(camvid) -> None:
    root, written = camvid
    train, val = load_folder(root, 2, (8, 8), 4, CAMVID_NAMES, PALETTE, layout="camvid", verbose=False)
    images, masks = next(iter(train))
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.float32
    assert masks.shape == (2, 8, 8) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= {0, 1, 2, 3, 255}
    assert len(train) == 2                                              # 5 images, batches of 2, last dropped
    assert val.dataset.split == "valid"                                 # found on its own: no "val" here
    assert val.dataset.class_names == CAMVID_NAMES and train.dataset.dataset.palette == PALETTE
    val_images, val_masks = next(iter(val))
    assert val_images.shape == (2, 3, 10, 13) and val_masks.shape == (2, 10, 13)
    for k, path in enumerate(val.dataset.images):
        _, label = written["valid", path.stem]
        assert torch.equal(val_masks[k], torch.from_numpy(label))


def test_load_folder_is_load_voc_s_pipeline(camvid) -> None:
    # The same seed must give exactly the batches of a loader assembled by hand from load_voc's pieces.
    root, _ = camvid
    train, val = load_folder(root, 2, (8, 8), 4, layout="camvid", seed=3, verbose=False, num_workers=0)
    dataset = FolderSegmentation(root, "train", train_transforms((8, 8), (0.5, 2.0)), layout="camvid")
    by_hand = DataLoader(data.SeededItems(dataset), batch_size=2, drop_last=True,
                         generator=torch.Generator().manual_seed(3),
                         sampler=data.SeededShuffle(len(dataset), torch.Generator().manual_seed(3)))
    for (images, masks), (hand_images, hand_masks) in zip(train, by_hand):
        assert torch.equal(images, hand_images) and torch.equal(masks, hand_masks)
    other = load_folder(root, 2, (8, 8), 4, layout="camvid", seed=4, verbose=False)[0]
    assert not torch.equal(next(iter(other))[0], next(iter(train))[0])
    image, label = FolderSegmentation(root, "valid", eval_transforms(), layout="camvid")[0]
    torch.testing.assert_close(next(iter(val))[0][0, :, :10, :13], image)


def test_validation_collate_is_load_voc_s(tmp_path, camvid) -> None:
    voc = make_toy_voc(tmp_path / "voc", num_train=2, num_val=1, seed=0)
    (voc / TOY_MARKER).unlink()                                         # stands in for a real VOC2012
    _, voc_val = load_voc(2, 32, source="voc", root=voc, verbose=False)
    _, folder_val = load_folder(camvid[0], 2, 8, 4, layout="camvid", verbose=False)
    assert folder_val.collate_fn is voc_val.collate_fn


def test_nested_layout_takes_val(tmp_path) -> None:
    for split in ("train", "val"):
        for k in range(2):
            _write(tmp_path, f"{split}/images", f"{split}/labels", f"img{k}", _labels(9, 9, seed=k), seed=k)
    train, val = load_folder(tmp_path, 2, 8, 4, verbose=False)
    assert val.dataset.split == "val" and val.dataset.layout == "nested" and len(train.dataset) == 2
    assert val.dataset.class_names is None and val.dataset.palette is None


def test_a_class_id_out_of_range_names_the_file(camvid) -> None:
    root, _ = camvid
    bad = root / "valid_labels" / "0001TP_000001.png"
    label = np.zeros((10, 13), dtype=np.uint8)
    label[3, 4] = 7
    Image.fromarray(label, mode="L").save(bad)
    _, val = load_folder(root, 2, 8, 4, layout="camvid", verbose=False)
    with pytest.raises(ValueError, match=rf"{bad}: label holds class ids \[7\], but num_classes=4 allows 0..3"):
        next(iter(val))


def test_a_missing_folder_names_the_path_and_the_layout(camvid, tmp_path) -> None:
    root, _ = camvid
    (root / "valid_labels" / "0001TP_000000.png").unlink()
    (root / "valid_labels" / "0001TP_000001.png").unlink()
    (root / "valid_labels").rmdir()
    with pytest.raises(FileNotFoundError, match=rf"{root / 'valid_labels'} does not exist\. .*"
                                                r"<root>/<split>_labels/<stem><label_suffix>\.png.*"
                                                r"splits found in .*\['train', 'valid'\]"):
        load_folder(root, 2, 8, 4, layout="camvid", verbose=False)
    # the CamVid tree read with the default layout: the error points at layout='camvid'
    with pytest.raises(FileNotFoundError, match=rf"{root / 'train' / 'images'} does not exist\. "
                                                r".*<root>/<split>/images/.*layout='camvid': pass that"):
        load_folder(root, 2, 8, 4, verbose=False)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nowhere'}/train_images does not exist.*none"):
        load_folder(tmp_path / "nowhere", 2, 8, 4, layout="camvid", verbose=False)


def test_bad_arguments_say_what_to_pass(camvid) -> None:
    root, _ = camvid
    with pytest.raises(ValueError, match=r"layout='flat': use one of 'nested', 'camvid'"):
        FolderSegmentation(root, "train", layout="flat")
    with pytest.raises(ValueError, match=r"class_names has 3 names for num_classes=4"):
        load_folder(root, 2, 8, 4, CAMVID_NAMES[:3], layout="camvid", verbose=False)
    with pytest.raises(ValueError, match=r"palette has 2 colours for num_classes=4"):
        load_folder(root, 2, 8, 4, palette=PALETTE[:2], layout="camvid", verbose=False)
    with pytest.raises(ValueError, match=r"integers 0..255; got \[\(0, 0, 300\)\]"):
        load_folder(root, 2, 8, 4, palette=PALETTE[:3] + [(0, 0, 300)], layout="camvid", verbose=False)


def test_verbose_says_what_was_loaded(camvid, capsys) -> None:
    load_folder(camvid[0], 2, 8, 4, layout="camvid")
    assert capsys.readouterr().out.strip().endswith("(layout='camvid') | train 5, valid 2 images | 4 classes")
