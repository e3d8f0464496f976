"""The order probes: index maps that are pure functions of (length, video, seed), applied as frames are read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dataset import EmbeddingDataset, load_split_info
from metrics import MetricAccumulator
from probes import PROBE_NAMES, ProbedDataset, apply_probe, probe_indices, summarise_probes
from tests.conftest import ROOT
from tests.synthetic import make_order_task, write_embedding_split


def test_probe_index_maps() -> None:
    assert probe_indices("reverse", 5, "v").tolist() == [4, 3, 2, 1, 0]
    assert probe_indices("static", 5, "v").tolist() == [2] * 5  # the middle frame, for the video's length
    assert probe_indices("static", 4, "v").tolist() == [1] * 4
    assert probe_indices("half", 5, "v").tolist() == [0, 2, 4]  # every second frame: half the frame rate
    assert probe_indices("half", 1, "v").tolist() == [0]
    shuffled = probe_indices("shuffle", 12, "v_a", seed=0)
    assert sorted(shuffled.tolist()) == list(range(12)) and shuffled.tolist() != list(range(12))
    # fixed per (video, seed): reruns and workers agree; other videos and seeds get other orders
    assert probe_indices("shuffle", 12, "v_a", seed=0).tolist() == shuffled.tolist()
    assert probe_indices("shuffle", 12, "v_b", seed=0).tolist() != shuffled.tolist()
    assert probe_indices("shuffle", 12, "v_a", seed=1).tolist() != shuffled.tolist()
    for probe in PROBE_NAMES:
        assert probe_indices(probe, 1, "v").tolist() == [0]
    with pytest.raises(ValueError, match="unknown probe"):
        probe_indices("mirror", 3, "v")
    with pytest.raises(ValueError, match="at least one frame"):
        probe_indices("reverse", 0, "v")


def test_shuffle_does_not_depend_on_the_process() -> None:
    """Python salts str hashes per process; the shuffle of a video must be the same in every run and worker."""
    code = "from probes import probe_indices; print(probe_indices('shuffle', 9, 'v_Growing_g01_c01', 3).tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert out.stdout.strip() == str(probe_indices("shuffle", 9, "v_Growing_g01_c01", 3).tolist())


def test_apply_probe_on_arrays_and_tensors() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert np.array_equal(apply_probe(rows, "reverse", "v"), rows[::-1])
    clips = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3, 1, 1)  # (V, T, 3, H, W)
    assert torch.equal(apply_probe(clips, "half", "v", time_axis=-4), clips[:, [0, 2]])
    assert torch.equal(apply_probe(clips, "static", "v", time_axis=-4), clips[:, [1, 1, 1, 1]])


def test_probed_embedding_dataset_reads_the_changed_frames_from_the_memmap(tmp_path) -> None:
    videos, labels = make_order_task(5, num_pairs=1, dim=4, seed=0)
    write_embedding_split(tmp_path, "test", videos, labels)
    info = load_split_info(tmp_path, "test")
    base = EmbeddingDataset(info)
    for probe in PROBE_NAMES:
        probed = ProbedDataset(base, probe, info.names, seed=4)
        for i in range(len(base)):
            feats, label, index = probed[i]
            expected = videos[i][probe_indices(probe, len(videos[i]), info.names[i], 4)]
            assert (label, index) == (labels[i], i) and np.array_equal(feats, expected)


def test_summarise_probes() -> None:
    names = ["a", "b"]
    accs = {}
    for probe, (right_a, right_b) in {"none": (4, 3), "shuffle": (2, 3), "static": (0, 1)}.items():
        acc = MetricAccumulator(2)
        targets = torch.tensor([0] * 4 + [1] * 4)
        hits = torch.tensor([i < right_a for i in range(4)] + [i < right_b for i in range(4)])
        pred = torch.where(hits, targets, 1 - targets)
        acc.update(torch.nn.functional.one_hot(pred, 2).float(), targets, 0.0)
        accs[probe] = acc
    summary, rows = summarise_probes({p: a.compute() for p, a in accs.items()},
                                     {p: a.per_class(names) for p, a in accs.items()})
    assert summary["none"]["top1"] == 7 / 8 and "top1_drop" not in summary["none"]
    assert summary["shuffle"]["top1_drop"] == pytest.approx(2 / 8) and summary["static"]["count"] == 8
    assert summary["static"]["mean_class_acc_drop"] == pytest.approx((1 + 0.75) / 2 - (0 + 0.25) / 2)
    assert rows[0] == {"class_idx": 0, "class_name": "a", "count": 4, "none": 1.0, "shuffle": 0.5,
                       "shuffle_drop": 0.5, "static": 0.0, "static_drop": 1.0}
    assert rows[1]["shuffle_drop"] == 0.0
    with pytest.raises(ValueError, match="none"):
        summarise_probes({"shuffle": summary["shuffle"]}, {})


def _timed_split(tmp_path, fps: float, lengths=(6, 8, 5)):
    rng = np.random.default_rng(0)
    videos = [rng.normal(size=(n, 4)).astype(np.float32) for n in lengths]
    write_embedding_split(tmp_path, "test", videos, np.arange(len(videos)) % 2)
    meta_path = tmp_path / "test.json"
    meta = json.loads(meta_path.read_text())
    meta["fps"] = fps
    meta_path.write_text(json.dumps(meta))
    return load_split_info(tmp_path, "test")


def test_times_stay_with_the_positions_under_order_probes_and_with_the_frames_under_half(tmp_path) -> None:
    """probes.py's docstring: a shuffled, reversed or static video keeps times 0, 1/fps, 2/fps, ... (else a
    time-coded head would see the same (frame, time) set and look order-blind); `half` keeps its frames' true
    times, as a video at half the rate has them."""
    info = _timed_split(tmp_path, fps=4.0)
    base = EmbeddingDataset(info, with_times=True)
    feats, _, _, times = base[1]
    np.testing.assert_allclose(times, np.arange(8) / 4.0)
    for probe in ("shuffle", "reverse", "static"):
        probed, _, _, probed_times = ProbedDataset(base, probe, info.names, seed=4)[1]
        assert not np.array_equal(probed, feats) or probe == "static"
        np.testing.assert_allclose(probed_times, np.arange(8) / 4.0)
    probed, _, _, half_times = ProbedDataset(base, "half", info.names)[1]
    np.testing.assert_array_equal(probed, feats[::2])
    np.testing.assert_allclose(half_times, [0.0, 0.5, 1.0, 1.5])
    assert len(ProbedDataset(EmbeddingDataset(info), "half", info.names)[1]) == 3  # no times: items as before


def test_a_time_coded_head_is_not_blind_to_a_shuffle(tmp_path) -> None:
    """Because times stay with the positions, shuffling the frames changes a time-coded head's logits."""
    from dataset import pad_collate
    from models import build_model

    info = _timed_split(tmp_path, fps=2.0)
    base = EmbeddingDataset(info, with_times=True)
    torch.manual_seed(0)
    model = build_model("attnpool", 4, 2, num_layers=2, positions="time", hidden_size=16, num_heads=2).eval()
    plain = pad_collate([base[i] for i in range(3)])
    shuffled = pad_collate([ProbedDataset(base, "shuffle", info.names, seed=1)[i] for i in range(3)])
    assert torch.equal(plain["times"], shuffled["times"])
    with torch.no_grad():
        a = model(plain["inputs"], plain["lengths"], times=plain["times"])
        b = model(shuffled["inputs"], shuffled["lengths"], times=shuffled["times"])
    assert (a - b).abs().max() > 1e-4


def test_frame_times_follow_the_rate_the_augmentation_and_stage_2s_subsample(tmp_path) -> None:
    """A frame at 1.0 s is row 4 at 4 fps and row 2 at 2 fps, and the time code sees the same second; a video
    stage 2 subsampled (--max_len) gets its rows' true frame times; temporal augmentation keeps the picks' times."""
    from dataset import source_frames
    from models.positions import time_code
    from sampling import TemporalAugment

    fast = EmbeddingDataset(_timed_split(tmp_path / "a", fps=4.0), with_times=True)[0][3]
    slow = EmbeddingDataset(_timed_split(tmp_path / "b", fps=2.0), with_times=True)[0][3]
    assert fast[4] == slow[2] == 1.0
    codes = time_code(torch.from_numpy(fast)[None], 16)[0], time_code(torch.from_numpy(slow)[None], 16)[0]
    torch.testing.assert_close(codes[0][4], codes[1][2])
    assert source_frames({"num_frames": 10}, 5).tolist() == [1, 3, 5, 7, 9]  # sampling.subsample_indices
    assert source_frames({"num_frames": 10, "skipped_frames": 2, "frame_index": [0, 1, 3]}, 3).tolist() == [0, 1, 3]
    assert source_frames({"num_frames": 10, "skipped_frames": 2}, 8) is None
    info = _timed_split(tmp_path / "c", fps=2.0)
    augmented = EmbeddingDataset(info, TemporalAugment(1.0, 2, 0.0), seed=0, with_times=True)
    for epoch in range(4):
        feats, _, index, times = augmented[(1, epoch)]
        rows = np.load(info.npy_path)[info.rows[1], : info.lengths[1]]
        picks = [int(np.flatnonzero((rows == f).all(1))[0]) for f in feats]
        np.testing.assert_allclose(times, np.asarray(picks) / 2.0)


def test_times_follow_segments_and_views_and_stay_with_positions_in_every_view(tmp_path) -> None:
    """With TSN segments and evaluation views an item's times are (V, T), the seconds of exactly the frames each
    view holds; the collate gives one row of times per view row, and a probe keeps every view's times by position
    (`half` takes every second frame of each view along time, never a view)."""
    from dataset import pad_collate
    from sampling import Segments, eval_indices

    info = _timed_split(tmp_path, fps=4.0)
    base = EmbeddingDataset(info, segments=Segments(4, 2), with_times=True)
    feats, _, _, times = base[1]
    assert feats.shape == (2, 4, 4) and times.shape == (2, 4)
    np.testing.assert_allclose(times, eval_indices(8, 4, 2) / 4.0)
    batch = pad_collate([base[0], base[1]])
    assert batch["views"] == 2 and batch["times"].shape == (4, 4)
    np.testing.assert_allclose(batch["times"][2:].numpy(), times)
    for probe in ("shuffle", "reverse"):
        _, _, _, probed_times = ProbedDataset(base, probe, info.names, seed=3, time_axis=-2)[1]
        np.testing.assert_allclose(probed_times, times)
    probed, _, _, half_times = ProbedDataset(base, "half", info.names, time_axis=-2)[1]
    np.testing.assert_array_equal(probed, feats[:, ::2])
    np.testing.assert_allclose(half_times, times[:, ::2])
