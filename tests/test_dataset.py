"""dataset.py: shape checks, dynamic padding, deterministic augmentation, streamed statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dataset import (
    EmbeddingDataset,
    feature_stats,
    load_split_info,
    pad_collate,
    stats_from_sums,
)
from samplers import EvalSampler
from sampling import Segments, TemporalAugment, eval_indices, item_rng, train_indices
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
    assert batch["inputs"].shape == (4, max(lengths), 8)
    assert max(lengths) < info.shape[1]  # narrower than the split's global maximum
    assert batch["lengths"].tolist() == lengths
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(batch["inputs"][i, :n].numpy(), videos[i], rtol=0, atol=0)
        assert torch.all(batch["inputs"][i, n:] == 0)  # collate's zeros, not the file's 1e3 padding


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


def test_segment_items_hold_the_rows_at_their_frame_indices(split_dir):
    """--clip_len T over embeddings: a training item is one seeded random row per segment (drawn after the
    augmentation, from the same (seed, epoch, index) generator), an evaluation item the centres, or (V, T, D) views;
    the features are exactly the memmap's rows at `frame_indices` (which the batch's times can follow)."""
    path, videos, _ = split_dir
    info = load_split_info(path, "train")
    seg = Segments(4, 3)
    a, b = EmbeddingDataset(info, seed=3, segments=seg), EmbeddingDataset(info, seed=3, segments=seg)
    for i in range(len(info)):
        n = len(videos[i])
        train = a.frame_indices(i, 2)
        np.testing.assert_array_equal(train, train_indices(n, 4, item_rng(3, 2, i)))
        np.testing.assert_array_equal(a[(i, 2)][0], videos[i][train])
        np.testing.assert_array_equal(a[(i, 2)][0], b[(i, 2)][0])  # the seed, epoch and index alone
        views = a[i][0]
        assert views.shape == (3, 4, 8)
        np.testing.assert_array_equal(views, videos[i][eval_indices(n, 4, 3)])
    assert sum(not np.array_equal(a[(i, 1)][0], a[(i, 2)][0]) for i in range(len(info))) > len(info) // 2
    short = next(i for i, v in enumerate(videos) if len(v) < 4)  # 3 frames under 4 segments: repeated in order
    assert a.frame_indices(short, 0).tolist() in ([0, 0, 1, 2], [0, 1, 1, 2], [0, 1, 2, 2])
    one_view = EmbeddingDataset(info, segments=Segments(4))
    np.testing.assert_array_equal(one_view[0][0], videos[0][eval_indices(len(videos[0]), 4)[0]])  # (T, D)
    # the augmentation first, then segments of what it kept, one generator
    aug = TemporalAugment(crop=0.5)
    both = EmbeddingDataset(info, aug, seed=3, segments=seg)
    rng = item_rng(3, 1, 5)
    kept = aug(len(videos[5]), rng)
    np.testing.assert_array_equal(both.frame_indices(5, 1), kept[train_indices(len(kept), 4, rng)])


def test_collate_batches_views_as_consecutive_rows(split_dir):
    path, videos, _ = split_dir
    info = load_split_info(path, "train")
    ds = EmbeddingDataset(info, segments=Segments(4, 2))
    batch = pad_collate([ds[0], ds[1]])
    assert batch["views"] == 2 and batch["inputs"].shape == (4, 4, 8) and batch["indices"].tolist() == [0, 1]
    np.testing.assert_array_equal(batch["inputs"][2:].numpy(), ds[1][0])
    with pytest.raises(ValueError, match="mixes"):
        pad_collate([ds[0], EmbeddingDataset(info)[1]])


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


def test_random_swap_task_swaps_neighbours_anywhere_with_the_same_frames():
    from tests.synthetic import make_random_swap_task

    videos, labels = make_random_swap_task(80, num_pairs=1, dim=4, noise=0.0, seed=5, max_repeat=1)
    protos = videos[0]  # class 0 at one frame per prototype: the prototypes in order
    swaps = set()
    for v, y in zip(videos, labels, strict=True):
        assert np.allclose(np.sort(v, axis=0), np.sort(protos, axis=0))  # the same frames in both classes
        if y == 1:
            moved = np.flatnonzero(~np.isclose(v, protos).all(1))
            assert len(moved) == 2 and moved[1] == moved[0] + 1  # two neighbours exchanged
            swaps.add(int(moved[0]))
        else:
            assert np.allclose(v, protos)
    assert len(swaps) >= 5  # at many positions, not one
    varied, _ = make_random_swap_task(20, num_pairs=1, dim=4, noise=0.0, seed=5)
    assert len({len(v) for v in varied}) > 3  # each prototype held for its own number of frames
