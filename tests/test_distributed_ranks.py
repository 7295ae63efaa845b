"""What each rank does under two Gloo processes: PointRend through the CLI, seeds, resume, shards, one exact step.

Starting processes costs seconds on a 2-core machine, so each test starts two
once and runs several scenarios in them (see ``_scenarios``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Subset, TensorDataset

from test_distributed import NUM_CLASSES, TinySegmenter, _free_port, _loaders

from segbook import data
from segbook.train.distributed import Processes, RanksDisagree
from segbook.train.evaluation import evaluate
from segbook.train import fit

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with Gloo is not available")]  # slow: several processes


# -- one exact step ---------------------------------------------------------------------------------------


def _step_data(ignored: bool) -> tuple[DataLoader, DataLoader]:
    """4 float64 images with labels; ``ignored`` marks 255 on part of image 1 only (unequal counts per rank)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 12, 12, generator=g, dtype=torch.float64)  # (B, 3, H, W)
    labels = torch.randint(0, NUM_CLASSES, (4, 12, 12), generator=g)  # (B, H, W), no 255
    if ignored:
        labels[1, :8] = 255  # rank 1 (images 1 and 3) counts fewer pixels than rank 0 (images 0 and 2)
    train = DataLoader(TensorDataset(images, labels), batch_size=4, shuffle=False)
    val = DataLoader(TensorDataset(images[:2], labels[:2].clamp(max=NUM_CLASSES - 1)), batch_size=2)
    return train, val


def _one_step(batch_size: int, ignored: bool, global_mean: bool = False) -> dict[str, torch.Tensor]:
    """The weights after one SGD step of a float64 model without BatchNorm (nothing depends on the split)."""
    train, val = _step_data(ignored)
    train = DataLoader(train.dataset, batch_size=batch_size, shuffle=False)
    torch.manual_seed(0)
    model = TinySegmenter().double()
    fit(model, train, val, epochs=1, lr=0.5, device="cpu", num_classes=NUM_CLASSES, live_plot=False,
        progress=False, log=None, processes=Processes(global_pixel_mean=global_mean))
    return {k: v.clone() for k, v in model.state_dict().items()}


# -- the scenarios each process runs --------------------------------------------------------------------------


def _history(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _train(folder: str | None, epochs: int = 1, resume: bool = False) -> list[dict]:
    train_loader, val_loader = _loaders(4)
    torch.manual_seed(0)
    return _history(fit(TinySegmenter(), train_loader, val_loader, epochs=epochs, lr=0.05, device="cpu",
                        num_classes=NUM_CLASSES, seed=5, checkpoint_dir=folder, resume=resume, live_plot=False,
                        progress=False, log=None))


def _scores(images: int, processes: Processes | None = None) -> dict:
    """An untrained TinySegmenter's scores on the first ``images`` validation images (sharded when ``processes``)."""
    _, val_loader = _loaders(4)
    val_loader = DataLoader(Subset(val_loader.dataset, range(images)), batch_size=4, collate_fn=data.pad_collate)
    if processes is not None:
        val_loader = processes.shard_val(val_loader)
    torch.manual_seed(1)
    result = evaluate(TinySegmenter(), val_loader, num_classes=None, processes=processes)
    return {"loss": result["loss"], "matrix": result["confusion"].matrix.tolist()}


def _scenarios(rank: int, tmp: str) -> dict:
    processes = Processes()
    processes.start("cpu")
    out: dict = {"shares": {}}
    for images in (11, 1):  # uneven shares (6 and 5), and rank 1 with none at all
        out[f"scores{images}"] = _scores(images, processes)
        out["shares"][images] = len(processes.shard_val(DataLoader(list(range(images)))).dataset)
    out["fresh"] = _train(str(Path(tmp, "fresh")), resume=True)  # resume with no last.pt anywhere: from scratch
    folder = str(Path(tmp, "ck"))
    out["first"] = _train(folder)
    out["finished"] = _train(folder, resume=True)  # nothing left to do, on every rank
    out["more"] = _train(folder, epochs=2, resume=True)
    elsewhere = folder if rank == 0 else str(Path(tmp, f"empty{rank}"))  # rank 1 sees no last.pt
    try:
        _train(elsewhere, epochs=3, resume=True)
        out["disagreement"] = None
    except RanksDisagree as err:
        out["disagreement"] = str(err)
    torch.save({(ignored, global_mean): _one_step(2, ignored, global_mean)
                for ignored in (False, True) for global_mean in (False, True)}, Path(tmp, f"step{rank}.pt"))
    return out


def _worker(rank: int, world: int, port: int, tmp: str, job: str) -> None:
    torch.set_num_threads(1)  # two processes on a two-core machine
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), TQDM_DISABLE="1")
    if job == "scenarios":
        dist.init_process_group("gloo", rank=rank, world_size=world)  # made by the caller: fit must leave it
        try:
            result = _scenarios(rank, tmp)
            result["group_kept"] = dist.is_initialized()
        finally:
            dist.destroy_process_group()
    else:
        result = _pointrend_cli(rank, tmp)
    Path(tmp, f"{job}{rank}.json").write_text(json.dumps(result))


def _spawn(tmp_path: Path, job: str) -> list[dict]:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), job), nprocs=2, join=True)
    return [json.loads(Path(tmp_path, f"{job}{r}.json").read_text()) for r in range(2)]


def test_two_ranks_resume_shard_and_step_exactly(tmp_path: Path) -> None:
    ranks = _spawn(tmp_path, "scenarios")
    assert all(r["group_kept"] for r in ranks)  # fit did not destroy a group it did not make

    # validation: uneven and empty shares give the single process's counts, and nothing hangs
    assert ranks[0]["shares"] == {"11": 6, "1": 1} and ranks[1]["shares"] == {"11": 5, "1": 0}
    for images in (11, 1):
        single = _scores(images)
        assert sum(map(sum, single["matrix"])) > 1000  # real images were scored
        for rank in ranks:
            assert rank[f"scores{images}"]["matrix"] == single["matrix"]
            assert rank[f"scores{images}"]["loss"] == pytest.approx(single["loss"], rel=1e-9)

    # resume: after a finished run every rank returns the history; a folder that differs stops all
    for rank in ranks:
        assert [row["epoch"] for row in rank["first"]] == [1] and rank["finished"] == rank["first"]
        assert rank["fresh"] == rank["first"]
        assert [row["epoch"] for row in rank["more"]] == [1, 2] and rank["more"][0] == rank["first"][0]
        assert "rank 0 at epoch 3, rank 1 at epoch 1" in rank["disagreement"]
    assert ranks[0]["more"] == ranks[1]["more"]

    # one step of 2 processes with batch 2 against 1 process with batch 4, float64
    single = {ignored: _one_step(4, ignored) for ignored in (False, True)}
    assert all(torch.equal(_one_step(4, True, True)[n], w) for n, w in single[True].items())  # 1 process: same
    torch.manual_seed(0)
    init = TinySegmenter().double().state_dict()
    for rank in range(2):
        two = torch.load(tmp_path / f"step{rank}.pt", weights_only=True)
        for name, weight in single[False].items():
            assert (weight - init[name]).abs().max() > 1e-3 or "bias" in name  # the step moved the weights
            for global_mean in (False, True):  # equal pixel counts: both averages are exact
                torch.testing.assert_close(two[False, global_mean][name], weight, rtol=0, atol=1e-12)
        # rank 1 counts fewer pixels: the mean of per-rank means weights its pixels more than one global mean ...
        gap = max((two[True, False][n] - single[True][n]).abs().max().item() for n in single[True])
        assert gap > 1e-6
        for name, weight in single[True].items():  # ... and Processes(global_pixel_mean=True) does not
            torch.testing.assert_close(two[True, True][name], weight, rtol=0, atol=1e-12)


# -- PointRend through the command line --------------------------------------------------------------------


def _pointrend_cli(rank: int, tmp: str) -> dict:
    from segbook.train import cli
    from segbook.data import loaders
    from segbook.models import pointrend

    points, items = [], []
    drawn = pointrend.get_uncertain_point_coords_with_randomness

    def record_points(*args, **kwargs):
        coords = drawn(*args, **kwargs)
        points.append(coords.tolist())
        return coords

    def record_items(self, key, fetch=loaders.SeededItems.__getitem__):
        items.append(list(key))
        return fetch(self, key)

    checked = []
    check_labels = data.check_labels

    def record_check(dataset, **kwargs):
        checked.append(len(dataset))
        return check_labels(dataset, **kwargs)

    pointrend.get_uncertain_point_coords_with_randomness = record_points
    loaders.SeededItems.__getitem__ = record_items
    data.check_labels = record_check
    status = cli.main(["--model", "pointrend", "--backbone", "resnet18", "--source", "toy", "--root",
                       str(Path(tmp, "voc")), "--epochs", "1", "--batch-size", "2", "--crop-size", "32", "32",
                       "--device", "cpu", "--checkpoint-dir", str(Path(tmp, "ck")), "--num-workers", "0",
                       "--no-progress", "--seed", "3"])
    return {"status": status, "points": points, "items": items, "checked": checked,
            "group_left": not dist.is_initialized()}


def test_pointrend_trains_through_the_cli_on_two_processes(tmp_path: Path) -> None:
    from segbook.train.checkpoints import load_checkpoint
    from segbook.models import build_model

    voc = data.get_voc_dir("toy", tmp_path, toy_size=(8, 4), verbose=False)
    (tmp_path / "voc").symlink_to(voc)
    ranks = _spawn(tmp_path, "pointrend")
    assert [r["status"] for r in ranks] == [0, 0] and all(r["group_left"] for r in ranks)
    assert ranks[0]["checked"] == [8, 4] and ranks[1]["checked"] == []  # rank 0 alone reads every label

    # its own loss: the point head learnt, and the point loss is logged
    state = load_checkpoint(tmp_path / "ck" / "last.pt")
    assert "train_loss_point" in state["history"][0]
    torch.manual_seed(3)
    fresh = build_model("pointrend", num_classes=21, backbone="resnet18").state_dict()
    moved = [k for k in fresh if k.startswith("point_head.") and k.endswith("weight")
             and not torch.equal(fresh[k], state["model"][k])]
    assert moved, "the point head got no gradient"

    # 8 items, batch 2 on each of 2 processes: 2 steps each; disjoint shares of one permutation
    assert [len(r["items"]) for r in ranks] == [4, 4] and [len(r["points"]) for r in ranks] == [2, 2]
    keys = [tuple(k) for r in ranks for k in r["items"]]
    assert len(set(keys)) == 8
    order = list(data.SeededShuffle(8, torch.Generator().manual_seed(3)))
    assert sorted(keys) == sorted(order)
    assert [tuple(k) for k in ranks[0]["items"]] == order[0::2]  # rank 0 takes every second item
    # per-process seeds: the same step draws other random points on the other rank
    for step in range(2):
        assert ranks[0]["points"][step] != ranks[1]["points"][step]
