"""Batching: the detection collate function and a DataLoader helper with reproducible per-worker seeds."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

__all__ = ["detection_collate", "make_loader", "seed_worker", "seed_transforms"]


def detection_collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """``[(image, target), ...]`` -> ``(list of images [3, H_i, W_i], list of targets)``.

    Detection images keep their own sizes: torchvision detectors batch and pad them internally.
    """
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` seeding numpy and ``random`` from the worker's torch seed (base seed + worker id).

    Without it every worker forked from the same parent draws the same numpy augmentations.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        seed_transforms(info.dataset, seed)


def _leaves(dataset) -> list:
    if isinstance(dataset, Subset):
        return _leaves(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [leaf for d in dataset.datasets for leaf in _leaves(d)]
    return [dataset]


def seed_transforms(dataset: Dataset, seed: int) -> None:
    """Seed the albumentations generators of a dataset's transforms.

    Albumentations 2 draws from its own ``numpy.random.Generator`` (fresh OS entropy unless seeded), not from the
    global numpy state, so seeding numpy alone would leave augmentations unreproducible.
    """
    for leaf in _leaves(dataset):
        compose = getattr(getattr(leaf, "transforms", None), "compose", None)
        if compose is not None and hasattr(compose, "set_random_seed"):
            compose.set_random_seed(seed)


def _task(dataset: Dataset) -> str | None:
    leaves = _leaves(dataset)
    return getattr(leaves[0], "task", None) if leaves else None


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0, seed: int = 0,
                **kwargs) -> DataLoader:
    """A ``DataLoader`` whose order and augmentations are reproducible from ``seed``.

    Args:
        dataset: any dataset; detection datasets (``task == "detection"``, also inside ``Subset``) get
            :func:`detection_collate`, others the default collate (stacking equal-sized tensors).
        batch_size: samples per batch.
        shuffle: reshuffle every epoch (order drawn from a ``torch.Generator`` seeded with ``seed``).
        num_workers: worker processes; each seeds numpy/random from its own torch seed (:func:`seed_worker`).
        seed: seed of the loader's generator.
        **kwargs: passed to ``DataLoader`` (``drop_last``, ``pin_memory``, ``collate_fn``, ...).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if "collate_fn" not in kwargs and _task(dataset) == "detection":
        kwargs["collate_fn"] = detection_collate
    if num_workers > 0:
        kwargs.setdefault("persistent_workers", True)
    else:
        seed_transforms(dataset, seed)  # in-process loading: the transforms' generators follow ``seed`` too
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      worker_init_fn=seed_worker, generator=generator, **kwargs)
