"""Data order and augmentation as pure functions of ``(seed, epoch, index)``, so a resumed run sees the same batches.

:class:`ResumableSampler` draws epoch ``e``'s permutation from a generator seeded with ``seed + e`` and can start
part-way into an epoch. It yields ``(index, sample_seed)`` pairs; :class:`SeededDataset` seeds the dataset's
albumentations pipelines (and, inside worker processes, numpy/random) with ``sample_seed`` before loading the
sample. Nothing depends on which worker loads a sample or on what ran before it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from resdense.data import seed_transforms
from resdense.errors import DataError

__all__ = ["ResumableSampler", "SeededDataset", "groups", "sample_seed", "train_sampler"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for sample ``index`` of epoch ``epoch`` (a hash, so neighbouring seeds do not correlate)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + index)
    return int(torch.randint(0, 2**31 - 1, (1,), generator=g))


class ResumableSampler(Sampler):
    """Shuffled (or sequential) indices of a dataset, reproducible per epoch, resumable mid-epoch, sharded by rank.

    Args:
        n: dataset length.
        seed: base seed.
        shuffle: permute each epoch (``torch.randperm`` with a generator seeded ``seed + epoch``).
        batch_size: images per batch of one process.
        rank / world_size: this process and the number of processes (``torch.distributed``).
        samples_per_epoch: how much of each epoch's order is used (default: all of it in one process; whole chunks
            of ``world_size * batch_size`` with several).

    Every rank draws the same epoch order and cuts it into chunks of ``world_size * batch_size``; batch ``j`` of
    rank ``r`` is the ``r``-th slice of chunk ``j``. So the ranks' ``j``-th batches together are batch ``j`` of one
    process with ``world_size`` times the batch size, and a run on N processes sees the samples of a run on one. The
    order is a function of ``(seed, epoch)`` only: resuming on another number of processes with the same global
    batch continues the same sequence.

    ``set_epoch(epoch, start_batch=0)`` selects the epoch and how many batches (of each rank) are already done.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, batch_size: int = 1, *, rank: int = 0,
                 world_size: int = 1, samples_per_epoch: int | None = None) -> None:
        self.n, self.seed, self.shuffle, self.batch_size = n, seed, shuffle, batch_size
        self.rank, self.world_size = rank, world_size
        chunk = world_size * batch_size
        default = n if world_size == 1 else n // chunk * chunk
        self.samples_per_epoch = min(n, default if samples_per_epoch is None else samples_per_epoch)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def _slices(self) -> Iterator[tuple[int, int]]:
        chunk = self.world_size * self.batch_size
        for start in range(self.start_batch * chunk, self.samples_per_epoch, chunk):
            lo = start + self.rank * self.batch_size
            yield lo, min(lo + self.batch_size, self.samples_per_epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order(self.epoch)
        for lo, hi in self._slices():
            for i in order[lo:hi]:
                yield i, sample_seed(self.seed, self.epoch, i)

    def __len__(self) -> int:
        return sum(max(0, hi - lo) for lo, hi in self._slices())


class SeededDataset(Dataset):
    """Wrap a dataset so that ``ds[(index, seed)]`` returns ``(index, sample)`` with augmentation drawn from ``seed``.

    The index travels with the sample so the trainer can name the images of a batch (e.g. in the non-finite-loss
    error). Plain integer indices work too (no seeding).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            seed_transforms(self.dataset, seed)
            if get_worker_info() is not None:  # the main process's global states belong to the training run
                random.seed(seed)
                np.random.seed(seed)
        else:
            index = key
        return index, self.dataset[index]

    def __getattr__(self, name: str):
        # Plain attributes (class names, .coco, image paths) come from the wrapped dataset; protocol names do not:
        # the DataLoader fetches through a Subset's ``__getitems__`` when it sees one, which would skip the
        # ``(index, sample)`` wrapping of __getitem__.
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def groups(batches: Iterable, k: int) -> Iterator[list]:
    """Consecutive groups of ``k`` batches (the sampler yields whole groups; a short last one would be dropped)."""
    group: list = []
    for batch in batches:
        group.append(batch)
        if len(group) == k:
            yield group
            group = []


def train_sampler(n: int, seed: int, batch_size: int, accumulate: int, rank: int, world_size: int,
                  words: str) -> tuple[ResumableSampler, int]:
    """The shuffled sampler of ``n`` training samples and its iterations per epoch of whole global batches
    (``words``), or of one short batch; raises DataError when empty or smaller than a multi-batch global batch."""
    global_batch = world_size * batch_size * accumulate
    if n == 0:
        raise DataError("the training dataset is empty")
    if n < global_batch and global_batch > batch_size:
        raise DataError(f"the training set has {n} images, fewer than one global batch of {global_batch} ({words})")
    iters = max(1, n // global_batch)
    return ResumableSampler(n, seed=seed, shuffle=True, batch_size=batch_size, rank=rank, world_size=world_size,
                            samples_per_epoch=iters * global_batch if n >= global_batch else n), iters
