"""Clips of frames from stage 1's `frames/` for end-to-end training: sampling, augmentation, JPEG decoding.

Temporal sampling (TSN): a video of n frames is cut into `clip_len` equal segments. Training takes one random
frame per segment, so every part of the video is seen and the order is kept; evaluation takes the segment
centres, and `num_clips` views shift that offset uniformly inside the segments (view k of V at (k + 0.5) / V).
A video shorter than `clip_len` repeats frames in order (the same segment formula does it), so every clip has
exactly `clip_len` real frames: no padding, no varying lengths, and BatchNorm never sees blank frames.

Spatial augmentation is drawn once per clip and applied to every frame of it (random resized crop and
horizontal flip), so motion between frames is kept. Evaluation uses stage 2's own `resize_frame` (shorter side,
then centre crop, by default). Randomness depends only on (seed, epoch, index), never on the worker count.

Items are uint8 tensors (T, 3, S, S), or (V, T, 3, S, S) for V > 1 evaluation views; `models.e2e.EndToEndModel`
normalises them on the device. `clip_collate` batches them like `dataset.pad_collate` does embeddings.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from models.backbone import RESIZE_MODES, resize_frame
from splits import read_class_index
from utils import BadInputError, read_json

log = logging.getLogger("actionbert")

FRAME_PATTERN = "frame_{:06d}.jpg"


def frame_path(frames_dir: str | os.PathLike, video_name: str, k: int) -> Path:
    """Path of the 0-based frame k (files are 1-based: frame_000001.jpg is k = 0)."""
    return Path(frames_dir) / video_name / FRAME_PATTERN.format(k + 1)


# ----------------------------------------------------------------------------------------------------------------
# Temporal sampling: pure functions of (num_frames, clip_len, offsets).


def segment_indices(num_frames: int, clip_len: int, offsets: np.ndarray) -> np.ndarray:
    """Frame index in each of `clip_len` equal segments at relative positions `offsets` in [0, 1)."""
    if num_frames < 1 or clip_len < 1:
        raise ValueError(f"need num_frames >= 1 and clip_len >= 1, got {num_frames}, {clip_len}")
    seg = num_frames / clip_len
    idx = np.floor((np.arange(clip_len) + np.asarray(offsets, dtype=np.float64)) * seg).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1)


def train_indices(num_frames: int, clip_len: int, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random frame per segment."""
    return segment_indices(num_frames, clip_len, rng.random(clip_len))


def eval_indices(num_frames: int, clip_len: int, num_clips: int = 1) -> np.ndarray:
    """(num_clips, clip_len): view k takes position (k + 0.5) / num_clips of every segment (1 view = centres)."""
    offsets = (np.arange(num_clips) + 0.5) / num_clips
    return np.stack([segment_indices(num_frames, clip_len, np.full(clip_len, o)) for o in offsets])


# ----------------------------------------------------------------------------------------------------------------
# Spatial transforms: parameters drawn once per clip, applied to each frame.


def sample_crop(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Random resized crop box (top, left, h, w): area fraction in `scale`, aspect ratio log-uniform in `ratio`.

    Same algorithm as torchvision's RandomResizedCrop.get_params (10 tries, then the largest centred box with
    the ratio clamped), with a seeded NumPy generator so one draw serves a whole clip.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    shrink = width < img.shape[1] or height < img.shape[0]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def crop_resize_flip(
    frame: np.ndarray, box: tuple[int, int, int, int], size: int, flip: bool
) -> np.ndarray:
    """Crop `box` from an RGB HxWx3 frame, resize to size x size, optionally mirror left-right."""
    top, left, h, w = box
    out = _resize(frame[top : top + h, left : left + w], size, size)
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


def eval_frame_transform(frame: np.ndarray, size: int, resize: str = "crop") -> np.ndarray:
    """Evaluation/predict transform of one RGB uint8 frame to (size, size, 3): exactly stage 2's resize_frame
    (crop = shorter side to size, then the centre square), so a head trained on embeddings sees the same input."""
    return resize_frame(frame, size, resize)


def eval_clip_from_frames(
    frames: Sequence[np.ndarray],
    clip_len: int,
    image_size: int,
    num_clips: int = 1,
    resize: str = "crop",
) -> torch.Tensor:
    """predict.py's input for an e2e model: all RGB uint8 frames of one video as stage 1 stores them (e.g. from
    video.iter_stored_frames_at_fps with the manifest's fps, frame_size and jpeg_quality) -> uint8 (V, T, 3, S, S),
    sampled and transformed exactly as ClipDataset's evaluation items, so the result equals test mode's input bit
    for bit. Only the sampled frames are transformed."""
    if not frames:
        raise BadInputError("no frames to classify")
    ks = eval_indices(len(frames), clip_len, num_clips)
    cache = {}
    for k in np.unique(ks):
        cache[int(k)] = eval_frame_transform(frames[int(k)], image_size, resize)
    clip = np.stack([cache[int(k)] for k in ks.ravel()]).reshape(*ks.shape, image_size, image_size, 3)
    return torch.from_numpy(clip).permute(0, 1, 4, 2, 3).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Split files and frame folders.


def split_json_path(split_json_dir: str | os.PathLike, split: str) -> Path:
    """`<dir>/<split>_ucf101.json` as stage 1 writes it (or `<dir>/<split>.json`)."""
    base = Path(split_json_dir)
    for candidate in (base / f"{split}_ucf101.json", base / f"{split}.json"):
        if candidate.is_file():
            return candidate
    raise BadInputError(f"no {split} split in {base}: expected {split}_ucf101.json (stage 1's output)")


def read_class_names(split_json_dir: str | os.PathLike, entries: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Class names in label order: classInd.txt (`1 Name` lines) when present, else the entries' class_name."""
    ind = Path(split_json_dir) / "classInd.txt"
    if ind.is_file():
        return read_class_index(ind)
    num = 1 + max((int(e["label_idx"]) for e in entries), default=-1)
    names = [f"class_{i}" for i in range(num)]
    for e in entries:
        if isinstance(e.get("class_name"), str):
            names[int(e["label_idx"])] = e["class_name"]
    return names


def read_split_entries(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A split JSON's list of {"video_name", "label_idx", ...}, checked."""
    return check_entries(read_json(path, "split JSON"), f"split JSON {path}")


def check_entries(entries: Any, source: str = "split") -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise BadInputError(f"{source} must hold a list of videos, not {type(entries).__name__}")
    for i, e in enumerate(entries):
        ok = isinstance(e, dict) and isinstance(e.get("video_name"), str) and isinstance(e.get("label_idx"), int)
        if not ok or e["label_idx"] < 0:
            raise BadInputError(f"{source}: entry {i} needs a video_name and a label_idx >= 0: {e!r}")
    return entries


def count_frames(frames_dir: str | os.PathLike, video_name: str, expected: int | None = None) -> int:
    """Number of contiguous frames frame_000001.jpg... of one video (0 when the folder is missing or empty)."""
    folder = Path(frames_dir) / video_name
    if expected and frame_path(frames_dir, video_name, expected - 1).is_file():
        if not frame_path(frames_dir, video_name, expected).is_file():
            return expected
    try:
        names = {n for n in os.listdir(folder) if n.startswith("frame_") and n.endswith(".jpg")}
    except OSError:
        return 0
    n = 0
    while FRAME_PATTERN.format(n + 1) in names:
        n += 1
    if n < len(names):
        log.warning("%s: frames stop at %d of %d files (a gap); using the first %d", folder, n, len(names), n)
    return n


def clip_provenance(frames_dir: str | os.PathLike, **settings: Any) -> dict[str, Any]:
    """What a checkpoint's data_info needs for predict.py to rebuild e2e inputs from a raw video: stage 1's fps,
    frame_size and jpeg_quality (from frames/manifest.json when present) plus `settings` (backbone, weights,
    image_size, resize, clip_len, num_clips)."""
    path = Path(frames_dir) / "manifest.json"
    manifest = read_json(path, "frames manifest") if path.is_file() else {}
    info = {k: manifest.get(k) for k in ("fps", "frame_size", "jpeg_quality")}
    return {**info, "resize": "crop", **settings}


def read_frame(path: Path) -> np.ndarray | None:
    """RGB uint8 HxWx3, or None when the file is missing or not a decodable image."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class ClipDataset(Dataset):
    """Clips of `clip_len` frames per video from `frames_dir`, labelled by a split JSON.

    A key is an index, or `(index, epoch)` as `dataset.TrainSampler` yields: training randomness is seeded
    by (seed, epoch, index). Videos whose frame folder is missing or empty are left out and listed in
    `.failures` ({"file", "reason"}, for utils.write_failure_report); no usable video at all, or any with
    `strict`, is a BadInputError. A frame that cannot be decoded at read time is replaced by the nearest
    readable frame of the same video, with a warning naming the file; a video with none left is an error.
    """

    def __init__(
        self,
        frames_dir: str | os.PathLike,
        entries: Sequence[dict[str, Any]] | str | os.PathLike,
        clip_len: int = 8,
        train: bool = False,
        image_size: int = 224,
        num_clips: int = 1,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.25, 1.0),
        hflip: bool = True,
        resize: str = "crop",
        strict: bool = False,
    ) -> None:
        if clip_len < 1 or num_clips < 1 or image_size < 1:
            raise BadInputError(f"--clip_len, --num_clips and --image_size must be >= 1 ({clip_len}, {num_clips}, "
                                f"{image_size})")
        if resize not in RESIZE_MODES:
            raise BadInputError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.resize = resize
        self.frames_dir = Path(frames_dir)
        if not self.frames_dir.is_dir():
            raise BadInputError(f"frames folder not found: {self.frames_dir}")
        if isinstance(entries, (str, os.PathLike)):
            source = read_split_entries(entries)
        else:
            source = check_entries(list(entries))
        self.clip_len, self.train, self.image_size = int(clip_len), bool(train), int(image_size)
        self.num_clips = 1 if train else int(num_clips)
        self.seed, self.crop_scale, self.hflip = int(seed), tuple(crop_scale), bool(hflip)
        manifest = self._manifest()
        self.names: list[str] = []
        labels, counts = [], []
        self.failures: list[dict[str, Any]] = []
        for e in source:
            name = e["video_name"]
            n = count_frames(self.frames_dir, name, manifest.get(name))
            if n == 0:
                self.failures.append({"file": str(self.frames_dir / name), "reason": "no frames (missing or empty)"})
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
                f"{what}; first: {self.failures[0]['file']}"
            )
        if self.failures:
            log.warning("%d video(s) without frames left out, first %s", len(self.failures), self.failures[0]["file"])
        self._cv2_threads_set = False

    def _manifest(self) -> dict[str, int]:
        path = self.frames_dir / "manifest.json"
        if not path.is_file():
            return {}
        videos = read_json(path, "frames manifest").get("videos", {})
        return {k: int(v["num_frames"]) for k, v in videos.items() if isinstance(v, dict) and "num_frames" in v}

    def __len__(self) -> int:
        return len(self.names)

    def indices(self, index: int, epoch: int = 0) -> np.ndarray:
        """(views, clip_len) frame indices of item `index`."""
        n = int(self.num_frames[index])
        if self.train:
            return train_indices(n, self.clip_len, self._rng(index, epoch))[None]
        return eval_indices(n, self.clip_len, self.num_clips)

    def _rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch), int(index)])

    def _load(self, index: int, ks: np.ndarray) -> dict[int, np.ndarray]:
        name, n = self.names[index], int(self.num_frames[index])
        frames: dict[int, np.ndarray] = {}
        for k in sorted(set(int(k) for k in ks.ravel())):
            img = read_frame(frame_path(self.frames_dir, name, k))
            if img is None:
                img = self._nearest_readable(name, n, k)
            frames[k] = img
        return frames

    def _nearest_readable(self, name: str, n: int, k: int) -> np.ndarray:
        bad = frame_path(self.frames_dir, name, k)
        for d in range(1, n):
            for j in (k - d, k + d):
                if 0 <= j < n:
                    img = read_frame(frame_path(self.frames_dir, name, j))
                    if img is not None:
                        log.warning("cannot decode %s: using frame %d of the same video instead", bad, j + 1)
                        return img
        raise BadInputError(f"no readable frame in {self.frames_dir / name} (first bad file: {bad})")

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        if not self._cv2_threads_set:  # one decoder thread per worker: the DataLoader gives the parallelism
            cv2.setNumThreads(1)
            self._cv2_threads_set = True
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        index = int(index)
        ks = self.indices(index, epoch)
        frames = self._load(index, ks)
        size = self.image_size
        if self.train:
            rng = self._rng(index, epoch)
            rng.random(self.clip_len)  # skip the draws train_indices used, so crop and frames are independent
            h, w = frames[int(ks[0, 0])].shape[:2]
            box = sample_crop(h, w, rng, self.crop_scale)
            flip = bool(self.hflip and rng.random() < 0.5)
            cache = {}
            for k, img in frames.items():
                if img.shape[:2] != (h, w):  # frames of one video share a size; guard against odd files
                    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
                cache[k] = crop_resize_flip(img, box, size, flip)
        else:
            cache = {k: eval_frame_transform(img, size, self.resize) for k, img in frames.items()}
        clip = np.stack([cache[int(k)] for k in ks.ravel()]).reshape(*ks.shape, size, size, 3)
        tensor = torch.from_numpy(clip).permute(0, 1, 4, 2, 3).contiguous()  # (V, T, 3, S, S)
        if self.num_clips == 1:
            tensor = tensor[0]
        return tensor, int(self.labels[index]), index


def clip_collate(batch: Sequence[tuple[torch.Tensor, int, int]]) -> dict[str, torch.Tensor]:
    """Stack clips (all `clip_len` long) into {"clips", "lengths", "labels", "indices"}, like dataset.pad_collate."""
    clips = torch.stack([c for c, _, _ in batch])
    clip_len = clips.shape[-4]
    return {
        "clips": clips,
        "lengths": torch.full((len(batch),), clip_len, dtype=torch.long),
        "labels": torch.tensor([lab for _, lab, _ in batch], dtype=torch.long),
        "indices": torch.tensor([i for _, _, i in batch], dtype=torch.long),
    }
