"""Training on several processes: what ``fit`` does differently under ``torchrun``.

``torchrun --nproc_per_node=N`` starts N copies of a script on each machine and
gives each the environment variables ``WORLD_SIZE`` (N times the number of
machines), ``RANK`` (0 to ``WORLD_SIZE - 1`` over all machines) and
``LOCAL_RANK`` (the GPU index on its own machine), plus ``MASTER_ADDR`` and
``MASTER_PORT`` for the rendezvous. ``fit`` reads
them (:func:`init_distributed`) and then:

* wraps the model in ``DistributedDataParallel``, which averages the gradients
  of all processes after every backward pass, so each process holds the same
  weights at every step;
* gives each process its own share of the training set (:func:`shard_train_loader`);
  at every step each process takes a batch of the loader's batch size from its
  share, so the batch size is *per process*, as everywhere in PyTorch, and N
  processes train with a global batch N times larger;
* validates each process on every N-th image and adds up the confusion matrices
  (:meth:`~segbook.metrics.ConfusionMatrix.all_reduce`), so the scores are those
  of the whole validation set, computed N times faster;
* logs, draws progress bars and writes checkpoints on rank 0 only.

On GPUs the backend is NCCL; on CPUs (and in the tests) it is Gloo.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler, Subset

from .data import SeededShuffle

__all__ = ["Distributed", "ShardedSeededShuffle", "init_distributed", "shard_train_loader", "shard_val_loader",
           "torchrun_env", "wrap_model"]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group: ``rank`` of ``world_size``, on GPU ``local_rank`` of its machine."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes checkpoints."""
        return self.rank == 0


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, or None when it did not start us."""
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return None
    try:
        return tuple(int(os.environ[name]) for name in TORCHRUN_VARIABLES)  # type: ignore[return-value]
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them); got "
                         + ", ".join(f"{n}={os.environ[n]!r}" for n in TORCHRUN_VARIABLES)) from None


def init_distributed(device: torch.device) -> Distributed | None:
    """Join the process group of a torchrun launch (or the one already made); None for a single process.

    A group that already exists (made by the caller, as the tests do with
    ``torch.multiprocessing``) is used as it is. Otherwise, with torchrun's
    variables set and ``WORLD_SIZE > 1``, the group is made from the
    environment (``MASTER_ADDR``, ``MASTER_PORT``), with NCCL for CUDA and Gloo
    for the CPU. ``WORLD_SIZE == 1`` is an ordinary single-process run.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Distributed(rank, world, local) if world > 1 else None
    found = torchrun_env()
    if found is None or found[1] == 1:
        return None
    rank, world, local = found
    if not dist.is_available():
        raise RuntimeError("torchrun started this process, but this PyTorch build has no torch.distributed.")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s): "
                               "start torchrun with --nproc_per_node at most the number of GPUs.")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, local)


def wrap_model(model: nn.Module, group: Distributed, device: torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (after turning its BatchNorms into ``SyncBatchNorm`` if asked).

    SyncBatchNorm computes the batch statistics over the whole global batch
    instead of each process's share: it matters when the share is small (a few
    images per GPU, as with PSPNet's 473 crops), and costs one exchange per
    BatchNorm layer. It needs CUDA.
    """
    if sync_batchnorm:
        if device.type != "cuda":
            raise ValueError("sync_batchnorm=True needs CUDA (SyncBatchNorm has no CPU implementation).")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index if device.index is not None else group.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


class ShardedSeededShuffle(Sampler):
    """One process's share of a :class:`~segbook.data.SeededShuffle`: every ``world_size``-th item.

    Every process draws the same order and item seeds from the same generator
    (seeded identically, advanced identically, restored identically on resume),
    keeps a multiple of ``world_size * batch_size`` items, and takes items
    ``rank, rank + world_size, ...``. Step ``k`` of the N processes together then
    sees exactly the items, with exactly the augmentations, of step ``k`` of one
    process with an N times larger batch.
    """

    def __init__(self, base: SeededShuffle, group: Distributed, batch_size: int) -> None:
        self.base, self.rank, self.world_size = base, group.rank, group.world_size
        self.generator = base.generator  # so checkpoints save and restore it (segbook.rng)
        global_batch = group.world_size * batch_size
        self.usable = (base.size // global_batch) * global_batch
        if self.usable == 0:
            raise ValueError(f"{base.size} training items cannot fill one batch of {batch_size} on each of "
                             f"{group.world_size} processes; use a smaller batch or fewer processes.")

    def __iter__(self):
        items = list(self.base)[:self.usable]  # (index, seed) pairs, the same in every process
        return iter(items[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.usable // self.world_size


def shard_train_loader(loader: DataLoader, group: Distributed, seed: int = 0) -> DataLoader:
    """The training loader this process iterates: the same dataset and settings, its own share of the items.

    segbook's loaders (a :class:`~segbook.data.SeededShuffle` sampler) are
    sharded with :class:`ShardedSeededShuffle`; any other loader gets PyTorch's
    ``DistributedSampler`` (shuffled when the loader shuffles; ``fit`` calls its
    ``set_epoch`` before every epoch so that each epoch has its own order).
    """
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        raise TypeError("fit under torchrun needs the training loader to be a torch DataLoader with a batch_size.")
    if isinstance(loader.sampler, SeededShuffle):
        sampler = ShardedSeededShuffle(loader.sampler, group, loader.batch_size)
    else:
        sampler = DistributedSampler(loader.dataset, num_replicas=group.world_size, rank=group.rank,
                                     shuffle=isinstance(loader.sampler, RandomSampler), seed=seed,
                                     drop_last=loader.drop_last)
    return _rebuild(loader, loader.dataset, sampler, loader.drop_last)


def shard_val_loader(loader: DataLoader, group: Distributed) -> DataLoader:
    """Every ``world_size``-th validation image, from ``rank`` on: disjoint shares that cover the set once.

    Unlike ``DistributedSampler``, nothing is repeated to even out the shares,
    so the summed confusion matrices count every image exactly once.
    """
    if not isinstance(loader, DataLoader):
        raise TypeError("fit under torchrun needs the validation loader to be a torch DataLoader.")
    share = Subset(loader.dataset, range(group.rank, len(loader.dataset), group.world_size))
    return _rebuild(loader, share, None, False)


def _rebuild(loader: DataLoader, dataset, sampler: Sampler | None, drop_last: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=loader.batch_size, sampler=sampler, shuffle=False,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      drop_last=drop_last, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                      persistent_workers=loader.persistent_workers)
