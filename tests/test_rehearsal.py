"""The rehearsal (tools/): the full profile's settings on the CPU, driven through segbook's public arguments."""
from __future__ import annotations

import ast

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import segbook
import segbook.data
import segbook.train
from segbook import env
from segbook.data import VOCSegmentation, find_voc_dir, is_toy_voc
from tools import rehearsal_kernel as kernel
from tools.make_rehearsal_data import VOC_SIZES, make_voc_shaped
from tools.rehearse import FALLBACKS, SKIPPED_PREFIX


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.setattr(env, "_downgraded", None)
    monkeypatch.setattr(kernel, "_said", set())
    monkeypatch.setenv("SEGBOOK_DATA", str(tmp_path / "home"))
    for name in ("SEGBOOK_VOC_ROOT", "SEGBOOK_PROFILE", "SEGBOOK_DEVICE", "SEGBOOK_REHEARSAL_BATCH"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def rehearsal(monkeypatch):
    """The kernel start-up file's changes, undone after the test."""
    kernel.install(setattr_=monkeypatch.setattr)
    return kernel


@pytest.fixture(scope="module")
def voc_shaped(tmp_path_factory):
    return make_voc_shaped(tmp_path_factory.mktemp("rehearsal"), num_train=7, num_val=7)


def test_the_voc_shaped_set_is_voc_at_real_sizes_with_every_class(voc_shaped):
    assert find_voc_dir(voc_shaped.parent.parent) == voc_shaped and not is_toy_voc(voc_shaped)
    for split in ("train", "val"):
        dataset = VOCSegmentation(voc_shaped, split)
        values = set()
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert tuple(image.shape[1:]) in VOC_SIZES
            values |= set(label.unique().tolist())
        assert values == set(range(21)) | {255}
    with Image.open(dataset.label_path(0)) as png:
        assert png.mode == "P"


def test_full_on_a_cpu_is_a_loud_rehearsal_and_segbook_alone_refuses_it(monkeypatch, voc_shaped, capsys):
    monkeypatch.setenv("SEGBOOK_VOC_ROOT", str(voc_shaped))
    monkeypatch.setenv("SEGBOOK_DEVICE", "cpu")
    assert segbook.setup(profile="full").profile == "quick"  # segbook alone: no CUDA GPU, said in one line
    assert "no CUDA GPU" in capsys.readouterr().out
    monkeypatch.setattr(env, "_downgraded", None)
    kernel.install(setattr_=monkeypatch.setattr)
    setup = segbook.setup(profile="full")
    assert setup.profile == "full" and setup.device.type == "cpu" and env.profile_downgraded() is None
    assert capsys.readouterr().out.startswith("rehearsal: the full profile's settings on the CPU")


def _loaders(n_train=12, n_val=5):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n_train + n_val, 3, 8, 8, generator=g)
    labels = torch.randint(0, 3, (n_train + n_val, 8, 8), generator=g)
    train = DataLoader(TensorDataset(images[:n_train], labels[:n_train]), batch_size=2)
    val = DataLoader(TensorDataset(images[n_train:], labels[n_train:]), batch_size=5)
    return train, val


class Counting(nn.Module):
    """Counts the images it sees, and whether they came channels-last under bfloat16 autocast."""

    def __init__(self):
        super().__init__()
        self.conv, self.calls, self.seen = nn.Conv2d(3, 3, 1), 0, set()

    def forward(self, x):
        self.calls += x.shape[0]
        self.seen.add((x.is_contiguous(memory_format=torch.channels_last), torch.get_autocast_dtype("cpu")
                       if torch.is_autocast_enabled("cpu") else None))
        return {"out": self.conv(x)}


def test_fit_and_evaluate_stop_early_and_take_cudas_lines(rehearsal, tmp_path, capsys):
    train, val = _loaders()
    model = Counting()
    history = segbook.train.fit(model, train, val, epochs=5, device="cpu", num_classes=3, checkpoint_dir=tmp_path,
                                live_plot=False, progress=False, log=None)
    assert len(history) == rehearsal.EPOCHS
    per_epoch = rehearsal.STEPS_PER_EPOCH * 2 + rehearsal.IMAGES  # batch-2 steps, then one image at a time
    assert model.calls == rehearsal.EPOCHS * per_epoch
    assert history[1]["lr"] < history[0]["lr"]  # the schedule is laid out for whole epochs
    assert (True, torch.bfloat16) in model.seen  # channels-last batches under bfloat16 autocast
    out = capsys.readouterr().out
    assert "fit stops after 2 of its 5 epochs" in out and "bfloat16" in out
    model.calls = 0
    segbook.train.evaluate(model, val, num_classes=3)
    assert model.calls == rehearsal.IMAGES
    model.seen.clear()
    segbook.train.evaluate(model, val, num_classes=3, amp=False, channels_last=False)
    assert model.seen == {(False, None)}  # a chapter's explicit choice still wins


def test_a_warm_up_keeps_its_share_of_the_shorter_schedule(rehearsal, capsys):
    train, val = _loaders()  # 6 steps an epoch: 30 steps in 5 epochs, 12 in the rehearsal's 2
    with pytest.raises(ValueError, match="warmup_steps=12"):  # what the cut would do to 12 of 30 steps
        segbook.train.fit(Counting(), train, val, epochs=2, warmup_steps=12, device="cpu", num_classes=3,
                          live_plot=False, progress=False, log=None)
    history = segbook.train.fit(Counting(), train, val, epochs=5, warmup_steps=12, lr=0.1, device="cpu",
                                num_classes=3, live_plot=False, progress=False, log=None)
    assert "warm-up shrinks with the schedule, to 4 steps" in capsys.readouterr().out  # 12 * 2 // 5
    assert history[0]["lr"] == pytest.approx(0.1 / 4)  # the first step of a 4-step warm-up


def test_outside_a_rehearsal_nothing_is_capped():
    train, val = _loaders()
    model = Counting()
    segbook.train.fit(model, train, val, epochs=2, device="cpu", num_classes=3, live_plot=False, progress=False,
                      log=None)
    assert model.calls == 2 * (6 * 2 + 5) and model.seen == {(False, None)}


def test_a_failing_assert_becomes_a_skipped_check(capsys):
    source = "x = 1\nassert x == 2, 'never shown'\nassert x == 1\ny = 3\n"
    kernel._remember([source])
    tree = kernel._AssertToCheck().visit(ast.parse(source))
    scope = {"__rehearsal_skipped_check__": kernel.skipped_check}
    exec(compile(ast.fix_missing_locations(tree), "<cell>", "exec"), scope)
    assert scope["y"] == 3
    assert capsys.readouterr().out == SKIPPED_PREFIX + "assert x == 2, 'never shown'\n"
    assert kernel.SKIPPED_PREFIX == SKIPPED_PREFIX  # what rehearse.py looks for


def test_the_batch_is_as_written_unless_the_rehearsal_caps_it(monkeypatch, capsys):
    train_set = TensorDataset(torch.zeros(16, 3, 4, 4), torch.zeros(16, 4, 4, dtype=torch.long))
    monkeypatch.setenv("SEGBOOK_REHEARSAL_BATCH", "2")
    assert segbook.data.segmentation_loaders(train_set, train_set, 8)[0].batch_size == 8  # not installed: ignored
    kernel.install(setattr_=monkeypatch.setattr)
    for loaders in (segbook.data.segmentation_loaders, segbook.data.sources.segmentation_loaders):
        assert loaders(train_set, train_set, 8)[0].batch_size == 2 and loaders(train_set, train_set, 1)[0].batch_size == 1
    assert "cut from 8 to 2" in capsys.readouterr().out


def test_every_check_a_rehearsal_may_skip_is_an_assert_of_its_chapter():
    """tools/rehearsal_checks.json names asserts as the chapters write them; a reworded one must be listed anew."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    expected = json.loads((root / "tools" / "rehearsal_checks.json").read_text())
    for stem, checks in expected.items():
        notebook = json.loads((root / "chapters" / f"{stem}.ipynb").read_text())
        asserts = set()
        for cell in notebook["cells"]:
            if cell["cell_type"] != "code":
                continue
            text = "\n".join(line for line in "".join(cell["source"]).splitlines()
                             if not line.lstrip().startswith("%"))
            asserts |= {" ".join(ast.get_source_segment(text, node).split())
                        for node in ast.walk(ast.parse(text)) if isinstance(node, ast.Assert)}
        stale = [check for check in checks if check not in asserts]
        assert not stale, f"{stem}: tools/rehearsal_checks.json lists asserts the chapter no longer has: {stale}"


def test_the_stand_in_mit_b0_loads_through_the_readers_download_path(monkeypatch, tmp_path):
    """The rehearsal's MiT-B0 file sits where the download lands; the key map then loads every tensor."""
    from tools.make_rehearsal_data import write_stand_in_mit_b0
    from segbook.models.mit import MixTransformer, convert_segformer_state_dict

    path = write_stand_in_mit_b0(tmp_path / "torch")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("it tried to download"))
    encoder = MixTransformer("mit_b0", pretrained=True)
    published = convert_segformer_state_dict(torch.load(path, weights_only=True))
    ours = encoder.state_dict()
    assert {f"backbone.{k}" for k in ours} == {k for k in published if k.startswith("backbone.")}
    assert all(torch.equal(ours[k], published[f"backbone.{k}"]) for k in ours)
    first = next(iter(ours))  # the patch embedding's convolution: the file's values, not a fresh init
    assert not torch.equal(ours[first], MixTransformer("mit_b0", pretrained=False).state_dict()[first])


def test_the_stand_in_resnet_weights_load_through_torchvisions_cache(monkeypatch, tmp_path):
    """The rehearsal's ResNet file sits where torchvision's download lands, and the reader's loader takes it."""
    from tools.make_rehearsal_data import weight_file
    from segbook.models.backbones import RESNETS, ResNetBackbone

    build, _ = RESNETS["resnet18"]
    torch.manual_seed(3)
    stand_in = build(weights=None).state_dict()
    path = weight_file(tmp_path / "torch", "resnet18")
    path.parent.mkdir(parents=True)
    torch.save(stand_in, path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("it tried to download"))
    ours = ResNetBackbone("resnet18", pretrained=True).state_dict()
    assert ours and all(torch.equal(value, stand_in[key]) for key, value in ours.items())


def test_the_rehearsal_fails_on_every_fallback_segbook_prints():
    """tools/rehearse.py fails a chapter that fell back (random weights, the quick profile); its
    patterns must be what segbook prints, or a fallback would pass unseen."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    printed = {name: (root / "segbook" / name).read_text() for name in ("models/weights.py", "env.py")}
    assert 'print(f"ImageNet weights for {what} are unavailable (' in printed["models/weights.py"]
    assert all(any(pattern in text for text in printed.values()) for pattern in FALLBACKS)
    assert 'print(f"full profile unavailable: {reason}' in printed["env.py"]
