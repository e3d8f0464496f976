"""Sliding windows over a video of any length: one prediction per `--window` seconds every `--stride` seconds.

The frames arrive as a stream (video.iter_stored_frames_at_fps: sampled at the checkpoint's fps, as training saw
them). `encode_stream` turns each frame into the model's input unit once, in batches (an embedding for a head, the
preprocessed frame for an end-to-end model); `sliding_windows` keeps only the units of the windows still open, so
memory is bounded by the window and the batch, never by the video's length. Window j covers
[j * stride, j * stride + window). A window is complete once a frame at or past its end has arrived; when the
stream ends, the windows that started before the last frame are closed as partial (their `end` is the end of the
last frame, and `partial` says so). A window with fewer frames than the model needs (`min_frames`) is listed with
a reason instead of a prediction.

`Timeline` collects each window's top-k (and a decimated set of thumbnails for the figure, again bounded), and
writes the CSV, the JSON record and the PNG (the top classes' probability over time above a strip of frames).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utils import atomic_write_bytes, atomic_write_text

TIMELINE_CLASSES = 5  # classes drawn in the timeline figure: those with the highest probability anywhere
MAX_STRIP_THUMBS = 24  # thumbnails kept for the figure's strip (decimated as the video goes on)


@dataclass(frozen=True)
class Window:
    index: int
    start: float  # seconds
    end: float  # seconds: start + window, or the end of the last frame for the last, partial window
    partial: bool


def check_window(window: float, stride: float, fps: float) -> None:
    """Refuse windows that cannot hold a frame at the checkpoint's sampling rate."""
    if not (math.isfinite(window) and window > 0):
        raise ValueError(f"--window must be a positive number of seconds, got {window}")
    if not (math.isfinite(stride) and stride > 0):
        raise ValueError(f"--stride must be a positive number of seconds, got {stride}")
    if window * fps < 1.0 - 1e-9:
        raise ValueError(f"--window {window:g} s holds no frame at the checkpoint's {fps:g} fps "
                         f"(one frame every {1 / fps:g} s): use --window {1 / fps:g} or more")


def encode_stream(frames: Iterable[tuple[float, Any]], encode: Callable[[list[Any]], Sequence[Any]],
                  batch_size: int) -> Iterator[tuple[float, Any]]:
    """(t, unit) per frame, in order, `encode` called on batches of up to `batch_size` frames."""
    times: list[float] = []
    batch: list[Any] = []
    for t, frame in frames:
        times.append(t)
        batch.append(frame)
        if len(batch) == batch_size:
            yield from zip(times, encode(batch), strict=True)
            times, batch = [], []
    if batch:
        yield from zip(times, encode(batch), strict=True)


def sliding_windows(units: Iterable[tuple[float, Any]], window: float, stride: float,
                    fps: float) -> Iterator[tuple[Window, list[float], list[Any]]]:
    """(window, frame times, units) for every window of the stream, in order; see the module docstring."""
    eps = 1e-9
    buf: deque[tuple[float, Any]] = deque()
    j, last = 0, None

    def emit(end: float, partial: bool) -> tuple[Window, list[float], list[Any]]:
        start = j * stride
        inside = [(t, u) for t, u in buf if start - eps <= t < start + window - eps]
        return Window(j, start, end, partial), [t for t, _ in inside], [u for _, u in inside]

    for t, unit in units:
        while t >= j * stride + window - eps:  # frame t closes every window that ends at or before it
            yield emit(j * stride + window, False)
            j += 1
            while buf and buf[0][0] < j * stride - eps:
                buf.popleft()
        if t >= j * stride - eps:  # a frame in a gap between windows (stride > window) serves none
            buf.append((t, unit))
        last = t
    if last is None:
        return
    stream_end = last + 1.0 / fps
    while j * stride <= last + eps:  # windows that started before the last frame: partial
        yield emit(min(j * stride + window, stream_end), j * stride + window > stream_end + eps)
        j += 1
        while buf and buf[0][0] < j * stride - eps:
            buf.popleft()


class ThumbStrip:
    """At most `limit` thumbnails spread over the video, whatever its length: every k-th frame is kept, and k
    doubles (dropping every other kept frame) each time the strip fills."""

    def __init__(self, limit: int = MAX_STRIP_THUMBS) -> None:
        self.limit, self.every, self.seen = limit, 1, 0
        self.items: list[tuple[float, np.ndarray]] = []

    def offer(self, t: float, make: Callable[[], np.ndarray]) -> None:
        if self.seen % self.every == 0:
            self.items.append((t, make()))
            if len(self.items) > self.limit:
                self.items, self.every = self.items[::2], self.every * 2
        self.seen += 1


@dataclass
class WindowResult:
    window: Window
    num_frames: int
    probs: np.ndarray | None  # (num_classes,), None when skipped
    skipped: str = ""

    def top(self, k: int) -> list[tuple[int, float]]:
        if self.probs is None:
            return []
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(int(c), float(self.probs[c])) for c in order]


@dataclass
class Timeline:
    video: str
    class_names: list[str]
    window: float
    stride: float
    fps: float
    results: list[WindowResult] = field(default_factory=list)
    strip: ThumbStrip = field(default_factory=ThumbStrip)
    num_frames: int = 0  # frames sampled from the video

    def add(self, window: Window, times: Sequence[float], probs: np.ndarray | None, skipped: str = "") -> None:
        self.results.append(WindowResult(window, len(times), probs, skipped))

    def labels(self) -> list[str | None]:
        """The top-1 class of each window (None where skipped)."""
        return [self.class_names[r.top(1)[0][0]] if r.probs is not None else None for r in self.results]

    def rows(self, k: int) -> list[dict[str, Any]]:
        out = []
        for r in self.results:
            row: dict[str, Any] = {"window": r.window.index, "start": round(r.window.start, 6),
                                   "end": round(r.window.end, 6), "frames": r.num_frames,
                                   "partial": int(r.window.partial), "skipped": r.skipped}
            for rank, (c, p) in enumerate(r.top(k), 1):
                row[f"top{rank}"], row[f"prob{rank}"] = self.class_names[c], round(p, 6)
            out.append(row)
        return out

    def to_json(self, k: int) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "fps": self.fps,
                "windows": [{"start": r["start"], "end": r["end"], "frames": r["frames"],
                             "partial": bool(r["partial"]),
                             **({"skipped": r["skipped"]} if r["skipped"] else {}),
                             "topk": [{"label": r[f"top{i}"], "prob": r[f"prob{i}"]}
                                      for i in range(1, k + 1) if f"top{i}" in r]}
                            for r in self.rows(k)]}

    def write_csv(self, path: str | os.PathLike, k: int) -> None:
        columns = ["window", "start", "end", "frames", "partial", "skipped",
                   *[f"{name}{i}" for i in range(1, k + 1) for name in ("top", "prob")]]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows(k))
        atomic_write_text(path, buf.getvalue())

    def plot(self, path: str | os.PathLike) -> None:
        """The top classes' probability at each window's centre over time, the top-1 class as a coloured band,
        and a strip of frames along the same time axis."""
        from reports import _pyplot, escape_missing, label_font

        plt = _pyplot()
        done = [r for r in self.results if r.probs is not None]
        probs = np.stack([r.probs for r in done]) if done else np.zeros((0, len(self.class_names)))
        shown = list(np.argsort(-probs.max(0), kind="stable")[:TIMELINE_CLASSES]) if len(done) else []
        centres = [(r.window.start + r.window.end) / 2 for r in done]
        end = max((r.window.end for r in self.results), default=1.0)
        names = [self.class_names[c] for c in shown]
        family = label_font([*names, self.video])
        fig = plt.figure(figsize=(12, 5.2))
        ax_img = fig.add_axes((0.06, 0.70, 0.72, 0.2))
        ax = fig.add_axes((0.06, 0.12, 0.72, 0.55), sharex=ax_img)
        span = end / max(len(self.strip.items), 1) * 0.95  # each thumbnail's width on the time axis
        for t, thumb in self.strip.items:
            ax_img.imshow(thumb, extent=(t, t + span, 0, 1), aspect="auto")
        ax_img.set(ylim=(0, 1), yticks=[])
        ax_img.tick_params(labelbottom=False)
        colours = plt.get_cmap("tab10")
        for i, c in enumerate(shown):
            ax.plot(centres, probs[:, c], "-o", ms=2.5, lw=1.3, color=colours(i % 10),
                    label=names[i] if family else escape_missing(names[i]))
        for r in done:  # the top-1 class of each window as a band along the bottom
            c = r.top(1)[0][0]
            colour = colours(shown.index(c) % 10) if c in shown else "lightgray"
            ax.axvspan(r.window.start + (r.window.end - r.window.start) * 0.45,
                       r.window.start + (r.window.end - r.window.start) * 0.55, ymax=0.04, color=colour)
        for r in self.results:
            if r.window.partial:
                ax.axvspan(r.window.start, r.window.end, color="gray", alpha=0.06)
        ax.set(xlim=(0, end), ylim=(0, 1.02), xlabel="time in the video (s)", ylabel="probability")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="top classes", prop={"family": family}
                  if family else None)
        title = (f"{self.video}: {len(self.results)} windows of {self.window:g} s every {self.stride:g} s"
                 + (" (shaded: partial)" if any(r.window.partial for r in self.results) else ""))
        fig.suptitle(title if family else escape_missing(title), fontsize=10, family=family)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())
