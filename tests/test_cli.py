"""The command line: checks that stop a bad run before anything is built, repeatable runs, exit statuses.

Runs use a toy set of 8 + 4 images, 64-pixel crops and one epoch, so a whole
``main`` takes a few seconds; checks that must fire before training replace
``load_voc``/``fit`` with a function that fails the test if it is reached.
"""
from __future__ import annotations

import functools
import math
import re
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

from segbook import data
from segbook.train import cli
from segbook.train.checkpoints import load_checkpoint

pytest.importorskip("segbook.models")


@pytest.fixture(autouse=True)
def small_toy(tmp_path, monkeypatch):
    """Its own data home, no real VOC, and toy sets of 8 train + 4 val images."""
    monkeypatch.setenv("SEGBOOK_DATA", str(tmp_path / "home"))
    monkeypatch.delenv("SEGBOOK_VOC_ROOT", raising=False)
    monkeypatch.delenv("SEGBOOK_DEVICE", raising=False)
    monkeypatch.setattr(data, "get_voc_dir", functools.partial(data.get_voc_dir, toy_size=(8, 4)))


def _never(*args, **kwargs):
    pytest.fail("reached a step that a failed check must prevent")


def tiny_args(tmp_path, *extra):
    return ["--model", "fcn", "--backbone", "resnet18", "--source", "toy", "--root", str(tmp_path / "voc"),
            "--epochs", "1", "--batch-size", "4", "--crop-size", "64", "64", "--device", "cpu",
            "--checkpoint-dir", str(tmp_path / "ck"), "--num-workers", "0", "--no-progress", *extra]


def test_trains_one_epoch_on_toy_voc(tmp_path, capsys):
    status = cli.main(tiny_args(tmp_path))
    assert status == 0  # what the segbook-train console script hands to sys.exit
    history = load_checkpoint(tmp_path / "ck" / "last.pt")["history"]
    assert len(history) == 1 and math.isfinite(history[0]["val_loss"])
    out = capsys.readouterr().out
    assert "epoch 1/1 | train_loss" in out and "final: val_loss" in out
    assert "data toy VOC (8 train, 4 val)" in out and "Pascal VOC2012" not in out
    assert "aeroplane" in out and "mIoU" in out  # the per-class table


def test_same_seed_same_run_other_seed_other_run(tmp_path, capsys):
    def losses(seed, folder):
        assert cli.main(tiny_args(tmp_path, "--seed", str(seed), "--checkpoint-dir", str(tmp_path / folder))) == 0
        epoch_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
        history = load_checkpoint(tmp_path / folder / "last.pt")["history"]
        return epoch_lines, [(row["train_loss"], row["val_loss"]) for row in history]

    torch.manual_seed(123)  # whatever ran before: --seed decides
    first = losses(3, "a")
    torch.manual_seed(456)
    assert losses(3, "b") == first
    assert losses(4, "c")[1] != first[1]


def test_help_states_every_default_once_and_its_example_runs(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for action in cli.build_parser()._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help"
        assert action.help.count("(default:") <= 1, action.option_strings
        assert action.const is True or "(default:" in action.help, f"{action.option_strings} hides its default"
    assert "(default: 30)" in text and "(default: (default" not in text
    assert text.count("(default: 320 480)") == 1
    example = text.split("example")[-1].strip().splitlines()[-1].strip()
    assert example == cli.EXAMPLE
    argv = shlex.split(example)[1:] + ["--root", str(tmp_path / "voc"), "--no-progress", "--checkpoint-dir",
                                       str(tmp_path / "ck")]
    assert cli.main(argv) == 0


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], r"argument --epochs: 0 is too small"),
    (["--batch-size", "-4"], r"argument --batch-size: -4 is too small"),
    (["--lr", "-0.1"], r"argument --lr: -0.1 must be a positive number"),
    (["--crop-size", "16", "64"], r"argument --crop-size: 16 is too small; give a crop side in pixels >= 32"),
    (["--epochs", "two"], r"argument --epochs: 'two' is not a whole number"),
])
def test_bad_arguments_are_usage_errors_before_any_work(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(data, "load_voc", _never)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: segbook-train") and re.search(message, err)


def test_cuda_asked_for_on_a_cpu_names_the_option(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(data, "load_voc", _never)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--device", "cuda"])
    assert exit_.value.code == 2
    assert "device 'cuda' was asked for with --device, but PyTorch sees no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["voc", "auto"])
def test_a_root_without_voc_stops_the_run_and_is_not_created(source, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "load_voc", _never)
    monkeypatch.setattr(data, "download_voc2012", _never)
    missing = tmp_path / "no_such_folder"
    for root in (missing, tmp_path):  # one absent, one present but empty
        with pytest.raises(SystemExit) as exit_:
            cli.main(["--source", source, "--root", str(root)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert str(root) in err and "expected VOCdevkit/VOC2012/ inside it, or JPEGImages/, SegmentationClass/ and " \
                                    "ImageSets/Segmentation/ directly in it" in err
    assert not missing.exists() and not (tmp_path / "home").exists()  # nothing created, no toy set made


def test_voc_at_a_toy_folder_is_refused_in_one_message(tmp_path, capsys, monkeypatch):
    toy = data.make_toy_voc(tmp_path / "toy", num_train=2, num_val=1)
    monkeypatch.setattr(data, "load_voc", _never)
    with pytest.raises(SystemExit):
        cli.main(["--source", "voc", "--root", str(toy)])
    captured = capsys.readouterr()
    assert "holds the generated toy VOC set, not Pascal VOC2012; use source 'toy' (--source toy)" in captured.err
    assert "Pascal VOC2012 |" not in captured.out


def test_a_corrupt_val_label_stops_before_training(tmp_path, capsys, monkeypatch):
    voc = data.get_voc_dir("toy", tmp_path / "voc", verbose=False)
    first_val = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    label = voc / "SegmentationClass" / f"{first_val}.png"
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(label)  # an RGB re-save
    monkeypatch.setattr(cli, "fit", _never)
    assert cli.main(tiny_args(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("segbook-train: error: ") and f"{first_val}.png: label PNG has mode 'RGB'" in err


def test_check_labels_names_one_file_and_how_to_restore_it(tmp_path):
    voc = data.get_voc_dir("toy", tmp_path / "voc", verbose=False)
    dataset = data.VOCSegmentation(voc, "train")
    sizes = data.check_labels(dataset, progress=False)
    assert len(sizes) == 8 and all(h >= 32 and w >= 32 for h, w in sizes)
    assert sizes[0] == tuple(dataset[0][1].shape)
    broken = dataset.label_path(3)
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(ValueError, match=rf"{broken.name}: cannot decode this label PNG.*toy set: delete "):
        data.check_labels(dataset, progress=False)


def test_a_crop_larger_than_every_image_is_warned_about(tmp_path, capsys, monkeypatch):
    def stop(*args, **kwargs):  # the warning comes before training: no need to train
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "fit", stop)
    cli.main(tiny_args(tmp_path, "--crop-size", "512", "512"))
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if line.startswith("warning: the crop 512x512"))
    assert re.search(r"heights \d+-\d+, widths \d+-\d+ px\), so most of each crop is padding; "
                     r"try --crop-size \d+ \d+$", warning)
    cli.main(tiny_args(tmp_path))
    assert "warning" not in capsys.readouterr().err


def test_ctrl_c_exits_130_and_other_settings_refuse_to_resume(tmp_path, capsys, monkeypatch):
    assert cli.main(tiny_args(tmp_path)) == 0
    assert cli.main(tiny_args(tmp_path, "--resume", "--crop-size", "96", "96")) == 1
    assert "crop_size: [64, 64] -> [96, 96]" in capsys.readouterr().err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "fit", interrupted)
    assert cli.main(tiny_args(tmp_path)) == cli.INTERRUPTED == 130


def test_no_progress_reaches_the_final_evaluation(tmp_path, monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("progress"))
        return evaluate(*args, **kwargs)

    from segbook.train.evaluation import evaluate

    monkeypatch.setattr(cli, "evaluate", spy)
    assert cli.main(tiny_args(tmp_path)) == 0
    assert calls == [False]
