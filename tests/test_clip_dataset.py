"""clip_dataset.py: clips of stage 1's frames for end-to-end training (sampling, augmentation, corrupt frames) and
predict.py's clip from a raw video's frames.

Frames come from the real clips in ../shared/data/videos (conftest's clip_frames), or are drawn here.
"""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import prepare_data as pd
from clip_dataset import ClipDataset, clip_collate, clip_provenance, eval_clip_from_frames
from layout import frame_path, read_class_names
from samplers import TrainSampler
from sampling import eval_indices, train_indices
from tests.conftest import write_video_frames
from transforms import FrameError, crop_resize_flip, preprocess_frame, read_frame, sample_crop
from utils import BadInputError

CLIP_LEN = 4
SIZE = 64


def _rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------------------------------------------
# Sampling and items


def test_sampling_deterministic_per_seed_epoch_index(clip_frames):
    root, entries = clip_frames
    a = ClipDataset(root, entries, CLIP_LEN, train=True, image_size=SIZE, seed=3)
    b = ClipDataset(root, entries, CLIP_LEN, train=True, image_size=SIZE, seed=3)
    x1, label, idx = a[(1, 5)]
    assert torch.equal(x1, b[(1, 5)][0]) and label == entries[1]["label_idx"] and idx == 1
    epochs = [a[(1, e)][0] for e in range(6)]
    assert any(not torch.equal(epochs[0], e) for e in epochs[1:])  # augmentation changes with the epoch
    c = ClipDataset(root, entries, CLIP_LEN, train=True, image_size=SIZE, seed=4)
    assert not torch.equal(x1, c[(1, 5)][0])
    # the same batches whatever the number of DataLoader workers
    sampler = TrainSampler(a.labels, seed=0)
    sampler.set_epoch(2)
    runs = []
    for workers in (0, 2):
        loader = DataLoader(a, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=clip_collate)
        runs.append([batch["inputs"] for batch in loader])
    assert all(torch.equal(p, q) for p, q in zip(*runs, strict=True))


def test_train_item_draws_its_frames_then_its_crop_from_one_generator(clip_frames):
    """One generator per (seed, epoch, index): the segment draws first, then the crop box and the flip, exactly the
    values of the earlier code, which re-created the generator and skipped the clip_len frame draws."""
    root, entries = clip_frames
    ds = ClipDataset(root, entries, CLIP_LEN, train=True, image_size=SIZE, seed=7)
    for index, epoch in ((0, 0), (1, 3), (3, 11)):
        frames_rng = np.random.default_rng([7, epoch, index])
        ks = train_indices(int(ds.num_frames[index]), CLIP_LEN, frames_rng)
        crop_rng = np.random.default_rng([7, epoch, index])
        crop_rng.random(CLIP_LEN)
        images = [_rgb(frame_path(root, ds.names[index], int(k))) for k in ks]
        h, w = images[0].shape[:2]
        box = sample_crop(h, w, crop_rng)
        flip = bool(crop_rng.random() < 0.5)
        expected = torch.stack([torch.from_numpy(crop_resize_flip(img, box, SIZE, flip)).permute(2, 0, 1)
                                for img in images])
        assert torch.equal(ds[(index, epoch)][0], expected)


def test_items_shapes_dtypes_and_collate(clip_frames):
    root, entries = clip_frames
    train = ClipDataset(root, entries, CLIP_LEN, train=True, image_size=SIZE)
    clip, _, _ = train[(2, 0)]  # tree: 3 frames for a clip of 4
    assert clip.shape == (CLIP_LEN, 3, SIZE, SIZE) and clip.dtype == torch.uint8
    test = ClipDataset(root, entries, CLIP_LEN, train=False, image_size=SIZE, num_clips=3)
    views, _, _ = test[0]
    assert views.shape == (3, CLIP_LEN, 3, SIZE, SIZE)
    batch = clip_collate([test[0], test[1]])  # the views as rows: video 0's three, then video 1's
    assert batch["inputs"].shape == (6, CLIP_LEN, 3, SIZE, SIZE) and batch["views"] == 3
    assert torch.equal(batch["inputs"][:3], views)
    assert batch["lengths"].tolist() == [CLIP_LEN] * 6 and batch["labels"].tolist() == [0, 1]
    assert read_class_names(root, entries) == ["c0", "c1", "c2"]


def test_eval_frames_match_stage2_preprocessing(clip_frames):
    root, entries = clip_frames
    test = ClipDataset(root, entries, CLIP_LEN, train=False, image_size=SIZE)
    clip, _, _ = test[0]
    k = int(eval_indices(12, CLIP_LEN)[0, 1])
    assert torch.equal(clip[1], preprocess_frame(_rgb(frame_path(root, entries[0]["video_name"], k)), SIZE))


def test_predict_input_matches_eval_items(clip_frames):
    root, entries = clip_frames
    test = ClipDataset(root, entries, CLIP_LEN, train=False, image_size=SIZE, num_clips=2)
    name = entries[1]["video_name"]
    rgb = [_rgb(frame_path(root, name, k)) for k in range(10)]
    assert torch.equal(eval_clip_from_frames(rgb, CLIP_LEN, SIZE, num_clips=2), test[1][0])
    assert clip_provenance(root, clip_len=CLIP_LEN)["clip_len"] == CLIP_LEN


# ----------------------------------------------------------------------------------------------------------------
# Augmentation: one draw per clip


def test_same_crop_and_flip_on_every_frame(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((60, 90, 3)) * 255).astype(np.uint8)
    img[:, :45] //= 4  # asymmetric, so a flip shows
    write_video_frames(tmp_path, "still", [img] * 7)
    ds = ClipDataset(tmp_path, [{"video_name": "still", "label_idx": 0}], CLIP_LEN, train=True, image_size=32)
    clips = [ds[(0, e)][0] for e in range(8)]
    for clip in clips:  # identical frames in, identical frames out: the crop and flip were drawn once
        assert all(torch.equal(clip[0], clip[i]) for i in range(1, CLIP_LEN))
    assert len({c[0].numpy().tobytes() for c in clips}) > 1
    left_dark = [c[0, :, :, :16].float().mean() < c[0, :, :, 16:].float().mean() for c in clips]
    assert any(left_dark) and not all(left_dark)  # some clips flipped, some not


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_and_corrupt_frames(clip_frames, tmp_path):
    root, entries = clip_frames
    ds = ClipDataset(root, [*entries, {"video_name": "ghost", "label_idx": 1}], CLIP_LEN, image_size=SIZE)
    assert len(ds) == len(entries) and ds.failures[0]["file"].endswith("ghost")
    with pytest.raises(BadInputError, match="ghost"):
        ClipDataset(root, [*entries, {"video_name": "ghost", "label_idx": 1}], CLIP_LEN, strict=True)
    with pytest.raises(BadInputError, match="no frames"):
        ClipDataset(root, [{"video_name": "ghost", "label_idx": 1}], CLIP_LEN)
    with pytest.raises(BadInputError, match="label_idx"):
        ClipDataset(root, [{"video_name": "x"}], CLIP_LEN)
    with pytest.raises(BadInputError, match="appears twice"):  # the split JSON rules of stage 2
        ClipDataset(root, [entries[0], entries[0]], CLIP_LEN)

    img = np.full((40, 40, 3), 200, np.uint8)
    write_video_frames(tmp_path, "v", [img] * 4)
    frame_path(tmp_path, "v", 1).write_bytes(b"not a jpeg")  # a corrupt frame: its neighbour stands in
    clip, _, _ = ClipDataset(tmp_path, [{"video_name": "v", "label_idx": 0}], CLIP_LEN, image_size=16)[0]
    assert torch.equal(clip[1], clip[0])
    for k in range(4):
        frame_path(tmp_path, "v", k).write_bytes(b"")
    with pytest.raises(BadInputError, match="no readable frame"):
        ClipDataset(tmp_path, [{"video_name": "v", "label_idx": 0}], CLIP_LEN, image_size=16)[0]


@pytest.mark.parametrize("train", [False, True])
def test_truncated_jpeg_is_replaced_by_the_nearest_readable_frame(tmp_path, caplog, train):
    """A cut-off JPEG decodes with libjpeg's grey fill and only a warning; like stage 2, the clip route refuses it
    (transforms.FrameError) and the nearest readable frame of the video stands in, with one warning per file."""
    noise = np.random.default_rng(0).integers(0, 40, (48, 64, 3), dtype=np.uint8)
    shades = (40, 90, 160, 210)
    write_video_frames(tmp_path, "v", [noise + s for s in shades])
    bad = frame_path(tmp_path, "v", 2)
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) * 2 // 3])
    assert cv2.imread(str(bad)) is not None  # OpenCV alone would have used the grey-filled image
    ds = ClipDataset(tmp_path, [{"video_name": "v", "label_idx": 0}], CLIP_LEN, train=train, image_size=16,
                     hflip=False, crop_scale=(1.0, 1.0))
    caplog.set_level(logging.WARNING, logger="actionbert")
    for epoch in range(3):
        clip, _, _ = ds[(0, epoch)]
        assert torch.equal(clip[2], clip[1]) and not torch.equal(clip[2], clip[3])
        assert abs(clip[2].float().mean().item() - shades[1] - 20) < 5
    assert ds.bad_frames == {str(bad): "truncated JPEG (no end-of-image marker)"}
    assert caplog.text.count(str(bad)) == 1


def test_truncated_and_empty_frames_follow_stage2s_rule(tmp_path):
    """Issue 11: the e2e loader used cv2.imread, which turns a JPEG cut short into a grey-filled image without a
    word, where stage 2 refuses it. Now both use one rule (transforms.read_frame): the neighbour stands in (stage 2
    drops the frame), and --strict refuses, as stage 2 does."""
    imgs = [np.full((40, 40, 3), v, np.uint8) for v in (30, 120, 220, 90)]
    write_video_frames(tmp_path, "v", imgs)
    path = frame_path(tmp_path, "v", 2)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # no end-of-image marker
    with pytest.raises(FrameError, match="truncated"):
        read_frame(str(path))
    ds = ClipDataset(tmp_path, [{"video_name": "v", "label_idx": 0}], CLIP_LEN, image_size=16)
    clip, _, _ = ds[0]
    assert torch.equal(clip[2], clip[1]) or torch.equal(clip[2], clip[3])
    with pytest.raises(BadInputError, match=r"corrupt frame .*frame_000003.jpg: truncated JPEG \(no end-of-image "
                                            r"marker\) \(--strict\)"):
        ClipDataset(tmp_path, [{"video_name": "v", "label_idx": 0}], CLIP_LEN, image_size=16, strict=True)[0]


def test_frames_folder_disagreeing_with_the_manifest_is_left_out(tmp_path):
    """Issue 11 item 5, the e2e route: a folder holding fewer frames than stage 1's manifest records is left out
    (layout.video_frames, stage 2's rule)."""
    imgs = [np.full((40, 40, 3), v, np.uint8) for v in (30, 120, 220, 90)]
    write_video_frames(tmp_path, "whole", imgs)
    write_video_frames(tmp_path, "cut", imgs[:2])
    manifest = {"fps": 1.0, "videos": {"whole": {"num_frames": 4}, "cut": {"num_frames": 4}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    entries = [{"video_name": "whole", "label_idx": 0}, {"video_name": "cut", "label_idx": 0}]
    ds = ClipDataset(tmp_path, entries, CLIP_LEN, image_size=16)
    assert ds.names == ["whole"]
    assert "holds 2 frame(s) but stage 1's manifest records 4" in ds.failures[0]["reason"]


def test_gaps_and_stray_files_give_both_routes_the_same_frames(tmp_path):
    """layout.py's rule: frame_<k>.jpg up to the highest k are the frames, a missing k is a missing frame (stage 2
    skips it, a clip takes its nearest neighbour), other files are not frames."""
    write_video_frames(tmp_path, "v", [np.full((32, 32, 3), s, np.uint8) for s in (30, 80, 130, 180, 230)])
    frame_path(tmp_path, "v", 2).unlink()  # frame_000003.jpg lost: a gap
    for stray in ("notes.txt", "frame_7.jpg", "frame_000009.png", ".DS_Store", "thumb.jpg"):
        (tmp_path / "v" / stray).write_bytes(b"x")
    plans, failures = pd.plan_videos([("v", 0)], tmp_path, None)
    assert not failures and plans[0].num_frames == 5
    assert plans[0].frames == tuple(f"frame_{k:06d}.jpg" for k in range(1, 6))
    batch = pd.FrameBatches(plans, [0], 8, 16, "crop")[0]
    assert batch["ok"].tolist() == [True, True, False, True, True] and "frame_000003.jpg" in batch["errors"][0]
    ds = ClipDataset(tmp_path, [{"video_name": "v", "label_idx": 0}], 5, image_size=16)
    assert ds.num_frames.tolist() == [5]
    clip, _, _ = ds[0]
    assert torch.equal(clip[2], clip[1]) and abs(clip[4].float().mean().item() - 230) < 3


def test_a_flipped_training_clip_of_a_direction_class_takes_its_mirrored_label(tmp_path):
    """A left-right asymmetric clip: flipped, its pixels mirror, and a class with a mirrored partner (the flip
    map of direction.flip_policy) takes the partner's label; unflipped clips and unpaired classes keep theirs."""
    from direction import flip_policy

    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :8] = 255  # bright on the left
    write_video_frames(tmp_path, "v", [img] * 4)
    policy = flip_policy(["Turning Left", "Turning Right", "Waving"])
    entries = [{"video_name": "v", "label_idx": 0}]
    ds = ClipDataset(tmp_path, entries, CLIP_LEN, train=True, image_size=16, crop_scale=(1.0, 1.0),
                     hflip=policy.enabled, flip_label_map=policy.swap)
    seen = set()
    for epoch in range(16):
        clip, label, _ = ds[(0, epoch)]
        left_bright = clip[0, :, :, :4].float().mean() > clip[0, :, :, -4:].float().mean()
        seen.add((bool(left_bright), label))
    assert seen == {(True, 0), (False, 1)}  # both happen, and the label follows the pixels
    still = ClipDataset(tmp_path, [{"video_name": "v", "label_idx": 2}], CLIP_LEN, train=True, image_size=16,
                        crop_scale=(1.0, 1.0), hflip=True, flip_label_map=policy.swap)
    assert {still[(0, e)][1] for e in range(8)} == {2}


def test_unlabelled_entries_only_where_asked(clip_frames):
    """An unlabelled test split (label_idx -1) is read by test mode (`unlabelled`) and refused elsewhere."""
    root, entries = clip_frames
    blind = [{**e, "label_idx": -1} for e in entries]
    with pytest.raises(BadInputError, match="unlabelled"):
        ClipDataset(root, blind, CLIP_LEN, image_size=SIZE)
    ds = ClipDataset(root, blind, CLIP_LEN, image_size=SIZE, unlabelled=True)
    assert ds.labels.tolist() == [-1] * len(entries) and ds[0][1] == -1
