"""How the book's loaders batch: seeded order and augmentations for training, padded whole images for validation.

So that the training batches do not depend on the number of workers (or a
resume), nor a validation score on which images shared a batch.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .voc import IGNORE_INDEX

__all__ = ["PaddedBatch", "SeededItems", "SeededShuffle", "default_num_workers", "pad_collate",
           "segmentation_loaders"]


class PaddedBatch(tuple):
    """``(images, masks)`` padded to a common size; ``sizes`` holds each image's own (H, W), to cut the padding off."""

    sizes: tuple[tuple[int, int], ...]

    def __new__(cls, images: torch.Tensor, masks: torch.Tensor, sizes) -> "PaddedBatch":
        batch = super().__new__(cls, (images, masks))
        batch.sizes = tuple((int(h), int(w)) for h, w in sizes)
        return batch

    def __getnewargs__(self):  # pickling (worker processes) rebuilds it with its sizes
        return (self[0], self[1], self.sizes)

    def pin_memory(self) -> "PaddedBatch":  # DataLoader(pin_memory=True) would otherwise return a plain list
        return PaddedBatch(self[0].pin_memory(), self[1].pin_memory(), self.sizes)


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> PaddedBatch:
    """Stack (image, mask) pairs of different sizes, padded at the bottom and right: resizing would change the labels.

    Images get 0 (ImageNet's mean once normalised, the fill of training crops and
    sliding windows too), masks 255, so padding is never scored.
    """
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images, masks = [], []
    for image, mask in batch:
        pad = (0, width - image.shape[-1], 0, height - image.shape[-2])  # (left, right, top, bottom)
        images.append(F.pad(image, pad, value=0.0))  # (3, H, W)
        masks.append(F.pad(mask, pad, value=IGNORE_INDEX))  # (H, W)
    sizes = [tuple(image.shape[-2:]) for image, _ in batch]
    return PaddedBatch(torch.stack(images), torch.stack(masks), sizes)  # (B, 3, H, W), (B, H, W)


class SeededShuffle(Sampler):
    """A shuffled order plus one random seed per item, both drawn from one generator that is the sampler's alone.

    Each item re-seeds torch's RNG with its own seed, so the same generator seed
    gives the same batches, augmentations included, whatever the number of workers.
    Each epoch first draws one unused number, so the stored results keep their batches.
    """

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.generator = generator

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # unused: see the docstring
        order = torch.randperm(self.size, generator=self.generator)  # (N,)
        seeds = torch.randint(0, 2 ** 62, (self.size,), generator=self.generator)  # (N,)
        return iter(zip(order.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.size


class SeededItems(Dataset):
    """Wraps a dataset so item ``(index, seed)`` draws its random transforms from ``seed``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left as it was
            torch.manual_seed(seed)
            return self.dataset[index]


def default_num_workers() -> int:
    """0 on small machines (worker start-up costs more than it saves on 2 cores), else up to 4."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(4, cpus)


def segmentation_loaders(train_set: Dataset, val_set: Dataset, batch_size: int, *, val_batch_size: int | None = None,
                         num_workers: int | None = None, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """The book's two loaders over any pair of segmentation datasets (VOC, the toy set, a folder).

    Train: :class:`SeededShuffle` from ``seed``, the last incomplete batch dropped unless
    the split is no larger than a batch; validation: in order, :func:`pad_collate`. The
    DataLoaders get generators of their own: a DataLoader draws its workers' seed at
    every new iterator (once with ``persistent_workers``), which would shift a shared
    sampler by an amount that depends on the worker count.
    """
    workers = default_num_workers() if num_workers is None else num_workers
    order = torch.Generator().manual_seed(seed)  # the order and every item's seed; torch's global RNG is not used
    common = dict(num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
    train_loader = DataLoader(SeededItems(train_set), batch_size=batch_size,
                              sampler=SeededShuffle(len(train_set), order), generator=torch.Generator().manual_seed(seed),
                              drop_last=len(train_set) > batch_size, **common)
    val_loader = DataLoader(val_set, batch_size=val_batch_size or batch_size, shuffle=False,
                            collate_fn=pad_collate, generator=torch.Generator().manual_seed(seed), **common)
    return train_loader, val_loader
