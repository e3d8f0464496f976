"""windows.py: which frames each sliding window holds, the partial last window, bounded memory, the outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from windows import ThumbStrip, Timeline, check_window, encode_stream, sliding_windows


def stream(n: int, fps: float = 1.0):
    return ((k / fps, k) for k in range(n))


def spans(n: int, window: float, stride: float, fps: float = 1.0):
    return [(w.start, w.end, w.partial, units) for w, _, units in sliding_windows(stream(n, fps), window, stride, fps)]


def test_windows_of_a_60_second_video_and_its_partial_last_window() -> None:
    out = spans(60, 2, 1)  # frames at 0..59 s, each lasting 1 s: the video ends at 60 s
    assert len(out) == 60
    assert out[0] == (0, 2, False, [0, 1]) and out[30] == (30, 32, False, [30, 31])
    assert out[58] == (58, 60, False, [58, 59])
    assert out[59] == (59, 60, True, [59])  # started before the end, cut by it: stated as partial


def test_a_video_shorter_than_one_window_gives_one_partial_window() -> None:
    assert spans(3, 10, 5) == [(0, 3, True, [0, 1, 2])]
    assert spans(0, 2, 1) == []


def test_stride_larger_than_the_window_skips_the_frames_between() -> None:
    assert [u for *_, u in spans(10, 2, 4)] == [[0, 1], [4, 5], [8, 9]]
    # sub-second windows at 4 fps: exact times, no float drift over a long video
    out = spans(4 * 600, 0.5, 0.25, fps=4.0)
    assert all(len(u) == 2 for s, e, partial, u in out if not partial) and len(out) == 2400


def test_windows_stream_without_reading_ahead() -> None:
    """Memory does not grow with the video: each window is yielded as soon as the frame after it arrives."""
    produced = []

    def frames():
        for k in range(10_000):
            produced.append(k)
            yield k / 2.0, k

    for window, _times, units in sliding_windows(frames(), 3.0, 1.5, 2.0):
        if not window.partial:
            assert produced[-1] - units[-1] <= 1  # one frame past the window, never the rest of the video
            assert len(units) == 6


def test_encode_stream_batches_but_keeps_order() -> None:
    calls = []

    def encode(batch):
        calls.append(len(batch))
        return [x * 10 for x in batch]

    assert list(encode_stream(stream(7), encode, 3)) == [(k, k * 10) for k in range(7)]
    assert calls == [3, 3, 1]


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="--window 0.5 s holds no frame at the checkpoint's 1 fps"):
        check_window(0.5, 1, 1.0)
    with pytest.raises(ValueError, match="--stride must be a positive"):
        check_window(2, 0, 1.0)
    check_window(1, 1, 1.0)


def test_thumb_strip_stays_bounded_and_spread() -> None:
    strip = ThumbStrip(limit=8)
    for k in range(1000):
        strip.offer(float(k), lambda: np.zeros((2, 2, 3), np.uint8))
    times = [t for t, _ in strip.items]
    assert 4 <= len(times) <= 8 and times[0] == 0.0 and times[-1] >= 500  # the whole video, not its start


def test_timeline_writes_csv_json_and_png(tmp_path) -> None:
    names = ["A", "B", "C"]
    tl = Timeline("v.mp4", names, window=2, stride=1, fps=1.0)
    for w, times, units in sliding_windows(stream(6), 2, 1, 1.0):
        probs = np.array([0.7, 0.2, 0.1]) if w.start < 3 else np.array([0.1, 0.8, 0.1])
        tl.add(w, times, probs if len(units) > 1 else None, "" if len(units) > 1 else "1 frame; the head needs 2")
        tl.strip.offer(times[0], lambda: np.full((8, 10, 3), 200, np.uint8))
    assert tl.labels() == ["A", "A", "A", "B", "B", None]
    tl.write_csv(tmp_path / "t.csv", k=2)
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert rows[0]["top1"] == "A" and rows[0]["prob1"] == "0.7" and rows[0]["top2"] == "B"
    assert rows[-1]["partial"] == "1" and rows[-1]["skipped"] and rows[-1]["top1"] == ""
    record = json.loads(json.dumps(tl.to_json(k=2)))
    assert record["windows"][3]["topk"][0] == {"label": "B", "prob": 0.8} and record["windows"][5]["partial"]
    tl.plot(tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
