"""Clips of frames from stage 1's `frames/` for end-to-end training, and the same clips for predict.py.

A clip is `clip_len` frames chosen by sampling.py's TSN rules (one random frame per segment in training, segment
centres in evaluation, `num_clips` shifted views), read and transformed by transforms.py: in training a random
resized crop and a horizontal flip drawn once per clip and applied to every frame of it, so motion between frames
is kept; in evaluation stage 2's own `resize_frame` with the backbone's ResizeSpec (its input size, crop fraction
and interpolation: shorter side, then centre crop, by default). A video shorter
than `clip_len` repeats frames in order, so every clip has exactly `clip_len` real frames: no padding, no varying
lengths, and BatchNorm never sees blank frames. Randomness depends only on (seed, epoch, index), never on the
worker count.

Which files are a video's frames is layout.py's rule, the one stage 2 follows. A frame that is missing or corrupt
(transforms.FrameError: empty, not a JPEG, truncated) is replaced by the nearest readable frame of the same video,
with one warning per bad file; a video with none left is an error, and so is any bad frame with `strict`.

Items are uint8 tensors (T, 3, S, S), or (V, T, 3, S, S) for V > 1 evaluation views; `models.e2e.EndToEndModel`
normalises them on the device. `clip_collate` batches them like `dataset.pad_collate` does embeddings (views as rows).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from layout import (
    check_split_entries,
    frame_path,
    manifest_videos,
    read_frame_settings,
    read_split_json,
    video_frames,
)
from sampling import eval_indices, item_rng, train_indices
from transforms import (
    RESIZE_MODES,
    FrameError,
    ResizeSpec,
    as_resize_spec,
    clip_tensor,
    crop_resize_flip,
    read_frame,
    resize_frame,
    sample_crop,
)
from utils import BadInputError

log = logging.getLogger("actionbert")


def eval_clip_from_frames(
    frames: Sequence[np.ndarray],
    clip_len: int,
    image_size: ResizeSpec | int,
    num_clips: int = 1,
    resize: str = "crop",
    transformed: bool = False,
) -> torch.Tensor:
    """predict.py's input for an e2e model: all RGB uint8 frames of one video as stage 1 stores them (e.g. from
    video.iter_stored_frames_at_fps with the manifest's fps, frame_size and jpeg_quality) -> uint8 (V, T, 3, S, S),
    sampled and transformed exactly as ClipDataset's evaluation items, so the result equals test mode's input bit
    for bit. Only the sampled frames are transformed; `transformed` frames already went through
    transforms.resize_frame with the same spec (predict.py keeps only those) and are taken as they are."""
    if not frames:
        raise BadInputError("no frames to classify")
    ks = eval_indices(len(frames), clip_len, num_clips)
    spec = as_resize_spec(image_size, resize)
    return clip_tensor(frames, ks, _identity if transformed else functools.partial(resize_frame, spec=spec))


def _identity(img: np.ndarray) -> np.ndarray:
    return img


def clip_provenance(frames_dir: str | os.PathLike, **settings: Any) -> dict[str, Any]:
    """What a checkpoint's data_info needs for predict.py to rebuild e2e inputs from a raw video: stage 1's fps,
    frame_size and jpeg_quality (from frames/manifest.json) plus `settings` (backbone, weights, image_size, resize,
    clip_len, num_clips)."""
    return {**read_frame_settings(frames_dir), "resize": "crop", **settings}


def _same_size(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Frames of one video share a size; a stray file of another size is resized so the clip's crop box fits."""
    if img.shape[:2] == (height, width):
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def _nearest_first(k: int, n: int) -> Iterator[int]:
    """k, then the other frame indices of 0..n-1 by distance from k, the earlier one first."""
    yield k
    for d in range(1, n):
        yield from (j for j in (k - d, k + d) if 0 <= j < n)


class ClipDataset(Dataset):
    """Clips of `clip_len` frames per video from `frames_dir`, labelled by a split JSON (or its entries).

    A key is an index, or `(index, epoch)` as `samplers.TrainSampler` yields: training randomness is seeded
    by (seed, epoch, index). Videos without frames are left out and listed in `.failures` ({"file",
    "video_name", "reason"}, for utils.write_failure_report); no usable video at all, or any with `strict`, is a
    BadInputError. A missing or corrupt frame follows stage 2's rule (transforms.read_frame): the nearest readable
    frame of the same video stands in (stage 2 drops it; a clip has a fixed length), or with `strict` it is an
    error. `.bad_frames` maps each missing or corrupt frame file met in this process to why.
    """

    def __init__(
        self,
        frames_dir: str | os.PathLike,
        entries: Sequence[dict[str, Any]] | str | os.PathLike,
        clip_len: int = 8,
        train: bool = False,
        image_size: ResizeSpec | int = 224,
        num_clips: int = 1,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.25, 1.0),
        hflip: bool = True,
        resize: str = "crop",
        strict: bool = False,
        flip_label_map: dict[int, int] | None = None,
        unlabelled: bool = False,
    ) -> None:
        size = image_size.size if isinstance(image_size, ResizeSpec) else image_size
        if clip_len < 1 or num_clips < 1 or size < 1:
            raise BadInputError(f"--clip_len, --num_clips and --image_size must be >= 1 ({clip_len}, {num_clips}, "
                                f"{size})")
        if resize not in RESIZE_MODES:
            raise BadInputError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        # the backbone's input (size, resize, crop fraction, interpolation); an int is a torchvision backbone's
        self.spec = as_resize_spec(image_size, resize)
        self.resize = self.spec.mode
        self.frames_dir = Path(frames_dir)
        if not self.frames_dir.is_dir():
            raise BadInputError(f"frames folder not found: {self.frames_dir}")
        if isinstance(entries, (str, os.PathLike)):
            source = read_split_json(entries, unlabelled)
        else:  # unlabelled videos (label_idx -1) only where asked: test mode's predictions
            source = check_split_entries(list(entries), unlabelled=unlabelled)
        self.clip_len, self.train, self.image_size = int(clip_len), bool(train), self.spec.size
        self.num_clips = 1 if train else int(num_clips)
        self.seed, self.crop_scale, self.hflip = int(seed), tuple(crop_scale), bool(hflip)
        # a flipped clip of a direction class is its mirrored class (direction.flip_policy)
        self.flip_label_map = {int(k): int(v) for k, v in (flip_label_map or {}).items()}
        self.names: list[str] = []
        labels, counts = [], []
        self.failures: list[dict[str, Any]] = []
        self.strict = bool(strict)
        recorded = manifest_videos(self.frames_dir)
        for e in source:
            name = e["video_name"]
            n, reason = video_frames(self.frames_dir, name, recorded.get(name))  # stage 2's rule, record included
            if reason is not None:
                self.failures.append({"file": str(self.frames_dir / name), "video_name": name, "reason": reason})
                continue
            self.names.append(name)
            labels.append(int(e["label_idx"]))
            counts.append(n)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_frames = np.asarray(counts, dtype=np.int64)
        if self.failures and (strict or not self.names):
            what = "any usable video" if not self.names else "all videos (--strict)"
            raise BadInputError(
                f"{self.frames_dir}: {len(self.failures)} of {len(source)} videos have no frames, without "
                f"{what}; first: {self.failures[0]['file']} ({self.failures[0]['reason']})"
            )
        if self.failures:
            log.warning("%d video(s) without frames left out, first %s", len(self.failures), self.failures[0]["file"])
        self.bad_frames: dict[str, str] = {}
        self._cv2_threads_set = False

    def __len__(self) -> int:
        return len(self.names)

    def _frame(self, index: int, k: int) -> np.ndarray:
        """RGB frame k of video `index`, or the nearest readable frame of the same video (earlier one first) when
        that file is missing or corrupt (an error with `strict`)."""
        name, n = self.names[index], int(self.num_frames[index])
        for j in _nearest_first(k, n):
            path = str(frame_path(self.frames_dir, name, j))
            try:
                img = read_frame(path)
            except FrameError as exc:
                if self.strict:
                    raise BadInputError(f"corrupt frame {path}: {exc} (--strict)") from None
                if path not in self.bad_frames:
                    self.bad_frames[path] = str(exc)
                    log.warning("%s: %s; the nearest readable frame of the same video stands in (%d bad frame file(s) "
                                "met so far)", path, exc, len(self.bad_frames))
                continue
            return img
        raise BadInputError(f"no readable frame in {self.frames_dir / name} (first bad file: "
                            f"{frame_path(self.frames_dir, name, k)})")

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        if not self._cv2_threads_set:  # one decoder thread per worker: the DataLoader gives the parallelism
            cv2.setNumThreads(1)
            self._cv2_threads_set = True
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        index = int(index)
        n, spec = int(self.num_frames[index]), self.spec
        label = int(self.labels[index])
        if self.train:
            rng = item_rng(self.seed, epoch, index)  # draws the frames, then the crop box and the flip
            ks = train_indices(n, self.clip_len, rng)[None]
            frames = {int(k): self._frame(index, int(k)) for k in np.unique(ks)}
            h, w = frames[int(ks[0, 0])].shape[:2]
            box = sample_crop(h, w, rng, self.crop_scale)
            flip = bool(self.hflip and rng.random() < 0.5)
            if flip:
                label = self.flip_label_map.get(label, label)

            def transform(img: np.ndarray) -> np.ndarray:
                return crop_resize_flip(_same_size(img, h, w), box, spec, flip)
        else:
            ks = eval_indices(n, self.clip_len, self.num_clips)
            frames = {int(k): self._frame(index, int(k)) for k in np.unique(ks)}
            transform = functools.partial(resize_frame, spec=spec)
        tensor = clip_tensor(frames, ks, transform)  # (V, T, 3, S, S)
        if self.num_clips == 1:
            tensor = tensor[0]
        return tensor, label, index


def clip_collate(batch: Sequence[tuple[torch.Tensor, int, int]]) -> dict[str, torch.Tensor | int]:
    """Stack clips (all `clip_len` long) into {"inputs", "lengths", "labels", "indices", "views"}, like
    dataset.pad_collate: an item of V views (V, T, 3, S, S) gives V consecutive rows, averaged back into one
    video's logits by sampling.average_views."""
    views = {1 if c.dim() == 4 else c.shape[0] for c, _, _ in batch}
    if len(views) != 1:
        raise ValueError(f"a batch mixes clips of {sorted(views)} views")
    clips = torch.cat([c if c.dim() == 5 else c[None] for c, _, _ in batch])
    clip_len = clips.shape[-4]
    return {
        "inputs": clips,
        "lengths": torch.full((clips.shape[0],), clip_len, dtype=torch.long),
        "labels": torch.tensor([lab for _, lab, _ in batch], dtype=torch.long),
        "indices": torch.tensor([i for _, _, i in batch], dtype=torch.long),
        "views": views.pop(),
    }
