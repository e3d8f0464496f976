"""Stage 2's embeddings as a torch Dataset: memmap reads, temporal augmentation and TSN segments (sampling.py's),
dynamic padding (the samplers that order the batches are in samplers.py).

Nothing here holds a whole split in RAM: rows are read from the `.npy` memmap one video at a time,
and the feature statistics are streamed in chunks. Data order and augmentation depend only on
(seed, epoch, index), never on the number of workers or ranks, so a resumed run replays exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from layout import UNLABELLED
from sampling import Segments, TemporalAugment, item_rng, subsample_indices
from utils import BadInputError, first_names, read_json

log = logging.getLogger("actionbert")

# A checkpoint's data_info (how the embeddings were made, which predict.py needs) copies every top-level key of the
# split's JSON except the per-video records and these bulky or per-split ones.
NOT_PROVENANCE = ("data", "class_names", "split", "memmap_size")


@dataclass
class SplitInfo:
    """A split's checked metadata: which rows to read, their lengths and labels, and how they were made."""

    split: str
    npy_path: Path
    json_path: Path
    rows: np.ndarray  # (n,) row of each usable video in the memmap
    lengths: np.ndarray  # (n,) true number of frames
    labels: np.ndarray  # (n,) 0-based class
    names: list[str]
    shape: tuple[int, int, int]  # (N, max_len, D) of the memmap
    class_names: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    # (n,) stage 1 frame k of each stored row (frame k is at k / fps s); None where the JSON cannot say (see
    # `source_frames`)
    frame_index: list[np.ndarray | None] = field(default_factory=list)

    @property
    def fps(self) -> float | None:
        """Stage 1's sampling rate, recorded by stage 2 in the split's JSON (None for older or synthetic files)."""
        fps = self.provenance.get("fps")
        return None if fps is None else float(fps)

    def frame_times(self, index: int) -> np.ndarray:
        """(video_length,) float32 timestamp in seconds of each stored row of video `index`: its stage 1 frame
        index / fps. A clear error when the JSON lacks what that takes."""
        frames = self.frame_index[index] if self.frame_index else None
        if self.fps is None or self.fps <= 0:
            raise BadInputError(f"{self.json_path} records no fps, so the frames' timestamps are unknown "
                                "(--positions time needs them; rerun prepare_data.py on stage 1's frames)")
        if frames is None:
            raise BadInputError(f"{self.json_path}: video {self.names[index]} skipped corrupt frames but its "
                                "record has no frame_index, so its timestamps are unknown (rerun prepare_data.py)")
        return (frames / self.fps).astype(np.float32)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def feature_dim(self) -> int:
        return int(self.shape[2])

    def __len__(self) -> int:
        return len(self.rows)


def source_frames(record: dict[str, Any], length: int) -> np.ndarray | None:
    """Stage 1 frame index of each of a record's `length` stored rows: its `frame_index` where stage 2 wrote one
    (it does where corrupt frames were skipped); else all frames (`num_frames` absent or equal), or stage 2's uniform
    subsample of them (`--max_len`: sampling.subsample_indices, the one rule). None when frames were skipped and
    not listed (older JSONs), where the rows cannot be placed in time."""
    listed = record.get("frame_index")
    if listed is not None:
        frames = np.asarray(listed, dtype=np.int64)
        return frames if frames.shape == (length,) else None
    total = record.get("num_frames")
    if total is None or int(total) == length:
        return np.arange(length, dtype=np.int64)
    if int(record.get("skipped_frames") or 0) == 0 and int(total) > length:
        return subsample_indices(int(total), length).astype(np.int64)
    return None


def _npy_shape(path: Path) -> tuple[int, ...]:
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read embeddings {path}: {exc}") from exc


def load_split_info(data_dir: str | Path, split: str, strict: bool = False, unlabelled: bool = False) -> SplitInfo:
    """Read `<split>.json`, check it against `<split>.npy`'s header, and keep the usable records.

    A shape disagreement between the two files is always an error naming both. Single bad records
    (length out of range, label out of range, row out of range) are left out with a warning, or
    refused with `strict`. An unlabelled video (label_idx -1, an official test split without labels) is kept with
    `unlabelled` (test mode, which then writes predictions only), and is a bad record otherwise (training needs labels).
    """
    data_dir = Path(data_dir)
    json_path, npy_path = data_dir / f"{split}.json", data_dir / f"{split}.npy"
    meta = read_json(json_path, f"{split} split metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("data"), list):
        raise BadInputError(f"{json_path} has no 'data' list of records; is it stage 2's output (prepare_data.py)?")
    if not npy_path.is_file():
        raise BadInputError(f"embeddings not found: {npy_path} (listed by {json_path})")
    shape = _npy_shape(npy_path)
    declared = meta.get("memmap_size")
    if len(shape) != 3:
        raise BadInputError(f"{npy_path} has shape {list(shape)}, expected (N, max_len, D) as declared in {json_path}")
    if declared is not None and [int(s) for s in declared] != list(shape):
        raise BadInputError(
            f"{npy_path} has shape {list(shape)} but {json_path} declares memmap_size {list(declared)}; "
            "the two files do not belong together (rerun prepare_data.py)"
        )
    num_rows, max_len, dim = shape
    if meta.get("feature_dim") is not None and int(meta["feature_dim"]) != dim:
        raise BadInputError(f"{json_path} declares feature_dim {meta['feature_dim']} but {npy_path} has D={dim}")
    records = meta["data"]
    if len(records) > num_rows:
        raise BadInputError(f"{json_path} lists {len(records)} videos but {npy_path} holds only {num_rows} rows")
    class_names = meta.get("class_names")
    labels_all = [r.get("label_idx") for r in records if isinstance(r, dict)]
    if class_names is None:
        num_classes = int(meta.get("num_classes") or (max((int(x) for x in labels_all if x is not None), default=-1) + 1))
        class_names = [f"class_{c}" for c in range(num_classes)]
    if meta.get("num_classes") is not None and int(meta["num_classes"]) != len(class_names):
        raise BadInputError(
            f"{json_path} declares num_classes {meta['num_classes']} but lists {len(class_names)} class names"
        )
    rows, lengths, labels, names, skipped, frame_index = [], [], [], [], [], []
    for pos, rec in enumerate(records):
        try:
            row = int(rec.get("video_idx", pos))
            length = int(rec["video_length"])
            label = int(rec["label_idx"])
            name = str(rec.get("video_name", f"{split}_{row}"))
        except (AttributeError, KeyError, TypeError, ValueError):
            skipped.append({"file": str(json_path), "reason": f"record {pos} is malformed: {rec!r}"[:200]})
            continue
        reason = None
        if not 0 <= row < num_rows:
            reason = f"video_idx {row} outside the {num_rows} rows of {npy_path.name}"
        elif not 1 <= length <= max_len:
            reason = f"video_length {length} outside 1..{max_len}"
        elif label == UNLABELLED and not unlabelled:
            reason = f"unlabelled (label_idx {UNLABELLED}): only test mode takes such videos, to predict them"
        elif not 0 <= label < len(class_names) and not (unlabelled and label == UNLABELLED):
            reason = f"label_idx {label} outside 0..{len(class_names) - 1}"
        if reason:
            skipped.append({"file": name, "reason": reason})
            continue
        rows.append(row)
        frame_index.append(source_frames(rec, length))
        lengths.append(length)
        labels.append(label)
        names.append(name)
    if skipped:
        if strict:
            raise BadInputError(f"{json_path}: {len(skipped)} bad record(s), first: {skipped[0]} (--strict)")
        log.warning("%s: left out %d bad record(s), first: %s", json_path, len(skipped), skipped[0])
    if not rows:
        raise BadInputError(f"{json_path} has no usable videos")
    return SplitInfo(
        split=split,
        npy_path=npy_path,
        json_path=json_path,
        rows=np.asarray(rows, dtype=np.int64),
        lengths=np.asarray(lengths, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        names=names,
        shape=(int(num_rows), int(max_len), int(dim)),
        class_names=[str(c) for c in class_names],
        provenance={k: v for k, v in meta.items() if k not in NOT_PROVENANCE},
        skipped=skipped,
        frame_index=frame_index,
    )


class EmbeddingDataset(Dataset):
    """One video's rows per item, read from the memmap: every real (unpadded) row, or its TSN segments.

    An item key is an index (evaluation), or `(index, epoch)` from a training sampler: the pair seeds the
    augmentation and the segment draw, so a sample's frames depend on (seed, epoch, index) alone, in any worker.
    Which rows an item holds is `frame_indices` (indices into the video's frames): (T,) for a training item or a
    single evaluation view, (V, T) for V evaluation views, and the item's features have that shape plus D.

    With `with_times`, an item is (feats, label, index, times): `times`, shaped like the indices, the timestamp in
    seconds of each row actually fed (the augmentation's and the segments' picks included), for `--positions time`.
    """

    def __init__(self, info: SplitInfo, augment: TemporalAugment | None = None, seed: int = 0,
                 segments: Segments | None = None, with_times: bool = False) -> None:
        self.info = info
        self.with_times = bool(with_times)
        self.augment = augment if augment is not None and augment.enabled else None
        self.segments = segments if segments is not None else Segments()
        self.seed = int(seed)
        self._data: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        # never pickle the memmap into worker processes: each worker opens its own
        state = self.__dict__.copy()
        state["_data"] = None
        return state

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            self._data = np.load(self.info.npy_path, mmap_mode="r")
        return self._data

    def __len__(self) -> int:
        return len(self.info)

    def frame_indices(self, index: int, epoch: int | None = None) -> np.ndarray:
        """Indices into video `index`'s frames that its item holds, in the order fed.

        Training (`epoch` given): the temporal augmentation's frames, then one random frame per segment of those
        (one generator, augmentation first: without segments the draws are the ones runs made before segments
        existed). Evaluation: every frame, or the segments' (V, T) views, V = 1 squeezed to (T,)."""
        length = int(self.info.lengths[index])
        if epoch is not None:
            rng = item_rng(self.seed, epoch, index)
            idx = self.augment(length, rng) if self.augment is not None else np.arange(length)
            return idx[self.segments.train(len(idx), rng)] if self.segments.enabled else idx
        views = self.segments.eval(length)
        return views[0] if len(views) == 1 else views

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, ...]:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        index = int(index)
        idx = self.frame_indices(index, epoch)
        rows = self.data[int(self.info.rows[index]), : int(self.info.lengths[index])]  # a view: nothing read yet
        # advanced indexing reads only the indexed rows, into a private, writable copy
        feats = np.asarray(rows[idx.reshape(-1)], dtype=np.float32).reshape(*idx.shape, rows.shape[-1])
        if not self.with_times:
            return feats, int(self.info.labels[index]), index
        return feats, int(self.info.labels[index]), index, self.info.frame_times(index)[idx]


def pad_collate(batch: Sequence[tuple[Any, ...]]) -> dict[str, torch.Tensor | int]:
    """Pad to the batch's own longest sequence (dynamic padding), not the split's maximum.

    An item of V evaluation views, (V, T, D), gives V consecutive rows; "views" says V (every item of a batch has
    the same number), and sampling.average_views turns the rows' logits back into one per video. Items with a fourth
    element (EmbeddingDataset's `with_times`) also give "times" (rows, T) seconds, zero on padding."""
    views = {1 if item[0].ndim == 2 else item[0].shape[0] for item in batch}
    if len(views) != 1:
        raise ValueError(f"a batch mixes items of {sorted(views)} views")
    seqs = [seq for item in batch for seq in (item[0] if item[0].ndim == 3 else (item[0],))]
    lengths = torch.tensor([len(f) for f in seqs], dtype=torch.long)
    width, dim = int(lengths.max()), seqs[0].shape[1]
    feats = torch.zeros(len(seqs), width, dim, dtype=torch.float32)
    for i, f in enumerate(seqs):
        feats[i, : len(f)] = torch.as_tensor(f, dtype=torch.float32)
    out = {
        "inputs": feats,
        "lengths": lengths,
        "labels": torch.tensor([item[1] for item in batch], dtype=torch.long),
        "indices": torch.tensor([item[2] for item in batch], dtype=torch.long),
        "views": views.pop(),
    }
    if all(len(item) > 3 for item in batch):
        rows = [t for item in batch for t in (item[3] if item[3].ndim == 2 else (item[3],))]
        times = torch.zeros(len(rows), width, dtype=torch.float32)
        for i, t in enumerate(rows):
            times[i, : len(t)] = torch.as_tensor(t, dtype=torch.float32)
        out["times"] = times
    return out


def fixed_pad_collate(max_len: int):
    """Collate padding every batch to `max_len` frames: the original loader's behaviour, kept for benchmarks."""

    def collate(batch: Sequence[tuple[np.ndarray, int, int]]) -> dict[str, torch.Tensor]:
        out = pad_collate(batch)
        feats = torch.zeros(out["inputs"].shape[0], max_len, out["inputs"].shape[2])
        feats[:, : out["inputs"].shape[1]] = out["inputs"]
        out["inputs"] = feats
        return out

    return collate


def feature_stats(
    info: SplitInfo, chunk_rows: int = 64, rank: int = 0, world_size: int = 1
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-dimension sum, sum of squares and frame count over the real rows of this rank's share.

    Streamed over the memmap `chunk_rows` videos at a time (float64 sums), so memory stays flat.
    Reduce the three over ranks, then `stats_from_sums`. This pass reads every real frame of the split, so it
    is also where NaN/inf embeddings are caught: a BadInputError names the videos holding them.
    """
    arr = np.load(info.npy_path, mmap_mode="r")
    dim = info.feature_dim
    total, total_sq, count = np.zeros(dim), np.zeros(dim), 0
    order = np.argsort(info.rows, kind="stable")[rank::world_size]
    rows, lengths = info.rows[order], info.lengths[order]
    nonfinite: list[str] = []
    for start in range(0, len(rows), chunk_rows):
        r, n = rows[start : start + chunk_rows], lengths[start : start + chunk_rows]
        lo, hi = int(r.min()), int(r.max()) + 1
        block_len = int(n.max())
        if hi - lo <= 2 * len(r):  # nearly contiguous rows: one slice read
            block = np.asarray(arr[lo:hi, :block_len], dtype=np.float64)[r - lo]
        else:
            block = np.stack([np.asarray(arr[i, :block_len], dtype=np.float64) for i in r])
        mask = np.arange(block_len)[None, :] < n[:, None]
        bad = (~np.isfinite(block).all(axis=2) & mask).any(axis=1)
        if bad.any():
            nonfinite += [info.names[i] for i in order[start : start + chunk_rows][bad]]
            continue
        if nonfinite:
            continue
        real = block[mask]
        total += real.sum(0)
        total_sq += np.square(real).sum(0)
        count += int(mask.sum())
    if nonfinite:
        raise BadInputError(f"{info.npy_path}: {len(nonfinite)} video(s) have non-finite (NaN/inf) embeddings: "
                            f"{first_names(nonfinite, 10)}. Training on them would give a NaN model; rerun prepare_data.py for this split")
    return total, total_sq, count


def stats_from_sums(total: np.ndarray, total_sq: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) std from streamed sums."""
    mean = total / max(count, 1)
    var = np.maximum(total_sq / max(count, 1) - np.square(mean), 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)
