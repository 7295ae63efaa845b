"""Mask classification's loss: match predicted masks to true ones, then score the pairs (DETR's set criterion).

A mask-classification model predicts N (mask, class) pairs in no particular
order, while the label of an image holds T regions, one per class present
(semantic segmentation: every pixel of a class is one region). Before anything
can be scored, each true region needs *its* prediction: the Hungarian algorithm
picks the one-to-one assignment of T of the N queries to the T regions with the
lowest total cost (Carion et al., 2020; Cheng et al., 2021). The cost of pairing
query n with region t is what the loss would be (Mask2Former's weights):
``2 * (-p_n(class_t)) + 5 * BCE(mask_n, region_t) + 5 * dice(mask_n, region_t)``.
Matched queries are then trained towards their region's class and mask, and the
N - T others towards the extra class "no object" (index K, weighted 0.1 so that
the many unmatched queries do not drown the few matched ones).

Mask2Former computes both the matching cost and the mask losses on P points per
mask rather than on every pixel (Cheng et al., 2022): the matching on P points
drawn uniformly (the same for all masks of an image), the loss on P points
chosen by chapter 6's importance sampling (``oversample_ratio`` k = 3, 75 % of
them the most uncertain, i.e. the logit nearest 0). P = 12544 = 112 x 112, against
128 x 128 cells of a 512 x 512 crop's stride-4 mask, and up to 262144 pixels at
the input size: the loss's memory then grows with P, not with the image.

Two departures from the reference implementations (detectron2's Mask2Former and
Hugging Face ``transformers``), both named in the tests:

* maps are read at points with ``padding_mode="border"``, as everywhere in this
  book's point code (see :mod:`segbook.models.pointrend`): with zero padding a
  region that touches the image's edge reads as half there, and every edge
  looks uncertain;
* pixels labelled ``ignore_index`` (VOC's 255 border band) count for no mask: each
  point carries the weight ``bilinear(counted)``, the fraction of its four
  neighbouring pixels that are not ignored, and its label is read from those
  alone. The references turn 255 into "in no region", i.e. background for every mask.
  Without ignored pixels and away from the edges the two give the same numbers
  (the tests check the matching and the loss against ``transformers``).

Shape letters: B batch, K classes (K + 1 with "no object"), N queries, T regions
of one image, R matched pairs of the batch (sum of the T), H x W the label,
h x w the mask logits' grid (stride 4), P points. Point coordinates are (x, y) in
[0, 1] x [0, 1] of the whole map, as in chapter 6.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from segbook.data.voc import IGNORE_INDEX
from segbook.models.base import resize_to
from segbook.models.pointrend import get_uncertain_point_coords_with_randomness, point_sample

__all__ = ["LOSS_SETTINGS", "dense_mask_losses", "hungarian_match", "mask2former_loss", "mask_uncertainty",
           "matching_cost", "pairwise_mask_costs",
           "point_mask_losses", "semantic_targets"]

# The paper's settings (Cheng et al., 2022, and its detectron2 configs), used by default.
LOSS_SETTINGS = dict(num_points=12544, oversample_ratio=3.0, importance_sample_ratio=0.75,
                     class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1)

_EPS = 1e-6  # keeps a sum of point weights away from 0 where every point of a mask is ignored


def semantic_targets(target: Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
    """A semantic label map as sets of regions: one binary mask per class present, and the counted pixels.

    Args:
        target: (B, H, W) class ids in 0..K-1, or ``ignore_index``.
        num_classes: K.

    Returns:
        ``regions``: per image ``(classes, masks)``: classes (T,) int64 ascending, masks (T, H, W)
        float, 1 where the pixel holds that class; ``counted``: (B, H, W) float, 0 on ignored pixels.

    A class id outside 0..K-1 that is not ``ignore_index`` raises: it would
    otherwise become a region whose class the model cannot name.
    """
    if target.dim() != 3 or target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"target must be (B, H, W) integer class ids, got {tuple(target.shape)} {target.dtype}.")
    present = torch.unique(target)
    bad = [int(c) for c in present if c != ignore_index and not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"target holds class ids {bad} outside 0..{num_classes - 1} (ignore_index={ignore_index} "
                         f"aside); the model predicts K = {num_classes} classes. Check the dataset's labels, or "
                         "build the model with num_classes covering them.")
    regions = []
    for label in target:                                                          # (H, W)
        classes = torch.unique(label)                                             # ascending
        classes = classes[classes != ignore_index].long()                         # (T,)
        masks = (label[None] == classes[:, None, None]).float()                   # (T, H, W)
        regions.append((classes, masks))
    return regions, (target != ignore_index).float()                              # (B, H, W)


def _read(maps: Tensor, coords: Tensor) -> Tensor:
    """``maps`` (R, H, W) read bilinearly at ``coords`` (R, P, 2) in [0, 1] x [0, 1]: (R, P), edges as borders."""
    return point_sample(maps[:, None], coords, padding_mode="border")[:, 0]      # (R, P)


def _counted_labels(inside: Tensor, weights: Tensor) -> Tensor:
    """A mask read at points from counted pixels only: ``inside`` (R, P) over ``weights`` (R or 1, P).

    ``inside`` is the mask read bilinearly (ignored pixels are in no mask, so they
    read 0) and ``weights`` the counted map read the same way, the share of a
    point's four neighbours that count; their ratio is the mask's mean over the
    counted neighbours alone (0 where none counts).
    """
    labels = torch.where(weights > 0, inside / weights.clamp_min(_EPS), torch.zeros_like(inside))  # (R, P)
    return labels.clamp_(0, 1)


def pairwise_mask_costs(logits: Tensor, labels: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Sigmoid cross entropy and dice loss of every predicted mask against every true one, on shared points.

    Args:
        logits: (N, P) mask logits of the queries.
        labels: (T, P) true masks in [0, 1].
        weights: (P,) how much each point counts (1, or less near ignored pixels).

    Returns:
        ``bce`` (N, T): the weighted mean over points of BCE(logit, label);
        ``dice`` (N, T): 1 - (2 sum w p y + 1) / (sum w p + sum w y + 1), p = sigmoid(logit).

    Both are matrix products, not an N x T loop: BCE(x, y) = y * BCE(x, 1) + (1 - y) * BCE(x, 0).
    """
    w = weights[None]                                                             # (1, P)
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")   # (N, P)
    negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")  # (N, P)
    counted = weights.sum().clamp_min(_EPS)                                       # ()
    bce = ((positive * w) @ labels.T + (negative * w) @ (1 - labels).T) / counted  # (N, T)
    probs = logits.sigmoid() * w                                                  # (N, P)
    overlap = 2 * probs @ labels.T                                                # (N, T)
    sizes = probs.sum(-1)[:, None] + (labels * w).sum(-1)[None, :]                # (N, T)
    return bce, 1 - (overlap + 1) / (sizes + 1)


def uniform_points(count: int, num_points: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(count, P, 2) points drawn uniformly in [0, 1] x [0, 1] (the matching's points)."""
    return torch.rand(count, num_points, 2, device=like.device, dtype=torch.float32, generator=generator)


def matching_cost(logits: Tensor, masks: Tensor, classes: Tensor, true_masks: Tensor, counted: Tensor,
                  coords: Tensor, *, class_weight: float = LOSS_SETTINGS["class_weight"],
                  mask_weight: float = LOSS_SETTINGS["mask_weight"],
                  dice_weight: float = LOSS_SETTINGS["dice_weight"]) -> Tensor:
    """The cost of pairing each query with each region of one image: (N, T).

    Args:
        logits: (N, K + 1) class logits. masks: (N, h, w) mask logits.
        classes: (T,) the regions' classes. true_masks: (T, H, W). counted: (H, W), 0 on ignored pixels.
        coords: (1, P, 2) the points every mask is read at.

    ``class_weight * (-p_n(class_t)) + mask_weight * BCE + dice_weight * dice``, the
    mask terms on the points (:func:`pairwise_mask_costs`). The class term is minus
    the probability rather than its log, as DETR: bounded, so one confident
    mistake cannot outweigh the masks.
    """
    point_logits = _read(masks, coords.expand(len(masks), -1, -1))                # (N, P)
    weights = _read(counted[None], coords)                                        # (1, P)
    labels = _counted_labels(_read(true_masks, coords.expand(len(classes), -1, -1)), weights)  # (T, P)
    bce, dice = pairwise_mask_costs(point_logits, labels, weights[0])             # (N, T) each
    class_cost = -logits.softmax(-1)[:, classes]                                  # (N, T)
    return class_weight * class_cost + mask_weight * bce + dice_weight * dice     # (N, T)


@torch.no_grad()
def hungarian_match(pred_logits: Tensor, pred_masks: Tensor, regions: Sequence[tuple[Tensor, Tensor]],
                    counted: Tensor, *, num_points: int = LOSS_SETTINGS["num_points"],
                    generator: torch.Generator | None = None, **weights: float) -> list[tuple[Tensor, Tensor]]:
    """The lowest-cost one-to-one assignment of queries to regions, image by image.

    Args:
        pred_logits: (B, N, K + 1) class logits.
        pred_masks: (B, N, h, w) mask logits.
        regions, counted: from :func:`semantic_targets`.
        num_points: P uniform points per image, shared by all its masks.
        weights: ``class_weight``, ``mask_weight``, ``dice_weight`` of :func:`matching_cost`.

    Returns:
        Per image ``(queries, targets)``, two int64 tensors of length T (on the CPU):
        query ``queries[i]`` is matched with region ``targets[i]``; queries ascending.

    A non-finite cost (a diverged model) is replaced by the largest float, so the
    assignment still exists and the loss, not the matcher, reports the NaN.
    """
    matches = []
    for logits, masks, (classes, true_masks), image_counted in zip(pred_logits, pred_masks, regions, counted):
        if len(classes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            matches.append((empty, empty))
            continue
        coords = uniform_points(1, num_points, masks, generator)                  # (1, P, 2)
        cost = matching_cost(logits.float(), masks.float(), classes, true_masks, image_counted, coords, **weights)
        big = torch.finfo(cost.dtype).max
        cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)            # (N, T)
        queries, targets = linear_sum_assignment(cost.cpu().numpy())
        matches.append((torch.as_tensor(queries, dtype=torch.int64), torch.as_tensor(targets, dtype=torch.int64)))
    return matches


def mask_uncertainty(logits: Tensor) -> Tensor:
    """Minus the distance of a mask logit from 0: (R, 1, ...) -> (R, 1, ...); 0 is a coin toss."""
    return -logits.abs()


def _bce_and_dice(logits: Tensor, labels: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Per mask: the weighted mean sigmoid BCE and the weighted dice loss over its points; (R, P) each -> (R,), (R,)."""
    per_point = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (R, P)
    bce = (per_point * weights).sum(-1) / weights.sum(-1).clamp_min(_EPS)        # (R,)
    probs = logits.sigmoid() * weights                                           # (R, P)
    dice = 1 - (2 * (probs * labels).sum(-1) + 1) / (probs.sum(-1) + (labels * weights).sum(-1) + 1)  # (R,)
    return bce, dice


def point_mask_losses(matched: Tensor, true_masks: Tensor, counted: Tensor, num_masks: float, *,
                      num_points: int = LOSS_SETTINGS["num_points"],
                      oversample_ratio: float = LOSS_SETTINGS["oversample_ratio"],
                      importance_sample_ratio: float = LOSS_SETTINGS["importance_sample_ratio"],
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Sigmoid BCE and dice of matched masks on P importance-sampled points each, summed and divided by ``num_masks``.

    Args:
        matched: (R, h, w) the matched queries' mask logits.
        true_masks: (R, H, W) their regions; ``counted``: (R, H, W) 0 on ignored pixels.
        num_masks: the batch's number of regions (at least 1), the loss's divisor.

    Returns ``(bce, dice)``, two scalars. The points are chosen without gradient
    by chapter 6's :func:`~segbook.models.pointrend.get_uncertain_point_coords_with_randomness`,
    with the mask logit's distance from 0 as the uncertainty.
    """
    with torch.no_grad():
        coords = get_uncertain_point_coords_with_randomness(
            matched[:, None], mask_uncertainty, num_points, oversample_ratio, importance_sample_ratio,
            generator=generator)                                                  # (R, P, 2)
        weights = _read(counted, coords)                                          # (R, P)
        labels = _counted_labels(_read(true_masks, coords), weights)              # (R, P)
    bce, dice = _bce_and_dice(_read(matched, coords.to(matched.dtype)), labels, weights)  # (R,), (R,)
    return bce.sum() / num_masks, dice.sum() / num_masks


def dense_mask_losses(matched: Tensor, true_masks: Tensor, counted: Tensor, num_masks: float,
                      size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """The same two losses on every cell of a grid instead of on points: what the points save.

    ``size=None`` scores the logits' own grid (h, w), the labels read at its cell
    centres (the same reading as the points'); ``size=(H, W)`` upsamples the logits
    bilinearly to the label's size first, as MaskFormer did. Arguments and result
    as :func:`point_mask_losses`.
    """
    size = tuple(matched.shape[-2:]) if size is None else tuple(size)

    def to_size(maps: Tensor) -> Tensor:  # (R, h', w') -> (R, size[0] size[1])
        return resize_to(maps[:, None], size).flatten(1)

    with torch.no_grad():
        weights = to_size(counted)                                                # (R, h' w')
        labels = _counted_labels(to_size(true_masks), weights)                    # (R, h' w')
    bce, dice = _bce_and_dice(to_size(matched), labels, weights)                  # (R,), (R,)
    return bce.sum() / num_masks, dice.sum() / num_masks


def _layer_losses(pred_logits: Tensor, pred_masks: Tensor, regions, counted: Tensor, num_masks: float,
                  settings: dict, generator: torch.Generator | None) -> dict[str, Tensor]:
    """Class cross entropy, mask BCE and dice of one layer's predictions (unweighted)."""
    pred_logits, pred_masks = pred_logits.float(), pred_masks.float()
    b, n, k1 = pred_logits.shape
    matches = hungarian_match(pred_logits, pred_masks, regions, counted, num_points=settings["num_points"],
                              class_weight=settings["class_weight"], mask_weight=settings["mask_weight"],
                              dice_weight=settings["dice_weight"], generator=generator)
    images = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)]).to(pred_logits.device)  # (R,)
    queries = torch.cat([q for q, _ in matches]).to(pred_logits.device)                                     # (R,)
    classes = torch.full((b, n), k1 - 1, dtype=torch.int64, device=pred_logits.device)  # (B, N): "no object"
    classes[images, queries] = torch.cat([regions[i][0][t.to(regions[i][0].device)]
                                          for i, (_, t) in enumerate(matches)]).to(pred_logits.device)
    class_weights = torch.ones(k1, device=pred_logits.device)
    class_weights[-1] = settings["no_object_weight"]
    ce = F.cross_entropy(pred_logits.transpose(1, 2), classes, weight=class_weights)  # () over B N queries
    if len(queries) == 0:  # no region in the batch: nothing to match, but keep every mask in the graph
        zero = pred_masks.sum() * 0
        return {"class": ce, "mask": zero, "dice": zero}
    true_masks = torch.cat([regions[i][1][t.to(regions[i][1].device)] for i, (_, t) in enumerate(matches)])  # (R, H, W)
    bce, dice = point_mask_losses(pred_masks[images, queries], true_masks, counted[images], num_masks,
                                  num_points=settings["num_points"], oversample_ratio=settings["oversample_ratio"],
                                  importance_sample_ratio=settings["importance_sample_ratio"], generator=generator)
    return {"class": ce, "mask": bce, "dice": dice}


def mask2former_loss(outputs: Mapping, target: Tensor, *, aux_weights: Mapping[str, float] | None = None,
                     ignore_index: int = IGNORE_INDEX, generator: torch.Generator | None = None,
                     **settings) -> tuple[Tensor, dict[str, Tensor]]:
    """Mask2Former's loss on the final predictions and on every earlier layer's, from a semantic label map.

    Args:
        outputs: ``"pred_logits"`` (B, N, K + 1), ``"pred_masks"`` (B, N, h, w) and
            ``"aux_outputs"``, a list of dicts with the same two keys for the earlier layers.
        target: (B, H, W) class ids, ``ignore_index`` on pixels that count for nothing.
        aux_weights: ``{"aux_outputs": w}`` scales the earlier layers' losses (default 1,
            as the paper); other keys are ignored (they belong to pixel-classifying models).
        generator: for reproducible points; default: torch's global generator.
        settings: any of :data:`LOSS_SETTINGS` (P, k, beta, the weights 2 / 5 / 5, no-object 0.1).

    Returns ``(total, parts)``: ``total = sum over layers of 2 CE + 5 BCE + 5 dice``;
    ``parts`` (detached, for logging) holds the final layer's unweighted ``"class"``,
    ``"mask"`` and ``"dice"`` and the earlier layers' weighted total as ``"aux"``.
    Every layer is matched on its own, as in the paper. The mask losses are
    divided by the batch's number of regions (DETR's normalisation), the class
    loss is a mean over the B N queries weighted by class.
    """
    unknown = set(settings) - set(LOSS_SETTINGS)
    if unknown:
        raise TypeError(f"unknown loss settings {sorted(unknown)}; the settings are {sorted(LOSS_SETTINGS)}.")
    settings = {**LOSS_SETTINGS, **settings}
    num_classes = outputs["pred_logits"].shape[-1] - 1
    regions, counted = semantic_targets(target, num_classes, ignore_index)
    counted = counted.to(outputs["pred_masks"].device)
    num_masks = max(sum(len(classes) for classes, _ in regions), 1)

    def weighted(layer: Mapping) -> tuple[Tensor, dict[str, Tensor]]:
        parts = _layer_losses(layer["pred_logits"], layer["pred_masks"], regions, counted, num_masks, settings,
                              generator)
        return (settings["class_weight"] * parts["class"] + settings["mask_weight"] * parts["mask"]
                + settings["dice_weight"] * parts["dice"]), parts

    total, parts = weighted(outputs)
    parts = {key: value.detach() for key, value in parts.items()}
    aux_weight = (aux_weights or {}).get("aux_outputs", 1.0)
    earlier = outputs.get("aux_outputs") or []
    if earlier and aux_weight:
        aux = sum(weighted(layer)[0] for layer in earlier)
        total = total + aux_weight * aux
        parts["aux"] = (aux_weight * aux).detach()
    return total, parts
