"""Batches that do not depend on worker processes, sharded loaders that keep every option, devices under torchrun."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from segbook import data
from segbook.env import get_device
from segbook.models.base import model_loss, segmentation_loss
from segbook.train.distributed import Processes
from segbook.models.pointrend import PointRend, point_loss
from segbook.train import fit

NUM_CLASSES = 21


class Dropper(nn.Module):
    """A convolution with dropout: training draws from the global RNG, as real models do."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Dropout2d(0.3), nn.ReLU(),
                                  nn.Conv2d(8, NUM_CLASSES, 1))

    def forward(self, x):
        return {"out": self.body(x)}


def _loaders(workers: int):
    voc = data.get_voc_dir("toy", verbose=False)
    train = Subset(data.VOCSegmentation(voc, "train", transforms=data.train_transforms((32, 32), (0.5, 2.0))),
                   range(12))
    val = Subset(data.VOCSegmentation(voc, "val", transforms=data.eval_transforms()), range(4))
    return data.segmentation_loaders(train, val, 4, num_workers=workers, seed=2)


def _keys(loader, epochs: int) -> list:
    return [torch.cat([images.flatten()[:5], masks.flatten()[:5].float()]).tolist()
            for _ in range(epochs) for images, masks in loader]


def _fit(workers: int, epochs: int, folder: Path | None = None, resume: bool = False):
    train_loader, val_loader = _loaders(workers)
    torch.manual_seed(0)
    model = Dropper()
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=0.05, device="cpu", num_classes=NUM_CLASSES,
                  poly_power=0, seed=1, checkpoint_dir=folder, resume=resume, live_plot=False, progress=False,
                  log=None)  # a fixed lr: a 1-epoch run and a 3-epoch run then share epoch 1
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history], model.state_dict()


def test_batches_are_the_same_with_0_and_2_workers_every_epoch() -> None:
    # persistent workers start one iterator for all epochs; no workers start one per epoch
    assert _keys(_loaders(2)[0], 3) == _keys(_loaders(0)[0], 3)
    assert _loaders(2)[0].generator is not _loaders(2)[0].sampler.generator


def test_resume_with_2_workers_is_exact(tmp_path: Path) -> None:
    whole, weights = _fit(2, 3)
    _fit(2, 1, tmp_path)
    resumed, resumed_weights = _fit(2, 3, tmp_path, resume=True)
    assert resumed == whole
    assert all(torch.equal(resumed_weights[k], weights[k]) for k in weights)
    no_workers, no_worker_weights = _fit(0, 3)
    assert no_workers == whole and all(torch.equal(no_worker_weights[k], weights[k]) for k in weights)


def _processes(rank: int, world_size: int, local_rank: int) -> Processes:
    """A Processes object placed as torchrun would place it, without joining any group."""
    processes = Processes()
    processes.rank, processes.world_size, processes.local_rank = rank, world_size, local_rank
    return processes


def test_sharded_loaders_keep_every_dataloader_option() -> None:
    def init(worker_id):
        return None

    loader = DataLoader(TensorDataset(torch.arange(40)), batch_size=4, shuffle=True, num_workers=2,
                        collate_fn=functools.partial(torch.utils.data.default_collate), pin_memory=False,
                        timeout=7, worker_init_fn=init, multiprocessing_context="spawn",
                        generator=torch.Generator().manual_seed(1), prefetch_factor=3, persistent_workers=True,
                        in_order=False)
    for shard in (_processes(1, 2, 1).shard_train(loader, seed=0), _processes(1, 2, 1).shard_val(loader)):
        for name in ("num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn", "generator",
                     "prefetch_factor", "persistent_workers", "pin_memory_device", "in_order"):
            assert getattr(shard, name) == getattr(loader, name), name
        assert shard.multiprocessing_context is loader.multiprocessing_context
        assert shard.multiprocessing_context.get_start_method() == "spawn" and shard.prefetch_factor == 3


def test_devices_under_torchrun_are_the_local_rank_or_refused(monkeypatch) -> None:
    assert get_device("cpu", local_rank=1) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert get_device("cuda:0") == torch.device("cuda", 0)  # one process: as given
    assert get_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert get_device("cuda:1", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="each process uses GPU LOCAL_RANK.*CUDA_VISIBLE_DEVICES"):
        get_device("cuda:0", local_rank=1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match="LOCAL_RANK=1 but this machine has 1 GPU"):
        get_device("cuda", local_rank=1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(ValueError, match="'mps' cannot train under torchrun"):
        get_device("mps", local_rank=0)


def test_joining_refuses_a_device_before_the_group_is_made(monkeypatch) -> None:
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined with a device that fails"))
    with pytest.raises(ValueError, match="torchrun"):
        Processes().start("mps")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no Gloo")
def test_a_group_is_destroyed_by_whoever_started_it(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        processes = Processes()
        with processes.joined("cpu"):  # made by someone else: kept
            pass
        assert dist.is_initialized() and not processes.started
        processes.started = True  # as if start() had made it
        with processes.joined("cpu"):  # a block inside the one that made it: kept
            pass
        assert dist.is_initialized()
        processes.close()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_every_model_trains_with_its_own_loss() -> None:
    pointrend = PointRend(num_classes=3, backbone="resnet18", num_points=16)
    assert model_loss(pointrend).func == pointrend.loss and model_loss(Dropper()).func is segmentation_loss
    wrapped = nn.DataParallel(pointrend)
    assert model_loss(wrapped).func == pointrend.loss
    outputs = pointrend(torch.randn(2, 3, 32, 32))
    target = torch.randint(0, 3, (2, 32, 32))
    total, parts = model_loss(pointrend, {"aux": 0.4})(outputs, target)
    expected, _ = point_loss(outputs, target)
    assert set(parts) == {"out", "point"} and torch.equal(total, expected)
    total.backward()
    assert all(p.grad is not None for p in pointrend.point_head.parameters())


def test_torchrun_on_cuda_binds_each_process_to_its_gpu(monkeypatch) -> None:
    for name, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    calls = {}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.setdefault("set_device", device))

    def init(backend, init_method=None, *, device_id=None):  # PyTorch >= 2.3's signature, in short
        calls.update(backend=backend, device_id=device_id)

    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    processes = Processes()
    assert processes.start("cuda") == torch.device("cuda", 1)
    assert (processes.rank, processes.world_size, processes.local_rank, processes.started) == (3, 4, 1, True)
    assert calls == {"set_device": torch.device("cuda", 1), "backend": "nccl", "device_id": torch.device("cuda", 1)}
    calls.clear()
    monkeypatch.setattr(dist, "init_process_group", lambda backend, init_method=None: calls.update(backend=backend))
    Processes().start("cuda")  # an older PyTorch: no device_id to pass
    assert calls == {"set_device": torch.device("cuda", 1), "backend": "nccl"}


def test_cuda_random_state_goes_back_to_this_process_s_gpu(monkeypatch) -> None:
    # A checkpoint holds the state of the GPU its process used; another process puts it onto its own GPU.
    from segbook.train.checkpoints import random_state, set_random_state

    saved_state, put = torch.tensor([7], dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda index: saved_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: put.append((state, device)))
    state = random_state(torch.device("cuda", 0))
    assert state["cuda"] == [saved_state] and state["cuda_device"] == 0
    set_random_state({**state, "loader": []}, loader=None, device=torch.device("cuda", 1))
    assert put == [(saved_state, torch.device("cuda", 1))]
    put.clear()
    set_random_state({**state, "loader": []}, loader=None, device=torch.device("cpu"))
    assert put == []  # a CPU run has no GPU state to restore
