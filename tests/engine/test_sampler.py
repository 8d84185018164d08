"""The resumable sampler sharded by rank: N ranks' j-th batches are together the j-th batch of one process with N
times the batch size, and a resumed epoch continues where it was on every rank."""

from __future__ import annotations

import pytest

from resdense.engine import ResumableSampler


def _batches(sampler: ResumableSampler, b: int) -> list[list[tuple[int, int]]]:
    items = list(sampler)
    assert len(items) == len(sampler)
    return [items[i:i + b] for i in range(0, len(items), b)]


@pytest.mark.parametrize("world,b", [(2, 2), (3, 1), (4, 3)])
def test_ranks_split_the_batches_of_one_process(world, b):
    n, epoch = 29, 3
    one = ResumableSampler(n, seed=5, batch_size=world * b)
    one.set_epoch(epoch)
    ranks = []
    for r in range(world):
        s = ResumableSampler(n, seed=5, batch_size=b, rank=r, world_size=world)
        s.set_epoch(epoch)
        ranks.append(_batches(s, b))
    whole = [batch for batch in _batches(one, world * b) if len(batch) == world * b]  # what drop_last keeps
    assert all(len(r) == len(whole) == n // (world * b) for r in ranks)  # equal counts: no rank waits for another
    for j, batch in enumerate(whole):
        assert [item for r in ranks for item in r[j]] == batch  # the same indices with the same augmentation seeds


def test_resumed_epoch_skips_the_done_batches_on_every_rank():
    full, resumed = [], []
    for r in range(2):
        s = ResumableSampler(20, seed=0, batch_size=2, rank=r, world_size=2, samples_per_epoch=16)
        s.set_epoch(1)
        full.append(list(s))
        s.set_epoch(1, start_batch=3)
        resumed.append(list(s))
    assert [len(f) for f in full] == [8, 8]  # 16 of 20 samples: 4 whole global batches of 4
    assert resumed == [f[6:] for f in full]


def test_one_process_keeps_the_whole_order():
    s = ResumableSampler(10, seed=1, batch_size=4)
    s.set_epoch(0, start_batch=1)
    assert [i for i, _ in s] == s.order(0)[4:] and len(s) == 6
