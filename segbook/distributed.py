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
* logs, draws progress bars and writes checkpoints on rank 0 only;
* seeds each process's own random numbers (dropout, PointRend's points) with
  ``seed + rank``, as detectron2 and mmsegmentation do, so the processes do not
  all draw the same samples, while the data order comes from the loader's
  generators, seeded alike everywhere (:func:`seed_process`).

The loss is normalised per process. Each process averages its loss over its
own counted pixels, and DDP then averages the gradients of the N processes.
That is the mean of N per-process means, not the mean over all the pixels of
the global batch: a process whose crops hold more ignored (255) pixels gives
each of its pixels more weight. The two agree exactly when every process
counts the same number of pixels (no ignored pixels, equal crops), and differ
a little otherwise; one process with an N times larger batch is therefore the
reference only up to that reweighting (``tests/test_distributed_ranks.py`` checks
both cases).

On GPUs the backend is NCCL; on CPUs (and in the tests) it is Gloo.
"""
from __future__ import annotations

import inspect
import io
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler, Subset

from .data.loaders import SeededShuffle
from .env import seed_everything
from .rng import loader_generators

__all__ = ["Distributed", "RanksDisagree", "ShardedSeededShuffle", "agree_on_resume", "all_gather_objects",
           "all_gather_states", "init_distributed", "leave", "mean_over_processes", "process_device",
           "seed_process", "share_buffers", "shard_train_loader", "shard_val_loader", "torchrun_env",
           "wait_for_rank0", "wrap_model"]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group: ``rank`` of ``world_size``, on GPU ``local_rank`` of its machine."""

    rank: int
    world_size: int
    local_rank: int
    started: bool = False  # made by this call of init_distributed, so its caller must destroy it

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
    ``torch.multiprocessing``, or by the command line before ``fit``) is used as
    it is. Otherwise, with torchrun's variables set and ``WORLD_SIZE > 1``, the
    group is made from the environment (``MASTER_ADDR``, ``MASTER_PORT``), with
    NCCL for CUDA and Gloo for the CPU, after checking that ``device`` can work
    (see :func:`process_device`); ``started`` then says the caller owns it.
    ``WORLD_SIZE == 1`` is an ordinary single-process run.
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
    device = process_device(device, Distributed(rank, world, local))
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if "device_id" in inspect.signature(dist.init_process_group).parameters:  # PyTorch >= 2.3
            kwargs["device_id"] = device  # binds NCCL to this GPU now, instead of guessing at the first collective
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", **kwargs)
    return Distributed(rank, world, local, started=True)


def process_device(device: torch.device, group: Distributed | None) -> torch.device:
    """The device this process trains on: ``cuda`` means GPU ``LOCAL_RANK`` under torchrun.

    Each of torchrun's processes on a machine must own one GPU, the one its
    ``LOCAL_RANK`` names; a device that cannot work that way is refused here, with
    what to do, rather than failing in the first collective (or, worse, putting
    every process on one GPU). torch.distributed has no backend for Apple's MPS.
    """
    if group is None:
        return device
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"device {str(device)!r} cannot train under torchrun: torch.distributed has no backend "
                         "for it; use cuda (one GPU per process) or cpu.")
    if group.local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK={group.local_rank} but this machine has {torch.cuda.device_count()} "
                           "GPU(s): start torchrun with --nproc_per_node at most the number of GPUs.")
    if device.index is not None and device.index != group.local_rank:
        raise ValueError(f"device {str(device)!r} under torchrun: each process uses GPU LOCAL_RANK (here "
                         f"{group.local_rank}); pass plain 'cuda', and choose the GPUs with CUDA_VISIBLE_DEVICES.")
    return torch.device("cuda", group.local_rank)


def leave(group: Distributed | None) -> None:
    """Destroy the process group if ``group`` says its holder started it; a group made by the caller stays."""
    if group is not None and group.started and dist.is_initialized():
        dist.destroy_process_group()


def seed_process(seed: int, group: Distributed | None, train_loader) -> None:
    """Seed this process's global streams with ``seed + rank``; rewind the loader's generators to their own seeds.

    Dropout masks and PointRend's random points come from the global streams,
    so each process must draw its own; the data order and each item's
    augmentations come from the loader's generators, which every process
    rewinds alike, so the processes still agree on one permutation to share.
    """
    seed_everything(seed + (group.rank if group is not None else 0))
    for gen in loader_generators(train_loader):
        gen.manual_seed(gen.initial_seed())


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


# Passed by _rebuild itself; every other DataLoader parameter is copied from the loader being sharded.
_SET_BY_REBUILD = frozenset({"self", "dataset", "batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"})


def _rebuild(loader: DataLoader, dataset, sampler: Sampler | None, drop_last: bool) -> DataLoader:
    """A DataLoader like ``loader`` (workers, pinning, prefetching, ...) over ``dataset`` with ``sampler``.

    The options are read from DataLoader's own signature, so one that a later
    PyTorch adds is carried too, instead of silently falling back to its default.
    """
    options = {name: getattr(loader, name) for name in inspect.signature(DataLoader.__init__).parameters
               if name not in _SET_BY_REBUILD and hasattr(loader, name)}
    return DataLoader(dataset, batch_size=loader.batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                      **options)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """A new order each epoch, the same in every process (PyTorch's DistributedSampler needs telling)."""
    if isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)


# -- what the processes exchange -------------------------------------------------------------------------


def share_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm's running statistics) to every process.

    DDP broadcasts them at the start of each training forward, so after an
    epoch's last step every process holds statistics from its own share of that
    step; validation and the checkpoint must all use the same model, rank 0's.
    """
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def mean_over_processes(value: float, device: torch.device) -> float:
    """The mean of ``value`` over the processes: what each one logs, so that all log the same."""
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def all_gather_objects(obj) -> list:
    """``obj`` of every process, in rank order (pickled: for small things such as a message)."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_gather_states(state: dict) -> list[dict]:
    """Every process's ``state`` (tensors and plain values, e.g. random streams), in rank order.

    Sent as ``torch.save`` bytes and read back with ``weights_only=True``: the
    pickling inside ``all_gather_object`` cannot carry some tensors (NumPy's
    uint32 generator state), and this way what arrives is exactly what a
    checkpoint can hold.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return [torch.load(io.BytesIO(raw), weights_only=True) for raw in all_gather_objects(buffer.getvalue())]


def wait_for_rank0() -> None:
    """Every process waits here until rank 0 (which alone writes checkpoints) arrives, its files written.

    Without it a process that finishes first could resume (or a script read
    ``last.pt``) while rank 0 is still writing it, and read the epoch before.
    """
    dist.barrier()


class RanksDisagree(RuntimeError):
    """The processes of one run resumed from different checkpoints; the message says which rank is where."""


def agree_on_resume(start: int, group: Distributed, device: torch.device) -> None:
    """Stop every process, with one message, unless all resumed at the same epoch.

    Each process reads ``last.pt`` itself. A checkpoint folder that is not the
    same file for all of them (a relative path on a second machine, a disk that
    is not shared) would let one process start from scratch while another
    continues, and DDP would then average the gradients of two different runs
    without a word.
    """
    starts = torch.zeros(group.world_size, dtype=torch.int64, device=device)
    starts[group.rank] = start
    dist.all_reduce(starts)  # (world_size,): every process's next epoch
    if len(set(starts.tolist())) > 1:
        where = ", ".join(f"rank {r} at epoch {e}" for r, e in enumerate(starts.tolist()))
        raise RanksDisagree(f"the processes resumed at different points ({where}): each must read the same "
                           "last.pt; give checkpoint_dir as an absolute path on a disk every machine shares.")
