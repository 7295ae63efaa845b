"""``python -m segbook.train.ddp_check``, the script chapter 7 launches with torchrun: what it records is what happened.

The fast tests check the recorder and the reader; the slow one launches two
Gloo processes with ``python -m torch.distributed.run``, as the chapter does,
and checks the two promises the chapter prints: disjoint shares that make up
the epoch (exactly :class:`~segbook.train.distributed.ShardedSeededShuffle`'s), and
bit-identical weights that training moved.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Subset

from segbook.data import SeededShuffle, VOCSegmentation
from segbook.train.ddp_check import RecordIds, read_ranks

from _voc_fixture import TINY_SPLITS, write_tiny_voc


def test_record_ids_logs_every_load_in_order(tmp_path: Path) -> None:
    voc = VOCSegmentation(write_tiny_voc(tmp_path), "train")
    whole = RecordIds(voc)
    part = RecordIds(Subset(voc, [2, 0]))
    assert whole.names == TINY_SPLITS["train"] and part.names == ["2008_000004", "2007_000002"]
    for index in (1, 0, 1):
        image, label = part[index]
        assert torch.equal(label, voc[[2, 0][index]][1])  # the item itself, untouched
    assert part.ids == ["2007_000002", "2008_000004", "2007_000002"] and len(part) == 2
    assert whole.ids == []


def test_read_ranks_orders_by_rank_and_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="segbook.train.ddp_check --out"):
        read_ranks(tmp_path)
    for rank in (10, 2, 0):
        torch.save({"rank": rank}, tmp_path / f"rank{rank}.pt")
    assert [r["rank"] for r in read_ranks(tmp_path)] == [0, 2, 10]  # by number, not by name


@pytest.mark.slow  # several processes: `pytest -m slow`, run by CI after the main suite
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no Gloo backend")
def test_two_processes_share_the_epoch_and_end_equal(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "segbook.train.ddp_check", "--out", str(tmp_path / "ranks"), "--images", "8", "--seed", "4"]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    ranks = read_ranks(tmp_path / "ranks")
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]

    # 8 images, 2 per step on each of 2 processes: 2 steps each, disjoint, together the epoch
    epoch = ranks[0]["epoch_ids"]
    assert len(epoch) == 8 and ranks[1]["epoch_ids"] == epoch
    assert [len(r["ids"]) for r in ranks] == [4, 4]
    assert not set(ranks[0]["ids"]) & set(ranks[1]["ids"])
    assert sorted(ranks[0]["ids"] + ranks[1]["ids"]) == sorted(epoch)
    order = [epoch[i] for i, _ in SeededShuffle(8, torch.Generator().manual_seed(4))]  # the loader's seed
    assert [r["ids"] for r in ranks] == [order[0::2], order[1::2]]  # every second item, from its rank on

    # the same weights, bit for bit, and not because nothing was trained
    first, second = ranks[0]["state"], ranks[1]["state"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    weights = [k for k in first if k.endswith("weight")]
    assert ranks[0]["moved"] == ranks[1]["moved"] and len(set(weights) & set(ranks[0]["moved"])) > 10
