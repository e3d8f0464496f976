"""Exact-time sampling (pure and streaming) on the four real clips, resizing, and bad video input."""

from __future__ import annotations

import logging
import math
import os
import statistics
from pathlib import Path

import cv2
import numpy as np
import pytest

import video
from tests.conftest import VIDEOS
from utils import BadInputError
from video import (
    TimestampSampler,
    VideoDecodeError,
    decode_all_timestamps,
    is_video_file,
    iter_frames_at_fps,
    resize_shorter_side,
    select_frames,
    truncation_reason,
)

CLIPS = ["tree.avi", "carphone_pristine.mp4", "bikes.mp4", "vtest.avi"]
SIZE = 32


def real_duration(timestamps: list[float]) -> float:
    """Last timestamp plus the median gap, measured from the first timestamp: what the clip really spans."""
    gaps = [b - a for a, b in zip(timestamps, timestamps[1:], strict=False)]
    return timestamps[-1] - timestamps[0] + statistics.median(gaps)


def expected_count(duration: float, fps: float) -> int:
    """Number of k >= 0 with k / fps inside [0, duration)."""
    return math.ceil(duration * fps - 1e-6)


@pytest.fixture(scope="module")
def decoded() -> dict[str, tuple[list[float], float, list[np.ndarray]]]:
    """Every frame of every clip (timestamps, header fps, small BGR images): the reference to compare against."""
    out = {}
    for name in CLIPS:
        cap = cv2.VideoCapture(str(VIDEOS / name))
        ts, imgs = [], []
        while cap.grab():
            ts.append(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
            imgs.append(resize_shorter_side(cap.retrieve()[1], SIZE))
        out[name] = (ts, cap.get(cv2.CAP_PROP_FPS), imgs)
        cap.release()
    return out


def test_decoded_frame_counts_match_the_clips(decoded):
    counts = {name: len(decoded[name][0]) for name in CLIPS}
    # tree.avi's header claims 444 frames; only 68 decode.
    assert counts == {"tree.avi": 68, "carphone_pristine.mp4": 120, "bikes.mp4": 250, "vtest.avi": 795}


@pytest.mark.parametrize("name", CLIPS)
@pytest.mark.parametrize("fps", [1.0, 0.5, 2.5, 29.97 / 7])
def test_sample_counts_follow_real_duration(decoded, name, fps):
    ts, nominal, _ = decoded[name]
    picks = select_frames(ts, fps, nominal)
    assert len(picks) == expected_count(real_duration(ts), fps)
    assert [k for k, _ in picks] == list(range(len(picks)))
    for k, index in picks:  # the frame on screen at k / fps: latest with timestamp <= k / fps
        t = k / fps + ts[0]
        assert ts[index] <= t + video.TIME_TOLERANCE
        assert index == len(ts) - 1 or ts[index + 1] > t + video.TIME_TOLERANCE


def test_known_counts_from_durations(decoded):
    assert len(select_frames(decoded["bikes.mp4"][0], 1)) == 10  # 10 s
    assert len(select_frames(decoded["carphone_pristine.mp4"][0], 1)) == 5  # 4.004 s
    tree = decoded["tree.avi"][0]
    assert len(select_frames(tree, 1)) == 30  # about 29.9 s, not 4 (68 frames / 15 fps) and not 444
    assert len(select_frames(tree, 0.5)) == 15
    assert len(select_frames(tree, 0)) == 68


@pytest.mark.parametrize("name", ["tree.avi", "carphone_pristine.mp4", "bikes.mp4"])
@pytest.mark.parametrize("fps", [1.0, 2.5, 29.97 / 7, 0.0])
def test_streaming_matches_full_decode(decoded, name, fps):
    ts, nominal, imgs = decoded[name]
    picks = select_frames(ts, fps, nominal)
    got = list(iter_frames_at_fps(VIDEOS / name, fps, SIZE, rgb=False))
    assert len(got) == len(picks)
    for (t, img), (k, index) in zip(got, picks, strict=True):
        expected_t = ts[index] - ts[0] if fps == 0 else k / fps
        assert t == pytest.approx(expected_t, abs=1e-9)
        np.testing.assert_array_equal(img, imgs[index])


def test_streaming_on_long_clip(decoded):
    ts, nominal, imgs = decoded["vtest.avi"]
    got = list(iter_frames_at_fps(VIDEOS / "vtest.avi", 1.0, SIZE, rgb=False))
    picks = select_frames(ts, 1.0, nominal)
    assert len(got) == 80
    for (_, img), (_, index) in zip(got, picks, strict=True):
        np.testing.assert_array_equal(img, imgs[index])


@pytest.mark.parametrize(("name", "fps"), [("tree.avi", 2.5), ("carphone_pristine.mp4", 1.0)])
def test_wrong_lookahead_guess_still_exact(decoded, name, fps):
    """With lookahead 0 every guess is wrong and each kept frame is re-decoded: slower, same frames."""
    ts, nominal, imgs = decoded[name]
    got = list(iter_frames_at_fps(VIDEOS / name, fps, SIZE, rgb=False, lookahead=0.0))
    picks = select_frames(ts, fps, nominal)
    assert len(got) == len(picks)
    for (_, img), (_, index) in zip(got, picks, strict=True):
        np.testing.assert_array_equal(img, imgs[index])


def test_rgb_output_and_info():
    info: dict = {}
    rgb = list(iter_frames_at_fps(VIDEOS / "carphone_pristine.mp4", 1, info=info))
    bgr = list(iter_frames_at_fps(VIDEOS / "carphone_pristine.mp4", 1, rgb=False))
    assert rgb[0][1].shape == (144, 176, 3) and rgb[0][1].dtype == np.uint8
    np.testing.assert_array_equal(rgb[2][1], bgr[2][1][..., ::-1])
    assert info["num_decoded"] == 120 and info["timing"] == "decoded"
    assert info["duration"] == pytest.approx(4.004, abs=1e-3)
    assert truncation_reason(info) is None


def test_tree_header_lies_but_is_not_truncated():
    info: dict = {}
    frames = list(iter_frames_at_fps(VIDEOS / "tree.avi", 1, 64, info=info))
    assert len(frames) == 30
    assert info["num_decoded"] == 68
    assert truncation_reason(info) is None


def test_repeated_samples_are_independent_arrays():
    frames = list(iter_frames_at_fps(VIDEOS / "tree.avi", 10, SIZE))  # tree shows ~2 frames per second
    a, b = frames[0][1], frames[1][1]
    np.testing.assert_array_equal(a, b)
    a[...] = 0
    assert b.any()


# ----- broken timestamps ----------------------------------------------------------------------------------------


def test_sampler_regular_and_fractional():
    ts = [i / 25 for i in range(250)]
    assert select_frames(ts, 1) == [(k, 25 * k) for k in range(10)]
    assert select_frames(ts, 2.5) == [(k, 10 * k) for k in range(25)]
    assert select_frames(ts, 25) == [(k, k) for k in range(250)]
    assert select_frames(ts, 0) == [(k, k) for k in range(250)]
    assert select_frames(ts, 100)[:5] == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1)]


def test_sampler_tolerates_millisecond_rounding():
    # 29.97 fps with timestamps rounded to whole milliseconds (Matroska): sampling at the same rate keeps each frame.
    ts = [round(i / (30000 / 1001), 3) for i in range(300)]
    assert select_frames(ts, 30000 / 1001) == [(k, k) for k in range(300)]


@pytest.mark.parametrize(
    "timestamps",
    [
        [0.0] * 50,  # all zero
        [5.0] * 50,  # constant
        [-1.0] * 50,
        [0.0] + [-0.04 * i for i in range(1, 50)],  # decreasing
    ],
)
def test_sampler_falls_back_to_nominal_timing(timestamps):
    sampler = TimestampSampler(1.0, nominal_fps=10.0)
    for t in timestamps:
        sampler.add(t)
    assert sampler.replaced == 49 and sampler.timing == "nominal"
    assert select_frames(timestamps, 1.0, nominal_fps=10.0) == [(k, 10 * k) for k in range(5)]


def test_sampler_repairs_a_glitch():
    ts = [i / 10 for i in range(100)]
    ts[40] = ts[39]  # one repeated timestamp
    ts[70] = float("nan")
    sampler = TimestampSampler(1.0, nominal_fps=10.0)
    for t in ts:
        sampler.add(t)
    assert sampler.replaced == 2 and sampler.timing == "repaired"
    assert len(select_frames(ts, 1.0, 10.0)) == 10


def test_streaming_all_zero_timestamps_warns_and_uses_nominal(monkeypatch, caplog):
    monkeypatch.setattr(video, "_timestamp_seconds", lambda cap: 0.0)
    info: dict = {}
    with caplog.at_level(logging.WARNING, logger="actionbert.video"):
        frames = list(iter_frames_at_fps(VIDEOS / "bikes.mp4", 1, SIZE, info=info))
    assert len(frames) == 10  # 250 frames at the header's 25 fps
    assert info["timing"] == "nominal" and info["replaced_timestamps"] == 249
    assert "bikes.mp4" in caplog.text and "nominal" in caplog.text


def test_bad_fps_rejected():
    with pytest.raises(ValueError):
        TimestampSampler(-1.0)
    with pytest.raises(ValueError):
        TimestampSampler(float("nan"))


# ----- helpers and bad input -------------------------------------------------------------------------------------


def test_is_video_file():
    assert is_video_file("a/b/v_X_g01_c01.AVI")
    assert is_video_file("clip [1] & (x)!.MkV")
    assert not is_video_file("notes.txt")
    assert not is_video_file("avi")


def test_resize_shorter_side():
    land = np.zeros((240, 320, 3), np.uint8)
    port = np.zeros((320, 240, 3), np.uint8)
    assert resize_shorter_side(land, 64).shape == (64, 85, 3)
    assert resize_shorter_side(port, 64).shape == (85, 64, 3)
    assert resize_shorter_side(land, 480).shape == (480, 640, 3)
    assert resize_shorter_side(land, None) is land


@pytest.fixture()
def bad_files(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "text.avi"
    text.write_text("not a video\n")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    data = (VIDEOS / "bikes.mp4").read_bytes()
    half_mp4 = tmp_path / "half.mp4"
    half_mp4.write_bytes(data[: len(data) // 2])
    dangling = tmp_path / "gone.avi"
    os.symlink(tmp_path / "nowhere.avi", dangling)
    return {"text": text, "empty": empty, "half_mp4": half_mp4, "dangling": dangling, "missing": tmp_path / "no.avi"}


@pytest.mark.parametrize("kind", ["text", "empty", "half_mp4", "dangling", "missing"])
def test_bad_video_raises_clear_error(bad_files, kind):
    path = bad_files[kind]
    with pytest.raises(VideoDecodeError) as exc:
        list(iter_frames_at_fps(path, 1))
    assert isinstance(exc.value, BadInputError)
    assert str(path) in str(exc.value) and exc.value.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.avi"
    path.write_bytes((VIDEOS / "tree.avi").read_bytes())
    path.chmod(0)
    with pytest.raises(VideoDecodeError, match="unreadable"):
        list(iter_frames_at_fps(path, 1))


def test_truncated_avi_is_detected(tmp_path):
    data = (VIDEOS / "tree.avi").read_bytes()
    half = tmp_path / "half.avi"
    half.write_bytes(data[: len(data) // 2])
    info: dict = {}
    frames = list(iter_frames_at_fps(half, 1, SIZE, info=info))  # the first half still decodes
    assert 0 < len(frames) < 30
    assert "truncated" in truncation_reason(info)


def test_decode_all_timestamps():
    ts, nominal = decode_all_timestamps(VIDEOS / "carphone_pristine.mp4")
    assert len(ts) == 120 and nominal == pytest.approx(29.97, abs=0.01)
    assert all(b > a for a, b in zip(ts, ts[1:], strict=False))
