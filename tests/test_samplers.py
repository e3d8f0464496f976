"""samplers.py: seeded, sharded, balanced and length-grouped training order that resumes mid-epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samplers import TrainSampler, length_grouped_batches


def test_train_sampler_order_is_seeded_and_sharded_like_one_process():
    labels = np.arange(20) % 4
    one = TrainSampler(labels, seed=1)
    one.set_epoch(3)
    full = [i for i, _ in one]
    assert sorted(full) == list(range(20)) and full == [i for i, _ in one]
    one.set_epoch(4)
    assert [i for i, _ in one] != full
    shards = [TrainSampler(labels, seed=1, num_replicas=2, rank=r) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    r0, r1 = ([i for i, _ in s] for s in shards)
    # global batch k of 4 on one process == batch k of 2 on each rank
    assert [sorted(full[4 * k : 4 * k + 4]) for k in range(5)] == [
        sorted(r0[2 * k : 2 * k + 2] + r1[2 * k : 2 * k + 2]) for k in range(5)
    ]
    one.set_epoch(3)
    one.set_start(8)
    assert [i for i, _ in one] == full[8:] and len(one) == 12


def test_balanced_sampler_evens_out_classes():
    labels = np.array([0] * 90 + [1] * 10)
    sampler = TrainSampler(labels, seed=0, balanced=True)
    drawn = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        drawn += [labels[i] for i, _ in sampler]
    drawn = np.asarray(drawn)
    assert 0.4 < drawn.mean() < 0.6


def ucf_like_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Frame counts shaped like UCF-101's at 1 fps: log-normal, mean ~7, a long tail to 71."""
    rng = np.random.default_rng(seed)
    return np.clip(np.ceil(rng.lognormal(np.log(7.2) - 0.15, 0.55, size=n)), 1, 71).astype(np.int64)


def rank_batches(sampler: TrainSampler, batch_size: int) -> list[list[int]]:
    order = [i for i, _ in sampler]
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def test_length_grouped_batches_shrink_padding_and_keep_batch_order_random():
    lengths = ucf_like_lengths(1000)
    labels = np.arange(1000) % 10
    grouped = TrainSampler(labels, seed=3, lengths=lengths, batch_size=32)
    plain = TrainSampler(labels, seed=3)
    batches, plain_batches = rank_batches(grouped, 32), rank_batches(plain, 32)
    assert sorted(i for b in batches for i in b) == list(range(1000))  # every video once per epoch
    assert [len(b) for b in batches] == [32] * 31 + [8]  # full batches, the short one last
    widths = np.array([lengths[b].max() for b in batches])
    plain_widths = np.array([lengths[b].max() for b in plain_batches])
    padded = lambda ws, bs: sum(w * len(b) for w, b in zip(ws, bs, strict=True))  # noqa: E731
    assert padded(widths, batches) < 0.6 * padded(plain_widths, plain_batches)
    assert padded(widths, batches) < 1.4 * lengths.sum()  # little padding left (random batches: 2.5x the frames)
    # batch order stays random: no trend of width with position, and another epoch brings another plan
    assert abs(np.corrcoef(np.arange(31), widths[:31])[0, 1]) < 0.4
    assert sorted(widths[:31].tolist()) != widths[:31].tolist()
    grouped.set_epoch(1)
    assert rank_batches(grouped, 32) != batches
    grouped.set_epoch(0)
    assert rank_batches(grouped, 32) == batches  # seeded: the same plan for the same (seed, epoch)


def test_length_grouped_batches_sort_inside_mega_batches_only():
    lengths = np.arange(40)[::-1] % 7
    order = list(range(40))
    batches = length_grouped_batches(order, lengths, 4, torch.Generator().manual_seed(0), megabatch_mult=2)
    for batch in batches:  # each batch comes from one mega-batch of 8 consecutive positions of `order`
        assert len({i // 8 for i in batch}) == 1
        assert list(lengths[batch]) == sorted(lengths[batch], reverse=True)


@pytest.mark.parametrize("balanced", [False, True])
def test_length_grouped_plan_is_ddp_consistent_and_resumable(balanced):
    n, world, per_rank = 103, 3, 4  # 103: neither a multiple of the global batch (12) nor of the ranks
    lengths, labels = ucf_like_lengths(n, seed=1), np.array([0] * 80 + [1] * 23)
    one = TrainSampler(labels, seed=2, balanced=balanced, lengths=lengths, batch_size=per_rank * world)
    shards = [TrainSampler(labels, seed=2, balanced=balanced, num_replicas=world, rank=r, lengths=lengths,
                           batch_size=per_rank) for r in range(world)]
    for s in (one, *shards):
        s.set_epoch(5)
    single = rank_batches(one, per_rank * world)
    per_rank_batches = [rank_batches(s, per_rank) for s in shards]
    assert {len(b) for b in per_rank_batches} == {len(single)}
    for k, global_batch in enumerate(single):
        union = sorted(i for r in range(world) for i in per_rank_batches[r][k])
        if k < len(single) - 1:
            assert union == sorted(global_batch)  # global batch k over 3 ranks == batch k of one process
        else:  # the last one is topped up with repeats so ranks have equal counts, as DistributedSampler does
            assert set(global_batch) <= set(union) and len(union) == world * shards[0].num_samples - 12 * k
    for s, mine in zip(shards, per_rank_batches, strict=True):
        s.set_start(3 * per_rank)  # resume after 3 batches: the rest of the same plan
        assert rank_batches(s, per_rank) == mine[3:]
    if balanced:
        drawn = []
        for epoch in range(20):
            one.set_epoch(epoch)
            drawn += [labels[i] for i, _ in one]
        assert 0.4 < np.mean(drawn) < 0.6  # class balance survives the grouping
