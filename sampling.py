"""Which frames of a video a model sees: every temporal sampling rule, as pure functions of lengths and a generator.

- `subsample_indices`: stage 2's uniform cap on frames per video (`--max_len`), which predict.py repeats.
- `TemporalAugment`: train-time crop, stride and frame dropout over a video's embeddings (dataset.py).
- TSN clips (clip_dataset.py, predict.py): a video of n frames is cut into `clip_len` equal segments. Training
  takes one random frame per segment, so every part of the video is seen and the order is kept; evaluation takes
  the segment centres, and `num_clips` views shift that offset uniformly inside the segments (view k of V at
  (k + 0.5) / V). A video shorter than `clip_len` repeats frames in order (the same segment formula does it).

Random draws come from `item_rng(seed, epoch, index)`: a sample's frames depend on those three alone, never on
the number of DataLoader workers or ranks, so a resumed run replays exactly.

`Segments` is the same TSN rule for the embedding route (its rows are a video's frames), with "every frame" as its
default, and `average_views` is the one place where the logits of a video's evaluation views are averaged, for both
routes: a batch carries each video's V views as V consecutive rows and says V (routes.py's batch layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one training item in one epoch."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def subsample_indices(num_frames: int, max_len: int | None) -> np.ndarray:
    """Indices of max_len frames spread uniformly (centre of each of max_len equal spans); all when shorter."""
    if max_len is None or num_frames <= max_len:
        return np.arange(num_frames)
    return ((np.arange(max_len) + 0.5) * num_frames / max_len).astype(np.int64)


@dataclass(frozen=True)
class TemporalAugment:
    """Train-time temporal augmentation. Each field at its default turns that part off.

    crop: keep a random contiguous window of at least this fraction of the frames (1.0 = off).
    max_stride: take every s-th frame, s drawn from 1..max_stride, from a random phase (1 = off).
    frame_dropout: drop each frame with this probability, always keeping one.
    """

    crop: float = 1.0
    max_stride: int = 1
    frame_dropout: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.crop < 1.0 or self.max_stride > 1 or self.frame_dropout > 0.0

    def __call__(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """Indices (sorted, at least one) of the frames to keep from a video of `length` frames."""
        idx = np.arange(length)
        if self.crop < 1.0 and length > 1:
            keep = max(1, math.ceil(length * rng.uniform(self.crop, 1.0)))
            start = int(rng.integers(0, length - keep + 1))
            idx = idx[start : start + keep]
        if self.max_stride > 1 and len(idx) > 1:
            stride = int(rng.integers(1, self.max_stride + 1))
            stride = min(stride, len(idx))
            idx = idx[int(rng.integers(0, stride)) :: stride]
        if self.frame_dropout > 0.0 and len(idx) > 1:
            kept = idx[rng.random(len(idx)) >= self.frame_dropout]
            idx = kept if len(kept) else idx[[int(rng.integers(0, len(idx)))]]
        return idx


def segment_indices(num_frames: int, clip_len: int, offsets: np.ndarray | float) -> np.ndarray:
    """Frame index in each of `clip_len` equal segments at relative positions `offsets` in [0, 1)."""
    if num_frames < 1 or clip_len < 1:
        raise ValueError(f"need num_frames >= 1 and clip_len >= 1, got {num_frames}, {clip_len}")
    seg = num_frames / clip_len
    idx = np.floor((np.arange(clip_len) + np.asarray(offsets, dtype=np.float64)) * seg).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1)


def train_indices(num_frames: int, clip_len: int, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random frame per segment (`clip_len` draws from `rng`)."""
    return segment_indices(num_frames, clip_len, rng.random(clip_len))


def eval_indices(num_frames: int, clip_len: int, num_clips: int = 1) -> np.ndarray:
    """(num_clips, clip_len): view k takes position (k + 0.5) / num_clips of every segment (1 view = centres)."""
    offsets = (np.arange(num_clips) + 0.5) / num_clips
    return np.stack([segment_indices(num_frames, clip_len, np.full(clip_len, o)) for o in offsets])


@dataclass(frozen=True)
class Segments:
    """Which of a video's n frames (rows) an item holds: TSN segments, or every frame when `clip_len` is None.

    clip_len: T equal segments, one random frame each in training and the segment centres in evaluation
    (`train_indices`, `eval_indices`); a video shorter than T repeats frames in order. None: every frame, as
    stage 2 stored them (the embedding route's default).
    num_clips: evaluation views (shifted inside the segments, logits averaged); only with clip_len.
    """

    clip_len: int | None = None
    num_clips: int = 1

    def __post_init__(self) -> None:
        if self.clip_len is not None and self.clip_len < 1:
            raise ValueError(f"clip_len must be >= 1 or None, got {self.clip_len}")
        if self.num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {self.num_clips}")
        if self.clip_len is None and self.num_clips != 1:
            raise ValueError(f"{self.num_clips} views need segments (clip_len): every frame is a single view")

    @property
    def enabled(self) -> bool:
        return self.clip_len is not None

    def train(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """(T,) indices of one training item (every frame without segments; no draw from `rng` then)."""
        if self.clip_len is None:
            return np.arange(num_frames)
        return train_indices(num_frames, self.clip_len, rng)

    def eval(self, num_frames: int) -> np.ndarray:
        """(num_clips, T) indices of the evaluation views; (1, num_frames) without segments."""
        if self.clip_len is None:
            return np.arange(num_frames)[None]
        return eval_indices(num_frames, self.clip_len, self.num_clips)


def average_views(logits, views: int):
    """(B * views, C) logits of B videos' consecutive view rows -> (B, C), the mean over each video's views.

    Logits, not probabilities, are averaged (as TSN's consensus and mmaction2's default 'score' averaging do).
    Works on torch tensors and NumPy arrays alike."""
    views = int(views)
    if views == 1:
        return logits
    if logits.shape[0] % views:
        raise ValueError(f"{logits.shape[0]} rows are not whole videos of {views} views each")
    return logits.reshape(logits.shape[0] // views, views, *logits.shape[1:]).mean(1)
