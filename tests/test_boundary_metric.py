"""Boundary IoU on hand-made masks, and its erosion against a brute-force distance check.

The hand counts (12 x 12 image, d = 1): a 6 x 6 square of class 1 at rows and
columns 2..7, predicted one column to the right (columns 3..8).

Class 1: each band is the square's 20-pixel rim. The rims share the top and
bottom rows' columns 3..7 (5 + 5 pixels); their left and right sides (columns 2
and 7 against 3 and 8) never meet. I = 10, U = 20 + 20 - 10 = 30: 1/3.

Class 0 (the background; outside the image counts as background's contour, as
in Cheng et al.'s code): each band is the image's 44-pixel outer ring plus the
28-pixel ring around the square (rows 1..8 x columns 1..8 minus the square;
shifted: columns 2..9). Shared: the outer ring (44) and the shifted rings' rows
1 and 8 at columns 2..8 (7 + 7). I = 58, U = 72 + 72 - 58 = 86.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segbook.metrics import BoundaryIoU, ConfusionMatrix, boundary_dilation, inner_boundary


def squares(shift: int = 1, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.zeros(size, size, dtype=torch.int64)
    target[2:8, 2:8] = 1
    pred = torch.zeros_like(target)
    pred[2:8, 2 + shift:8 + shift] = 1
    return pred, target


def brute_force_band(mask: np.ndarray, d: int) -> np.ndarray:
    """Mask pixels with a background pixel (outside the image included) at chessboard distance <= d."""
    height, width = mask.shape
    band = np.zeros_like(mask)
    for i in range(height):
        for j in range(width):
            if not mask[i, j]:
                continue
            for y in range(i - d, i + d + 1):
                for x in range(j - d, j + d + 1):
                    if not (0 <= y < height and 0 <= x < width) or not mask[y, x]:
                        band[i, j] = True
    return band


def test_square_against_shifted_square_by_hand() -> None:
    pred, target = squares()
    metric = BoundaryIoU(num_classes=3, dilation=1).update(pred, target)
    assert metric.intersection.tolist() == [58, 10, 0] and metric.union.tolist() == [86, 30, 0]
    iou = metric.iou
    assert iou[0].item() == pytest.approx(58 / 86) and iou[1].item() == pytest.approx(1 / 3)
    assert math.isnan(iou[2].item())                                       # class 2 is nowhere
    assert metric.miou == pytest.approx((58 / 86 + 1 / 3) / 2)
    # the same pair scores far higher on mIoU: the border error hides among the interior pixels
    region = ConfusionMatrix(3).update(pred, target)
    assert region.iou[1].item() == pytest.approx(30 / 42) and region.miou > metric.miou


def test_a_hallucinated_class_scores_zero() -> None:
    target = torch.zeros(12, 12, dtype=torch.int64)
    pred = target.clone()
    pred[5:7, 5:7] = 1                       # class 1 is not in the target at all
    metric = BoundaryIoU(num_classes=2, dilation=1).update(pred, target)
    # class 0: the outer ring (44) against the outer ring plus the 12-pixel ring around the block
    assert metric.intersection.tolist() == [44, 0] and metric.union.tolist() == [56, 4]
    assert metric.iou.tolist() == [44 / 56, 0.0] and metric.miou == pytest.approx(22 / 56)


def test_identical_masks_score_one() -> None:
    _, target = squares()
    target[9:, 0:4] = 2
    metric = BoundaryIoU(num_classes=4, dilation=2).update(target, target)
    assert metric.iou[:3].tolist() == [1.0, 1.0, 1.0] and math.isnan(metric.iou[3].item())
    assert metric.miou == 1.0


def test_ignored_pixels_are_not_counted() -> None:
    pred, target = squares()
    target[0, 0] = 255        # on background's outer ring: gone from the target's band and from the counts
    metric = BoundaryIoU(num_classes=3, dilation=1).update(pred, target)
    assert metric.intersection.tolist()[:2] == [57, 10] and metric.union.tolist()[:2] == [85, 30]
    # A prediction that is wrong only where the target is ignored scores 1, not a third class at 0.
    _, target = squares()
    target[9:, 9:] = 255
    pred = target.clone()
    pred[9:, 9:] = 2
    metric = BoundaryIoU(num_classes=3, dilation=1).update(pred, target)
    assert metric.miou == 1.0 and math.isnan(metric.iou[2].item())
    everything_ignored = BoundaryIoU(num_classes=3, dilation=1).update(pred, torch.full_like(target, 255))
    assert everything_ignored.union.sum() == 0 and math.isnan(everything_ignored.miou)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_band_matches_brute_force_distance(d: int) -> None:
    g = torch.Generator().manual_seed(d)
    masks = torch.rand(4, 9, 11, generator=g) > 0.35                            # ragged random shapes
    masks[0] = True                                                            # a full mask: only the image edge
    got = inner_boundary(masks, d)
    for mask, band in zip(masks, got):
        assert np.array_equal(band.numpy(), brute_force_band(mask.numpy(), d))


def test_erosion_uses_a_square_not_a_cross() -> None:
    mask = torch.ones(9, 9, dtype=torch.bool)
    mask[4, 4] = False
    band = inner_boundary(mask, 1)
    inner = band[1:-1, 1:-1]                                                   # away from the image edge
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[2:5, 2:5] = True                                                  # all 8 neighbours of the hole
    expected[3, 3] = False
    assert torch.equal(inner, expected)
    assert band[0].all() and band[-1].all() and band[:, 0].all() and band[:, -1].all()


def test_a_wide_band_makes_it_the_region_iou() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 10, 13), generator=g)
    pred = torch.randint(0, 3, (2, 10, 13), generator=g)
    wide = BoundaryIoU(num_classes=3, dilation=20).update(pred, target)
    torch.testing.assert_close(wide.iou, ConfusionMatrix(3).update(pred, target).iou)


def test_dilation_from_the_diagonal() -> None:
    assert boundary_dilation(100, 100) == 3                                    # round(0.02 * 141.4) = 3
    assert boundary_dilation(512, 1024) == 23                                  # round(0.02 * 1144.9) = 23
    assert boundary_dilation(10, 10) == 1                                      # round(0.28) = 0, at least 1
    pred, target = squares(shift=2, size=100)
    by_ratio = BoundaryIoU(num_classes=2).update(pred, target)
    assert torch.equal(by_ratio.iou, BoundaryIoU(num_classes=2, dilation=3).update(pred, target).iou)
    assert not torch.equal(by_ratio.iou, BoundaryIoU(num_classes=2, dilation=1).update(pred, target).iou)


def test_counts_accumulate_over_images_and_merge() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (3, 16, 16), generator=g)
    target[0, :4] = 255
    pred = torch.randint(0, 4, (3, 16, 16), generator=g)
    together = BoundaryIoU(num_classes=4, dilation=2).update(pred, target)
    one_by_one = BoundaryIoU(num_classes=4, dilation=2)
    for p, t in zip(pred, target):
        one_by_one.update(p, t)                                                # (H, W) works too
    assert torch.equal(together.intersection, one_by_one.intersection)
    assert torch.equal(together.union, one_by_one.union)
    halves = BoundaryIoU(num_classes=4, dilation=2).update(pred[:1], target[:1])
    halves.merge(BoundaryIoU(num_classes=4, dilation=2).update(pred[1:], target[1:]))
    assert torch.equal(halves.union, together.union)
    together.reset()
    assert together.union.sum() == 0
    with pytest.raises(ValueError, match="cannot merge"):
        halves.merge(BoundaryIoU(num_classes=4, dilation=3))


def test_bad_input() -> None:
    metric = BoundaryIoU(num_classes=3, dilation=1)
    with pytest.raises(TypeError, match="argmax"):
        metric.update(torch.randn(1, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="outside 0..2"):
        metric.update(torch.full((8, 8), 5), torch.zeros(8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="dilation must be"):
        BoundaryIoU(num_classes=3, dilation=0)
    with pytest.raises(TypeError, match="bool masks"):
        inner_boundary(torch.zeros(4, 4), 1)
