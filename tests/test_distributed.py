"""fit on two processes (Gloo, on the CPU) against one process, and an interrupted two-process run resumed.

The reference for two processes with batch ``b`` each is one process with
batch ``2b``: :class:`~segbook.train.distributed.ShardedSeededShuffle` gives step
``k`` of the two together the very items (and augmentations) of step ``k`` of
the single process, and DistributedDataParallel averages the gradients. The
runs still differ a little, for a reason the tests name: each process averages
its loss over its own counted pixels (VOC's 255 band and the crop padding
differ between images), so the averaged gradient weights pixels slightly
differently from one loss over the whole batch. The model has no BatchNorm, so
batch statistics (which would differ with the share) play no part; hence the
tolerances below. ``test_distributed_ranks.py`` removes both differences (no
ignored pixels, float64) and compares one step exactly.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Subset

from segbook.data import (SeededShuffle, VOCSegmentation, eval_transforms, get_voc_dir, segmentation_loaders,
                          train_transforms)
from segbook.train.distributed import Processes, ShardedSeededShuffle, torchrun_env
from segbook.train.evaluation import evaluate
from segbook.train import fit

CROP, NUM_CLASSES = (32, 48), 21
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with Gloo is not available")


class TinySegmenter(nn.Module):
    """Three convolutions, no BatchNorm: a model whose result does not depend on how a batch is split."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=2, dilation=2),
                                  nn.ReLU(), nn.Conv2d(16, NUM_CLASSES, 1))

    def forward(self, x):
        return {"out": self.body(x)}


class StopAfter(torch.utils.data.Dataset):
    """A dataset that raises KeyboardInterrupt at item number ``limit`` (Ctrl-C in the middle of a run)."""

    def __init__(self, dataset, limit: int) -> None:
        self.dataset, self.limit, self.fetched = dataset, limit, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        self.fetched += 1
        if self.fetched > self.limit:
            raise KeyboardInterrupt
        return self.dataset[index]


def _loaders(batch_size: int, stop_after: int | None = None):
    voc = get_voc_dir("toy", verbose=False)
    train = Subset(VOCSegmentation(voc, "train", transforms=train_transforms(CROP, None)), range(32))
    val = Subset(VOCSegmentation(voc, "val", transforms=eval_transforms()), range(12))
    train_loader, val_loader = segmentation_loaders(train, val, batch_size, num_workers=0, seed=3)
    if stop_after is not None:  # the loader wraps the dataset in SeededItems; interrupt underneath it
        train_loader.dataset.dataset = StopAfter(train_loader.dataset.dataset, stop_after)
    return train_loader, val_loader


def _run(batch_size: int, epochs: int, folder: str | None = None, resume: bool = False,
         stop_after: int | None = None) -> list[dict]:
    train_loader, val_loader = _loaders(batch_size, stop_after)
    torch.manual_seed(0)
    model = TinySegmenter()
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=0.05, device="cpu", num_classes=NUM_CLASSES,
                  seed=5, checkpoint_dir=folder, resume=resume, live_plot=False, progress=False, log=None)
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _evaluate_untrained(processes: Processes | None = None) -> dict:
    """Scores of a random-weight TinySegmenter (it predicts many classes) on the validation images."""
    _, val_loader = _loaders(4)
    if processes is not None:
        val_loader = processes.shard_val(val_loader)
    torch.manual_seed(1)
    result = evaluate(TinySegmenter(), val_loader, num_classes=NUM_CLASSES, processes=processes)
    return {"loss": result["loss"], "matrix": result["confusion"].matrix.tolist()}


def _worker(rank: int, world: int, port: int, out: str, kwargs: dict) -> None:
    torch.set_num_threads(1)  # two processes on a two-core machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        if kwargs.get("evaluate"):
            processes = Processes()
            processes.start("cpu")
            result = _evaluate_untrained(processes)
        else:
            result = {"history": _run(**kwargs)}
    except KeyboardInterrupt:
        result = {"interrupted": True}
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path: Path, name: str, **kwargs) -> list[dict]:
    out = tmp_path / name
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(out), kwargs), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_sharded_shuffle_splits_each_global_batch() -> None:
    def group(rank: int) -> Processes:
        processes = Processes()
        processes.rank, processes.world_size = rank, 2
        return processes

    def sampler(rank):
        return ShardedSeededShuffle(SeededShuffle(10, torch.Generator().manual_seed(1)), group(rank), batch_size=2)

    whole = list(SeededShuffle(10, torch.Generator().manual_seed(1)))[:8]  # two global batches of 4
    shares = [list(sampler(r)) for r in (0, 1)]
    assert [len(s) for s in shares] == [4, 4] and len(sampler(0)) == 4
    for step in range(2):  # the two processes' batch k together is the single process's batch k
        together = shares[0][2 * step:2 * step + 2] + shares[1][2 * step:2 * step + 2]
        assert sorted(together) == sorted(whole[4 * step:4 * step + 4])
    with pytest.raises(ValueError, match="cannot fill one batch"):
        ShardedSeededShuffle(SeededShuffle(3, torch.Generator()), group(0), batch_size=2)


def test_torchrun_environment_is_read(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    processes = Processes()
    assert torchrun_env() is None and processes.start("cpu") == torch.device("cpu") and not processes.several
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert torchrun_env() == (0, 1, 0)
    processes.start("cpu")
    assert not processes.several and not processes.started  # one process: nothing to share
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        torchrun_env()


@pytest.mark.slow  # several processes: `pytest -m slow`, run by CI after the main suite
def test_sharded_validation_counts_every_image_once(tmp_path: Path) -> None:
    # Each process scores every second image; the summed counts are the single process's, exactly.
    single = _evaluate_untrained()
    ranks = _two_processes(tmp_path, "val", evaluate=True)
    assert len([v for row in single["matrix"] for v in row if v]) > 10  # many cells: a real test
    for rank in ranks:
        assert rank["matrix"] == single["matrix"]
        assert rank["loss"] == pytest.approx(single["loss"], rel=1e-9)


@pytest.mark.slow  # several processes: `pytest -m slow`, run by CI after the main suite
def test_two_processes_match_one_with_the_doubled_batch(tmp_path: Path) -> None:
    # This small model learns little in two epochs (it still predicts background everywhere),
    # so the continuous scores, the losses, carry the comparison; measured: within 0.2 %.
    single = _run(batch_size=8, epochs=2)
    ranks = _two_processes(tmp_path, "ddp", batch_size=4, epochs=2)
    assert ranks[0]["history"] == ranks[1]["history"]  # every process reports the same, reduced scores
    for one, two in zip(single, ranks[0]["history"]):
        assert two["val_miou"] == pytest.approx(one["val_miou"], abs=0.02)
        assert two["val_pixel_acc"] == pytest.approx(one["val_pixel_acc"], abs=0.02)
        assert two["val_loss"] == pytest.approx(one["val_loss"], rel=0.01)
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=0.01)
    assert single[-1]["train_loss"] < single[0]["train_loss"]


@pytest.mark.slow  # several processes: `pytest -m slow`, run by CI after the main suite
def test_interrupted_two_process_run_resumes(tmp_path: Path) -> None:
    whole = _two_processes(tmp_path, "whole", batch_size=4, epochs=2)[0]["history"]
    folder = str(tmp_path / "checkpoints")
    # 32 items, 2 processes: 16 per process per epoch; the 17th fetch is the first of epoch 2
    stopped = _two_processes(tmp_path, "stopped", batch_size=4, epochs=2, folder=folder, stop_after=16)
    assert all(r.get("interrupted") for r in stopped)
    assert sorted(os.listdir(folder)) == ["best.pt", "last.pt"]
    resumed = _two_processes(tmp_path, "resumed", batch_size=4, epochs=2, folder=folder, resume=True)
    assert resumed[0]["history"] == resumed[1]["history"]
    assert [row["epoch"] for row in resumed[0]["history"]] == [1, 2]
    for a, b in zip(resumed[0]["history"], whole):
        assert a == pytest.approx(b, rel=1e-6)


@pytest.mark.slow  # several processes: `pytest -m slow`, run by CI after the main suite
def test_command_line_runs_unchanged_under_torchrun(tmp_path: Path) -> None:
    # python -m torch.distributed.run is the torchrun script; --standalone makes a local rendezvous.
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "segbook.train", "--model", "fcn", "--source", "toy", "--epochs", "1", "--batch-size", "4",
               "--crop-size", "32", "32", "--device", "cpu", "--checkpoint-dir", str(tmp_path / "ck"),
               "--no-progress"]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "2 processes, batch 4 each" in run.stdout
    assert run.stdout.count("epoch 1/1 |") == 1 and run.stdout.count("dataset:") == 1  # rank 0 alone speaks
    assert "mIoU" in run.stdout.splitlines()[-2]  # the final per-class table
    assert sorted(os.listdir(tmp_path / "ck")) == ["best.pt", "last.pt"]
