"""Tests for segbook.train: the loss, fit (seeding, resume, checkpoints, divergence), evaluate, predict, the CLI.

Tiny conv nets on in-memory tensors keep this file fast; the references are
independent: a hand-written masked log-softmax mean, a straight run against an
interrupted-and-resumed one, the whole-image output of a translation-equivariant
model against its sliding-window output.
"""
from __future__ import annotations

import functools
import hashlib
import math
import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from segbook.train import checkpoints as CK
from segbook import viz
from segbook.train import runtime
from segbook import train as T
from segbook.metrics import ConfusionMatrix
from segbook.train import (TrainingDiverged, evaluate, fit, load_checkpoint, poly_schedule, predict, predict_logits,
                           segmentation_loss, sliding_windows)

NUM_CLASSES = 3



class TinyNet(nn.Module):
    """Two convs; ``aux=True`` adds a second head, as PSPNet's auxiliary classifier."""

    def __init__(self, num_classes: int = NUM_CLASSES, aux: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)
        self.aux = nn.Conv2d(8, num_classes, 1) if aux else None

    def forward(self, x):
        features = self.body(x)  # (B, 8, H, W)
        out = {"out": self.head(features)}  # (B, K, H, W)
        if self.aux is not None and self.training:
            out["aux"] = self.aux(features)
        return out


def tiny_data(n: int = 12, size: int = 12, seed: int = 0) -> TensorDataset:
    """Pixels whose class is the colour channel that is largest: learnable by a 1x1 conv."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)  # (N, 3, H, W)
    masks = images.argmax(1)  # (N, H, W)
    masks[:, 0, :] = 255  # an ignored band, as VOC's borders
    return TensorDataset(images, masks)


def loaders(batch_size: int = 4, **kw) -> tuple[DataLoader, DataLoader]:
    data = tiny_data(**kw)
    train = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(123))
    return train, DataLoader(data, batch_size=6)


def run(epochs=2, model=None, train=None, **kw):
    torch.manual_seed(0)
    model = model or TinyNet()
    train_loader, val_loader = loaders() if train is None else (train, loaders()[1])
    kw.setdefault("log", None)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=0.2, device="cpu", **kw)
    return model, history


def without_time(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# -- loss ------------------------------------------------------------------------------------------------


def masked_ce(logits, target, ignore=255):
    """The reference: -log softmax at the target class, averaged over pixels that are not ignored."""
    logp = logits.log_softmax(1).permute(0, 2, 3, 1)  # (B, H, W, K)
    keep = target != ignore
    return -logp[keep].gather(1, target[keep][:, None]).mean()


def test_loss_skips_ignored_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, :2] = 255
    target[1, :, 3] = 255
    loss, parts = segmentation_loss(logits, target)
    torch.testing.assert_close(loss, masked_ce(logits, target))
    assert set(parts) == {"out"}
    loss.backward()
    assert logits.grad.permute(0, 2, 3, 1)[target == 255].abs().max() == 0  # ignored pixels get no gradient
    # a batch of nothing but 255 is 0, not NaN (NaN would read as divergence)
    all_ignored, _ = segmentation_loss(logits, torch.full_like(target, 255))
    assert all_ignored.item() == 0


def test_aux_loss_weight():
    g = torch.Generator().manual_seed(1)
    out, aux = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    target[:, 0] = 255
    loss, parts = segmentation_loss({"out": out, "aux": aux}, target)
    torch.testing.assert_close(loss, masked_ce(out, target) + 0.4 * masked_ce(aux, target))
    torch.testing.assert_close(parts["aux"], masked_ce(aux, target))
    heavier, _ = segmentation_loss({"out": out, "aux": aux}, target, aux_weights={"aux": 1.0})
    torch.testing.assert_close(heavier, masked_ce(out, target) + masked_ce(aux, target))
    # keys that are not logits for this loss (PointRend's points) are left alone
    only_out, _ = segmentation_loss({"out": out, "points": torch.randn(2, 5, 2)}, target)
    torch.testing.assert_close(only_out, masked_ce(out, target))


def test_loss_names_a_wrong_size():
    with pytest.raises(ValueError, match=r"outputs\['out'\] has shape \(1, 3, 4, 4\).*upsample"):
        segmentation_loss({"out": torch.randn(1, 3, 4, 4)}, torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(KeyError, match="no 'out' logits"):
        segmentation_loss({"logits": torch.randn(1, 3, 4, 4)}, torch.zeros(1, 4, 4, dtype=torch.long))


def test_poly_schedule_values():
    f = poly_schedule(10, 0.9)
    assert f(0) == 1 and f(10) == 0 and f(12) == 0
    assert f(5) == pytest.approx(0.5 ** 0.9)


# -- fit -------------------------------------------------------------------------------------------------


def test_fit_learns_and_logs(capsys):
    model, history = run(epochs=4, model=TinyNet(aux=True), log=print)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    for row in history:
        assert {"train_loss", "val_loss", "val_pixel_acc", "val_miou", "lr", "seconds",
                "train_loss_out", "train_loss_aux"} <= set(row)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["val_miou"] > history[0]["val_miou"]
    steps = 3  # 12 images, batches of 4
    for row in history:  # the lr of each epoch's first step on the per-iteration poly curve
        assert row["lr"] == pytest.approx(0.2 * (1 - (row["epoch"] - 1) * steps / (4 * steps)) ** 0.9)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("epoch 1/4 | train_loss ")
    assert "aux" in lines[0] and "mIoU" in lines[0] and "seconds" not in lines[0]


def test_fit_is_reproducible():
    a, ha = run(epochs=2)
    b, hb = run(epochs=2)
    assert without_time(ha) == without_time(hb)
    assert same_weights(a, b)
    # the same loader again: fit reseeds its shuffling, so the second call does not see other batches
    train, _ = loaders()
    _, first = run(epochs=2, train=train)
    _, again = run(epochs=2, train=train)
    assert without_time(first) == without_time(again) == without_time(ha)


def test_fit_given_optimizer_and_fixed_lr():
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _, history = run(epochs=2, model=model, optimizer=opt, poly_power=0)
    assert [row["lr"] for row in history] == [1e-2, 1e-2]


@pytest.mark.parametrize("amp", ["bfloat16", "float16"])
def test_fit_mixed_precision_on_cpu(amp):
    """The autocast and GradScaler path (CUDA's default) runs on the CPU too when asked for."""
    _, history = run(epochs=2, amp=amp)
    assert all(math.isfinite(row["train_loss"]) for row in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


class Interrupting:
    """A loader that stops the run (as Ctrl-C would) at a given epoch, before its first batch."""

    def __init__(self, loader, at_epoch: int) -> None:
        self.loader, self.at_epoch, self.epoch = loader, at_epoch, 0

    def __getattr__(self, name):  # generator, sampler, dataset: the wrapped loader's
        return getattr(self.loader, name)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.epoch += 1
        if self.epoch == self.at_epoch:
            raise KeyboardInterrupt
        return iter(self.loader)


def test_resume_continues_exactly(tmp_path):
    straight, h_straight = run(epochs=3, checkpoint_dir=tmp_path / "a")

    train, _ = loaders()
    with pytest.raises(KeyboardInterrupt):
        run(epochs=3, train=Interrupting(train, at_epoch=3), checkpoint_dir=tmp_path / "b")
    state = load_checkpoint(tmp_path / "b" / "last.pt")
    assert state["epoch"] == 2 and len(state["history"]) == 2

    lines = []
    resumed, h_resumed = run(epochs=3, resume=True, checkpoint_dir=tmp_path / "b", log=lines.append)
    assert lines[0].startswith("resuming from") and "after epoch 2" in lines[0]
    assert without_time(h_resumed) == without_time(h_straight)
    assert same_weights(resumed, straight)
    lines.clear()
    _, h_again = run(epochs=3, resume=True, checkpoint_dir=tmp_path / "b", log=lines.append)
    assert h_again == h_resumed and "already holds 3 epochs" in lines[-1]
    for folder in ("a", "b"):  # atomic writes leave no temporary files behind
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["best.pt", "last.pt"]


def test_resume_is_exact_with_load_voc(tmp_path, monkeypatch):
    """The same with segbook's own loader: random crops and flips, shuffled by the sampler's generator."""
    data = pytest.importorskip("segbook.data")
    monkeypatch.setattr(data, "get_voc_dir", functools.partial(data.get_voc_dir, toy_size=(8, 4)))

    def voc_run(wrap=lambda loader: loader, **kw):
        train, val = data.load_voc(4, 32, source="toy", root=tmp_path / "voc", num_workers=0, verbose=False)
        torch.manual_seed(0)
        model = TinyNet(num_classes=21)
        return model, fit(model, wrap(train), val, epochs=3, device="cpu", log=None, **kw)

    straight, h_straight = voc_run(checkpoint_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        voc_run(lambda loader: Interrupting(loader, at_epoch=2), checkpoint_dir=tmp_path / "b")
    resumed, h_resumed = voc_run(checkpoint_dir=tmp_path / "b", resume=True)
    assert without_time(h_resumed) == without_time(h_straight)
    assert same_weights(resumed, straight)


def test_best_checkpoint_follows_miou(tmp_path):
    model, history = run(epochs=3, checkpoint_dir=tmp_path)
    best_epoch = max(history, key=lambda row: row["val_miou"])["epoch"]
    best = load_checkpoint(tmp_path / "best.pt", TinyNet())
    assert best["epoch"] == best_epoch and best["best_miou"] == max(r["val_miou"] for r in history)
    last = load_checkpoint(tmp_path / "last.pt", reloaded := TinyNet())
    assert last["epoch"] == 3 and same_weights(reloaded, model)
    assert {"optimizer", "scheduler", "scaler", "rng", "history"} <= set(last)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    lines = []
    _, history = run(epochs=1, resume=True, checkpoint_dir=tmp_path / "empty", log=lines.append)
    assert lines[0].startswith("no checkpoint at") and "starting from scratch" in lines[0]
    assert len(history) == 1
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        run(epochs=1, resume=True)


def test_interrupted_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    CK.atomic_save({"epoch": 1}, path)
    before = path.read_bytes()

    def half_write(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(CK.torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        CK.atomic_save({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_files_round_trip_and_bad_files_are_named(tmp_path):
    model = TinyNet()
    T.save_checkpoint(tmp_path / "model.pt", model, epoch=7)
    other = TinyNet()
    assert load_checkpoint(tmp_path / "model.pt", other)["epoch"] == 7 and same_weights(model, other)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*missing\.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"could not read the checkpoint .*broken\.pt"):
        load_checkpoint(tmp_path / "broken.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a segbook checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_fit_rejects_bad_settings():
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        run(epochs=0)
    with pytest.raises(TypeError, match="loader with a length"):
        run(epochs=1, train=(batch for batch in loaders()[0]))
    with pytest.raises(ValueError, match="yielded no batches"):
        run(epochs=1, train=DataLoader(tiny_data(n=3), batch_size=4, drop_last=True))
    with pytest.raises(ValueError, match="amp='int8'"):
        run(epochs=1, amp="int8")


class NaNAt(nn.Module):
    """Wraps a model; its ``nan_at``-th training forward returns NaN logits."""

    def __init__(self, nan_at: int) -> None:
        super().__init__()
        self.inner, self.nan_at, self.calls = TinyNet(), nan_at, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == self.nan_at:
                out["out"] = out["out"] * float("nan")
        return out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    saved = {}

    def log(line):  # called right after each epoch's checkpoint is written
        saved[len(saved) + 1] = hashlib.sha256((tmp_path / "last.pt").read_bytes()).hexdigest()

    steps = 3
    with pytest.raises(TrainingDiverged) as caught:
        run(epochs=3, model=NaNAt(nan_at=steps + 2), checkpoint_dir=tmp_path, log=log)
    err = caught.value
    assert isinstance(err, FloatingPointError)
    copy = pickle.loads(pickle.dumps(err))  # survives pickling, as multiprocessing needs
    assert (str(copy), copy.epoch, copy.step) == (str(err), 2, 2)
    assert (err.epoch, err.step, math.isnan(err.loss)) == (2, 2, True)
    message = str(err)
    assert "epoch 2, step 2 of 3" in message and "lower learning rate" in message
    assert "last.pt (epoch 1)" in message and "is kept" in message
    assert err.checkpoint == tmp_path / "last.pt" and len(err.history) == 1
    assert hashlib.sha256((tmp_path / "last.pt").read_bytes()).hexdigest() == saved[1]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_nan_in_the_first_epoch_says_nothing_was_saved(tmp_path):
    with pytest.raises(TrainingDiverged, match="No epoch finished") as caught:
        run(epochs=2, model=NaNAt(nan_at=1), checkpoint_dir=tmp_path)
    assert caught.value.checkpoint is None and not (tmp_path / "last.pt").exists()
    with pytest.raises(TrainingDiverged, match="checkpoint_dir=None"):
        run(epochs=1, model=NaNAt(nan_at=1))


def test_progress_switch(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert runtime.progress_on(None)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not runtime.progress_on(None) and runtime.progress_on(True)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert runtime.progress_on(None)


# -- evaluate --------------------------------------------------------------------------------------------


class Fixed(nn.Module):
    """Returns stored logits call by call: evaluation with known outputs."""

    def __init__(self, logits: list[torch.Tensor]) -> None:
        super().__init__()
        self.logits, self.i = logits, 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = self.logits[self.i]
        self.i += 1
        return {"out": out + 0 * self.dummy}


def test_evaluate_against_a_hand_made_reference():
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(1, 3, 4, 5, generator=g) for _ in range(3)]  # one forward pass per image
    masks = [torch.randint(0, 3, (2, 4, 5), generator=g), torch.randint(0, 3, (1, 4, 5), generator=g)]
    masks[1][:, 1:] = 255  # a mostly ignored image: few counted pixels, must weigh little
    batches = [(torch.zeros(len(m), 3, 4, 5), m) for m in masks]
    result = evaluate(Fixed(logits), batches)
    all_logits, all_masks = torch.cat(logits), torch.cat(masks)
    assert result["loss"] == pytest.approx(masked_ce(all_logits, all_masks).item(), rel=1e-6)
    expected = ConfusionMatrix(3).update(all_logits.argmax(1), all_masks)
    assert torch.equal(result["confusion"].matrix, expected.matrix)
    assert result["miou"] == pytest.approx(expected.miou) and result["pixel_acc"] == pytest.approx(expected.pixel_accuracy)
    assert len(result["iou"]) == 3
    with pytest.raises(ValueError, match="no batches"):
        evaluate(TinyNet(), [])


class PaddingSensitive(nn.Module):
    """Zero-padded convs plus a global-average-pooled bias: its logits change when the input is padded."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, 5, padding=2)
        self.context = nn.Linear(3, num_classes)

    def forward(self, x):
        pooled = x.mean((2, 3))  # (B, 3): the padding is averaged in
        return {"out": self.conv(x) + 10 * self.context(pooled)[:, :, None, None]}  # (B, K, H, W)


def _uneven_val_set(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    items = []
    for k in range(n):
        h, w = 9 + 3 * k, 20 - 2 * k  # all sizes differ
        image = torch.randn(3, h, w, generator=g) + k / 4  # (3, H, W), shifted: pooling sees a real difference
        items.append((image, torch.randint(0, NUM_CLASSES, (h, w), generator=g)))
    return items


def test_validation_scores_do_not_depend_on_the_batch_size():
    """pad_collate's batches carry each image's size: every image is scored alone, without the padding."""
    from segbook.data import pad_collate

    items, model = _uneven_val_set(), PaddingSensitive()
    results = {b: evaluate(model, DataLoader(items, batch_size=b, collate_fn=pad_collate)) for b in (1, 3, 8)}
    reference = ConfusionMatrix(NUM_CLASSES)
    for image, mask in items:  # by hand: one image per pass
        reference.update(model(image[None])["out"].argmax(1), mask[None])
    for result in results.values():
        assert torch.equal(result["confusion"].matrix, reference.matrix)
        assert result["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)
    # the model does see padding: scoring the padded batches whole gives another matrix
    padded = evaluate(model, DataLoader(items, batch_size=8, collate_fn=pad_collate), per_image=False)
    assert not torch.equal(padded["confusion"].matrix, reference.matrix)
    # lists of unpadded tensors, another way a loader can hand over uneven images
    as_lists = evaluate(model, DataLoader(items, batch_size=3, collate_fn=lambda b: tuple(map(list, zip(*b)))))
    assert torch.equal(as_lists["confusion"].matrix, reference.matrix)


# -- predict ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,crop,stride", [((70, 95), (32, 32), None), ((40, 41), (16, 24), (5, 7)),
                                              ((20, 50), (32, 32), None)])
def test_sliding_windows_cover_every_pixel(size, crop, stride):
    height, width = size
    windows = sliding_windows(height, width, crop, stride)
    canvas_h, canvas_w = max(height, crop[0]), max(width, crop[1])
    count = torch.zeros(canvas_h, canvas_w)
    for top, left, bottom, right in windows:
        assert (bottom - top, right - left) == crop and top >= 0 and left >= 0
        assert bottom <= canvas_h and right <= canvas_w
        count[top:bottom, left:right] += 1
    assert count.min() >= 1
    assert len(set(windows)) == len(windows)


def test_sliding_windows_reject_gaps():
    with pytest.raises(ValueError, match="leave gaps"):
        sliding_windows(100, 100, 32, 40)


def pointwise_model(num_classes=4, seed=0) -> nn.Module:
    """A 1x1 conv: translation-equivariant with no border effects, so windows must not change its answer."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, num_classes, 1)


def test_predict_with_windows_equals_the_whole_image():
    model = pointwise_model()
    image = torch.randn(3, 70, 95)
    whole = predict_logits(model, image)  # (K, H, W) in one pass
    reference = model(image[None])[0].detach()
    torch.testing.assert_close(whole, reference)
    windowed = predict_logits(model, image, crop_size=32)
    assert windowed.shape == (4, 70, 95)
    torch.testing.assert_close(windowed, reference, rtol=1e-5, atol=1e-5)
    labels = predict(model, image, crop_size=(32, 40), stride=(20, 11))
    assert labels.shape == (70, 95) and labels.dtype == torch.int64
    assert torch.equal(labels, reference.argmax(0))


def test_predict_divides_by_the_window_count():
    """Constant logits stay that constant only if each pixel is divided by how many windows covered it."""
    model = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 3.0, 2.0]))
    for size in [(70, 95), (20, 50)]:  # the second is shorter than the crop: padded, then cut back
        logits = predict_logits(model, torch.randn(3, *size), crop_size=32, stride=11)
        assert logits.shape == (3, *size)
        assert torch.equal(logits, torch.tensor([1.0, 3.0, 2.0]).view(3, 1, 1).expand(3, *size))


def test_predict_uint8_is_normalised_with_imagenet_stats():
    transforms = pytest.importorskip("segbook.data.transforms")
    model = pointwise_model()
    raw = torch.randint(0, 256, (3, 33, 34), dtype=torch.uint8)
    mean = torch.tensor(transforms.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(transforms.IMAGENET_STD).view(3, 1, 1)
    by_hand = (raw.float() / 255 - mean) / std
    torch.testing.assert_close(predict_logits(model, raw), predict_logits(model, by_hand))


def test_predict_rejects_a_batch_and_keeps_the_mode():
    model = TinyNet().train()
    with pytest.raises(ValueError, match=r"shape \(3, H, W\), got \(1, 3, 16, 16\)"):
        predict(model, torch.randn(1, 3, 16, 16))
    predict(model, torch.randn(3, 16, 16))
    assert model.training
    with pytest.raises(ValueError, match="logits of size"):
        predict(nn.Conv2d(3, 2, 2, stride=2), torch.randn(3, 16, 16))


# -- notebook ---------------------------------------------------------------------------------------------


class FakeHandle:
    def __init__(self, shown: list) -> None:
        self.shown = shown

    def update(self, obj) -> None:
        self.shown.append(("update", obj))


def test_live_plot_redraws_one_figure_in_a_notebook(monkeypatch):
    """In a kernel the curves are shown once and then updated in place: one figure, however many epochs."""
    pytest.importorskip("IPython")
    import IPython.display
    import matplotlib.pyplot as plt

    shown = []

    def fake_display(obj, display_id=None):
        assert display_id is True
        shown.append(("display", obj))
        return FakeHandle(shown)

    assert not viz._in_notebook()  # pytest runs in no kernel
    monkeypatch.setattr(viz, "_in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", fake_display)
    open_before = set(plt.get_fignums())
    run(epochs=3)  # live_plot=None: on, because a kernel is detected
    assert [kind for kind, _ in shown] == ["display", "update", "update"]
    figure = shown[0][1]
    assert all(obj is figure for _, obj in shown)
    loss_axes = figure.axes[0]
    assert [list(line.get_xdata()) for line in loss_axes.get_lines()][0] == [1, 2, 3]
    assert set(plt.get_fignums()) == open_before  # closed in pyplot: the inline backend will not show it again

    shown.clear()
    run(epochs=2, live_plot=False)
    assert shown == []


# -- checkpoints: settings, leftovers, interruptions -----------------------------------------------------


def test_resume_refuses_other_settings_and_lists_them(tmp_path):
    run(epochs=1, checkpoint_dir=tmp_path, run_config={"crop_size": [64, 64], "batch_size": 4})
    with pytest.raises(CK.ConfigMismatch) as caught:
        run(epochs=2, resume=True, checkpoint_dir=tmp_path, run_config={"crop_size": [96, 96], "batch_size": 4})
    message = str(caught.value)
    assert "crop_size: [64, 64] -> [96, 96]" in message and "batch_size" not in message
    assert "last.pt was written by a run with other settings" in message
    with pytest.raises(CK.ConfigMismatch, match=r"lr: 0\.2 -> 0\.1"):
        fit(TinyNet(), *loaders(), epochs=2, lr=0.1, device="cpu", log=None, resume=True, checkpoint_dir=tmp_path,
            run_config={"crop_size": [64, 64], "batch_size": 4})
    # more epochs than planned is a continuation, not another run
    _, history = run(epochs=2, resume=True, checkpoint_dir=tmp_path, run_config={"crop_size": (64, 64), "batch_size": 4})
    assert [row["epoch"] for row in history] == [1, 2]
    assert list(load_checkpoint(tmp_path / "last.pt")["config"]["crop_size"]) == [64, 64]


def test_resume_into_another_architecture_is_one_clear_error(tmp_path):
    run(epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"last\.pt holds weights of another model \(written for model TinyNet, .*\): "
                                         r".*unexpected.*missing entries against TinyNet; build the model it was "
                                         r"trained as"):
        load_checkpoint(tmp_path / "last.pt", TinyNet(aux=True))
    with pytest.raises(ValueError, match="the same entries with other shapes"):
        load_checkpoint(tmp_path / "last.pt", TinyNet(num_classes=5))


def test_stale_temporary_files_are_removed_with_one_line(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("mine")  # not a checkpoint temporary: left alone
    lines = []
    run(epochs=1, checkpoint_dir=tmp_path, log=lines.append)
    assert lines[0].startswith("removed .last.pt.abc123.tmp from ") and "killed" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "notes.tmp"]


def test_ctrl_c_says_what_was_saved(tmp_path):
    train, _ = loaders()
    lines = []
    with pytest.raises(KeyboardInterrupt):
        run(epochs=3, train=Interrupting(train, at_epoch=2), checkpoint_dir=tmp_path, log=lines.append)
    assert lines[-1].startswith("interrupted in epoch 2: ") and "last.pt holds epoch 1" in lines[-1]
    lines.clear()
    with pytest.raises(KeyboardInterrupt):
        run(epochs=3, train=Interrupting(loaders()[0], at_epoch=1), log=lines.append)
    assert lines == ["interrupted in epoch 1: nothing was saved"]


def test_chapter_checkpoints_live_in_the_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBOOK_DATA", str(tmp_path))
    assert CK.chapter_checkpoint_dir("03_fcn", "fcn8s") == tmp_path / "checkpoints" / "03_fcn" / "fcn8s"


def test_python_m_segbook_train_is_the_command_line(capsys):
    import runpy

    with pytest.raises(SystemExit) as exit_:
        with pytest.MonkeyPatch.context() as m:
            m.setattr("sys.argv", ["segbook-train", "--help"])
            runpy.run_module("segbook.train", run_name="__main__")
    assert exit_.value.code == 0 and "usage: segbook-train" in capsys.readouterr().out


# -- the recipe's options ---------------------------------------------------------------------------------


def test_clip_grad_norm_bounds_every_step(monkeypatch):
    norms = []
    real = nn.utils.clip_grad_norm_
    monkeypatch.setattr(nn.utils, "clip_grad_norm_", lambda params, max_norm: norms.append(float(real(params, max_norm))))
    model, _ = run(epochs=1, clip_grad_norm=0.01)
    assert len(norms) == len(loaders()[0]) and all(n > 0.01 for n in norms)  # the norm before clipping
    seen = []
    net = TinyNet()
    monkeypatch.setattr(nn.utils, "clip_grad_norm_", lambda params, max_norm: seen.append(max_norm))
    run(epochs=1, model=net)
    assert seen == []  # off by default


def test_limits_cut_an_epoch_and_a_validation(monkeypatch):
    calls = []

    class Counting(TinyNet):
        def forward(self, x):
            calls.append((self.training, x.shape[0]))
            return super().forward(x)

    run(epochs=2, model=Counting(), max_steps_per_epoch=1, max_val_images=3)
    assert [c for c in calls if c[0]] == [(True, 4)] * 2  # one training step of 4 images per epoch
    assert [c for c in calls if not c[0]] == [(False, 1)] * 6  # three validation images per epoch


def test_train_one_epoch_on_its_own():
    torch.manual_seed(0)
    model, (train, _) = TinyNet(), loaders()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    first = T.train_one_epoch(model, train, opt, segmentation_loss, torch.device("cpu"))
    second = T.train_one_epoch(model, train, opt, segmentation_loss, torch.device("cpu"))
    assert set(first) == {"train_loss"} and second["train_loss"] < first["train_loss"]
