"""Training on several processes: everything that changes under ``torchrun``, behind one object.

``torchrun --nproc_per_node=N`` starts N copies of a script on each machine, each with its ``RANK`` (0 ..
``WORLD_SIZE`` - 1 over all machines), ``WORLD_SIZE`` and ``LOCAL_RANK`` (its GPU on its machine).
:class:`Processes` answers every question ``fit`` and ``evaluate`` have about the other processes, so the loop
reads the same with one process (every method the identity) or many. Every collective call of segbook is here.

* ``DistributedDataParallel`` averages the gradients after every backward: all hold the same weights;
* each process trains on its own share of the training set with a batch of the loader's size (the batch size is
  per process, the global batch N times larger), validates every N-th image, and the confusion matrices are
  summed; rank 0 alone logs, draws and writes checkpoints;
* each seeds its own random numbers (dropout, PointRend's points) with ``seed + rank``, as detectron2 and
  mmsegmentation do; the data order comes from the loader's generators, seeded alike everywhere.

**The loss's average.** By default each process averages its loss over its own counted pixels and DDP averages
the N gradients: a mean of means, which weights each pixel of a process with more ignored (255) pixels more.
``Processes(global_pixel_mean=True)`` scales each process's loss by ``N * its count / the all-reduced count``:
the gradient of one mean over every counted pixel of the global batch, as one process with that batch computes it.

**BatchNorm's running statistics** are rank 0's (DDP broadcasts its buffers at every training forward);
:meth:`~Processes.sync_buffers` copies them once more after an epoch's last step. ``sync_batchnorm=True`` (CUDA)
computes the batch statistics over the global batch instead. NCCL on GPUs; Gloo on CPUs and in the tests.
"""
from __future__ import annotations

import inspect
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler, Subset

from ..data.loaders import SeededShuffle
from ..env import get_device, seed_everything
from ..metrics import ConfusionMatrix
from .checkpoints import loader_generators

__all__ = ["Processes", "RanksDisagree", "ShardedSeededShuffle", "torchrun_env"]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, or None when it did not start us."""
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return None
    try:
        return tuple(int(os.environ[name]) for name in TORCHRUN_VARIABLES)  # type: ignore[return-value]
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them); got "
                         + ", ".join(f"{n}={os.environ[n]!r}" for n in TORCHRUN_VARIABLES)) from None


class RanksDisagree(RuntimeError):
    """The processes of one run resumed from different checkpoints; the message says which rank is where."""


class Processes:
    """The processes that train together (see the module's text): rank 0 of 1 until :meth:`start` joins a group."""

    def __init__(self, *, sync_batchnorm: bool = False, global_pixel_mean: bool = False) -> None:
        self.sync_batchnorm, self.global_pixel_mean = sync_batchnorm, global_pixel_mean
        self.rank, self.world_size, self.local_rank, self.started = 0, 1, 0, False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, draws and writes checkpoints."""
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.world_size > 1

    def on_main(self, value, elsewhere=None):
        """``value`` in rank 0, ``elsewhere`` in every other process: who logs, draws and shows bars."""
        return value if self.is_main else elsewhere

    def start(self, device: torch.device | str | None = None) -> torch.device:
        """Join the group of a torchrun launch (or one the caller made); returns this process's device.

        An existing group is used as it is. Otherwise, with ``WORLD_SIZE > 1``, the group is made from
        torchrun's variables (NCCL for CUDA, Gloo for the CPU) once :func:`segbook.env.get_device` accepts the
        local rank's device, and :meth:`close` destroys it again."""
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        elif (found := torchrun_env()) is not None and found[1] > 1:
            self.rank, self.world_size, self.local_rank = found
            if not dist.is_available():
                raise RuntimeError("torchrun started this process, but this PyTorch build has no torch.distributed.")
        if not self.several:
            self.rank, self.world_size = 0, 1
            return torch.device(device) if device is not None else get_device()
        device = get_device(device, local_rank=self.local_rank)  # cuda means GPU LOCAL_RANK
        if not dist.is_initialized():
            kwargs = {}
            if device.type == "cuda":
                torch.cuda.set_device(device)
                if "device_id" in inspect.signature(dist.init_process_group).parameters:  # PyTorch >= 2.3
                    kwargs["device_id"] = device  # binds NCCL to this GPU now, not at the first collective
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", **kwargs)
            self.started = True
        return device

    def close(self) -> None:
        """Destroy the process group if :meth:`start` made it; a group made by the caller stays."""
        if self.started and dist.is_initialized():
            dist.destroy_process_group()
        self.started = False

    @contextmanager
    def joined(self, device: torch.device | str | None = None) -> Iterator[torch.device]:
        """:meth:`start` for a ``with`` block, and :meth:`close` at its end if this block made the group."""
        made_before = self.started
        device = self.start(device)
        try:
            yield device
        finally:
            if not made_before:
                self.close()

    def seed(self, seed: int, train_loader) -> None:
        """Seed this process's global streams with ``seed + rank``; rewind the loader's generators to their seeds.

        Dropout and PointRend's points draw from the global streams: each process draws its own. The loader's
        generators (order, augmentations) are rewound alike everywhere: all share one permutation."""
        seed_everything(seed + self.rank)
        for gen in loader_generators(train_loader):
            gen.manual_seed(gen.initial_seed())

    def shard_train(self, loader: DataLoader, seed: int = 0) -> DataLoader:
        """The training loader this process iterates: the same settings, its own share of the items.

        A :class:`~segbook.data.SeededShuffle` sampler becomes a :class:`ShardedSeededShuffle`; any other gets
        PyTorch's ``DistributedSampler`` (shuffled when the loader shuffles, reordered by :meth:`set_epoch`)."""
        if not self.several:
            return loader
        if not isinstance(loader, DataLoader) or loader.batch_size is None:
            raise TypeError("fit under torchrun needs the training loader to be a torch DataLoader with a batch_size.")
        if isinstance(loader.sampler, SeededShuffle):
            sampler = ShardedSeededShuffle(loader.sampler, self, loader.batch_size)
        else:
            sampler = DistributedSampler(loader.dataset, num_replicas=self.world_size, rank=self.rank,
                                         shuffle=isinstance(loader.sampler, RandomSampler), seed=seed,
                                         drop_last=loader.drop_last)
        return _rebuild(loader, loader.dataset, sampler, loader.drop_last)

    def shard_val(self, loader: DataLoader) -> DataLoader:
        """Every ``world_size``-th validation image from ``rank`` on: disjoint shares that cover the set once.

        Unlike ``DistributedSampler``'s, nothing is repeated to even out the shares, so the summed confusion
        matrices count every image exactly once."""
        if not self.several:
            return loader
        if not isinstance(loader, DataLoader):
            raise TypeError("fit under torchrun needs the validation loader to be a torch DataLoader.")
        share = Subset(loader.dataset, range(self.rank, len(loader.dataset), self.world_size))
        return _rebuild(loader, share, None, False)

    def set_epoch(self, loader, epoch: int) -> None:
        """A new order each epoch, the same in every process (PyTorch's DistributedSampler needs telling)."""
        if isinstance(getattr(loader, "sampler", None), DistributedSampler):
            loader.sampler.set_epoch(epoch)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (its BatchNorms made ``SyncBatchNorm`` if asked)."""
        if not self.several:
            return model
        if self.sync_batchnorm:
            if device.type != "cuda":
                raise ValueError("sync_batchnorm=True needs CUDA (SyncBatchNorm has no CPU implementation).")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def loss_weight(self, target: Tensor, ignore_index: int) -> float:
        """The factor that turns this process's mean loss into its share of the global pixel mean (else 1).

        A Python float, so that the product keeps the loss's dtype and the ratio its float64 precision.
        """
        if not (self.several and self.global_pixel_mean):
            return 1.0
        counted = (target != ignore_index).sum().double()  # ()
        everywhere = counted.clone()
        dist.all_reduce(everywhere)  # () over every process
        return (self.world_size * counted / everywhere.clamp_min(1)).item()

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of ``value`` over the processes: what each one logs, so that all log the same (NaN spreads)."""
        if not self.several:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.item() / self.world_size

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm's running statistics) to every process, before validating and saving."""
        for buffer in model.buffers() if self.several else ():
            dist.broadcast(buffer, src=0)

    def sum_scores(self, confusion: ConfusionMatrix | None, loss_sum: Tensor, pixels: int, ignore_index: int,
                   device: torch.device) -> tuple[ConfusionMatrix | None, Tensor, int]:
        """Every process's confusion matrix, loss sum and pixel count, added up (a share may be empty).

        A process that scored nothing does not know K but must join every collective (or the others wait for
        ever), so the processes first agree on K, the largest any of them saw."""
        if not self.several:
            return confusion, loss_sum, pixels
        known = torch.tensor([confusion.num_classes if confusion is not None else 0], device=device)
        dist.all_reduce(known, op=dist.ReduceOp.MAX)
        if int(known) == 0:
            return None, loss_sum, pixels  # no process saw an image: the caller's error, raised everywhere alike
        matrix = (confusion.matrix if confusion is not None else torch.zeros(int(known), int(known),
                                                                             dtype=torch.int64)).to(device)
        dist.all_reduce(matrix)  # (K, K) summed over the processes
        totals = torch.stack([loss_sum, torch.as_tensor(float(pixels), dtype=torch.float64, device=device)])
        dist.all_reduce(totals)
        return ConfusionMatrix.from_matrix(matrix, ignore_index=ignore_index), totals[0], int(totals[1])

    def gather_states(self, state: dict) -> list[dict] | None:
        """Every process's ``state`` (tensors and plain values, e.g. random streams) in rank order; None alone.

        Sent as ``torch.save`` bytes, read with ``weights_only=True``: ``all_gather_object``'s pickling cannot carry
        some tensors (NumPy's uint32 generator state), and what arrives is what a checkpoint holds."""
        if not self.several:
            return None
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return [torch.load(io.BytesIO(raw), weights_only=True) for raw in self.gather(buffer.getvalue())]

    def gather(self, obj) -> list:
        """``obj`` of every process, in rank order (pickled: for small things such as a message)."""
        if not self.several:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def agree_on_resume(self, start: int, device: torch.device) -> None:
        """Stop every process, with one message, unless all resumed at the same epoch.

        Each process reads ``last.pt`` itself; where that is not one file for all (a relative path on a second
        machine, a disk not shared), one could start afresh while another continues: DDP would mix two runs."""
        if not self.several:
            return
        starts = torch.zeros(self.world_size, dtype=torch.int64, device=device)
        starts[self.rank] = start
        dist.all_reduce(starts)  # (world_size,): every process's next epoch
        if len(set(starts.tolist())) > 1:
            where = ", ".join(f"rank {r} at epoch {e}" for r, e in enumerate(starts.tolist()))
            raise RanksDisagree(f"the processes resumed at different points ({where}): each must read the same "
                                "last.pt; give checkpoint_dir as an absolute path on a disk every machine shares.")

    def barrier(self) -> None:
        """Every process waits here for the others (e.g. for rank 0's files to be whole)."""
        if self.several:
            dist.barrier()

    @contextmanager
    def in_turn(self, first: bool) -> Iterator[None]:
        """Run the block where ``first`` is true while the others wait, then in the others (e.g. to fetch data once)."""
        if not first:
            self.barrier()
        yield
        if first:
            self.barrier()


class ShardedSeededShuffle(Sampler):
    """One process's share of a :class:`~segbook.data.SeededShuffle`: every ``world_size``-th item.

    Every process draws the same order and item seeds from the same generator (seeded, advanced and restored
    alike), keeps a multiple of ``world_size * batch_size`` items and takes ``rank, rank + world_size, ...``: step
    ``k`` of the N processes sees the items and augmentations of step ``k`` of one with an N times larger batch."""

    def __init__(self, base: SeededShuffle, processes: Processes, batch_size: int) -> None:
        self.base, self.rank, self.world_size = base, processes.rank, processes.world_size
        self.generator = base.generator  # so checkpoints save and restore it
        global_batch = processes.world_size * batch_size
        self.usable = (base.size // global_batch) * global_batch
        if self.usable == 0:
            raise ValueError(f"{base.size} training items cannot fill one batch of {batch_size} on each of "
                             f"{processes.world_size} processes; use a smaller batch or fewer processes.")

    def __iter__(self):
        items = list(self.base)[:self.usable]  # (index, seed) pairs, the same in every process
        return iter(items[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.usable // self.world_size


_SET_BY_REBUILD = frozenset({"self", "dataset", "batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"})


def _rebuild(loader: DataLoader, dataset, sampler: Sampler | None, drop_last: bool) -> DataLoader:
    """A DataLoader like ``loader`` (workers, pinning, prefetching, ...) over ``dataset`` with ``sampler``.

    The other options are read from DataLoader's own signature: one that a later PyTorch adds is carried, not reset."""
    options = {name: getattr(loader, name) for name in inspect.signature(DataLoader.__init__).parameters
               if name not in _SET_BY_REBUILD and hasattr(loader, name)}
    return DataLoader(dataset, batch_size=loader.batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                      **options)
