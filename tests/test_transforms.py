"""Joint transforms: the mask moves with the image, stays class ids (nearest), pads with 255."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from segbook.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, RandomScale, denormalize, eval_transforms,
                                     train_transforms)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _pair(height, width, seed=0, values=(0, 3, 7, 20, 255)):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
    mask = torch.tensor(values)[torch.randint(0, len(values), (height, width), generator=g)]  # (H, W) int64
    return image, mask


def _apply(transform, image, mask, seed):
    torch.manual_seed(seed)
    return transform(tv_tensors.Image(image), tv_tensors.Mask(mask))


@pytest.mark.parametrize("size", [(40, 50), (120, 160), (96, 128)])
def test_train_output_shapes_dtypes_and_plain_tensors(size):
    image, mask = _pair(*size)
    for seed in range(5):
        out_image, out_mask = _apply(train_transforms((96, 128)), image, mask, seed)
        assert out_image.shape == (3, 96, 128) and out_image.dtype == torch.float32
        assert out_mask.shape == (96, 128) and out_mask.dtype == torch.int64
        assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
    assert train_transforms(64)(tv_tensors.Image(image), tv_tensors.Mask(mask))[1].shape == (64, 64)


def test_mask_values_stay_a_subset_plus_255():
    """Nearest neighbour only: a checkerboard of 0 and 20 never produces 10 (what bilinear would)."""
    image = torch.zeros(3, 37, 53, dtype=torch.uint8)
    mask = ((torch.arange(37)[:, None] + torch.arange(53)[None, :]) % 2) * 20  # (H, W) in {0, 20}
    for seed in range(30):
        _, out = _apply(train_transforms((48, 64), scale_range=(0.3, 2.5)), image, mask, seed)
        assert set(out.unique().tolist()) <= {0, 20, 255}
        assert {0, 20} <= set(out.unique().tolist())


def test_random_scale_resizes_the_mask_like_nearest_interpolate():
    """F.interpolate(mode='nearest') is the independent reference for the mask's resize."""
    image, mask = _pair(31, 45, values=(0, 1, 2, 255))
    for scale, size in ((2.0, (62, 90)), (0.6, (19, 27))):
        _, out = RandomScale((scale, scale))(tv_tensors.Image(image), tv_tensors.Mask(mask))
        expected = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()  # (h, w)
        assert torch.equal(out.as_subclass(torch.Tensor), expected)


def test_uint8_and_channel_masks_come_out_int64_hw_with_255_kept():
    image, mask = _pair(30, 40)
    for given in (mask.to(torch.uint8), mask[None]):  # (H, W) uint8 and (1, H, W)
        out_image, out_mask = eval_transforms()(tv_tensors.Image(image), tv_tensors.Mask(given))
        assert out_mask.dtype == torch.int64 and out_mask.shape == (30, 40)
        assert torch.equal(out_mask, mask)


def test_crop_larger_than_image_pads_image_with_0_and_mask_with_255():
    image = torch.full((3, 20, 30), 255, dtype=torch.uint8)  # white
    mask = torch.full((20, 30), 4)
    for seed in range(10):
        out_image, out_mask = _apply(train_transforms((40, 50), scale_range=None, hflip=False), image, mask, seed)
        raw = denormalize(out_image)  # (3, 40, 50) back in [0, 1], before normalisation
        inside = out_mask != 255
        assert inside.sum() == 20 * 30 and set(out_mask.unique().tolist()) == {4, 255}
        rows, cols = inside.nonzero().T
        assert rows.max() - rows.min() + 1 == 20 and cols.max() - cols.min() + 1 == 30  # one whole block
        assert torch.allclose(raw[:, inside], torch.ones(()), atol=1e-5)  # the image where the mask is
        assert torch.equal(out_image[:, ~inside], torch.zeros(3, int((~inside).sum())))  # ImageNet's mean: 0 once normalised


def test_flip_moves_image_and_mask_together():
    """The image's red channel encodes the label, so any mismatch shows up pixel by pixel."""
    mask = torch.randint(0, 21, (24, 32), generator=torch.Generator().manual_seed(1))
    image = torch.stack([mask * 10, torch.zeros_like(mask), torch.zeros_like(mask)]).to(torch.uint8)
    flipped = 0
    for seed in range(12):
        out_image, out_mask = _apply(train_transforms((24, 32), scale_range=None), image, mask, seed)
        decoded = torch.round(denormalize(out_image)[0] * 255 / 10).long()  # (24, 32)
        assert torch.equal(decoded, out_mask)
        assert torch.equal(out_mask, mask) or torch.equal(out_mask, mask.flip(-1))
        flipped += torch.equal(out_mask, mask.flip(-1))
    assert 0 < flipped < 12  # both outcomes happen


def test_scale_crop_and_flip_keep_image_and_mask_aligned():
    """Blocks of one class: away from block edges the resized image still encodes its label exactly."""
    blocks = torch.randint(0, 21, (6, 8), generator=torch.Generator().manual_seed(2))
    mask = blocks.repeat_interleave(12, 0).repeat_interleave(12, 1)  # (72, 96)
    image = torch.stack([mask * 10, mask * 5, torch.zeros_like(mask)]).to(torch.uint8)
    for seed in range(10):
        out_image, out_mask = _apply(train_transforms((48, 64), scale_range=(0.5, 2.0)), image, mask, seed)
        decoded = denormalize(out_image)[0] * 255 / 10  # (48, 64)
        pooled = F.max_pool2d(out_mask[None, None].float(), 5, 1, 2) == -F.max_pool2d(
            -out_mask[None, None].float(), 5, 1, 2)  # the 5x5 neighbourhood holds one value
        interior = pooled[0, 0] & (out_mask != 255)
        interior[:2], interior[-2:], interior[:, :2], interior[:, -2:] = False, False, False, False  # crop edges
        assert interior.sum() > 100
        assert torch.allclose(decoded[interior], out_mask[interior].float(), atol=0.2)


def test_eval_transform_is_deterministic_and_only_normalises():
    image, mask = _pair(33, 47)
    first = eval_transforms()(tv_tensors.Image(image), tv_tensors.Mask(mask))
    torch.manual_seed(123)
    second = eval_transforms()(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.allclose(first[0], (image / 255.0 - MEAN) / STD, atol=1e-6)
    assert torch.equal(first[1], mask)


def test_denormalize_inverts_normalisation_on_batches_too():
    images = torch.rand(2, 3, 5, 6)
    assert torch.allclose(denormalize((images - MEAN) / STD), images, atol=1e-6)
    assert denormalize(torch.full((3, 2, 2), 100.0)).max() == 1.0  # clamped for display


@pytest.mark.parametrize("crop", [0, (96,), (96, -1)])
def test_bad_crop_size_says_what_to_give(crop):
    with pytest.raises(ValueError, match=r"crop_size=.*\(height, width\)"):
        train_transforms(crop)


def test_bad_scale_range_says_what_to_give():
    with pytest.raises(ValueError, match=r"scale_range=\(2.0, 0.5\).*0 < low <= high"):
        train_transforms(32, scale_range=(2.0, 0.5))
