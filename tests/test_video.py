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
from tests.video_reference import decode_all_timestamps, iter_frames_at_fps, select_frames
from transforms import decode_jpeg
from utils import BadInputError
from video import (
    TimestampSampler,
    VideoDecodeError,
    is_video_file,
    resize_shorter_side,
    truncation_reason,
)

pytestmark = pytest.mark.needs_shared_data

CLIPS = ["tree.avi", "carphone_pristine.mp4", "bikes.mp4", "vtest.avi"]
SIZE = 32


def real_duration(timestamps: list[float]) -> float:
    """Last timestamp plus the median gap, measured from the first timestamp: what the clip really spans."""
    gaps = [b - a for a, b in zip(timestamps, timestamps[1:], strict=False)]
    return timestamps[-1] - timestamps[0] + statistics.median(gaps)


def expected_count(duration: float, fps: float) -> int:
    """Number of k >= 0 with k / fps inside [0, duration)."""
    return math.ceil(duration * fps - 1e-6)


def assert_same_frame(img: np.ndarray, imgs: list[np.ndarray], index: int) -> None:
    """`img` is frame `index` of the OpenCV reference: close to it (the two libraries convert YUV to BGR with
    slightly different filters) and no further from it than from its neighbours."""
    dist = [float(np.abs(img.astype(np.int16) - imgs[i]).mean()) for i in range(len(imgs))]
    assert dist[index] < 3.0
    near = [dist[i] for i in (index - 1, index + 1) if 0 <= i < len(imgs)]
    assert not near or dist[index] <= min(near) + 0.25


@pytest.fixture(scope="module")
def decoded() -> dict[str, tuple[list[float], float, list[np.ndarray]]]:
    """Every frame of every clip (timestamps, header fps, small BGR images) decoded by OpenCV, an independent
    reader: the reference to compare against."""
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
        assert_same_frame(img, imgs, index)


def test_streaming_on_long_clip(decoded):
    ts, nominal, imgs = decoded["vtest.avi"]
    got = list(iter_frames_at_fps(VIDEOS / "vtest.avi", 1.0, SIZE, rgb=False))
    picks = select_frames(ts, 1.0, nominal)
    assert len(got) == 80
    for (_, img), (_, index) in zip(got, picks, strict=True):
        assert_same_frame(img, imgs, index)


@pytest.mark.parametrize("name", CLIPS)
@pytest.mark.parametrize("fps", [1.0, 2.5, 0.0])
def test_skipping_unneeded_frames_changes_nothing(name, fps):
    """Planned decoding (non-reference frames that are not kept are never decoded) gives the frames, times and info
    of decoding every frame."""
    info_skip, info_all = {}, {}
    skip = list(iter_frames_at_fps(VIDEOS / name, fps, SIZE, rgb=False, info=info_skip))
    every = list(iter_frames_at_fps(VIDEOS / name, fps, SIZE, rgb=False, info=info_all, skip_unneeded=False))
    assert [t for t, _ in skip] == [t for t, _ in every]
    for (_, a), (_, b) in zip(skip, every, strict=True):
        np.testing.assert_array_equal(a, b)
    assert info_skip == pytest.approx(info_all)


def test_skipping_decodes_fewer_frames(monkeypatch):
    """bikes.mp4 (H.264 with B-frames) at 1 fps: only the reference frames and the 10 kept ones are decoded."""
    counts = []
    real = video._Decoder.decode

    def counting(self, packet):
        frames = real(self, packet)
        counts.append(len(frames))
        return frames

    monkeypatch.setattr(video._Decoder, "decode", counting)
    assert len(list(video.iter_sampled_frames(VIDEOS / "bikes.mp4", 1.0))) == 10
    assert 10 <= sum(counts) < 200  # of 250 frames


def test_plan_mismatch_falls_back_to_every_frame(monkeypatch, decoded):
    """A plan the decoder contradicts (here: a kept frame's timestamp that no frame has) is dropped mid-stream; the
    samples already yielded are not repeated and the rest come from decoding every frame."""
    real = video._make_plan

    def wrong(*args):
        plan = real(*args)
        pts, times = plan.samples[3]
        plan.samples[3] = (pts + 1, times)
        return plan

    monkeypatch.setattr(video, "_make_plan", wrong)
    ts, nominal, imgs = decoded["bikes.mp4"]
    got = list(iter_frames_at_fps(VIDEOS / "bikes.mp4", 1.0, SIZE, rgb=False))
    picks = select_frames(ts, 1.0, nominal)
    assert [t for t, _ in got] == [k for k, _ in picks]
    for (_, img), (_, index) in zip(got, picks, strict=True):
        assert_same_frame(img, imgs, index)


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
    monkeypatch.setattr(video, "_make_plan", lambda *a: None)  # as when packets carry no timestamps
    monkeypatch.setattr(video, "_frame_time", lambda frame, stream: 0.0)
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


# ----- pixel formats, colour range, rotation (generated with PyAV's encoders) ------------------------------------

PATCHES = [(255, 0, 0), (0, 200, 0), (30, 60, 220), (128, 128, 128)]  # RGB quadrants: TL, TR, BL, BR


def _patch_frame(h: int = 64, w: int = 96) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2], img[: h // 2, w // 2 :] = PATCHES[0], PATCHES[1]
    img[h // 2 :, : w // 2], img[h // 2 :, w // 2 :] = PATCHES[2], PATCHES[3]
    return img


def _write(
    path: Path,
    frames: list[np.ndarray],
    codec: str,
    pix_fmt: str,
    rate: int = 5,
    rotation: int = 0,
    options: dict[str, str] | None = None,
) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _patch_means(rgb: np.ndarray) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    qh, qw = h // 4, w // 4  # the middle of each quadrant, away from chroma bleeding at the edges
    centres = [(qh, qw), (qh, 3 * qw), (3 * qh, qw), (3 * qh, 3 * qw)]
    return [rgb[y - qh // 2 : y + qh // 2, x - qw // 2 : x + qw // 2].reshape(-1, 3).mean(0) for y, x in centres]


@pytest.mark.parametrize(
    ("suffix", "codec", "pix_fmt", "options"),
    [
        (".mp4", "libx264", "yuv420p", {"crf": "1", "bf": "2"}),  # limited range, straight from the planes
        (".avi", "mjpeg", "yuvj420p", {"q": "2"}),  # full range, straight from the planes
        (".mkv", "libx264", "yuv444p", {"crf": "1"}),  # other chroma layout: through BGR
        (".avi", "mpeg4", "yuv420p", {"q": "1"}),  # UCF-101's codec family
    ],
)
@pytest.mark.parametrize("frame_size", [None, 33])
def test_colours_survive_every_path(tmp_path, suffix, codec, pix_fmt, options, frame_size):
    """Stage 1's JPEGs and the array route keep the source colours (within compression error) whatever the pixel
    format and range, and an odd output size works for the 4:2:0 planes."""
    path = _write(tmp_path / f"v{suffix}", [_patch_frame()] * 10, codec, pix_fmt, options=options)
    jpegs = list(video.iter_jpeg_frames_at_fps(path, 1.0, frame_size, 95))
    arrays = list(iter_frames_at_fps(path, 1.0, frame_size))
    assert len(jpegs) == len(arrays) == 2  # 10 frames at 5 fps
    for rgb in (decode_jpeg(jpegs[1][1]), arrays[1][1]):
        assert rgb.shape[:2] == ((64, 96) if frame_size is None else (33, 50))
        for got, want in zip(_patch_means(rgb), PATCHES, strict=True):
            np.testing.assert_allclose(got, want, atol=6)


def test_rotated_video_is_upright(tmp_path):
    """A phone video's display matrix (90 degrees here) is applied, as players and OpenCV do."""
    img = np.zeros((32, 64, 3), np.uint8)
    img[:8, :8] = 255  # a white corner, top left as stored
    path = _write(tmp_path / "rot.mp4", [img] * 5, "libx264", "yuv420p", rotation=90, options={"crf": "1"})
    cap = cv2.VideoCapture(str(path))
    ok, reference = cap.read()
    cap.release()
    assert ok and reference.shape[:2] == (64, 32)
    (_, data), *_ = video.iter_jpeg_frames_at_fps(path, 1.0, None, 95)
    stored = decode_jpeg(data, rgb=False)
    (_, bgr), *_ = iter_frames_at_fps(path, 1.0, rgb=False)
    for got in (stored, bgr):
        assert got.shape == reference.shape
        assert np.abs(got.astype(np.int16) - reference).mean() < 3
        assert got[-4:, :4].min() > 200  # the corner is now bottom left


def packets_sent(monkeypatch) -> list:
    """The packets video.py sends to the decoder from now on (the test's own list, filled as it decodes)."""
    sent = []
    real = video._Decoder.decode
    monkeypatch.setattr(video._Decoder, "decode", lambda self, packet: sent.append(packet) or real(self, packet))
    return sent


def test_intra_only_video_decodes_only_kept_frames(tmp_path, monkeypatch):
    """MJPEG (every frame a keyframe, the demo's codec): unkept packets are never sent to the decoder."""
    frames = [np.full((16, 16, 3), 10 * i, np.uint8) for i in range(20)]
    path = _write(tmp_path / "m.avi", frames, "mjpeg", "yuvj420p", rate=10, options={"q": "2"})
    sent = packets_sent(monkeypatch)
    got = list(iter_frames_at_fps(path, 1.0))
    assert len(got) == 2 and len(sent) <= 3  # 2 kept frames, plus the flush
    assert abs(int(got[1][1].mean()) - 100) <= 3  # frame 10 at t = 1 s


@pytest.mark.parametrize("frame_size", [None, 48, 33])  # 640x272 -> 113x48 and 78x33: odd sides
def test_jpeg_frames_are_deterministic(frame_size):
    """The same video gives the same bytes on every run (resume relies on it), odd output sizes included."""
    first = list(video.iter_jpeg_frames_at_fps(VIDEOS / "bikes.mp4", 4.0, frame_size, 95))
    for _ in range(2):
        assert list(video.iter_jpeg_frames_at_fps(VIDEOS / "bikes.mp4", 4.0, frame_size, 95)) == first


@pytest.mark.parametrize(
    ("suffix", "codec", "options"), [(".avi", "mpeg4", {"bf": "2"}), (".mkv", "libx264", {"bf": "3"})]
)
def test_b_frames_in_generated_video_are_skipped_exactly(tmp_path, monkeypatch, suffix, codec, options):
    """MPEG-4 part 2 in AVI (UCF-101's format) and H.264 in Matroska with B-frames: planned decoding gives the
    frames of decoding every frame while decoding fewer."""
    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(16 * (i % 16), 20, (48, 64, 3)), 0, 255).astype(np.uint8) for i in range(60)]
    path = _write(tmp_path / f"b{suffix}", frames, codec, "yuv420p", rate=25, options=options)
    every = list(iter_frames_at_fps(path, 2.0, skip_unneeded=False))
    decoded = []
    real = video._Decoder.decode

    def counting(self, packet):
        out = real(self, packet)
        decoded.extend(out)
        return out

    monkeypatch.setattr(video._Decoder, "decode", counting)
    planned = list(iter_frames_at_fps(path, 2.0))
    assert [t for t, _ in planned] == [t for t, _ in every] and len(planned) == 5  # 60 frames at 25 fps, 2 fps
    for (_, a), (_, b) in zip(planned, every, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(decoded) < 60


def test_audio_only_file_is_a_clear_error(tmp_path):
    import av

    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with pytest.raises(VideoDecodeError, match="no video stream"):
        list(iter_frames_at_fps(path, 1))


def test_corrupt_middle_is_concealed_and_counted(tmp_path, caplog):
    """Zeroed bytes in the middle of an H.264 file: the decoder's errors are counted and warned about, the sampling
    still covers the whole clip, and nothing raises."""
    data = bytearray((VIDEOS / "bikes.mp4").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 20000] = bytes(20000)
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    info: dict = {}
    with caplog.at_level(logging.WARNING, logger="actionbert.video"):
        frames = list(iter_frames_at_fps(path, 1.0, SIZE, info=info))
    assert len(frames) == 10 and info["decoder_errors"] > 0
    assert "corrupt" in caplog.text


# ----- what FFmpeg returns for headerless pieces of files (issue 11) ----------------------------------------------


@pytest.fixture(scope="module")
def mpeg_ps(tmp_path_factory) -> bytes:
    from tests.fuzz_corpus import encode_clip

    return encode_clip(tmp_path_factory.mktemp("ps") / "src.mpg", "mpeg2video", fmt="mpeg").read_bytes()


def test_headerless_mpeg_ps_cut_without_codec_context(tmp_path, mpeg_ps):
    """A piece cut from the middle of an MPEG program stream: FFmpeg opens it and reports a video stream with no
    codec context (no decoder for codec 'none'); open_video raised AttributeError on it."""
    from tests.fuzz_corpus import find_cut, no_codec_context

    path = tmp_path / "cut.mpg"
    path.write_bytes(find_cut(mpeg_ps, no_codec_context, ".mpg", tmp_path))
    for fn in (lambda: video.open_video(path), lambda: list(iter_frames_at_fps(path, 1)),
               lambda: decode_all_timestamps(path)):
        with pytest.raises(VideoDecodeError, match="unknown video codec") as exc:
            fn()
        assert exc.value.path == str(path) and str(path) in str(exc.value)


def test_cut_probed_with_zero_dimensions(tmp_path):
    """A cut of an MP4 that FFmpeg takes for a raw elementary stream of some codec with a 0x0 frame size."""
    from tests.fuzz_corpus import find_cut, zero_dimensions

    path = tmp_path / "cut.mp4"
    path.write_bytes(find_cut((VIDEOS / "bikes.mp4").read_bytes(), zero_dimensions, ".mp4", tmp_path, length=20000))
    with pytest.raises(VideoDecodeError, match=r"zero frame dimensions \(0x0\)"):
        list(iter_frames_at_fps(path, 1))


def test_no_decodable_frame_has_its_own_reason(tmp_path, mpeg_ps):
    """A stream FFmpeg identifies (MPEG-2, 176x144) whose packets decode to nothing: a short cut between
    keyframes that holds only predicted frames."""
    from tests.fuzz_corpus import find_cut

    def opens_but_decodes_nothing(c) -> bool:
        s = c.streams.video[0] if c.streams.video else None
        if s is None or s.codec_context is None or not s.codec_context.width:
            return False
        try:
            return not any(True for _ in c.decode(s))
        except Exception:
            return False

    path = tmp_path / "cut.mpg"
    path.write_bytes(find_cut(mpeg_ps, opens_but_decodes_nothing, ".mpg", tmp_path, length=3000))
    with pytest.raises(VideoDecodeError, match="no decodable frames"):
        list(iter_frames_at_fps(path, 1))


@pytest.mark.parametrize(("suffix", "codec", "options", "most_sent"), [
    (".avi", "mpeg4", {"g": "6"}, 0.6),  # UCF-101's codec, keyframe every 6 frames, no B-frames: all references
    (".mkv", "libx264", {"g": "10", "bf": "3"}, 0.6),  # closed groups (x264's default)
    (".mkv", "libx264", {"g": "10", "bf": "3", "x264-params": "open-gop=1"}, 0.6),  # groups that refer back
    (".avi", "msmpeg4", {"g": "5"}, 0.6),  # no B-frames, no reordering: skipping groups is the only saving
    # MPEG-4 part 2 with B-frames: open groups (leading B-frames refer to the group before), which any I-frame can
    # start for the frames presented after it (_INTRA_PICTURE); the picture type is read from the packet itself
    (".avi", "mpeg4", {"g": "8", "bf": "2"}, 0.6),
    (".ts", "mpeg2video", {"g": "12", "bf": "2"}, 0.6),  # MPEG-2 in MPEG-TS, open groups likewise
])
def test_groups_between_kept_frames_are_skipped_exactly(tmp_path, monkeypatch, suffix, codec, options, most_sent):
    """Where keyframes are closer than the kept frames (1 fps of 25 fps video), decoding starts at the clean
    keyframe before each kept frame: the frames are those of decoding everything, for far fewer packets."""
    rng = np.random.default_rng(1)
    frames = [np.clip(rng.normal(8 * (i % 30), 25, (48, 64, 3)), 0, 255).astype(np.uint8) for i in range(125)]
    path = _write(tmp_path / f"g{suffix}", frames, codec, "yuv420p", rate=25, options=options)
    every = list(iter_frames_at_fps(path, 1.0, skip_unneeded=False))
    sent = packets_sent(monkeypatch)
    planned = list(iter_frames_at_fps(path, 1.0))
    assert [t for t, _ in planned] == [t for t, _ in every] == [0.0, 1.0, 2.0, 3.0, 4.0]
    for (_, a), (_, b) in zip(planned, every, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(sent) < 125 * most_sent, len(sent)


def _smooth_frames(n: int) -> list[np.ndarray]:
    """A slowly moving gradient: frames an encoder codes as P- and B-frames between its periodic I-frames (noise,
    as in the tests above, makes it code every anchor as an I-frame)."""
    yy, xx = np.mgrid[0:48, 0:64]
    return [np.stack([(xx * 4 + 2 * i) % 256, (yy * 5 + i) % 256, (xx + yy + 3 * i) % 256], -1).astype(np.uint8)
            for i in range(n)]


@pytest.mark.parametrize(("suffix", "codec"), [(".avi", "mpeg4"), (".ts", "mpeg2video")])
def test_open_groups_start_at_true_i_frames_only(tmp_path, monkeypatch, suffix, codec):
    """MPEG-4 part 2 / MPEG-2 with B-frames and P-frame anchors (UCF-101's shape, keyframe every 12 frames): decoding
    starts at the I-frame before each kept frame although its group is open, a frame whose container flag says
    keyframe but whose header says P is never a start, and the frames are those of decoding everything."""
    path = _write(tmp_path / f"o{suffix}", _smooth_frames(125), codec, "yuv420p", rate=25,
                  options={"g": "12", "bf": "2"})
    every = list(iter_frames_at_fps(path, 1.0, skip_unneeded=False))
    real = video._clean_starts
    seen = {}

    def spy(pts, keys, wanted, open_groups=False):
        seen.update(keys=keys, open_groups=open_groups)
        return real(pts, keys, wanted, open_groups)

    monkeypatch.setattr(video, "_clean_starts", spy)
    sent = packets_sent(monkeypatch)
    planned = list(iter_frames_at_fps(path, 1.0))
    assert seen["open_groups"] and 8 <= sum(seen["keys"]) <= 12  # about one true I-frame per 12 frames
    assert [t for t, _ in planned] == [t for t, _ in every] == [0.0, 1.0, 2.0, 3.0, 4.0]
    for (_, a), (_, b) in zip(planned, every, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(sent) < 125 * 0.6, len(sent)


def test_picture_type_is_read_from_the_packet():
    """The I/P/B type comes from the picture header, not from the container's keyframe flag."""
    assert video._mpeg4_intra(b"\x00\x00\x01\xb0\x01\x00\x00\x01\xb6\x10") is True  # VOL header, then I-VOP
    assert video._mpeg4_intra(b"\x00\x00\x01\xb6\x50") is False  # P-VOP (01)
    assert video._mpeg4_intra(b"\x00\x00\x01\xb6") is False  # cut before the type
    assert video._mpeg12_intra(b"\x00\x00\x01\x00\x00\x0f\xff") is True  # type 1 after temporal reference 0
    assert video._mpeg12_intra(b"\x00\x00\x01\x00\x00\x17\xff") is False  # type 2 (P)
    assert video._mpeg12_intra(b"\x00\x00\x01\xb3") is False  # a sequence header alone


def test_a_false_keyframe_flag_is_caught_and_decoded_in_full(tmp_path, monkeypatch):
    """A container that flags a frame as a keyframe when it is not: the jump to it is detected on the decoded
    frame and the video decoded in full, with the right frames."""
    rng = np.random.default_rng(2)
    frames = [np.clip(rng.normal(8 * (i % 30), 25, (48, 64, 3)), 0, 255).astype(np.uint8) for i in range(125)]
    path = _write(tmp_path / "f.mkv", frames, "libx264", "yuv420p", rate=25, options={"g": "250", "bf": "0"})
    every = list(iter_frames_at_fps(path, 1.0, skip_unneeded=False))
    real = video._clean_starts

    def lying(pts, keys, wanted, open_groups=False):  # every packet "a keyframe": the plan jumps to P-frames
        return real(pts, [True] * len(keys), wanted, open_groups)

    monkeypatch.setattr(video, "_clean_starts", lying)
    planned = list(iter_frames_at_fps(path, 1.0))
    assert [t for t, _ in planned] == [t for t, _ in every]
    for (_, a), (_, b) in zip(planned, every, strict=True):
        np.testing.assert_array_equal(a, b)
# ----- segments and frame folders (issue 19) ----------------------------------------------------------------------


def test_sampler_segment_samples_start_plus_k_over_fps_inside_the_interval():
    s = TimestampSampler(2.0, segment=(1.25, 2.5))
    out = list(video._cover(s, [i / 10 for i in range(40)]))  # 10 fps for 4 s
    assert [t for _, t, _ in out] == [1.25, 1.75, 2.25]
    assert [i for _, _, i in out] == [12, 17, 22]  # the frame on screen at each time


def test_sampler_segment_past_the_end_gives_nothing_and_fps0_keeps_frames_inside():
    assert list(video._cover(TimestampSampler(1.0, segment=(10.0, 12.0)), [0.0, 0.5, 1.0])) == []
    inside = list(video._cover(TimestampSampler(0.0, segment=(0.5, 1.5)), [i / 4 for i in range(8)]))
    assert [i for _, _, i in inside] == [2, 3, 4, 5]


@pytest.mark.parametrize("skip", [True, False])
def test_segment_frames_are_the_full_runs_frames_at_the_same_times(skip):
    path = VIDEOS / "bikes.mp4"
    full = dict(video.iter_jpeg_frames_at_fps(path, 2.0, SIZE, 90))
    part = list(video.iter_sampled_frames(path, 2.0, segment=(2.5, 5.0), skip_unneeded=skip))
    assert [t for t, _ in part] == [2.5, 3.0, 3.5, 4.0, 4.5]
    cut = list(video.iter_jpeg_frames_at_fps(path, 2.0, SIZE, 90, segment=(2.5, 5.0)))
    assert [buf for _, buf in cut] == [full[t] for t, _ in cut]


def test_frame_span_takes_its_interval_from_the_decoded_times_of_its_frames():
    """Frames 12..24 of a 10 fps video: from frame 12's time to frame 25's; on irregular timestamps the interval is
    the one those very frames are shown, where a frame-rate conversion would miss it; fps = 0 keeps exactly them."""
    out = list(video._cover(TimestampSampler(2.0, segment=video.FrameSpan(12, 24)), [i / 10 for i in range(40)]))
    assert [t for _, t, _ in out] == pytest.approx([1.2, 1.7, 2.2]) and [i for _, _, i in out] == [12, 17, 22]
    irregular = [0.0, 0.1, 0.5, 0.55, 0.6, 1.4, 1.5, 1.6]  # frames 2..5 are shown from 0.5 s to 1.5 s
    out = list(video._cover(TimestampSampler(4.0, segment=video.FrameSpan(2, 5)), irregular))
    assert [t for _, t, _ in out] == pytest.approx([0.5, 0.75, 1.0, 1.25]) and [i for _, _, i in out] == [2, 4, 4, 4]
    assert [i for _, _, i in video._cover(TimestampSampler(0.0, segment=video.FrameSpan(2, 5)), irregular)] == [
        2, 3, 4, 5]
    tail = list(video._cover(TimestampSampler(1.0, segment=video.FrameSpan(30, 99)), [i / 10 for i in range(40)]))
    assert [t for _, t, _ in tail] == pytest.approx([3.0])  # past the last frame: the span ends with the video
    assert list(video._cover(TimestampSampler(1.0, segment=video.FrameSpan(50, 60)), [0.0, 0.1])) == []
    with pytest.raises(ValueError, match="first <= last"):
        video.FrameSpan(5, 4)
    assert video.segment_json(video.FrameSpan(2, 5)) == {"frames": [2, 5]} and video.segment_json((1, 2)) == [1.0, 2.0]


@pytest.mark.parametrize("skip", [True, False])
def test_frame_span_on_a_decoded_video_keeps_exactly_its_frames(tmp_path, skip):
    from tests.synthetic import frame_number, write_numbered_video

    path = write_numbered_video(tmp_path / "numbered.mp4", 30, fps=10)
    out = list(video.iter_sampled_frames(path, 5.0, segment=video.FrameSpan(8, 21), skip_unneeded=skip))
    assert [t for t, _ in out] == pytest.approx([0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0])
    assert [frame_number(f.to_ndarray(format="rgb24")) for _, f in out] == [8, 10, 12, 14, 16, 18, 20]


def _write_frame_folder(folder: Path, n: int, start: int = 1, ext: str = ".jpg", pattern: str = "{:05d}") -> None:
    """n frames whose grey level encodes their index (20 * i), numbered from `start`."""
    folder.mkdir(parents=True)
    for i in range(n):
        img = np.full((24, 32, 3), 20 * i, np.uint8)
        cv2.imwrite(str(folder / (pattern.format(i + start) + ext)), img)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_frame_folder_resamples_by_the_exact_time_rule(tmp_path, ext):
    _write_frame_folder(tmp_path / "v", 10, ext=ext, pattern="img_{:05d}")
    (tmp_path / "v" / "notes.txt").write_text("not a frame")
    info: dict = {}
    out = list(video.iter_folder_jpegs_at_fps(tmp_path / "v", 4.0, 1.5, None, 95, info=info))
    times = [t for t, _ in out]
    assert times == pytest.approx([0.0, 2 / 3, 4 / 3, 2.0])  # 10 frames at 4 fps last 2.5 s
    # frame i is shown from i / 4 s: at k / 1.5 s that is frame floor(4k / 1.5) = 0, 2, 5, 8
    levels = [int(round(decode_jpeg(buf, True).mean() / 20)) for _, buf in out]
    assert levels == [0, 2, 5, 8]
    assert info["num_decoded"] == 10 and info["duration"] == pytest.approx(2.5)


def test_frame_folder_segment_and_numbering_from_zero(tmp_path):
    _write_frame_folder(tmp_path / "v", 12, start=0)
    out = list(video.iter_folder_jpegs_at_fps(tmp_path / "v", 12.0, 4.0, None, 95, segment=(0.5, 0.75)))
    assert [int(round(decode_jpeg(b, True).mean() / 20)) for _, b in out] == [6]


def test_frame_folder_gap_or_bad_frame_names_the_folder_and_frame(tmp_path):
    _write_frame_folder(tmp_path / "gap", 6)
    (tmp_path / "gap" / "00003.jpg").unlink()
    with pytest.raises(VideoDecodeError, match=r"1 frame\(s\) missing from the numbering 1..6: 3") as err:
        list(video.iter_folder_jpegs_at_fps(tmp_path / "gap", 4.0, 1.0, None, 95))
    assert err.value.path == str(tmp_path / "gap")
    _write_frame_folder(tmp_path / "bad", 6)
    (tmp_path / "bad" / "00002.jpg").write_bytes(b"\xff\xd8\xff not a whole jpeg")
    with pytest.raises(VideoDecodeError, match="frame 00002.jpg is not a readable JPEG/PNG image"):
        list(video.iter_folder_jpegs_at_fps(tmp_path / "bad", 4.0, 0.0, None, 95))
    (tmp_path / "bad" / "00002.jpg").write_bytes(b"GIF89a")
    with pytest.raises(VideoDecodeError, match="frame 00002.jpg is not a JPEG/PNG file"):
        list(video.iter_folder_jpegs_at_fps(tmp_path / "bad", 4.0, 1.0, None, 95))  # frame 2 is not kept
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="no numbered JPEG/PNG frames"):
        list(video.iter_folder_jpegs_at_fps(tmp_path / "empty", 4.0, 1.0, None, 95))


def test_clean_starts_never_choose_a_keyframe_after_the_wanted_packet():
    """Decode order 0..5 with keyframes at 0 and 3: a wanted frame whose packet comes before the second keyframe
    starts at the first one, even where the second presents earlier (its start must precede its packet)."""
    pts, keys = [10, 14, 12, 11, 13, 15], [True, False, False, True, False, False]
    # packet 3 (pts 11) opens a group whose later packets all present after it: clean
    assert video._clean_starts(pts, keys, [12, 13, 15]) == {12: 0, 13: 3, 15: 3}
    assert video._clean_starts(pts, keys, [14]) == {14: 0}  # packet 1 lies before keyframe 3
    # a file whose first packet is no keyframe (cut mid-group): its frame starts at packet 0, not at the keyframe
    # that follows it, although that keyframe presents earlier
    assert video._clean_starts([20, 10, 11], [False, True, False], [20, 11]) == {20: 0, 11: 1}
