"""Which frames of a video a model sees: every temporal sampling rule, as pure functions of lengths and a generator.

- `subsample_indices`: stage 2's uniform cap on frames per video (`--max_len`), which predict.py repeats.
- `TemporalAugment`: train-time crop, stride and frame dropout over a video's embeddings (dataset.py).
- TSN clips (clip_dataset.py, predict.py): a video of n frames is cut into `clip_len` equal segments. Training
  takes one random frame per segment, so every part of the video is seen and the order is kept; evaluation takes
  the segment centres, and `num_clips` views shift that offset uniformly inside the segments (view k of V at
  (k + 0.5) / V). A video shorter than `clip_len` repeats frames in order (the same segment formula does it).

Random draws come from `item_rng(seed, epoch, index)`: a sample's frames depend on those three alone, never on
the number of DataLoader workers or ranks, so a resumed run replays exactly.
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
