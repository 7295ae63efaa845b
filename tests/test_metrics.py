"""ConfusionMatrix against hand-computed examples and a brute-force pixel loop."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segbook.data.voc import IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES
from segbook.metrics import ConfusionMatrix, confusion_matrix

# A 2x3 image with 3 classes; (target, pred) pairs pixel by pixel:
# (0,0) (0,1) (1,1) / (1,1) (2,2) (2,0)
TARGET = torch.tensor([[0, 0, 1], [1, 2, 2]])
PRED = torch.tensor([[0, 1, 1], [1, 2, 0]])


def test_hand_made_3_classes():
    cm = ConfusionMatrix(3).update(PRED, TARGET)
    # rows = target, cols = prediction
    assert cm.matrix.tolist() == [[1, 1, 0],
                                  [0, 2, 0],
                                  [1, 0, 1]]
    assert cm.matrix.dtype == torch.int64
    expected_iou = [1 / 3,  # class 0: TP 1, target 2, predicted 2 -> 1 / (2 + 2 - 1)
                    2 / 3,  # class 1: TP 2, target 2, predicted 3 -> 2 / (2 + 3 - 2)
                    1 / 2]  # class 2: TP 1, target 2, predicted 1 -> 1 / (2 + 1 - 1)
    assert cm.iou.tolist() == pytest.approx(expected_iou)
    assert cm.miou == pytest.approx(0.5)  # (1/3 + 2/3 + 1/2) / 3 = 1.5 / 3
    assert cm.pixel_accuracy == pytest.approx(4 / 6)  # 4 of 6 on the diagonal
    assert cm.class_accuracy.tolist() == pytest.approx([1 / 2, 2 / 2, 1 / 2])  # TP / target pixels


def test_from_matrix_hand_made_2_classes():
    cm = ConfusionMatrix.from_matrix([[50, 10],
                                      [5, 35]])
    # class 0: 50 / (60 + 55 - 50) = 50 / 65; class 1: 35 / (40 + 45 - 35) = 35 / 50
    assert cm.iou.tolist() == pytest.approx([50 / 65, 0.7])
    assert cm.miou == pytest.approx((50 / 65 + 0.7) / 2)
    assert cm.pixel_accuracy == pytest.approx(85 / 100)
    with pytest.raises(ValueError, match="square"):
        ConfusionMatrix.from_matrix(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="non-negative integer"):
        ConfusionMatrix.from_matrix([[1, -1], [0, 2]])


def test_ignore_index_pixels_are_not_counted():
    target = TARGET.clone()
    target[0, 1] = IGNORE_INDEX  # was the (0, 1) mistake
    cm = ConfusionMatrix(3).update(PRED, target)
    assert cm.total == 5
    assert cm.matrix.tolist() == [[1, 0, 0], [0, 2, 0], [1, 0, 1]]
    # class 0: 1 / (1 + 2 - 1) = 1/2; class 1: 2 / (2 + 2 - 2) = 1; class 2: 1 / (2 + 1 - 1) = 1/2
    assert cm.iou.tolist() == pytest.approx([0.5, 1.0, 0.5])
    assert cm.pixel_accuracy == pytest.approx(4 / 5)
    all_ignored = ConfusionMatrix(3).update(PRED, torch.full_like(TARGET, IGNORE_INDEX))
    assert all_ignored.total == 0 and math.isnan(all_ignored.miou) and math.isnan(all_ignored.pixel_accuracy)


def test_custom_and_no_ignore_index():
    target = TARGET.clone()
    target[0, 1] = -1
    assert ConfusionMatrix(3, ignore_index=-1).update(PRED, target).total == 5
    with pytest.raises(ValueError, match=r"target holds class ids \[255\] outside 0\.\.2\."):
        ConfusionMatrix(3, ignore_index=None).update(PRED, torch.full_like(TARGET, 255))


def test_class_only_in_prediction_counts_as_zero():
    target = torch.tensor([[0, 0], [0, 1]])
    pred = torch.tensor([[0, 2], [0, 1]])  # class 2 hallucinated
    cm = ConfusionMatrix(3).update(pred, target)
    # class 0: 2 / (3 + 2 - 2) = 2/3; class 1: 1 / (1 + 1 - 1) = 1; class 2: 0 / (0 + 1 - 0) = 0
    assert cm.iou.tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert cm.miou == pytest.approx(5 / 9)  # (2/3 + 1 + 0) / 3, not (2/3 + 1) / 2


def test_class_in_neither_is_nan_and_left_out():
    cm = ConfusionMatrix(4).update(PRED, TARGET)  # class 3 never occurs
    iou = cm.iou
    assert math.isnan(iou[3]) and not iou[:3].isnan().any()
    assert cm.miou == pytest.approx(0.5)  # the same three classes as the 3-class example
    assert math.isnan(cm.class_accuracy[3])
    d = cm.as_dict()
    assert set(d) == {"pixel_acc", "miou", "iou"}
    assert all(type(v) is float for v in [d["pixel_acc"], d["miou"], *d["iou"]])
    assert math.isnan(d["iou"][3]) and d["miou"] == pytest.approx(0.5)


def test_high_accuracy_low_miou_on_a_small_object():
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, 4:6, 4:6] = VOC_CLASSES.index("person")  # 4 of 100 pixels
    pred = torch.zeros_like(target)  # "everything is background"
    cm = ConfusionMatrix(NUM_CLASSES).update(pred, target)
    assert cm.pixel_accuracy == pytest.approx(0.96)  # 96 / 100
    # background: 96 / (96 + 100 - 96) = 0.96; person: 0 / (4 + 0 - 0) = 0
    assert cm.miou == pytest.approx(0.48)


def test_two_updates_equal_one_on_the_concatenation():
    g = torch.Generator().manual_seed(0)
    t1, t2 = torch.randint(0, 5, (2, 7, 9), generator=g), torch.randint(0, 5, (3, 7, 9), generator=g)
    p1, p2 = torch.randint(0, 5, (2, 7, 9), generator=g), torch.randint(0, 5, (3, 7, 9), generator=g)
    t1[0, :2] = IGNORE_INDEX
    twice = ConfusionMatrix(5).update(p1, t1).update(p2, t2)
    once = ConfusionMatrix(5).update(torch.cat([p1, p2]), torch.cat([t1, t2]))
    assert torch.equal(twice.matrix, once.matrix)
    assert twice.miou == once.miou and twice.pixel_accuracy == once.pixel_accuracy
    merged = ConfusionMatrix(5).update(p1, t1)
    merged += ConfusionMatrix(5).update(p2, t2)
    assert torch.equal(merged.matrix, once.matrix)
    twice.reset()
    assert twice.total == 0 and twice.matrix.shape == (5, 5)


def test_merge_rejects_other_settings():
    with pytest.raises(ValueError, match="3 classes.*into one for 4 classes"):
        ConfusionMatrix(4).merge(ConfusionMatrix(3))
    with pytest.raises(TypeError, match="ConfusionMatrix"):
        ConfusionMatrix(4).merge(torch.zeros(4, 4))


def brute_force(pred, target, num_classes, ignore_index):
    """Scores by a plain loop over pixels, sharing no code with segbook.metrics."""
    counts = [[0] * num_classes for _ in range(num_classes)]
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
        if t != ignore_index:
            counts[t][p] += 1
    ious = []
    for c in range(num_classes):
        tp = counts[c][c]
        union = sum(counts[c]) + sum(row[c] for row in counts) - tp
        ious.append(tp / union if union else math.nan)
    present = [x for x in ious if not math.isnan(x)]
    total = sum(map(sum, counts))
    acc = sum(counts[c][c] for c in range(num_classes)) / total if total else math.nan
    return counts, ious, (sum(present) / len(present) if present else math.nan), acc


@settings(max_examples=60, deadline=None)
@given(num_classes=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6), b=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1), ignore_share=st.floats(0, 1))
def test_matches_brute_force(num_classes, h, w, b, seed, ignore_share):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, (b, h, w))
    target[rng.random((b, h, w)) < ignore_share] = IGNORE_INDEX
    pred = rng.integers(0, num_classes, (b, h, w))
    counts, ious, miou, acc = brute_force(pred, target, num_classes, IGNORE_INDEX)
    cm = ConfusionMatrix(num_classes).update(torch.from_numpy(pred), torch.from_numpy(target))
    assert cm.matrix.tolist() == counts
    np.testing.assert_allclose(cm.iou.numpy(), ious, equal_nan=True)
    np.testing.assert_allclose([cm.miou, cm.pixel_accuracy], [miou, acc], equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_any_integer_dtype_and_2d_input(dtype):
    target = TARGET.clone()
    target[1, 0] = IGNORE_INDEX
    expected = ConfusionMatrix(3).update(PRED, target).matrix
    assert torch.equal(ConfusionMatrix(3).update(PRED.to(dtype), target.to(dtype)).matrix, expected)
    assert torch.equal(confusion_matrix(PRED[None].numpy(), target[None].numpy(), 3), expected)


def test_bad_target_ids_are_named():
    target = TARGET.clone()
    target[0, 0], target[1, 1] = 21, -3
    message = r"target holds class ids \[-3, 21\] outside 0\.\.2 and not the ignore index 255"
    with pytest.raises(ValueError, match=message):
        ConfusionMatrix(3).update(PRED, target)


def test_bad_pred_ids_are_named():
    pred = PRED.clone()
    pred[0, 0] = 3
    with pytest.raises(ValueError, match=r"pred holds class ids \[3\] outside 0\.\.2; the model should have 3 output"):
        ConfusionMatrix(3).update(pred, TARGET)


def test_shape_dtype_and_device_errors():
    with pytest.raises(ValueError, match=r"pred \(2, 3\) and target \(1, 2, 3\)"):
        ConfusionMatrix(3).update(PRED, TARGET[None])
    logits = torch.randn(1, 3, 2, 3)
    with pytest.raises(TypeError, match=r"pass logits\.argmax\(1\)"):
        ConfusionMatrix(3).update(logits, TARGET[None])
    with pytest.raises(TypeError, match="integer class ids"):
        ConfusionMatrix(3).update(PRED, TARGET.float())
    with pytest.raises(ValueError, match="pred is on meta and target on cpu"):
        ConfusionMatrix(3).update(PRED.to("meta"), TARGET)
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        ConfusionMatrix(2, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="positive int"):
        ConfusionMatrix(0)


def test_table_and_repr():
    cm = ConfusionMatrix(4, class_names=["sky", "road", "car", "bike"]).update(PRED, TARGET)
    lines = cm.table().splitlines()
    assert lines[0].split() == ["class", "IoU", "pixels"]
    assert lines[1].split() == ["sky", "0.333", "2"]
    assert lines[3].split() == ["car", "0.500", "2"]
    assert lines[4].split() == ["bike", "-", "0"]
    assert lines[-2].split()[:2] == ["mIoU", "0.500"] and "over 3 of 4 classes" in lines[-2]
    assert lines[-1].split() == ["pixel", "accuracy", "0.667"]
    assert cm.table(class_names="ABCD", digits=1).splitlines()[1].split() == ["A", "0.3", "2"]
    assert ConfusionMatrix(2).table().splitlines()[1].split()[:2] == ["class", "0"]
    assert repr(cm) == "ConfusionMatrix(num_classes=4, pixels=6, pixel_acc=0.667, miou=0.500)"


