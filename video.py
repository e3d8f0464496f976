"""Video decoding and exact-time frame sampling.

Frames are taken at times k / fps (k = 0, 1, ...) measured from the first decoded frame's timestamp, and each
sample is the frame on screen at that time: the latest frame whose timestamp is <= k / fps. Working from decoded
timestamps instead of a frame-index step keeps fractional fps, variable frame timing and lying headers right
(tree.avi's header claims 444 frames at 15 fps; 68 frames decode over 29.5 s).

Decoding is streaming: frames are decoded with `grab()` and only the frames that will be kept are converted with
`retrieve()`, so extraction runs close to the decode-only rate and never holds a video in memory.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from utils import BadInputError

log = logging.getLogger("actionbert.video")

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv"}
)

# A frame counts as on screen at time t when its timestamp is <= t + TIME_TOLERANCE. Containers such as Matroska
# round timestamps to milliseconds, so an exact comparison would pick the previous frame for some samples.
TIME_TOLERANCE = 1e-3

# Frame rates outside this range in a header are treated as unknown.
_PLAUSIBLE_FPS = (1.0, 1000.0)
_DEFAULT_FRAME_GAP = 1.0 / 25.0


class VideoDecodeError(BadInputError):
    """A video that cannot be read, opened or decoded; the message names the file, `reason` says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def is_video_file(path: str | os.PathLike) -> bool:
    """True when the file name has one of VIDEO_EXTENSIONS (case-insensitive); the content is not checked."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def resize_shorter_side(img: np.ndarray, size: int | None) -> np.ndarray:
    """Scale so the shorter side is `size` pixels, keeping the aspect ratio; None keeps the image as it is."""
    if size is None:
        return img
    if size <= 0:
        raise ValueError(f"frame size must be positive, got {size}")
    h, w = img.shape[:2]
    short = min(h, w)
    if short == size:
        return img
    scale = size / short
    new_w = size if w == short else max(1, round(w * scale))
    new_h = size if h == short else max(1, round(h * scale))
    # Halve with a Gaussian pyramid step while at least 2x too large, then bilinear for the remaining factor
    # in (0.5, 1]: antialiased like INTER_AREA at a fraction of its cost for non-integer factors (~1 ms against
    # ~4 ms for 768x576 -> 256 here).
    while min(img.shape[:2]) >= 2 * size:
        img = cv2.pyrDown(img)
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def _plausible_gap(nominal_fps: float | None) -> float | None:
    if nominal_fps is None or not math.isfinite(nominal_fps):
        return None
    if not _PLAUSIBLE_FPS[0] <= nominal_fps <= _PLAUSIBLE_FPS[1]:
        return None
    return 1.0 / nominal_fps


class TimestampSampler:
    """Streams decoded timestamps in and says which frame covers each sample time k / fps.

    Feed each decoded frame's timestamp to `add()`; it returns the samples the *previous* frame covers (known only
    once the next frame's timestamp is seen). `finish()` returns those of the last frame. The end of the video is
    the last timestamp plus the typical (median) frame gap, so a 10 s clip at 1 fps gives samples 0..9.

    Broken timestamps (missing, non-increasing or before the first one, e.g. all zero) are replaced by the previous
    time plus the typical gap (the header's frame rate until gaps are known); `replaced` counts them and `timing`
    says "decoded", "repaired" or "nominal" so callers can record and warn about it.
    """

    def __init__(
        self,
        fps: float,
        nominal_fps: float | None = None,
        tolerance: float = TIME_TOLERANCE,
        lookahead: float = 1.0,
    ) -> None:
        if not math.isfinite(fps) or fps < 0:
            raise ValueError(f"fps must be a finite number >= 0, got {fps}")
        self.fps = float(fps)
        self.tolerance = tolerance
        self.lookahead = lookahead
        self.nominal_gap = _plausible_gap(nominal_fps)
        self.num_frames = 0
        self.replaced = 0
        self.origin: float | None = None
        self.last_time = 0.0
        self.next_k = 0
        self._gaps: list[float] = []
        self._max_gap = 0.0

    def sample_time(self, k: int) -> float:
        return k / self.fps

    def typical_gap(self) -> float:
        if self._gaps:
            return statistics.median(self._gaps)
        return self.nominal_gap if self.nominal_gap is not None else _DEFAULT_FRAME_GAP

    def add(self, timestamp: float | None) -> list[tuple[int, float]]:
        """Register the next decoded frame (timestamp in seconds); return (k, time) samples the previous frame covers."""
        ok = timestamp is not None and math.isfinite(timestamp)
        if self.num_frames == 0:
            self.origin = timestamp if ok else 0.0
            self.replaced += 0 if ok else 1
            self.num_frames = 1
            self.last_time = 0.0
            return []
        t = timestamp - self.origin if ok else math.nan
        if not t > self.last_time:  # also catches NaN
            t = self.last_time + self.typical_gap()
            self.replaced += 1
        else:
            gap = t - self.last_time
            self._gaps.append(gap)
            self._max_gap = max(self._max_gap, gap)
        covered = self._covered_before(t)
        self.last_time = t
        self.num_frames += 1
        return covered

    def _covered_before(self, next_time: float) -> list[tuple[int, float]]:
        if self.fps == 0:
            self.next_k += 1
            return [(self.num_frames - 1, self.last_time)]
        out = []
        while self.sample_time(self.next_k) + self.tolerance < next_time:
            out.append((self.next_k, self.sample_time(self.next_k)))
            self.next_k += 1
        return out

    def wants_current(self) -> bool:
        """Whether the frame just added may cover the next sample, so it should be converted while it is decoded.

        A guess from the largest gap seen so far; when it is wrong the caller re-decodes that one frame, so the
        output stays exact and only the speed depends on the guess.
        """
        if self.fps == 0 or self.num_frames == 0:
            return True
        gap = max(self._max_gap, self.nominal_gap or 0.0)
        if gap == 0:
            return True
        predicted_next = self.last_time + gap * self.lookahead
        return predicted_next > self.sample_time(self.next_k) + self.tolerance

    @property
    def duration(self) -> float:
        """End of the video relative to the first frame: last timestamp plus one typical frame gap."""
        return self.last_time + self.typical_gap() if self.num_frames else 0.0

    def finish(self) -> list[tuple[int, float]]:
        """The samples the last frame covers (at least one sample for a non-empty video)."""
        if self.num_frames == 0:
            return []
        if self.fps == 0:
            self.next_k += 1
            return [(self.num_frames - 1, self.last_time)]
        end = self.duration
        out = []
        while self.sample_time(self.next_k) < end - self.tolerance or self.next_k == 0:
            out.append((self.next_k, self.sample_time(self.next_k)))
            self.next_k += 1
        return out

    @property
    def timing(self) -> str:
        if self.replaced == 0:
            return "decoded"
        return "nominal" if self.replaced >= self.num_frames - 1 else "repaired"


def select_frames(
    timestamps: list[float], fps: float, nominal_fps: float | None = None, tolerance: float = TIME_TOLERANCE
) -> list[tuple[int, int]]:
    """(k, frame index) for every sample time k / fps, given all decoded timestamps in seconds; fps=0 keeps all.

    The pure form of what `iter_frames_at_fps` does while streaming; both use TimestampSampler.
    """
    sampler = TimestampSampler(fps, nominal_fps=nominal_fps, tolerance=tolerance)
    out: list[tuple[int, int]] = []
    for index, ts in enumerate(timestamps):
        out.extend((k, index - 1) for k, _ in sampler.add(ts))
    out.extend((k, len(timestamps) - 1) for k, _ in sampler.finish())
    return out


def open_capture(path: str | os.PathLike) -> cv2.VideoCapture:
    """Open with FFmpeg, raising VideoDecodeError naming the file when it cannot be read or opened.

    The `file:` prefix stops FFmpeg from reading `name:...` as a protocol and OpenCV from treating `%d` in a
    name as an image sequence.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(1)
    except OSError as exc:
        raise VideoDecodeError(path, f"unreadable ({exc.strerror or exc})") from None
    if not head:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    cap = cv2.VideoCapture("file:" + str(path.resolve()), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise VideoDecodeError(path, "not a readable video (FFmpeg cannot open it)")
    return cap


def _timestamp_seconds(cap: cv2.VideoCapture) -> float | None:
    ms = cap.get(cv2.CAP_PROP_POS_MSEC)
    return ms / 1000.0 if math.isfinite(ms) else None


def _declared_duration(cap: cv2.VideoCapture) -> float | None:
    count, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
    if count > 0 and _plausible_gap(fps) is not None:
        return count / fps
    return None


def _refetch(path: Path, index: int) -> np.ndarray:
    """Decode from the start up to frame `index` and convert it: the rare case the lookahead guessed wrong."""
    cap = open_capture(path)
    try:
        for _ in range(index + 1):
            if not cap.grab():
                raise VideoDecodeError(path, f"frame {index} decoded once but not on a second pass")
        ok, img = cap.retrieve()
    finally:
        cap.release()
    if not ok or img is None:
        raise VideoDecodeError(path, f"frame {index} cannot be converted")
    return img


def iter_frames_at_fps(
    path: str | os.PathLike,
    fps: float,
    frame_size: int | None = None,
    *,
    rgb: bool = True,
    info: dict[str, Any] | None = None,
    lookahead: float = 1.0,
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (time in seconds, HxWx3 uint8 image) at times k / fps from the first frame; fps=0 yields every frame.

    Images are RGB (BGR with rgb=False, which is what cv2.imencode wants), resized on the shorter side to
    `frame_size` when given. When `info` is a dict it is filled at the end with "num_decoded", "duration",
    "declared_duration" (from the header, None when absent), "timing" and "replaced_timestamps"; a warning is
    logged when timestamps had to be replaced. Raises VideoDecodeError for unreadable or zero-frame input.
    """
    path = Path(path)
    cap = open_capture(path)
    try:
        nominal_fps = cap.get(cv2.CAP_PROP_FPS)
        declared = _declared_duration(cap)
        sampler = TimestampSampler(fps, nominal_fps=nominal_fps, lookahead=lookahead)
        held_index, held = -1, None
        index = -1

        def convert(img: np.ndarray) -> np.ndarray:
            img = resize_shorter_side(img, frame_size)
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if rgb else img

        def emit(covered: list[tuple[int, float]], frame_index: int) -> Iterator[tuple[float, np.ndarray]]:
            if not covered:
                return
            img = held if held_index == frame_index else convert(_refetch(path, frame_index))
            for n, (_, t) in enumerate(covered):
                yield t, img if n == 0 else img.copy()

        while cap.grab():
            index += 1
            covered = sampler.add(_timestamp_seconds(cap))
            if covered:
                yield from emit(covered, index - 1)
            if sampler.wants_current():
                ok, img = cap.retrieve()
                if not ok or img is None:
                    raise VideoDecodeError(path, f"frame {index} decoded but cannot be converted")
                held_index, held = index, convert(img)
        if index < 0:
            raise VideoDecodeError(path, "no decodable frames")
        yield from emit(sampler.finish(), index)
    finally:
        cap.release()
    if sampler.replaced:
        log.warning(
            "%s: %d of %d frame timestamps missing or out of order; replaced by nominal timing (%s)",
            path,
            sampler.replaced,
            sampler.num_frames,
            sampler.timing,
        )
    if info is not None:
        info.update(
            num_decoded=sampler.num_frames,
            duration=sampler.duration,
            declared_duration=declared,
            timing=sampler.timing,
            replaced_timestamps=sampler.replaced,
        )


def truncation_reason(info: dict[str, Any], min_missing: float = 1.0, min_fraction: float = 0.1) -> str | None:
    """A reason string when far less decodes than the header declares (a cut-off download), else None.

    Lenient on purpose: headers can be off (tree.avi's frame count lies but its duration is right), so only a
    shortfall over both `min_missing` seconds and `min_fraction` of the declared duration counts.
    """
    declared, decoded = info.get("declared_duration"), info.get("duration")
    if declared is None or decoded is None:
        return None
    missing = declared - decoded
    if missing > min_missing and missing > min_fraction * declared:
        return f"truncated: {decoded:.1f} s decoded of the {declared:.1f} s its header declares"
    return None


def decode_all_timestamps(path: str | os.PathLike) -> tuple[list[float | None], float]:
    """Every decoded frame's timestamp (seconds) and the header's fps, decoding without conversion."""
    cap = open_capture(path)
    try:
        nominal_fps = cap.get(cv2.CAP_PROP_FPS)
        out = []
        while cap.grab():
            out.append(_timestamp_seconds(cap))
    finally:
        cap.release()
    return out, nominal_fps


def encode_jpeg(bgr: np.ndarray, quality: int) -> np.ndarray:
    """Stage 1's frame encoding (cv2, BGR, `quality`). predict.py and end-to-end clips reproduce the stored pixels
    through jpeg_round_trip, so all three must encode the same way."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("frame cannot be encoded as JPEG")
    return buf


def jpeg_round_trip(bgr: np.ndarray, quality: int) -> np.ndarray:
    """A BGR frame as later stages read it back from stage 1's JPEG."""
    return cv2.imdecode(encode_jpeg(bgr, quality), cv2.IMREAD_COLOR)
