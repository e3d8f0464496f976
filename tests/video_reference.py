"""Reference decoding that the tests check video.py's streaming extraction against; no stage uses these.

`select_frames` is the sampling rule as a pure function of all decoded timestamps, `decode_all_timestamps` decodes
every frame of a file for them, and `iter_frames_at_fps` yields sampled frames as arrays without stage 1's JPEG step.
They use video.py's own sampler and decoder, so a test compares the planned, frame-skipping route with the plain one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from video import (
    TIME_TOLERANCE,
    TimestampSampler,
    _convert,
    _cover,
    _Decoder,
    _frame_time,
    _nominal_fps,
    frame_to_bgr,
    iter_sampled_frames,
    open_video,
)


def select_frames(
    timestamps: list[float], fps: float, nominal_fps: float | None = None, tolerance: float = TIME_TOLERANCE
) -> list[tuple[int, int]]:
    """(k, frame index) for every sample time k / fps, given all decoded timestamps in seconds; fps=0 keeps all.

    The pure form of what `iter_frames_at_fps` does while streaming; both use TimestampSampler.
    """
    sampler = TimestampSampler(fps, nominal_fps=nominal_fps, tolerance=tolerance)
    return [(k, index) for k, _, index in _cover(sampler, timestamps)]


def decode_all_timestamps(path: str | os.PathLike) -> tuple[list[float | None], float | None]:
    """Every decoded frame's timestamp (seconds) and the header's fps, decoding every frame without conversion."""
    path = Path(path)
    container, stream = open_video(path)
    decoder = _Decoder(path, stream)
    try:
        return [_frame_time(f, stream) for f in decoder.every_frame(container, stream)], _nominal_fps(stream)
    finally:
        container.close()


def iter_frames_at_fps(
    path: str | os.PathLike,
    fps: float,
    frame_size: int | None = None,
    *,
    rgb: bool = True,
    info: dict[str, Any] | None = None,
    threads: int = 1,
    skip_unneeded: bool = True,
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (time in seconds, HxWx3 uint8 image) at times k / fps from the first frame (see iter_sampled_frames),
    RGB or BGR (rgb=False), shorter side resized to `frame_size` when given; no JPEG step. Repeated samples of one
    frame are independent arrays."""
    last_frame, last_img = None, None
    for t, frame in iter_sampled_frames(path, fps, info=info, threads=threads, skip_unneeded=skip_unneeded):
        if frame is last_frame:
            yield t, last_img.copy()
            continue
        img = _convert(path, t, frame_to_bgr, frame, frame_size)
        last_frame, last_img = frame, (cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if rgb else img)
        yield t, last_img
