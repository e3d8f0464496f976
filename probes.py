"""Order probes: the frames of a video changed so that a trained head shows whether it uses their order.

Each probe is a pure function of (length, video name, seed) that returns which of the video's frames to feed, in
which order. The same index map applies to any per-frame data: rows of stage 2's embeddings (the head routes) or
the frames of an end-to-end clip, so test mode, the e2e route and predict.py share one definition.

- `shuffle`: a random order, drawn from (seed, video name), so reruns and other workers agree;
- `reverse`: the frames backwards;
- `static`: the middle frame repeated for the video's length (appearance kept, change gone);
- `half`: every second frame (half the frame rate, same duration).

A head that cannot see order (meanpool, attnpool, bert --positions none) gives the same outputs under `shuffle`
and `reverse`, up to float rounding; a head that uses order loses accuracy on the classes that need it.

Timestamps (`--positions time`: items that carry each frame's time in seconds as a fourth element) stay with the
positions, not with the frames, under the probes that change order (`shuffle`, `reverse`, `static`): a shuffled
video is fed its frames in a new order at times 0, 1/fps, 2/fps, ... as before. Moving the times with the frames
would hand a time-coded head the same set of (frame, time) pairs as the unchanged video, and attention over a set
cannot tell the two apart: the probe would call an order-aware head blind. `half` changes the rate, not the
order, so its frames keep their true times (0, 2/fps, 4/fps, ...), as a video recorded at half the rate has them
(`probe_time_indices`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

NONE = "none"  # the unchanged run, the reference every probe's drop is measured from


def shuffle_indices(length: int, video: str, seed: int = 0) -> np.ndarray:
    # crc32, not hash(): Python salts str hashes per process, and the order must be the same in every run
    rng = np.random.default_rng([int(seed), zlib.crc32(video.encode("utf-8"))])
    return rng.permutation(length)


def reverse_indices(length: int, video: str = "", seed: int = 0) -> np.ndarray:
    return np.arange(length)[::-1].copy()


def static_indices(length: int, video: str = "", seed: int = 0) -> np.ndarray:
    return np.full(length, (length - 1) // 2, dtype=np.int64)


def half_indices(length: int, video: str = "", seed: int = 0) -> np.ndarray:
    return np.arange(0, length, 2)


PROBES: dict[str, Callable[[int, str, int], np.ndarray]] = {
    "shuffle": shuffle_indices,
    "reverse": reverse_indices,
    "static": static_indices,
    "half": half_indices,
}
PROBE_NAMES = tuple(PROBES)


def check_probe(probe: str) -> None:
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose from {', '.join(PROBE_NAMES)}")


def probe_indices(probe: str, length: int, video: str, seed: int = 0) -> np.ndarray:
    """Indices (int64, at least one) into a video's `length` frames for `probe`."""
    check_probe(probe)
    if length < 1:
        raise ValueError(f"a probe needs at least one frame, got length {length}")
    return np.asarray(PROBES[probe](int(length), video, seed), dtype=np.int64)


def probe_time_indices(probe: str, length: int, video: str, seed: int = 0) -> np.ndarray:
    """Which of a video's timestamps go with the probed frames (the module docstring): the first positions' for the
    probes that change order, the fed frames' own for `half`."""
    idx = probe_indices(probe, length, video, seed)
    return idx if probe == "half" else np.arange(len(idx))


def apply_probe(frames: Any, probe: str, video: str, seed: int = 0, time_axis: int = 0) -> Any:
    """`frames` (a NumPy array or tensor) with `probe` applied along `time_axis`."""
    idx = probe_indices(probe, frames.shape[time_axis], video, seed)
    if isinstance(frames, torch.Tensor):
        return frames.index_select(time_axis, torch.from_numpy(idx))
    return np.take(frames, idx, axis=time_axis)


class ProbedDataset(Dataset):
    """Any evaluation dataset of (frames, label, index) items with a probe applied to each item's frames.

    `names[index]` is the video name the shuffle is seeded with; `time_axis` is where time is in an item
    (0 for stage 2's (T, D) rows, -4 for a clip's (T, 3, H, W) or (V, T, 3, H, W) frames). The wrapped dataset
    still reads one video at a time (from the memmap or the frame folder)."""

    def __init__(self, base: Dataset, probe: str, names: Sequence[str], seed: int = 0, time_axis: int = 0) -> None:
        check_probe(probe)
        self.base, self.probe, self.names, self.seed, self.time_axis = base, probe, names, int(seed), time_axis

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> tuple[Any, ...]:
        frames, label, index, *times = self.base[key]
        probed = apply_probe(frames, self.probe, self.names[index], self.seed, self.time_axis)
        if not times:
            return probed, label, index
        keep = probe_time_indices(self.probe, frames.shape[self.time_axis], self.names[index], self.seed)
        return probed, label, index, np.take(np.asarray(times[0]), keep, axis=-1)  # (T,) or (V, T): time is last


def summarise_probes(
    results: dict[str, dict[str, Any]], per_class: dict[str, list[dict[str, Any]]]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """What probes_<split>.json and probes_per_class_<split>.csv hold, from each run's metrics.

    `results[probe]` is MetricAccumulator.compute() and `per_class[probe]` MetricAccumulator.per_class() of each
    probe and of `none` (the unchanged run). Returns ({probe: {top1, mean_class_acc, count, ..., top1_drop,
    mean_class_acc_drop}}, rows of {class_idx, class_name, count, none, <probe>, <probe>_drop, ...}). A drop is
    the unchanged accuracy minus the probed one: positive when the head loses accuracy without the order."""
    if NONE not in results:
        raise ValueError("the unchanged run ('none') is the reference of every probe")
    base = results[NONE]
    summary: dict[str, dict[str, Any]] = {NONE: dict(base)}
    for probe, res in results.items():
        if probe != NONE:
            summary[probe] = {**res, "top1_drop": base["top1"] - res["top1"],
                              "mean_class_acc_drop": base["mean_class_acc"] - res["mean_class_acc"]}
    rows = []
    for c, ref in enumerate(per_class[NONE]):
        row: dict[str, Any] = {"class_idx": ref["class_idx"], "class_name": ref["class_name"], "count": ref["support"],
                               NONE: ref["accuracy"]}
        for probe in results:
            if probe != NONE:
                acc = per_class[probe][c]["accuracy"]
                row[probe], row[f"{probe}_drop"] = acc, ref["accuracy"] - acc
        rows.append(row)
    return summary, rows
