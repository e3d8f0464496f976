"""dataset.py: shape checks, dynamic padding, deterministic augmentation and order, samplers, streamed statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dataset import (
    EmbeddingDataset,
    EvalSampler,
    TrainSampler,
    feature_stats,
    length_grouped_batches,
    load_split_info,
    pad_collate,
    stats_from_sums,
)
from sampling import TemporalAugment
from tests.synthetic import make_order_task, write_embedding_split
from utils import BadInputError


@pytest.fixture()
def split_dir(tmp_path):
    videos, labels = make_order_task(23, num_pairs=2, dim=8, min_len=3, max_len=15, seed=5)
    write_embedding_split(tmp_path, "train", videos, labels, pad_value=1e3)  # padding that must never leak in
    return tmp_path, videos, labels


def test_batches_pad_to_their_own_longest_video(split_dir):
    path, videos, _ = split_dir
    info = load_split_info(path, "train")
    loader = DataLoader(EmbeddingDataset(info), batch_size=4, collate_fn=pad_collate)
    batch = next(iter(loader))
    lengths = [len(v) for v in videos[:4]]
    assert batch["feats"].shape == (4, max(lengths), 8)
    assert max(lengths) < info.shape[1]  # narrower than the split's global maximum
    assert batch["lengths"].tolist() == lengths
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(batch["feats"][i, :n].numpy(), videos[i], rtol=0, atol=0)
        assert torch.all(batch["feats"][i, n:] == 0)  # collate's zeros, not the file's 1e3 padding


def test_eval_sampler_keeps_every_sample_once_across_ranks(split_dir):
    path, _, labels = split_dir
    info = load_split_info(path, "train")
    seen = []
    for rank in range(3):
        loader = DataLoader(EmbeddingDataset(info), batch_size=4, sampler=EvalSampler(len(info), 3, rank),
                            collate_fn=pad_collate)
        seen += [i for b in loader for i in b["indices"].tolist()]
    assert sorted(seen) == list(range(len(labels)))  # 23: not a multiple of batch or ranks


def test_shape_disagreement_names_both_files(split_dir):
    path, _, _ = split_dir
    meta = json.loads((path / "train.json").read_text())
    meta["memmap_size"][2] = 9
    (path / "train.json").write_text(json.dumps(meta))
    with pytest.raises(BadInputError) as err:
        load_split_info(path, "train")
    assert "train.npy" in str(err.value) and "train.json" in str(err.value)


def test_bad_records_left_out_or_refused_with_strict(split_dir):
    path, _, labels = split_dir
    meta = json.loads((path / "train.json").read_text())
    meta["data"][3]["video_length"] = 0
    meta["data"][5]["label_idx"] = 99
    (path / "train.json").write_text(json.dumps(meta))
    info = load_split_info(path, "train")
    assert len(info) == len(labels) - 2 and len(info.skipped) == 2
    with pytest.raises(BadInputError, match="strict"):
        load_split_info(path, "train", strict=True)


def test_augmentation_depends_only_on_seed_epoch_index(split_dir):
    path, videos, _ = split_dir
    info = load_split_info(path, "train")
    aug = TemporalAugment(crop=0.5, max_stride=2, frame_dropout=0.3)
    a, b = EmbeddingDataset(info, aug, seed=3), EmbeddingDataset(info, aug, seed=3)
    for i in range(len(info)):
        np.testing.assert_array_equal(a[(i, 2)][0], b[(i, 2)][0])
        assert 1 <= len(a[(i, 2)][0]) <= len(videos[i])
    changed = sum(not np.array_equal(a[(i, 1)][0], a[(i, 2)][0]) for i in range(len(info)))
    assert changed > len(info) // 2  # another epoch, other crops
    np.testing.assert_array_equal(a[4][0], videos[4])  # a plain index (evaluation) is never augmented
    # kept frames stay in temporal order
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = aug(20, rng)
        assert np.all(np.diff(idx) > 0) and len(idx) >= 1


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


def test_streamed_feature_stats_match_numpy_over_real_rows(split_dir):
    path, videos, _ = split_dir
    info = load_split_info(path, "train")
    parts = [feature_stats(info, chunk_rows=4, rank=r, world_size=2) for r in range(2)]
    total = sum(p[0] for p in parts)
    total_sq = sum(p[1] for p in parts)
    count = sum(p[2] for p in parts)
    mean, std = stats_from_sums(total, total_sq, count)
    real = np.concatenate(videos)
    assert count == len(real)
    np.testing.assert_allclose(mean, real.mean(0), atol=1e-5)
    np.testing.assert_allclose(std, real.std(0), atol=1e-5)


def test_local_swap_task_holds_the_same_frames_in_both_classes_of_a_pair():
    from tests.synthetic import make_local_swap_task

    videos, labels = make_local_swap_task(40, num_pairs=2, dim=4, noise=0.0, seed=3)
    lengths = {len(v) for v in videos}
    assert len(lengths) > 2 and all(n % 6 == 0 for n in lengths)  # speeds differ, whole prototypes each
    a = next(v for v, y in zip(videos, labels, strict=True) if y == 0 and len(v) == 12)
    b = next(v for v, y in zip(videos, labels, strict=True) if y == 1 and len(v) == 12)
    assert np.allclose(np.sort(a, axis=0), np.sort(b, axis=0))  # the same multiset of frames: a mean cannot tell
    assert not np.allclose(a, b) and np.allclose(a[:4], b[:4]) and np.allclose(a[8:], b[8:])  # only the middle
