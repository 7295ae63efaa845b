"""The profile, device and seed rules every chapter's first cell relies on."""
import pytest
import torch

import segbook
from segbook import env


@pytest.fixture(autouse=True)
def fresh_profile(monkeypatch, tmp_path):
    """Each test starts with no downgrade on record, no real VOC and no forced profile or device."""
    monkeypatch.setattr(env, "_downgraded", None)
    monkeypatch.setenv("SEGBOOK_DATA", str(tmp_path / "home"))
    for name in ("SEGBOOK_VOC_ROOT", "SEGBOOK_PROFILE", "SEGBOOK_DEVICE"):
        monkeypatch.delenv(name, raising=False)


def test_seed_everything_repeats_random_streams():
    segbook.seed_everything(3)
    a = (torch.rand(4), torch.randn(2, 2))
    segbook.seed_everything(3)
    b = (torch.rand(4), torch.randn(2, 2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    segbook.seed_everything(4)
    assert not torch.equal(torch.rand(4), a[0])


def test_device_can_be_forced_and_a_missing_one_says_who_asked(monkeypatch):
    monkeypatch.setenv("SEGBOOK_DEVICE", "cpu")
    assert segbook.get_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"'cuda' was asked for with --device, but PyTorch sees no CUDA GPU; "
                                           r"pass another --device or leave it out"):
        segbook.get_device("cuda", given_as="--device")
    with pytest.raises(RuntimeError, match=r"asked for with get_device\(prefer=\.\.\.\)"):
        segbook.get_device("cuda:1")
    monkeypatch.setenv("SEGBOOK_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match=r"asked for with SEGBOOK_DEVICE.*unset SEGBOOK_DEVICE"):
        segbook.get_device()
    with pytest.raises(ValueError, match=r"'gpu' \(asked for with --device\) is not a device name"):
        segbook.get_device("gpu", given_as="--device")


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


def test_profile_env_variable_is_checked():
    with pytest.MonkeyPatch.context() as m:
        m.setenv("SEGBOOK_PROFILE", "fast")
        with pytest.raises(ValueError, match="quick"):
            segbook.get_profile(torch.device("cpu"))


def test_profile_is_full_only_with_cuda_and_voc_on_disk(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SEGBOOK_VOC_ROOT", str(tmp_path / "voc"))
    assert segbook.get_profile(torch.device("cuda")) == "quick"  # no data yet, and nobody asked for full
    _make_voc_layout(tmp_path / "voc")
    assert segbook.get_profile(torch.device("cuda")) == "full"
    assert segbook.get_profile(torch.device("cpu")) == "quick"
    assert capsys.readouterr().out == "" and env.profile_downgraded() is None  # chosen, not downgraded


@pytest.mark.parametrize("device, has_voc, reason", [("cpu", True, "no CUDA GPU (device: cpu)"),
                                                     ("cuda", False, "no VOC2012 on disk")])
def test_full_asked_for_but_missing_is_downgraded_for_the_whole_process(monkeypatch, tmp_path, capsys,
                                                                        device, has_voc, reason):
    monkeypatch.setenv("SEGBOOK_PROFILE", "full")
    if has_voc:
        monkeypatch.setenv("SEGBOOK_VOC_ROOT", str(_make_voc_layout(tmp_path / "voc")))
    assert segbook.get_profile(torch.device(device)) == "quick"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"full profile unavailable: {reason}")
    assert lines[0].endswith("; using the quick profile")
    # every later call sees quick, silently, even where full would now be possible
    monkeypatch.setenv("SEGBOOK_VOC_ROOT", str(_make_voc_layout(tmp_path / "later")))
    assert segbook.get_profile(torch.device("cuda")) == "quick" and capsys.readouterr().out == ""


def test_the_data_layer_reports_and_never_switches_the_profile(monkeypatch, capsys):
    # the profile is settled in setup; asking the data layer for VOC2012 that is not there is an error naming
    # the fix, not a quiet switch to the toy set under a profile that still says full
    import segbook.data

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(env, "real_voc_available", lambda: True)
    s = segbook.setup(profile="full")
    assert s.profile == "full" and s.pick(quick=1, full=2) == 2
    with pytest.raises(FileNotFoundError, match="VOC2012 is not on disk and download=False"):
        segbook.data.get_voc_dir("voc", download=False, verbose=False)
    assert s.profile == "full" and env.profile_downgraded() is None


def test_setup_downloads_voc_when_asked_and_downgrades_when_that_fails(monkeypatch, capsys):
    import segbook.data

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []

    def offline(root=None, **kwargs):
        asked.append(root)
        raise ConnectionError("could not download VOC2012")

    monkeypatch.setattr(segbook.data, "download_voc2012", offline)
    segbook.setup(profile="quick", download_voc=True)
    assert asked == []  # only the full profile needs VOC2012
    capsys.readouterr()
    s = segbook.setup(seed=1, profile="full", download_voc=True)
    assert asked == [None] and s.profile == "quick"
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["full profile unavailable: VOC2012 could not be downloaded (ConnectionError); "
                     "using the quick profile",
                     "profile: quick (toy VOC, random-init backbones) | device: cuda | seed: 1"]


def test_setup_prints_one_short_line(monkeypatch, capsys):
    monkeypatch.setenv("SEGBOOK_PROFILE", "quick")
    monkeypatch.setenv("SEGBOOK_DEVICE", "cpu")
    s = segbook.setup(seed=7)
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["profile: quick (toy VOC, random-init backbones) | device: cpu | seed: 7"]
    assert s.quick and s.pick(quick=1, full=2) == 1
    full = str(env.Setup("full", torch.device("cuda"), 12345))
    assert full == "profile: full (VOC2012, pretrained backbones) | device: cuda | seed: 12345"
    assert max(len(out[0]), len(full)) <= 88  # the book's code cells are cut at 88 characters
    assert "paper" not in env.PROFILE_DESCRIPTIONS["full"] and "longer GPU schedule" in env.PROFILE_DESCRIPTIONS["full"]


def test_short_path_hides_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert env.short_path(tmp_path / "x" / "y") == "~/x/y"
    assert env.short_path("/opt/data") == "/opt/data"
