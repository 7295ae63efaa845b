"""PointRend: spend the computation where the coarse prediction is unsure (Kirillov et al., 2020).

Upsampled coarse logits blur every border, where the answer is hard. PointRend
upsamples 2x, re-predicts only the least sure points with a small MLP on fine
features, and repeats up to the image's size. The point functions keep
detectron2's names and signatures (N = B); points are (x, y) in [0, 1] x [0, 1]
with ``align_corners=False``. Unlike detectron2 the model reads maps with
``padding_mode="border"``: zeros padding pulls points near the edge towards 0,
and every image border would look uncertain.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbook.data.voc import IGNORE_INDEX, NUM_CLASSES
from segbook.models.registry import register_model
from segbook.models.base import Segmenter, resize_to, segmentation_loss
from segbook.models.deeplab import DeepLabV3Plus

__all__ = ["PointHead", "PointRend", "calculate_uncertainty", "dense_point_inference",
           "get_uncertain_point_coords_on_grid", "get_uncertain_point_coords_with_randomness",
           "point_loss", "point_sample", "subdivision_inference", "subdivision_sizes"]


def _coordinate_dtype(like: Tensor) -> torch.dtype:
    """float64 for float64 maps, else float32: float16 cannot name the pixel centres of a wide image."""
    return torch.float64 if like.dtype == torch.float64 else torch.float32


def point_sample(input: Tensor, point_coords: Tensor, **kwargs) -> Tensor:
    """Read ``input`` at real-valued points: ``F.grid_sample`` for coordinates in [0, 1] x [0, 1].

    Args:
        input: (N, C, h, w) a map on its own h x w grid.
        point_coords: (N, P, 2) points as (x, y) in [0, 1] x [0, 1], or (N, Hgrid, Wgrid, 2).
        kwargs: passed to ``F.grid_sample``; ``align_corners`` defaults to False
            (the convention above), ``mode`` to ``"bilinear"``, ``padding_mode`` to ``"zeros"``.

    Returns:
        (N, C, P), or (N, C, Hgrid, Wgrid) for grid coordinates, in ``input``'s dtype (computed
        in the finer of the two, so float32 points keep their precision on a bfloat16 map).

    ``grid_sample`` wants [-1, 1]; a separate [0, 1] convention lets one set of
    points address maps of different sizes (the stride-4 features, the 2x logits,
    the label) at the same place in the image.
    """
    kwargs.setdefault("align_corners", False)
    dtype = torch.promote_types(input.dtype, point_coords.dtype)  # grid_sample wants one dtype: the finer
    one_row = point_coords.dim() == 3
    if one_row:
        point_coords = point_coords.unsqueeze(2)                              # (N, P, 1, 2)
    output = F.grid_sample(input.to(dtype), 2.0 * point_coords.to(dtype) - 1.0, **kwargs)  # (N, C, P, 1)
    output = output.to(input.dtype)                                          # values in the map's own dtype
    return output.squeeze(3) if one_row else output                          # (N, C, P)


def calculate_uncertainty(logits: Tensor) -> Tensor:
    """Minus the gap between the top two class scores of (N, K, ...) logits: (N, 1, ...), 0 for a tie, else < 0."""
    if logits.shape[1] < 2:
        raise ValueError(f"calculate_uncertainty needs at least 2 class scores per point, got {logits.shape[1]}.")
    top2 = logits.topk(2, dim=1).values                                      # (N, 2, ...)
    return top2[:, 1:2] - top2[:, 0:1]                                       # (N, 1, ...)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: Tensor, uncertainty_func: Callable[[Tensor], Tensor], num_points: int,
    oversample_ratio: float = 3, importance_sample_ratio: float = 0.75, *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Training points: ``importance_sample_ratio`` of them uncertain, the rest uniform.

    Draw ``k * num_points`` uniform points (k = ``oversample_ratio``), keep the
    ``beta * num_points`` most uncertain of them (beta = ``importance_sample_ratio``)
    and add ``(1 - beta) * num_points`` fresh uniform points, so the head sees
    borders often but still learns what flat regions look like.

    Args:
        coarse_logits: (N, K, h, w) logits.
        uncertainty_func: (N, K, P) logits -> (N, 1, P) uncertainty, e.g. :func:`calculate_uncertainty`.
        num_points: P, the points per image.
        oversample_ratio: k >= 1.
        importance_sample_ratio: beta in [0, 1].
        generator: optional ``torch.Generator`` (on the logits' device) for reproducible points;
            not in detectron2's signature, which draws from the global generator.

    Returns:
        (N, P, 2) coordinates (x, y) in [0, 1] x [0, 1]: first the uncertain ones, then the random ones.
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, "
                         f"got {oversample_ratio} and {importance_sample_ratio}.")
    n = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    like = dict(device=coarse_logits.device, dtype=_coordinate_dtype(coarse_logits), generator=generator)
    coords = torch.rand(n, num_sampled, 2, **like)                           # (N, kP, 2)
    # Uncertainty of the *sampled logits*, not sampled uncertainty: the top-2 gap is not linear in the
    # logits, so interpolating an uncertainty map would be wrong. Between two cells that are each sure of
    # a different class, both cells have a large gap, so the interpolated gap stays large, while the
    # interpolated logits there tie and are rightly the least sure point of all.
    uncertainty = uncertainty_func(point_sample(coarse_logits, coords, padding_mode="border"))  # (N, 1, kP)
    top = uncertainty[:, 0].topk(num_uncertain, dim=1).indices             # (N, beta P)
    chosen = coords.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))         # (N, beta P, 2)
    random = torch.rand(n, num_points - num_uncertain, 2, **like)          # (N, (1 - beta) P, 2)
    return torch.cat([chosen, random], dim=1)                              # (N, P, 2)


def get_uncertain_point_coords_on_grid(uncertainty_map: Tensor, num_points: int) -> tuple[Tensor, Tensor]:
    """Inference points: the ``num_points`` (at most h * w) highest cells of an (N, 1, h, w) uncertainty map.

    Returns their flat indices ``row * w + column`` (N, P) and their centres (x, y), (N, P, 2).
    """
    n, _, height, width = uncertainty_map.shape
    num_points = min(height * width, num_points)
    point_indices = uncertainty_map.reshape(n, height * width).topk(num_points, dim=1).indices  # (N, P)
    dtype = _coordinate_dtype(uncertainty_map)
    x = (point_indices % width).to(dtype).add_(0.5).div_(width)                     # (N, P)
    y = (point_indices // width).to(dtype).add_(0.5).div_(height)                   # (N, P)
    return point_indices, torch.stack([x, y], dim=2)                                # (N, P), (N, P, 2)


class PointHead(nn.Module):
    """An MLP on each point: fine features (B, C, P) and coarse logits (B, K, P) in, K logits out.

    The coarse logits join the input of every layer, as in the paper, so the
    semantic hint does not wash out. The predictor starts near zero (std 0.001, as
    detectron2's): an untrained head answers "no idea", not confident noise.
    """

    def __init__(self, fine_channels: int, num_classes: int, channels: int = 256, num_layers: int = 3) -> None:
        super().__init__()
        layers, width = [], fine_channels
        for _ in range(num_layers):
            layers.append(nn.Conv1d(width + num_classes, channels, kernel_size=1))
            width = channels
        self.layers = nn.ModuleList(layers)
        self.predictor = nn.Conv1d(width + num_classes, num_classes, kernel_size=1)
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, fine_features: Tensor, coarse_logits: Tensor) -> Tensor:
        x = fine_features                                                   # (B, C, P)
        for layer in self.layers:
            x = F.relu(layer(torch.cat([x, coarse_logits], dim=1)))         # (B, C + K, P) -> (B, C', P)
        return self.predictor(torch.cat([x, coarse_logits], dim=1))         # (B, K, P)


def subdivision_sizes(coarse_size: tuple[int, int], size: tuple[int, int],
                      steps: int | None = None) -> list[tuple[int, int]]:
    """The grid of each subdivision step: doubling from ``coarse_size``, the last one exactly ``size``.

    ``steps=None`` doubles until one more doubling reaches ``size`` (stride 4: two
    steps, as detectron2). A 33-row image has a 9-row stride-4 map: 9 -> 18 -> 33,
    not 36, so the last step's points are the image's own pixel centres.
    """
    (h, w), (height, width) = coarse_size, size
    if steps is None:
        steps = 1
        while h * 2 ** steps < height or w * 2 ** steps < width:
            steps += 1
    if steps < 1:
        raise ValueError(f"subdivision needs at least one step, got steps={steps}.")
    return [(h * 2 ** i, w * 2 ** i) for i in range(1, steps)] + [(height, width)]


def subdivision_inference(coarse_logits: Tensor, fine_features: Tensor, point_head: nn.Module,
                          size: tuple[int, int], num_points: int = 8192, steps: int | None = None,
                          return_steps: bool = False) -> Tensor | tuple[Tensor, list[dict[str, Tensor]]]:
    """PointRend's adaptive subdivision from stride-4 logits to (B, K, H, W) logits.

    Each step: upsample the current logits bilinearly (``align_corners=False``) to
    the next grid of :func:`subdivision_sizes`, take the ``num_points`` cells with
    the highest :func:`calculate_uncertainty`, and overwrite their logits with the
    point head's prediction from the fine features and the *original* coarse
    logits sampled at the cells' centres (as detectron2). Every other cell keeps
    its plain bilinear value.

    Args:
        coarse_logits: (B, K, h, w) on the fine features' grid (or any grid: both are read
            through [0, 1] coordinates).
        fine_features: (B, C, h, w).
        point_head: (B, C, P), (B, K, P) -> (B, K, P), e.g. :class:`PointHead`.
        size: (H, W) of the result.
        num_points: cells re-predicted per step and image (detectron2: 8192).
        steps: see :func:`subdivision_sizes`.
        return_steps: also return, per step, ``{"upsampled": (B, K, h', w')`` bilinear logits,
            ``"point_indices": (B, P)``, ``"point_coords": (B, P, 2)``, ``"logits": (B, K, h', w')}``.

    Returns:
        (B, K, H, W) logits, and the list of steps when ``return_steps``.
    """
    logits, trace = coarse_logits, []
    for grid in subdivision_sizes(tuple(coarse_logits.shape[-2:]), tuple(size), steps):
        upsampled = resize_to(logits, grid)                                         # (B, K, h', w')
        b, k, h, w = upsampled.shape
        indices, coords = get_uncertain_point_coords_on_grid(calculate_uncertainty(upsampled), num_points)
        point_logits = point_head(point_sample(fine_features, coords, padding_mode="border"),  # (B, C, P)
                                  point_sample(coarse_logits, coords, padding_mode="border"))  # (B, K, P) -> (B, K, P)
        fresh = not return_steps and upsampled is not logits  # else keep them: write into a copy
        flat = (upsampled if fresh else upsampled.clone()).reshape(b, k, h * w)    # (B, K, h' w')
        index = indices.unsqueeze(1).expand(-1, k, -1)                              # (B, K, P)
        logits = flat.scatter_(2, index, point_logits.to(flat.dtype)).view(b, k, h, w)  # (B, K, h', w')
        if return_steps:
            trace.append({"upsampled": upsampled, "point_indices": indices, "point_coords": coords,
                          "logits": logits})
    return (logits, trace) if return_steps else logits


def dense_point_inference(coarse_logits: Tensor, fine_features: Tensor, point_head: nn.Module,
                          size: tuple[int, int]) -> Tensor:
    """The point head at every pixel centre, (B, K, H, W): the H * W evaluations subdivision avoids."""
    height, width = size
    b = coarse_logits.shape[0]
    rows = (torch.arange(height, device=coarse_logits.device, dtype=coarse_logits.dtype) + 0.5) / height  # (H,)
    cols = (torch.arange(width, device=coarse_logits.device, dtype=coarse_logits.dtype) + 0.5) / width    # (W,)
    y, x = torch.meshgrid(rows, cols, indexing="ij")                                 # (H, W), (H, W)
    coords = torch.stack([x, y], dim=-1).reshape(1, height * width, 2).expand(b, -1, -1)  # (B, P = H W, 2)
    point_logits = point_head(point_sample(fine_features, coords, padding_mode="border"),  # (B, C, P)
                              point_sample(coarse_logits, coords, padding_mode="border"))  # (B, K, P) -> (B, K, P)
    return point_logits.reshape(b, -1, height, width)                               # (B, K, H, W)


@register_model("pointrend")
class PointRend(Segmenter):
    """A coarse DeepLabV3+ refined at uncertain points by a :class:`PointHead`.

    Args:
        backbone, output_stride, aux, pretrained_backbone, coarse_kwargs: for :class:`DeepLabV3Plus`.
        num_points, oversample_ratio, importance_sample_ratio: training points per image
            (detectron2: 1024 to 2048), and k and beta (the paper: 3 and 0.75).
        subdivision_steps, subdivision_num_points: for :func:`subdivision_inference`.
        fine_features: ``"decoder"`` (DeepLabV3+'s stride-4 output) or ``"layer1"`` (detectron2's ``res2``).

    Training adds ``"point_logits"`` (B, K, P) and ``"point_coords"`` (B, P, 2) for
    :meth:`loss`; in eval ``"out"`` comes from subdivision, and ``return_steps=True``
    adds ``"coarse"`` (B, K, h, w) and ``"steps"``.
    """

    def loss(self, outputs: Mapping[str, Tensor], target: Tensor, **kwargs) -> tuple[Tensor, dict[str, Tensor]]:
        """:func:`point_loss`: without its point term the point head would learn nothing."""
        return point_loss(outputs, target, **kwargs)

    def __init__(self, num_classes: int = NUM_CLASSES, coarse: str = "deeplabv3plus", backbone: str = "resnet50",
                 num_points: int = 2048, oversample_ratio: float = 3, importance_sample_ratio: float = 0.75,
                 subdivision_steps: int | None = None, subdivision_num_points: int = 8192,
                 pretrained_backbone: bool | str | Path = False, output_stride: int = 16, aux: bool = False,
                 fine_features: str = "decoder", point_channels: int = 256, point_layers: int = 3,
                 **coarse_kwargs) -> None:
        super().__init__()
        if coarse != "deeplabv3plus":
            raise ValueError(f"PointRend here refines DeepLabV3+ only (coarse='deeplabv3plus'), got {coarse!r}.")
        self.coarse = DeepLabV3Plus(num_classes, backbone=backbone, output_stride=output_stride, aux=aux,
                                    pretrained_backbone=pretrained_backbone, **coarse_kwargs)
        channels = {"decoder": self.coarse.head.decoder_channels,
                    "layer1": self.coarse.backbone.channels["layer1"]}
        if fine_features not in channels:
            raise ValueError(f"fine_features must be 'decoder' or 'layer1', got {fine_features!r}.")
        self.point_head = PointHead(channels[fine_features], num_classes, point_channels, point_layers)
        self.num_classes, self.fine_features = num_classes, fine_features
        self.num_points, self.oversample_ratio = num_points, oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.subdivision_steps, self.subdivision_num_points = subdivision_steps, subdivision_num_points

    def forward(self, images: Tensor, return_steps: bool = False) -> dict[str, Tensor]:
        size = tuple(images.shape[-2:])                                              # (H, W)
        maps = self.coarse.decode(images)                                            # name -> (B, C or K, h, w)
        coarse, fine = maps["coarse"], maps[self.fine_features]                      # (B, K, h, w), (B, C, h, w)
        if not self.training:
            out = subdivision_inference(coarse, fine, self.point_head, size, self.subdivision_num_points,
                                        self.subdivision_steps, return_steps)
            if return_steps:
                return {"out": out[0], "coarse": coarse, "steps": out[1]}
            return {"out": out}                                                      # (B, K, H, W)
        with torch.no_grad():  # choosing points is not differentiable, and needs no graph
            coords = get_uncertain_point_coords_with_randomness(
                coarse, calculate_uncertainty, self.num_points, self.oversample_ratio,
                self.importance_sample_ratio)                                        # (B, P, 2)
        point_logits = self.point_head(point_sample(fine, coords, padding_mode="border"),    # (B, C, P)
                                       point_sample(coarse, coords, padding_mode="border"))  # (B, K, P) -> (B, K, P)
        outputs = {"out": resize_to(coarse, size),                                   # (B, K, H, W)
                   "point_logits": point_logits, "point_coords": coords}             # (B, K, P), (B, P, 2)
        if "aux" in maps:
            outputs["aux"] = resize_to(maps["aux"], size)                            # (B, K, H, W)
        return outputs


def point_loss(outputs: Mapping[str, Tensor], target: Tensor, *, point_weight: float = 1.0,
               aux_weights: Mapping[str, float] | None = None,
               ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`~segbook.models.base.segmentation_loss` plus the cross entropy at ``outputs["point_coords"]``.

    The label is read there with ``mode="nearest"`` (halfway between class 3 and 15
    is not class 9); ignored points do not count, and all-ignored gives 0, not NaN.
    Without point outputs (eval mode) only the segmentation loss is returned.
    """
    total, parts = segmentation_loss(outputs, target, aux_weights=aux_weights, ignore_index=ignore_index)
    if "point_logits" not in outputs:
        return total, parts
    point_logits, coords = outputs["point_logits"], outputs["point_coords"]        # (B, K, P), (B, P, 2)
    labels = point_sample(target.unsqueeze(1).float(), coords.float(),
                          mode="nearest", padding_mode="border")                   # (B, 1, P)
    labels = labels.squeeze(1).round().long()                                      # (B, P)
    summed = F.cross_entropy(point_logits.float(), labels, ignore_index=ignore_index, reduction="sum")  # ()
    loss = summed / (labels != ignore_index).sum().clamp_min(1)                    # ()
    parts["point"] = loss.detach()
    return total + point_weight * loss, parts
