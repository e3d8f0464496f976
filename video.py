"""Video decoding and exact-time frame sampling.

Frames are taken at times k / fps (k = 0, 1, ...) measured from the first decoded frame's timestamp, and each
sample is the frame on screen at that time: the latest frame whose timestamp is <= k / fps. Working from decoded
timestamps instead of a frame-index step keeps fractional fps, variable frame timing and lying headers right
(tree.avi's header claims 444 frames at 15 fps; 68 frames decode over 29.5 s).

Decoding is streaming, with PyAV (FFmpeg): one pass over the packets' timestamps says which frames are kept, then
only those and the frames they depend on are decoded, and only kept frames are converted or JPEG-encoded (straight
from the decoder's YUV planes where the video's layout allows). A video is never held in memory.
"""

from __future__ import annotations

import logging
import math
import os
import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import simplejpeg

from utils import BadInputError

log = logging.getLogger("actionbert.video")

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv"}
)

# A frame counts as on screen at time t when its timestamp is <= t + TIME_TOLERANCE. Containers such as Matroska
# round timestamps to milliseconds (errors up to 0.5 ms), so an exact comparison would pick the previous frame for
# some samples. 0.55 ms, not 1 ms: 29.97 fps frame 30 is at exactly 1.001 s, and a tolerance equal to that offset
# would let float rounding decide between frames 29 and 30; 0.55 ms is no whole number of ticks of the usual time
# bases (1/1000, 1/90000, 1/30000, 1/12800, 1/15360), so such ties cannot occur.
TIME_TOLERANCE = 0.55e-3

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


def shorter_side_size(height: int, width: int, size: int | None) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to `size` with the aspect ratio kept; None keeps them."""
    if size is None:
        return width, height
    if size <= 0:
        raise ValueError(f"frame size must be positive, got {size}")
    short = min(height, width)
    scale = size / short
    new_w = size if width == short else max(1, round(width * scale))
    new_h = size if height == short else max(1, round(height * scale))
    return new_w, new_h


def resize_to(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to exactly (width, height): Gaussian pyramid halvings while at least 2x too large, then bilinear for
    the remaining factor in (0.5, 1]; antialiased like INTER_AREA at a fraction of its cost for non-integer factors
    (~1 ms against ~4 ms for 768x576 -> 256 here). Works on one plane or on 3 channels."""
    if img.shape[1] == width and img.shape[0] == height:
        return img
    while img.shape[1] >= 2 * width and img.shape[0] >= 2 * height:
        img = cv2.pyrDown(img)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def resize_shorter_side(img: np.ndarray, size: int | None) -> np.ndarray:
    """Scale so the shorter side is `size` pixels, keeping the aspect ratio; None keeps the image as it is."""
    if size is None:
        return img
    new_w, new_h = shorter_side_size(img.shape[0], img.shape[1], size)
    return resize_to(img, new_w, new_h)


def _plausible_gap(nominal_fps: float | None) -> float | None:
    if nominal_fps is None or not math.isfinite(nominal_fps):
        return None
    if not _PLAUSIBLE_FPS[0] <= nominal_fps <= _PLAUSIBLE_FPS[1]:
        return None
    return 1.0 / nominal_fps


@dataclass(frozen=True)
class FrameSpan:
    """A segment in frame numbers: frames `first`..`last` (0-based, both included) in presentation order from the
    first decoded frame, as Diving48's start_frame/end_frame count them.

    Exact where converting to seconds is not: the sampler takes its interval from the decoded timestamps of those
    very frames (from frame `first`'s time to frame `last + 1`'s, or the video's end), whatever the frame rate or
    its variations. A span past the video's last frame ends at the video's end."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if isinstance(self.first, bool) or isinstance(self.last, bool) or not (0 <= int(self.first) <= int(self.last)):
            raise ValueError(f"a frame span needs 0 <= first <= last, got {self.first}..{self.last}")

    def __str__(self) -> str:
        return f"frames {self.first}-{self.last}"


Segment = tuple[float, float] | FrameSpan  # seconds (start, end), or frame numbers


def segment_json(segment: Segment | None) -> list[float] | dict[str, list[int]] | None:
    """How metadata and split JSONs record a segment: [start, end] seconds, or {"frames": [first, last]}."""
    if segment is None:
        return None
    if isinstance(segment, FrameSpan):
        return {"frames": [segment.first, segment.last]}
    return [float(segment[0]), float(segment[1])]


def describe_segment(segment: Segment) -> str:
    return str(segment) if isinstance(segment, FrameSpan) else f"segment {segment[0]:g}-{segment[1]:g} s"


class TimestampSampler:
    """Streams decoded timestamps in and says which frame covers each sample time k / fps.

    Feed each decoded frame's timestamp to `add()`; it returns the samples the *previous* frame covers (known only
    once the next frame's timestamp is seen). `finish()` returns those of the last frame. The end of the video is
    the last timestamp plus the typical (median) frame gap, so a 10 s clip at 1 fps gives samples 0..9.

    Broken timestamps (missing, non-increasing or before the first one, e.g. all zero) are replaced by the previous
    time plus the typical gap (the header's frame rate until gaps are known); `replaced` counts them and `timing`
    says "decoded", "repaired" or "nominal" so callers can record and warn about it.

    A `segment` (start, end) in seconds from the first frame cuts sampling to that interval: samples at
    start + k / fps while before `end` (and inside the video), or with fps = 0 the frames shown from start to end.
    A FrameSpan is the interval its frames are shown: start and end are set from their timestamps as they stream in.
    Without one, a non-empty video gives at least one sample; a segment past the video's end gives none.
    """

    def __init__(
        self,
        fps: float,
        nominal_fps: float | None = None,
        tolerance: float = TIME_TOLERANCE,
        segment: Segment | None = None,
    ) -> None:
        if not math.isfinite(fps) or fps < 0:
            raise ValueError(f"fps must be a finite number >= 0, got {fps}")
        self.span = segment if isinstance(segment, FrameSpan) else None
        if self.span is not None:  # both unknown (never reached) until the span's frames stream in
            self.start, self.end = math.inf, math.inf
        else:
            self.start, self.end = (0.0, math.inf) if segment is None else (float(segment[0]), float(segment[1]))
            if not (0 <= self.start < self.end):
                raise ValueError(f"segment must have 0 <= start < end, got {segment}")
        self.segment = segment
        self.fps = float(fps)
        self.tolerance = tolerance
        self.nominal_gap = _plausible_gap(nominal_fps)
        self.num_frames = 0
        self.replaced = 0
        self.origin: float | None = None
        self.last_time = 0.0
        self.next_k = 0
        self._gaps: list[float] = []

    def sample_time(self, k: int) -> float:
        return k / self.fps if self.segment is None else self.start + k / self.fps

    def _in_segment(self, t: float) -> bool:
        """With fps = 0: whether the frame shown from time t is inside the segment (always, without one)."""
        return self.segment is None or self.start - self.tolerance <= t < self.end - self.tolerance

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
            self._span_bounds(0, 0.0)
            return []
        t = timestamp - self.origin if ok else math.nan
        if not t > self.last_time:  # also catches NaN
            t = self.last_time + self.typical_gap()
            self.replaced += 1
        else:
            gap = t - self.last_time
            self._gaps.append(gap)
        self._span_bounds(self.num_frames, t)
        covered = self._covered_before(t)
        self.last_time = t
        self.num_frames += 1
        return covered

    def _span_bounds(self, index: int, t: float) -> None:
        """A FrameSpan's interval: it starts at its first frame's time and ends at the time of the frame after
        its last (until then the video's end bounds it)."""
        if self.span is None:
            return
        if index == self.span.first:
            self.start = t
        if index == self.span.last + 1:
            self.end = t

    def _covered_before(self, next_time: float) -> list[tuple[int, float]]:
        if self.fps == 0:
            self.next_k += 1
            return [(self.num_frames - 1, self.last_time)] if self._in_segment(self.last_time) else []
        out = []
        while self.sample_time(self.next_k) + self.tolerance < next_time and self.sample_time(self.next_k) < self.end - self.tolerance:
            out.append((self.next_k, self.sample_time(self.next_k)))
            self.next_k += 1
        return out

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
            return [(self.num_frames - 1, self.last_time)] if self._in_segment(self.last_time) else []
        end = min(self.duration, self.end)
        out = []
        while self.sample_time(self.next_k) < end - self.tolerance or (self.next_k == 0 and self.segment is None):
            out.append((self.next_k, self.sample_time(self.next_k)))
            self.next_k += 1
        return out

    @property
    def timing(self) -> str:
        if self.replaced == 0:
            return "decoded"
        return "nominal" if self.replaced >= self.num_frames - 1 else "repaired"


def _cover(sampler: TimestampSampler, timestamps: list[float | None]) -> Iterator[tuple[int, float, int]]:
    """(k, sample time, index of the frame on screen then) for all timestamps fed through `sampler`, finishing it."""
    for index, ts in enumerate(timestamps):
        for k, t in sampler.add(ts):
            yield k, t, index - 1
    for k, t in sampler.finish():
        yield k, t, len(timestamps) - 1


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


# ----------------------------------------------------------------------------------------------------------------
# Decoding (PyAV / FFmpeg).


def _ffmpeg_message(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[-1]


def open_video(path: str | os.PathLike, threads: int = 1) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open a file's first video stream, raising VideoDecodeError naming the file when it cannot be.

    The `file:` prefix stops FFmpeg from reading `name:...` in a file name as a protocol. `threads` is the number
    of decoder threads (0 = FFmpeg's choice); stage 1 runs one process per core with one thread each.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(1)
    except OSError as exc:
        raise VideoDecodeError(path, f"unreadable ({exc.strerror or exc})") from None
    if not head:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    try:
        container = av.open("file:" + str(path.resolve()), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoDecodeError(path, f"not a readable video (FFmpeg cannot open it: {_ffmpeg_message(exc)})") from None
    try:
        stream = _checked_stream(container)
        stream.codec_context.thread_count = max(0, int(threads))
        if threads != 1:
            stream.thread_type = "AUTO"
    except VideoDecodeError as exc:
        container.close()
        raise VideoDecodeError(path, exc.reason) from None
    except BaseException:
        container.close()
        raise
    return container, stream


def _checked_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The first video stream, once FFmpeg's answer is known to be usable; each way it can fail has its own
    reason (raised with an empty path, which open_video fills in). A headerless piece cut from the middle of a
    recording is the usual cause: FFmpeg still 'opens' it, guessing a container from a few bytes."""
    if not container.streams.video:
        raise VideoDecodeError("", "no video stream")
    stream = container.streams.video[0]
    codec = stream.codec_context
    if codec is None:
        # PyAV leaves the codec context out exactly when FFmpeg has no decoder for the stream's codec id, which
        # includes "none": a stream whose codec could not be identified.
        raise VideoDecodeError(
            "", f"unknown video codec: FFmpeg finds no decoder for its video stream (container "
            f"{container.format.name}; a piece cut from a longer file, without its header?)"
        )
    if codec.width <= 0 or codec.height <= 0:
        raise VideoDecodeError(
            "", f"zero frame dimensions ({codec.width}x{codec.height}) in its {codec.name} stream: FFmpeg could not "
            f"read the stream's parameters (container {container.format.name}; not a whole video file?)"
        )
    return stream


def _nominal_fps(stream: av.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _declared_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """The header's idea of the length: the stream's frame count over its rate, else its duration."""
    fps = _nominal_fps(stream)
    if stream.frames and _plausible_gap(fps) is not None:
        return stream.frames / fps
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def _packets(container: av.container.InputContainer, stream: av.VideoStream, path: Path) -> Iterator[av.Packet]:
    """The stream's packets, ending quietly (with a warning) where the container cannot be read any further, as a
    cut-off download does; the decoder is flushed by the caller."""
    it = container.demux(stream)
    while True:
        try:
            packet = next(it)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            log.warning("%s: reading stops at a container error (%s)", path, _ffmpeg_message(exc))
            return
        if _carries_frame(packet):
            yield packet


def _carries_frame(packet: av.Packet) -> bool:
    """Not the empty flush packet at the end, and not one the container marks to drop (before an edit list's
    start): the packets that become frames, the same ones for planning and for decoding."""
    return bool(packet.size) and not packet.is_discard


class _Decoder:
    """Sends packets to a codec context and collects frames, counting packets the codec rejects instead of failing
    on them: FFmpeg conceals a corrupt frame in what follows, as players do."""

    def __init__(self, path: Path, stream: av.VideoStream) -> None:
        self.path = path
        self.codec = stream.codec_context
        self.errors = 0
        self._skip = "DEFAULT"

    def skip_nonref(self, skip: bool) -> None:
        value = "NONREF" if skip else "DEFAULT"
        if value != self._skip:
            self.codec.skip_frame = value
            self._skip = value

    def decode(self, packet: av.Packet | None) -> list[av.VideoFrame]:
        try:
            return self.codec.decode(packet)
        except av.EOFError:
            return []
        except av.FFmpegError as exc:
            self.errors += 1
            if self.errors == 1:
                log.warning("%s: a corrupt packet is skipped (%s)", self.path, _ffmpeg_message(exc))
            return []

    def flush(self) -> list[av.VideoFrame]:
        self.skip_nonref(False)
        return self.decode(None)

    def reset(self) -> None:
        """Drop the frames and references the codec holds, before decoding resumes at a later keyframe."""
        self.codec.flush_buffers()

    def every_frame(self, container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
        """Every frame of the stream, the decoder flushed at the end."""
        for packet in _packets(container, stream, self.path):
            yield from self.decode(packet)
        yield from self.flush()


def _seconds(pts: int, time_base: Fraction) -> float:
    """pts * time_base as the float nearest the exact value (int / int is correctly rounded), without building a
    Fraction per frame: planning and decoding must agree to the last bit, and this runs once per packet."""
    return (pts * time_base.numerator) / time_base.denominator


def _frame_time(frame: av.VideoFrame, stream: av.VideoStream) -> float | None:
    """Seconds, in the stream's time base (frames flushed out of the decoder at the end carry none of their own)."""
    if frame.pts is None or stream.time_base is None:
        return None
    return _seconds(frame.pts, stream.time_base)


@dataclass
class _Plan:
    """Which frames to decode, worked out from the packets' timestamps before decoding anything."""

    pts: set[int]  # every frame's presentation timestamp (stream time base)
    samples: list[tuple[int, list[float]]]  # (pts of a kept frame, its sample times), in presentation order
    intra_only: bool  # every packet a keyframe: unneeded packets need not be decoded at all
    sampler: TimestampSampler  # finished over all timestamps: frame count, duration, timing
    # kept pts -> decode-order index of the packet its decoding may start from: the last clean keyframe before it
    # (see _clean_starts); the packets between a kept frame and the next one's start are never read by the codec
    starts: dict[int, int] = field(default_factory=dict)


class _PlanMismatch(Exception):
    """The decoder's frames disagree with the packet timestamps; the caller decodes every frame instead."""


def _mpeg4_intra(data: bytes) -> bool:
    """Whether an MPEG-4 part 2 packet holds an I-VOP: the two bits after the VOP start code 00 00 01 B6 are 00."""
    i = data.find(b"\x00\x00\x01\xb6")
    return 0 <= i <= len(data) - 5 and data[i + 4] >> 6 == 0


def _mpeg12_intra(data: bytes) -> bool:
    """Whether an MPEG-1/2 packet holds an I-picture: picture_coding_type (3 bits after the 10-bit temporal
    reference that follows the picture start code 00 00 01 00) is 1."""
    i = data.find(b"\x00\x00\x01\x00")
    return 0 <= i <= len(data) - 6 and ((data[i + 4] << 8 | data[i + 5]) >> 3) & 7 == 1


# Codecs whose B-frames refer only to the two anchors (I- or P-frames) either side of them in presentation order and
# whose P-frames refer only to the anchor before them: MPEG-1, MPEG-2 and MPEG-4 part 2 (XviD/DivX, UCF-101's
# codec). There, decoding from any I-frame gives every frame presented at or after it exactly as decoding everything
# does; only the B-frames that present before it (an open group's leading ones) need the group before. So every
# I-frame can start decoding, not only those opening a closed group, which these encoders rarely write. H.264 and
# HEVC may refer further back, so only closed groups count there. The picture type is read from the packet's own
# header, since a container's keyframe flag can be wrong (AVI).
_INTRA_PICTURE = {"mpeg1video": _mpeg12_intra, "mpeg2video": _mpeg12_intra, "mpeg4": _mpeg4_intra}


def _clean_starts(pts: list[int], keys: list[bool], wanted: list[int], open_groups: bool = False) -> dict[int, int]:
    """For each wanted pts, the decode-order index of the last keyframe at or before its packet that presents at or
    before it and opens a closed group (no later packet of its group presents earlier: nothing after it refers to
    the frames before it), or with `open_groups` (codecs in _INTRA_PICTURE, `keys` then marking true I-frames) any
    keyframe. Decoding from there gives the wanted frame exactly as decoding everything does. 0 (the first packet)
    where there is none."""
    clean, k = [], 0
    while k < len(pts):
        nxt = next((j for j in range(k + 1, len(pts)) if keys[j]), len(pts))
        if keys[k] and (open_groups or all(p > pts[k] for p in pts[k + 1 : nxt])):
            clean.append(k)
        k = nxt
    index = {p: i for i, p in enumerate(pts)}
    starts, c = {}, -1  # clean[c]: the last clean keyframe at or before the current packet, in decode order
    for p in sorted(wanted, key=index.__getitem__):
        i = index[p]
        while c + 1 < len(clean) and clean[c + 1] <= i:
            c += 1
        j = c
        while j >= 0 and pts[clean[j]] > p:  # one presented after the wanted frame cannot start it
            j -= 1
        starts[p] = clean[j] if j >= 0 else 0
    return starts


def _make_plan(
    container: av.container.InputContainer, stream: av.VideoStream, fps: float, nominal_fps: float | None,
    segment: Segment | None = None,
) -> _Plan | None:
    """A plan from one demux pass (no decoding), or None where packet timestamps cannot be trusted (missing,
    repeated, or a container error), in which case every frame is decoded and its own timestamp used."""
    intra = _INTRA_PICTURE.get(stream.codec_context.name)
    try:
        pts, key_flags = [], []
        for packet in container.demux(stream):
            if not _carries_frame(packet):
                continue
            if packet.pts is None:
                return None
            pts.append(packet.pts)
            key = bool(packet.is_keyframe)
            key_flags.append(key and (intra is None or intra(bytes(packet))))
        keys = all(key_flags)
        time_base = stream.time_base
    except av.FFmpegError:
        return None
    if not pts or len(set(pts)) != len(pts) or time_base is None:
        return None
    order = sorted(pts)
    sampler = TimestampSampler(fps, nominal_fps=nominal_fps, segment=segment)
    by_frame: dict[int, list[float]] = {}
    for _, t, index in _cover(sampler, [_seconds(p, time_base) for p in order]):
        by_frame.setdefault(order[index], []).append(t)
    if sampler.replaced:
        return None
    starts = _clean_starts(pts, key_flags, list(by_frame), open_groups=intra is not None)
    return _Plan(set(pts), sorted(by_frame.items()), keys, sampler, starts)


def _iter_planned(
    path: Path, plan: _Plan, threads: int, decoder_errors: list[int]
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decode only what the plan needs: from the clean keyframe before each kept frame (plan.starts) to it, the
    reference frames (the codec's skip_frame=NONREF drops the others) and the kept ones; with intra-only video,
    only the kept ones. The packets between a kept frame and the next one's start are skipped, and the decoder
    reset before that start (its buffered frames are none that is kept). Raises _PlanMismatch when a decoded
    frame's timestamp is not one the plan knows or a kept frame does not come out."""
    needed = {p for p, _ in plan.samples}
    pending = iter(plan.samples)
    want = next(pending, None)
    container, stream = open_video(path, threads)
    decoder = _Decoder(path, stream)
    last = None
    try:

        expect_key = None  # after a jump: the pts of the keyframe decoding resumed at, which must come out first

        def take(frames: list[av.VideoFrame]) -> Iterator[tuple[float, av.VideoFrame]]:
            nonlocal want, last, expect_key
            for frame in frames:
                p = frame.pts
                if p is None or p not in plan.pts or (last is not None and p <= last):
                    raise _PlanMismatch(f"decoded timestamp {p} after {last}")
                if expect_key is not None:  # a container may flag a frame that is not one as a keyframe (AVI)
                    if p != expect_key or not frame.key_frame:
                        raise _PlanMismatch(f"decoding resumed at {expect_key}, which is not a keyframe")
                    expect_key = None
                last = p
                if want is not None and p > want[0]:
                    raise _PlanMismatch(f"frame {want[0]} did not decode")
                if want is not None and p == want[0]:
                    for t in want[1]:
                        yield t, frame
                    want = next(pending, None)

        position, sent_up_to = -1, -1  # decode-order index of this packet, and of the last one sent
        for packet in _packets(container, stream, path):
            position += 1
            if want is None:
                break
            start = plan.starts.get(want[0], 0)
            if position < start:
                continue  # before the group the next kept frame needs
            keep = packet.pts in needed
            if plan.intra_only and not keep:
                continue
            if sent_up_to >= 0 and position > sent_up_to + 1 and position == start:
                decoder.reset()  # a jump: what the codec holds belongs to skipped groups
                expect_key = packet.pts
            decoder.skip_nonref(not keep)
            sent_up_to = position
            yield from take(decoder.decode(packet))
        if want is not None:
            yield from take(decoder.flush())
        if want is not None:
            raise _PlanMismatch(f"frame {want[0]} did not decode")
    finally:
        decoder_errors[0] += decoder.errors
        container.close()


def _iter_every_frame(
    path: Path, fps: float, nominal_fps: float | None, threads: int, decoder_errors: list[int],
    segment: Segment | None = None,
) -> tuple[TimestampSampler, Iterator[tuple[float, av.VideoFrame]]]:
    """Decode every frame and sample from the decoded timestamps, repairing broken ones (TimestampSampler)."""
    sampler = TimestampSampler(fps, nominal_fps=nominal_fps, segment=segment)

    def frames() -> Iterator[tuple[float, av.VideoFrame]]:
        container, stream = open_video(path, threads)
        decoder = _Decoder(path, stream)
        held = None
        try:
            for frame in decoder.every_frame(container, stream):
                for _, t in sampler.add(_frame_time(frame, stream)):
                    yield t, held
                held = frame
        finally:
            decoder_errors[0] += decoder.errors
            container.close()
        if held is None:
            raise VideoDecodeError(path, "no decodable frames")
        for _, t in sampler.finish():
            yield t, held

    return sampler, frames()


def iter_sampled_frames(
    path: str | os.PathLike,
    fps: float,
    *,
    info: dict[str, Any] | None = None,
    threads: int = 1,
    skip_unneeded: bool = True,
    segment: Segment | None = None,
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Yield (time in seconds, decoded frame) at times k / fps from the first frame; fps=0 yields every frame.
    A `segment` (start, end) seconds samples only that interval (TimestampSampler), and may yield nothing.

    With `skip_unneeded` (the default), for codecs where it can save work (intra-only ones and those with
    non-reference frames), a demux pass first reads every packet's timestamp, so the frames to keep are known
    before decoding: non-reference frames that are not kept are never decoded (B-frames of H.264/HEVC, every
    unkept frame of intra-only video such as MJPEG), and decoding stops after the last kept frame. Otherwise, and
    where packet timestamps are missing or repeated or the decoder disagrees with them, every frame is decoded
    and its own timestamp used; both ways give the same frames (tested).

    When `info` is a dict it is filled at the end with "num_decoded" (frames in the video), "duration",
    "declared_duration" (from the header, None when absent), "timing", "replaced_timestamps" and
    "decoder_errors"; a warning is logged when timestamps had to be replaced. Raises VideoDecodeError for
    unreadable or zero-frame input.
    """
    path = Path(path)
    if not math.isfinite(fps) or fps < 0:
        raise ValueError(f"fps must be a finite number >= 0, got {fps}")
    container, stream = open_video(path)
    try:
        nominal_fps = _nominal_fps(stream)
        declared = _declared_duration(container, stream)
        # Planning saves decoding for every codec: intra-only ones (MJPEG) decode only the kept frames, those with
        # non-reference frames (H.264, HEVC, MPEG-2/4 with B-frames) skip the unkept ones, and any codec skips the
        # groups of pictures between kept frames when keyframes are closer than the sampling interval. Its cost is
        # one demux pass, which reads packets without decoding them.
        plan = _make_plan(container, stream, fps, nominal_fps, segment) if skip_unneeded else None
    finally:
        container.close()
    errors = [0]
    sampler = None
    emitted = 0
    if plan is not None:
        try:
            for item in _iter_planned(path, plan, threads, errors):
                emitted += 1
                yield item
            sampler = plan.sampler
        except _PlanMismatch as exc:
            log.debug("%s: packet timestamps do not match the decoded frames (%s); decoding every frame", path, exc)
            errors = [0]
    if sampler is None:
        sampler, frames = _iter_every_frame(path, fps, nominal_fps, threads, errors, segment)
        for n, item in enumerate(frames):
            if n >= emitted:
                yield item
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
            decoder_errors=errors[0],
        )


# ----------------------------------------------------------------------------------------------------------------
# Frames to pixels and to stage 1's JPEG files.

# Colour spaces whose YCbCr is what JPEG (JFIF) stores, up to range: BT.601 and unspecified (which FFmpeg's
# converter also treats as BT.601). Others (BT.709, BT.2020, ...) go through an RGB conversion with their own matrix.
_JFIF_MATRICES = frozenset({2, 4, 5, 6})  # AVCOL_SPC_UNSPECIFIED, _FCC, _BT470BG, _SMPTE170M
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG


def _range_luts() -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables from limited (video) range to full (JPEG) range: luma 16-235 and chroma 16-240 to 0-255."""
    v = np.arange(256, dtype=np.float64)
    luma = np.clip(np.rint((v - 16) * 255 / 219), 0, 255).astype(np.uint8)
    chroma = np.clip(np.rint((v - 128) * 255 / 224 + 128), 0, 255).astype(np.uint8)
    return luma, chroma


_LUMA_LUT, _CHROMA_LUT = _range_luts()


def _plane(frame: av.VideoFrame, index: int, height: int, width: int) -> np.ndarray:
    plane = frame.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:height, :width]


def _rotation(frame: av.VideoFrame) -> int:
    """Quarter turns counter-clockwise from the display matrix (phone videos), as players and OpenCV apply it."""
    return int(round((frame.rotation or 0) / 90)) % 4


def _orient(img: np.ndarray, quarter_turns: int) -> np.ndarray:
    return img if quarter_turns == 0 else np.ascontiguousarray(np.rot90(img, quarter_turns))


def _direct_yuv420(frame: av.VideoFrame, frame_size: int | None) -> bool:
    """Whether the frame can be JPEG-encoded from its own planes: 4:2:0, a BT.601-like matrix, and an even output
    width and height (TurboJPEG reads 4:2:0 luma planes padded to even sizes; an odd one would make it read a
    byte past each row, so the last block column would depend on memory it does not own)."""
    if frame.format.name not in ("yuv420p", "yuvj420p") or frame.colorspace not in _JFIF_MATRICES:
        return False
    w, h = shorter_side_size(frame.height, frame.width, frame_size)
    return w % 2 == 0 and h % 2 == 0


def frame_to_bgr(frame: av.VideoFrame, frame_size: int | None = None) -> np.ndarray:
    """HxWx3 uint8 BGR, upright, with the shorter side resized to `frame_size` when given."""
    if frame.format.name == "bgr24":
        img = frame.to_ndarray()
    elif frame.format.name == "rgb24":  # OpenCV's swap is ~10x faster than FFmpeg's converter here
        img = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_RGB2BGR)
    elif frame.format.is_rgb or frame.format.has_palette:
        img = frame.to_ndarray(format="bgr24")
    else:  # YUV or grey: say the source range, which FFmpeg's converter does not take from the frame
        full = frame.format.name.startswith("yuvj") or frame.color_range == _FULL_RANGE
        img = frame.to_ndarray(format="bgr24", src_color_range="JPEG" if full else "MPEG", dst_color_range="JPEG")
    return resize_shorter_side(_orient(img, _rotation(frame)), frame_size)


def frame_to_jpeg(frame: av.VideoFrame, frame_size: int | None, quality: int) -> bytes:
    """Stage 1's stored form of a frame: JPEG (4:2:0) at `quality`, upright, shorter side at `frame_size`.

    4:2:0 BT.601 video (UCF-101, HMDB51 and most other sources) is encoded straight from the decoder's planes,
    with only a range expansion: no YUV -> BGR -> YUV round trip and no chroma resampling, which cuts the cost of
    a kept frame by about a third (768x576 at quality 95 here: 2.3 ms against 3.5 ms through BGR and OpenCV's
    encoder). Anything else (other chroma layouts, bit depths, BT.709, an odd output size) is converted to BGR
    first.
    """
    turns = _rotation(frame)
    if frame.format.name == "rgb24":
        return encode_jpeg(resize_shorter_side(_orient(frame.to_ndarray(), turns), frame_size), quality, "RGB")
    if not _direct_yuv420(frame, frame_size):
        return encode_jpeg(frame_to_bgr(frame, frame_size), quality)
    h, w = frame.height, frame.width
    ch, cw = (h + 1) // 2, (w + 1) // 2
    y, u, v = _plane(frame, 0, h, w), _plane(frame, 1, ch, cw), _plane(frame, 2, ch, cw)
    y, u, v = _orient(y, turns), _orient(u, turns), _orient(v, turns)
    if frame_size is not None:
        new_w, new_h = shorter_side_size(y.shape[0], y.shape[1], frame_size)
        y = resize_to(y, new_w, new_h)
        u, v = resize_to(u, (new_w + 1) // 2, (new_h + 1) // 2), resize_to(v, (new_w + 1) // 2, (new_h + 1) // 2)
    if not (frame.format.name == "yuvj420p" or frame.color_range == _FULL_RANGE):  # after resizing: fewer pixels
        y, u, v = cv2.LUT(y, _LUMA_LUT), cv2.LUT(u, _CHROMA_LUT), cv2.LUT(v, _CHROMA_LUT)
    y, u, v = (np.ascontiguousarray(p) for p in (y, u, v))
    return simplejpeg.encode_jpeg_yuv_planes(y, u, v, int(quality))


def encode_jpeg(img: np.ndarray, quality: int, channels: str = "BGR") -> bytes:
    """A BGR (or RGB) image as a JPEG the way stage 1 encodes converted frames (4:2:0, libjpeg-turbo)."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), int(quality), colorspace=channels, colorsubsampling="420")


def _convert(path: str | os.PathLike, t: float, fn, *args):
    """A conversion failure (an odd pixel format, a frame too large to encode) as the video's error."""
    try:
        return fn(*args)
    except (ValueError, av.FFmpegError, cv2.error) as exc:
        raise VideoDecodeError(path, f"frame at {t:.3f} s cannot be converted ({_ffmpeg_message(exc)})") from None


def iter_jpeg_frames_at_fps(
    path: str | os.PathLike,
    fps: float,
    frame_size: int | None,
    quality: int,
    *,
    info: dict[str, Any] | None = None,
    threads: int = 1,
    segment: Segment | None = None,
) -> Iterator[tuple[float, bytes]]:
    """(time, JPEG bytes) exactly as stage 1 writes them; a frame kept for several samples is encoded once."""
    last_frame, last_jpeg = None, b""
    for t, frame in iter_sampled_frames(path, fps, info=info, threads=threads, segment=segment):
        if frame is not last_frame:
            last_frame, last_jpeg = frame, _convert(path, t, frame_to_jpeg, frame, frame_size, quality)
        yield t, last_jpeg


def iter_stored_frames_at_fps(
    path: str | os.PathLike,
    fps: float,
    frame_size: int | None,
    quality: int,
    *,
    rgb: bool = True,
    info: dict[str, Any] | None = None,
    threads: int = 1,
    source_fps: float | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """The pixels stage 1 stores for a video, without writing files: its JPEGs decoded as stage 2 reads them.
    predict.py and end-to-end evaluation on raw videos use it so they see exactly what training saw. With
    `source_fps`, `path` is a frame folder at that rate (stage 1's --source_fps: Jester's 12 fps frames)."""
    from transforms import decode_jpeg  # here, not at the top: transforms imports torch, which stage 1 never needs

    if source_fps is not None:
        jpegs = iter_folder_jpegs_at_fps(path, source_fps, fps, frame_size, quality, info=info)
    else:
        jpegs = iter_jpeg_frames_at_fps(path, fps, frame_size, quality, info=info, threads=threads)
    for t, data in jpegs:
        yield t, decode_jpeg(data, rgb)


# ----------------------------------------------------------------------------------------------------------------
# Frame folders: a video already cut into numbered images (Jester's 00001.jpg ..., img_00001.png, ...).

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})
_FRAME_NUMBER = re.compile(r"(\d+)(?!.*\d)")  # the last run of digits in a file's stem


def frame_folder_files(folder: str | os.PathLike) -> list[Path]:
    """A frame folder's images in frame order: JPEG/PNG files numbered by the last run of digits in their stem,
    from the lowest number on. Other files are not frames. Raises VideoDecodeError naming the folder for no
    frames, two files of one number, or numbers missing below the highest (frames lost from the folder)."""
    folder = Path(folder)
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS]
    except OSError as exc:
        raise VideoDecodeError(folder, f"frame folder cannot be listed ({exc.strerror or exc})") from None
    numbered: dict[int, list[str]] = {}
    for name in names:
        m = _FRAME_NUMBER.search(Path(name).stem)
        if m:
            numbered.setdefault(int(m[1]), []).append(name)
    if not numbered:
        raise VideoDecodeError(folder, "frame folder holds no numbered JPEG/PNG frames (e.g. 00001.jpg)")
    twice = [sorted(v) for v in numbered.values() if len(v) > 1]
    if twice:
        raise VideoDecodeError(folder, f"two files share a frame number: {' and '.join(twice[0])}")
    first, last = min(numbered), max(numbered)
    missing = [n for n in range(first, last + 1) if n not in numbered]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise VideoDecodeError(folder, f"{len(missing)} frame(s) missing from the numbering {first}..{last}: {shown}")
    return [folder / numbered[n][0] for n in range(first, last + 1)]


_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def check_frame_headers(files: list[Path]) -> None:
    """Every frame file starts as a JPEG or PNG does: a cheap read of each (8 bytes), so an empty or foreign file
    among the frames that resampling skips is still reported; the frames kept are decoded in full."""
    for path in files:
        try:
            with open(path, "rb") as fh:
                head = fh.read(8)
        except OSError as exc:
            raise VideoDecodeError(path.parent, f"frame {path.name} unreadable ({exc.strerror or exc})") from None
        if not head.startswith(_IMAGE_MAGIC):
            raise VideoDecodeError(path.parent, f"frame {path.name} is not a JPEG/PNG file"
                                   + (" (empty)" if not head else ""))


def read_image(path: Path) -> np.ndarray:
    """A frame file as 8-bit BGR (grey and 16-bit images converted), or VideoDecodeError naming the folder."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise VideoDecodeError(path.parent, f"frame {path.name} unreadable ({exc.strerror or exc})") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise VideoDecodeError(path.parent, f"frame {path.name} is not a readable JPEG/PNG image")
    return img


def iter_folder_jpegs_at_fps(
    folder: str | os.PathLike,
    source_fps: float,
    fps: float,
    frame_size: int | None,
    quality: int,
    *,
    segment: Segment | None = None,
    info: dict[str, Any] | None = None,
) -> Iterator[tuple[float, bytes]]:
    """(time, JPEG bytes) of a frame folder resampled to `fps` by the rule videos follow: frame i is on screen
    from i / source_fps, and the sample at time t is the latest frame shown by then (TimestampSampler). Only
    kept frames are decoded (every file's header is checked); each is re-encoded as stage 1 encodes video frames,
    so both inputs give alike files."""
    files = frame_folder_files(folder)
    check_frame_headers(files)
    sampler = TimestampSampler(fps, nominal_fps=source_fps, segment=segment)
    last_index, last_jpeg = -1, b""
    for _, t, index in _cover(sampler, [i / source_fps for i in range(len(files))]):
        if index != last_index:
            img = resize_shorter_side(read_image(files[index]), frame_size)
            last_index, last_jpeg = index, _convert(folder, t, encode_jpeg, img, quality)
        yield t, last_jpeg
    if info is not None:
        info.update(num_decoded=len(files), duration=sampler.duration, declared_duration=None, timing="nominal",
                    replaced_timestamps=0, decoder_errors=0)
