"""PointRend's point functions against hand-computed values, its subdivision against plain bilinear upsampling.

The references are independent of the code under test: bilinear values written
out by hand, ``F.interpolate(align_corners=False)`` for what subdivision leaves
alone, ``torch.rand`` on a twin generator for the points the training sampler
drew, and a label image built so that nearest and bilinear sampling disagree.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbook.models import MODELS, build_model
from segbook.models.pointrend import (PointHead, PointRend, calculate_uncertainty, dense_point_inference,
                                      get_uncertain_point_coords_on_grid,
                                      get_uncertain_point_coords_with_randomness, point_loss, point_sample,
                                      subdivision_inference, subdivision_sizes)
from segbook.models.base import segmentation_loss

K = 4


def centres(rows, cols, height, width) -> torch.Tensor:
    """(1, P, 2) [0, 1] coordinates (x, y) of the given pixel centres of a height x width map."""
    x = (torch.as_tensor(cols, dtype=torch.float64) + 0.5) / width
    y = (torch.as_tensor(rows, dtype=torch.float64) + 0.5) / height
    return torch.stack([x, y], dim=-1)[None]


def pixel_point(x_pix: float, y_pix: float, height: int, width: int) -> list[float]:
    """[0, 1] coordinates of a point given in pixel units (pixel j's centre is at x = j)."""
    return [(x_pix + 0.5) / width, (y_pix + 0.5) / height]


# --- point_sample -------------------------------------------------------------------------------------

MAP = torch.tensor([[[[1.0, 11.0, 21.0],
                      [31.0, 41.0, 51.0]]]], dtype=torch.float64)   # (1, 1, 2, 3)


def test_point_sample_returns_pixels_at_their_centres() -> None:
    g = torch.Generator().manual_seed(0)
    feature_map = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    coords = centres(rows.flatten(), cols.flatten(), 5, 7).expand(2, -1, -1)   # (2, 35, 2)
    got = point_sample(feature_map, coords)                                    # (2, 3, 35)
    assert got.shape == (2, 3, 35)
    torch.testing.assert_close(got, feature_map.flatten(2))


def test_point_sample_between_centres_by_hand() -> None:
    points = torch.tensor([[pixel_point(0.5, 0.5, 2, 3),      # the middle of four pixels: (1 + 11 + 31 + 41) / 4
                            pixel_point(1.25, 0.0, 2, 3),     # a quarter of the way from 11 to 21: 13.5
                            pixel_point(2.0, 0.75, 2, 3),     # three quarters of the way from 21 to 51: 43.5
                            pixel_point(0.3, 0.6, 2, 3)]],    # general: weights .7 .4, .3 .4, .7 .6, .3 .6
                          dtype=torch.float64)
    expected = [21.0, 13.5, 43.5, 0.28 * 1 + 0.12 * 11 + 0.42 * 31 + 0.18 * 41]
    torch.testing.assert_close(point_sample(MAP, points)[0, 0], torch.tensor(expected, dtype=torch.float64))


def test_point_sample_pads_with_zeros_outside_and_border_on_request() -> None:
    points = torch.tensor([[[0.0, 0.0],                       # the map's corner: half a pixel out in x and y
                            [0.0, 0.5],                       # left edge, between the two rows
                            pixel_point(-1.0, 0.0, 2, 3)]],   # a whole pixel outside: all zeros
                          dtype=torch.float64)
    torch.testing.assert_close(point_sample(MAP, points)[0, 0],
                               torch.tensor([0.25 * 1, 0.5 * (1 + 31) / 2, 0.0], dtype=torch.float64))
    torch.testing.assert_close(point_sample(MAP, points, padding_mode="border")[0, 0],
                               torch.tensor([1.0, 16.0, 1.0], dtype=torch.float64))


def test_point_sample_takes_a_grid_of_points_too() -> None:
    grid = torch.rand(2, 4, 5, 2, dtype=torch.float64)
    got = point_sample(MAP.expand(2, -1, -1, -1), grid)                        # (2, 1, 4, 5)
    assert got.shape == (2, 1, 4, 5)
    torch.testing.assert_close(got.flatten(2), point_sample(MAP.expand(2, -1, -1, -1), grid.flatten(1, 2)))


def test_half_precision_maps_get_float32_points() -> None:
    got = point_sample(MAP.to(torch.bfloat16), torch.tensor([[pixel_point(0.5, 0.5, 2, 3)]]))
    assert got.dtype == torch.bfloat16 and got.item() == 21.0
    wide = torch.zeros(1, 1, 1, 1024, dtype=torch.bfloat16)
    wide[0, 0, 0, 1000] = 1.0
    indices, coords = get_uncertain_point_coords_on_grid(wide, 1)
    assert indices.tolist() == [[1000]] and coords.dtype == torch.float32
    assert coords[0, 0, 0].item() == 1000.5 / 1024                  # bfloat16 would round it to 0.9765625
    logits = torch.randn(1, 3, 4, 4).to(torch.bfloat16)
    drawn = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 8)
    assert drawn.dtype == torch.float32


# --- uncertainty ---------------------------------------------------------------------------------------

def test_uncertainty_is_minus_the_top_two_gap() -> None:
    logits = torch.tensor([[[5.0, 1.0, 2.0, -1.0],
                            [0.0, 1.0, 0.0, -3.0],
                            [0.0, 0.0, 1.5, -2.0]]])                          # (1, 3, 4): points are columns
    uncertainty = calculate_uncertainty(logits)
    assert uncertainty.shape == (1, 1, 4)
    torch.testing.assert_close(uncertainty[0, 0], torch.tensor([-5.0, 0.0, -0.5, -1.0]))
    assert uncertainty[0, 0].argsort(descending=True).tolist() == [1, 2, 3, 0]   # the tie is the least sure
    assert calculate_uncertainty(torch.randn(2, 5, 3, 4)).shape == (2, 1, 3, 4)
    with pytest.raises(ValueError, match="at least 2 class scores"):
        calculate_uncertainty(torch.randn(1, 1, 3))


# --- the training sampler --------------------------------------------------------------------------------

@pytest.mark.parametrize("num_points, k, beta", [(40, 3, 0.75), (40, 2.5, 0.5), (16, 1, 1.0), (10, 3, 0.0)])
def test_training_sampler_keeps_the_most_uncertain_of_the_oversampled(num_points, k, beta) -> None:
    g = torch.Generator().manual_seed(1)
    coarse = torch.randn(2, K, 6, 8, generator=g)
    coords = get_uncertain_point_coords_with_randomness(coarse, calculate_uncertainty, num_points, k, beta,
                                                        generator=torch.Generator().manual_seed(7))
    assert coords.shape == (2, num_points, 2) and ((coords >= 0) & (coords <= 1)).all()
    # The twin generator replays the draws: first k*P uniform points, then (1 - beta) P more.
    twin = torch.Generator().manual_seed(7)
    oversampled = torch.rand(2, int(k * num_points), 2, generator=twin)          # (2, kP, 2)
    fresh = torch.rand(2, num_points - int(beta * num_points), 2, generator=twin)
    uncertainty = calculate_uncertainty(point_sample(coarse, oversampled, padding_mode="border"))[:, 0]  # (2, kP)
    n_top = int(beta * num_points)
    for b in range(2):
        ranked = uncertainty[b].argsort(descending=True)
        expected_top = {tuple(p) for p in oversampled[b, ranked[:n_top]].tolist()}
        assert {tuple(p) for p in coords[b, :n_top].tolist()} == expected_top
        if 0 < n_top < len(ranked):  # every kept point is at least as unsure as every dropped one
            assert uncertainty[b, ranked[n_top - 1]] >= uncertainty[b, ranked[n_top]]
    torch.testing.assert_close(coords[:, n_top:], fresh)


def test_sampler_ranks_sampled_logits_not_sampled_uncertainty() -> None:
    # Two cells, each sure of a different class. The interpolated uncertainty map is flat (-10
    # everywhere), but the interpolated logits tie halfway: the chosen points must crowd x = 0.5.
    coarse = torch.tensor([[[[10.0, 0.0]], [[0.0, 10.0]]]])                     # (1, 2, 1, 2)
    flat = point_sample(calculate_uncertainty(coarse), torch.rand(1, 50, 2), padding_mode="border")
    torch.testing.assert_close(flat, torch.full_like(flat, -10.0))
    coords = get_uncertain_point_coords_with_randomness(coarse, calculate_uncertainty, 20, 3, 0.5,
                                                        generator=torch.Generator().manual_seed(3))
    twin = torch.rand(1, 60, 2, generator=torch.Generator().manual_seed(3))[0]
    closest = (twin[:, 0] - 0.5).abs().argsort()[:10]
    assert {tuple(p) for p in coords[0, :10].tolist()} == {tuple(p) for p in twin[closest].tolist()}
    assert (coords[0, :10, 0] - 0.5).abs().max() < 0.25


def test_sampler_rejects_bad_ratios() -> None:
    with pytest.raises(ValueError, match="oversample_ratio >= 1"):
        get_uncertain_point_coords_with_randomness(torch.randn(1, 2, 3, 3), calculate_uncertainty, 4, 0.5)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        get_uncertain_point_coords_with_randomness(torch.randn(1, 2, 3, 3), calculate_uncertainty, 4, 3, 1.5)


# --- the inference sampler --------------------------------------------------------------------------

def test_on_grid_returns_the_top_cells_at_their_centres() -> None:
    height, width = 5, 7
    uncertainty = torch.randperm(2 * height * width, generator=torch.Generator().manual_seed(2))
    uncertainty = uncertainty.double().reshape(2, 1, height, width)               # distinct values
    indices, coords = get_uncertain_point_coords_on_grid(uncertainty, 6)
    assert indices.shape == (2, 6) and coords.shape == (2, 6, 2)
    for b in range(2):
        flat = uncertainty[b, 0].flatten()
        assert set(indices[b].tolist()) == set(flat.argsort(descending=True)[:6].tolist())
        rows, cols = indices[b] // width, indices[b] % width
        torch.testing.assert_close(coords[b:b + 1], centres(rows, cols, height, width))
    # Reading the map at those coordinates gives back exactly the chosen cells' values.
    torch.testing.assert_close(point_sample(uncertainty, coords)[:, 0], uncertainty.flatten(1).gather(1, indices))
    all_indices, _ = get_uncertain_point_coords_on_grid(uncertainty, 1000)
    assert all_indices.shape == (2, height * width)


# --- subdivision ---------------------------------------------------------------------------------------

def test_subdivision_sizes() -> None:
    assert subdivision_sizes((8, 8), (32, 32)) == [(16, 16), (32, 32)]
    assert subdivision_sizes((9, 12), (33, 47)) == [(18, 24), (33, 47)]        # the last step is exactly H x W
    assert subdivision_sizes((9, 12), (33, 47), steps=3) == [(18, 24), (36, 48), (33, 47)]
    assert subdivision_sizes((8, 16), (64, 128)) == [(16, 32), (32, 64), (64, 128)]   # stride 8: three steps
    assert subdivision_sizes((8, 8), (10, 10)) == [(10, 10)]
    with pytest.raises(ValueError, match="at least one step"):
        subdivision_sizes((8, 8), (32, 32), steps=0)


def _head(fine_channels: int = 6, seed: int = 0) -> PointHead:
    torch.manual_seed(seed)
    head = PointHead(fine_channels, K, channels=8, num_layers=2).double().eval()
    nn.init.normal_(head.predictor.weight, std=1.0)   # an untrained head's outputs are all ~0: make them vary
    return head


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (45, 37)])
def test_subdivision_changes_only_the_chosen_points(size) -> None:
    height, width = size
    h, w = -(-height // 4), -(-width // 4)
    g = torch.Generator().manual_seed(5)
    coarse = torch.randn(2, K, h, w, generator=g, dtype=torch.float64)
    fine = torch.randn(2, 6, h, w, generator=g, dtype=torch.float64)
    head, num_points = _head(), 50
    with torch.no_grad():
        out, steps = subdivision_inference(coarse, fine, head, size, num_points, return_steps=True)
    assert out.shape == (2, K, height, width)
    assert [tuple(s["logits"].shape[-2:]) for s in steps] == subdivision_sizes((h, w), size)
    previous = coarse
    for step in steps:
        grid = tuple(step["logits"].shape[-2:])
        upsampled = F.interpolate(previous, size=grid, mode="bilinear", align_corners=False)
        torch.testing.assert_close(step["upsampled"], upsampled)
        # the chosen cells are the most uncertain of the upsampled logits (independent top-2 gap)
        top2 = upsampled.sort(dim=1, descending=True).values[:, :2]              # (2, 2, h', w')
        gap = (top2[:, 0] - top2[:, 1]).flatten(1)                                # (2, h' w')
        chosen = torch.zeros_like(gap, dtype=torch.bool).scatter_(1, step["point_indices"], True)
        assert chosen.sum(1).tolist() == [num_points, num_points]
        assert (gap[chosen].view(2, -1).max(1).values <= gap.masked_fill(chosen, float("inf")).min(1).values).all()
        logits = step["logits"].flatten(2)                                        # (2, K, h' w')
        # untouched cells keep plain bilinear upsampling, exactly
        assert torch.equal(logits.transpose(1, 2)[~chosen], upsampled.flatten(2).transpose(1, 2)[~chosen])
        # chosen cells hold the head's prediction at their centres
        rows, cols = step["point_indices"] // grid[1], step["point_indices"] % grid[1]
        coords = torch.cat([centres(rows[b], cols[b], *grid) for b in range(2)])  # (2, P, 2)
        with torch.no_grad():
            predicted = head(point_sample(fine, coords, padding_mode="border"),
                             point_sample(coarse, coords, padding_mode="border"))
        torch.testing.assert_close(logits.gather(2, step["point_indices"].unsqueeze(1).expand(-1, K, -1)),
                                   predicted)
        assert not torch.allclose(predicted, upsampled.flatten(2).gather(2, step["point_indices"][:, None]
                                                                         .expand(-1, K, -1)))
        previous = step["logits"]
    assert torch.equal(out, steps[-1]["logits"])


def test_subdivision_with_every_point_chosen_is_the_dense_prediction() -> None:
    height, width = 33, 26
    g = torch.Generator().manual_seed(6)
    coarse = torch.randn(1, K, 9, 7, generator=g, dtype=torch.float64)
    fine = torch.randn(1, 6, 9, 7, generator=g, dtype=torch.float64)
    head = _head()
    with torch.no_grad():
        refined = subdivision_inference(coarse, fine, head, (height, width), num_points=height * width)
        dense = dense_point_inference(coarse, fine, head, (height, width))
    assert dense.shape == (1, K, height, width)
    torch.testing.assert_close(refined, dense)
    with torch.no_grad():
        few = subdivision_inference(coarse, fine, head, (height, width), num_points=40)
    assert not torch.allclose(few, dense)


def test_subdivision_leaves_its_inputs_alone() -> None:
    coarse, fine = torch.randn(1, K, 8, 8, dtype=torch.float64), torch.randn(1, 6, 8, 8, dtype=torch.float64)
    kept = coarse.clone()
    with torch.no_grad():
        for size in [(32, 32), (8, 8)]:                      # (8, 8): no upsampling, one step on the map itself
            out = subdivision_inference(coarse, fine, _head(), size, num_points=20)
            assert out.shape == (1, K, *size)
    assert torch.equal(coarse, kept)
    assert not torch.equal(out, coarse)


# --- the loss --------------------------------------------------------------------------------------------

def _outputs(point_logits: torch.Tensor, coords: torch.Tensor, size=(2, 4)) -> dict[str, torch.Tensor]:
    return {"out": torch.zeros(1, K, *size), "point_logits": point_logits, "point_coords": coords}


def test_point_loss_reads_the_label_at_the_nearest_pixel_and_skips_255() -> None:
    target = torch.tensor([[[1, 1, 3, 3],
                            [255, 255, 0, 0]]])                                    # (1, 2, 4)
    coords = torch.tensor([[pixel_point(1.6, 0.0, 2, 4),    # nearest pixel 2 -> class 3 (bilinear: 2.2 -> 2)
                            pixel_point(0.2, 0.1, 2, 4),    # pixel (0, 0) -> class 1
                            pixel_point(3.0, 1.0, 2, 4),    # pixel (1, 3) -> class 0
                            pixel_point(0.9, 0.8, 2, 4)]])  # pixel (1, 1) -> 255, not counted
    g = torch.Generator().manual_seed(0)
    point_logits = torch.randn(1, K, 4, generator=g, requires_grad=True)
    total, parts = point_loss(_outputs(point_logits, coords), target)
    expected_point = F.cross_entropy(point_logits[0, :, :3].T, torch.tensor([3, 1, 0]))
    torch.testing.assert_close(parts["point"], expected_point.detach())
    coarse, _ = segmentation_loss({"out": torch.zeros(1, K, 2, 4)}, target)
    torch.testing.assert_close(total, coarse + expected_point)
    assert set(parts) == {"out", "point"}
    total.backward()
    assert point_logits.grad[0, :, 3].abs().sum() == 0 and point_logits.grad[0, :, :3].abs().sum() > 0
    weighted, _ = point_loss(_outputs(point_logits, coords), target, point_weight=0.5)
    torch.testing.assert_close(weighted, coarse + 0.5 * expected_point)


def test_point_loss_on_an_all_ignored_crop_is_zero_not_nan() -> None:
    point_logits = torch.randn(2, K, 7, requires_grad=True)
    outputs = {"out": torch.randn(2, K, 6, 5), "point_logits": point_logits, "point_coords": torch.rand(2, 7, 2)}
    total, parts = point_loss(outputs, torch.full((2, 6, 5), 255))
    assert total.item() == 0.0 and parts["point"].item() == 0.0
    total.backward()
    assert torch.isfinite(point_logits.grad).all()


def test_point_loss_without_points_is_the_segmentation_loss() -> None:
    outputs, target = {"out": torch.randn(1, K, 6, 5)}, torch.randint(0, K, (1, 6, 5))
    total, parts = point_loss(outputs, target)
    torch.testing.assert_close(total, segmentation_loss(outputs, target)[0])
    assert set(parts) == {"out"}


# --- the model -------------------------------------------------------------------------------------------

SMALL = dict(backbone="resnet18", aspp_channels=16, decoder_channels=16, low_level_projection=8,
             point_channels=16, num_points=64, subdivision_num_points=100)


@pytest.fixture(scope="module")
def model() -> PointRend:
    torch.manual_seed(0)
    return PointRend(K, aux=True, **SMALL)


def test_training_outputs(model: PointRend) -> None:
    model.train()
    images, target = torch.randn(2, 3, 33, 47), torch.randint(0, K, (2, 33, 47))
    outputs = model(images)
    assert set(outputs) == {"out", "aux", "point_logits", "point_coords"}
    assert outputs["out"].shape == outputs["aux"].shape == (2, K, 33, 47)
    assert outputs["point_logits"].shape == (2, K, 64) and outputs["point_coords"].shape == (2, 64, 2)
    coords = outputs["point_coords"]
    assert ((coords >= 0) & (coords <= 1)).all() and not coords.requires_grad
    total, parts = point_loss(outputs, target)
    assert set(parts) == {"out", "aux", "point"}
    total.backward()
    for name in ("point_head.predictor.weight", "coarse.head.classifier.weight", "coarse.backbone.conv1.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    model.zero_grad()


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (65, 33)])
def test_eval_outputs_at_the_input_size(model: PointRend, size) -> None:
    model.eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, *size))
    assert set(outputs) == {"out"} and outputs["out"].shape == (1, K, *size)


def test_eval_steps_start_from_the_stride_4_decoder(model: PointRend) -> None:
    model.eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outputs = model(images, return_steps=True)
        plain = model(images)["out"]
        coarse = model.coarse.decode(images)["coarse"]
    assert set(outputs) == {"out", "coarse", "steps"}
    assert outputs["coarse"].shape == (2, K, 16, 24)
    torch.testing.assert_close(outputs["coarse"], coarse)
    assert [tuple(s["logits"].shape) for s in outputs["steps"]] == [(2, K, 32, 48), (2, K, 64, 96)]
    assert [tuple(s["point_coords"].shape) for s in outputs["steps"]] == [(2, 100, 2)] * 2
    torch.testing.assert_close(outputs["out"], plain)


def test_layer1_as_fine_features_and_registry() -> None:
    torch.manual_seed(0)
    model = build_model("pointrend", num_classes=K, fine_features="layer1", **SMALL).eval()
    assert MODELS["pointrend"] is PointRend and isinstance(model, PointRend)
    assert model.point_head.layers[0].in_channels == 64 + K                      # resnet18 layer1 + K
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 36))["out"].shape == (1, K, 40, 36)
    with pytest.raises(ValueError, match="'decoder' or 'layer1'"):
        PointRend(K, fine_features="layer2", **SMALL)
    with pytest.raises(ValueError, match="DeepLabV3\\+ only"):
        PointRend(K, coarse="fcn", **SMALL)


def test_point_head_feeds_the_coarse_logits_to_every_layer() -> None:
    head = PointHead(fine_channels=6, num_classes=K, channels=8, num_layers=3)
    assert [layer.in_channels for layer in head.layers] == [6 + K, 8 + K, 8 + K]
    assert head.predictor.in_channels == 8 + K and head.predictor.out_channels == K
    fine, coarse = torch.randn(2, 6, 11), torch.randn(2, K, 11)
    seen = []
    hooks = [layer.register_forward_hook(lambda m, inp, out: seen.append(inp[0])) for layer in
             [*head.layers, head.predictor]]
    assert head(fine, coarse).shape == (2, K, 11)
    for hook in hooks:
        hook.remove()
    for x in seen:
        torch.testing.assert_close(x[:, -K:], coarse)


def test_fit_trains_with_point_loss() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from segbook.train import fit

    torch.manual_seed(0)
    net = PointRend(K, **{**SMALL, "num_points": 32, "subdivision_num_points": 64})
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.randint(0, K, (4, 32, 32)))
    history = fit(net, DataLoader(data, batch_size=2), DataLoader(data, batch_size=1), epochs=1,
                  loss_fn=point_loss, device="cpu", num_classes=K, log=None, progress=False)
    row = history[0]
    assert row["train_loss"] == pytest.approx(row["train_loss_out"] + row["train_loss_point"], rel=1e-5)
    assert row["train_loss_point"] > 0 and 0 <= row["val_miou"] <= 1
