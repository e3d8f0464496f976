"""sampling.py: stage 2's uniform cap and the TSN clip indices, pure functions of lengths and a generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sampling import Segments, average_views, eval_indices, item_rng, segment_indices, subsample_indices, train_indices


@pytest.mark.parametrize("n,cap", [(10, 3), (7, 7), (3, 10), (100, 16), (17, 16)])
def test_subsample_indices_uniform(n, cap):
    idx = subsample_indices(n, cap)
    assert len(idx) == min(n, cap) and len(set(idx.tolist())) == len(idx)
    assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < n
    if n > cap:  # spread over the whole video, not its start
        assert idx[-1] >= n - 1 - n // cap and idx[0] <= n // cap
    assert subsample_indices(n, None).tolist() == list(range(n))


def test_train_segments_cover_the_video_in_order():
    n, t = 40, 4
    seen = np.zeros(n, dtype=bool)
    for s in range(300):
        idx = train_indices(n, t, np.random.default_rng(s))
        assert idx.shape == (t,)
        for i, k in enumerate(idx):  # one frame inside each segment, hence in order
            assert i * n // t <= k < (i + 1) * n // t
        seen[idx] = True
    assert seen.all()  # every frame can be drawn


def test_eval_uniform_and_shifted_views():
    centres = eval_indices(40, 4)
    assert centres.tolist() == [[5, 15, 25, 35]]
    views = eval_indices(40, 4, num_clips=2)
    assert views.shape == (2, 4)
    assert (views[0] < views[1]).all()  # shifted inside the same segments
    assert ((views // 10) == np.arange(4)).all()


def test_short_video_repeats_frames_in_order():
    for idx in (eval_indices(3, 8)[0], train_indices(3, 8, np.random.default_rng(0)), segment_indices(1, 5, 0.5)):
        assert len(idx) in (8, 5)
        assert (np.diff(idx) >= 0).all()
    assert set(eval_indices(3, 8)[0].tolist()) == {0, 1, 2}
    with pytest.raises(ValueError):
        segment_indices(0, 4, 0.5)


def test_item_rng_depends_on_seed_epoch_and_index_only():
    draw = item_rng(3, 1, 7).random(4)
    np.testing.assert_array_equal(draw, item_rng(3, 1, 7).random(4))
    np.testing.assert_array_equal(draw, np.random.default_rng([3, 1, 7]).random(4))  # the recorded runs' draws
    assert not np.array_equal(draw, item_rng(3, 2, 7).random(4))


def test_segments_default_to_every_frame_and_refuse_views_without_segments():
    every = Segments()
    assert not every.enabled and every.train(5, np.random.default_rng(0)).tolist() == list(range(5))
    assert every.eval(5).tolist() == [list(range(5))]
    seg = Segments(4, 2)
    np.testing.assert_array_equal(seg.eval(40), eval_indices(40, 4, 2))
    np.testing.assert_array_equal(seg.train(40, np.random.default_rng(1)), train_indices(40, 4, np.random.default_rng(1)))
    with pytest.raises(ValueError, match="need segments"):
        Segments(None, 2)


def test_short_video_segments_repeat_every_frame_in_order():
    """A video of 3 frames under 8 segments: every frame kept, in order, repeated (training and every view)."""
    seg = Segments(8, 2)
    for idx in (*seg.eval(3), seg.train(3, np.random.default_rng(4))):
        assert len(idx) == 8 and (np.diff(idx) >= 0).all() and idx.max() <= 2
    assert all(set(v.tolist()) == {0, 1, 2} for v in seg.eval(3))
    assert Segments(8).eval(1).tolist() == [[0] * 8]


def test_average_views_means_each_videos_consecutive_rows():
    logits = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # 2 videos x 3 views
    assert average_views(logits, 3).tolist() == [[2.0, 3.0], [8.0, 9.0]]
    assert average_views(logits, 1) is logits
    np.testing.assert_array_equal(average_views(logits.numpy(), 2), logits.reshape(3, 2, 2).mean(1).numpy())
    with pytest.raises(ValueError, match="whole videos"):
        average_views(logits, 4)
