"""The profile, device and seed rules every chapter's first cell relies on."""
import pytest
import torch

import segbook
from segbook import env


def test_seed_everything_repeats_random_streams():
    segbook.seed_everything(3)
    a = (torch.rand(4), torch.randn(2, 2))
    segbook.seed_everything(3)
    b = (torch.rand(4), torch.randn(2, 2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    segbook.seed_everything(4)
    assert not torch.equal(torch.rand(4), a[0])


def test_device_can_be_forced_and_cuda_refused_when_missing(monkeypatch):
    monkeypatch.setenv("SEGBOOK_DEVICE", "cpu")
    assert segbook.get_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        segbook.get_device("cuda")


def test_device_order_is_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("SEGBOOK_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert segbook.get_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert segbook.get_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert segbook.get_device().type == "cpu"


def _make_voc_layout(root):
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    (voc / "SegmentationClass").mkdir()
    (voc / "JPEGImages").mkdir()
    return voc


def test_profile_env_variable_wins_and_is_checked(monkeypatch):
    monkeypatch.setenv("SEGBOOK_PROFILE", "full")
    assert segbook.get_profile(torch.device("cpu")) == "full"
    monkeypatch.setenv("SEGBOOK_PROFILE", "fast")
    with pytest.raises(ValueError, match="quick"):
        segbook.get_profile(torch.device("cpu"))


def test_profile_is_full_only_with_cuda_and_voc_on_disk(monkeypatch, tmp_path):
    monkeypatch.delenv("SEGBOOK_PROFILE", raising=False)
    monkeypatch.setenv("SEGBOOK_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("SEGBOOK_VOC_ROOT", str(tmp_path / "voc"))
    assert segbook.get_profile(torch.device("cuda")) == "quick"  # no data yet
    _make_voc_layout(tmp_path / "voc")
    assert segbook.get_profile(torch.device("cuda")) == "full"
    assert segbook.get_profile(torch.device("cpu")) == "quick"


def test_setup_prints_one_line(monkeypatch, capsys):
    monkeypatch.setenv("SEGBOOK_PROFILE", "quick")
    monkeypatch.setenv("SEGBOOK_DEVICE", "cpu")
    s = segbook.setup(seed=7)
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["profile: quick (CPU-sized: toy VOC, random-init backbones, a few small epochs) | device: cpu | seed: 7"]
    assert s.quick and s.pick(quick=1, full=2) == 1


def test_short_path_hides_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert env.short_path(tmp_path / "x" / "y") == "~/x/y"
    assert env.short_path("/opt/data") == "/opt/data"
