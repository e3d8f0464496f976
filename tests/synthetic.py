"""Synthetic embedding data for the heads' tests: classes that differ only in the order of the same frames.

Class 2i shows a sequence of prototype frames and class 2i+1 the same prototypes in reverse, each
stretched to a random length with noise, so an order-blind head can tell the pair apart no better
than chance while a sequence model can. Written in stage 2's format (.npy memmap + .json).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from utils import atomic_write_json


def make_order_task(
    num_samples: int,
    num_pairs: int = 2,
    dim: int = 16,
    num_protos: int = 3,
    min_len: int = 6,
    max_len: int = 12,
    noise: float = 0.3,
    seed: int = 0,
    proto_seed: int = 1234,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Return (list of (length, dim) float32 arrays, labels). Prototypes depend on proto_seed only,
    so train and val drawn with different `seed` share the same classes."""
    protos = np.random.default_rng(proto_seed).normal(size=(num_pairs, num_protos, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    videos, labels = [], []
    for i in range(num_samples):
        label = i % (2 * num_pairs)
        length = int(rng.integers(min_len, max_len + 1))
        # Stretch the prototypes to `length` frames, then reverse the whole sequence for the odd class: both
        # classes then hold exactly the same multiset of frames (stretching the reversed prototypes instead
        # would give the first prototype the spare frames and leak order to a mean).
        idx = np.minimum((np.arange(length) * num_protos) // length, num_protos - 1)
        clean = protos[label // 2][idx]
        if label % 2:
            clean = clean[::-1]
        frames = clean + noise * rng.normal(size=(length, dim)).astype(np.float32)
        videos.append(frames.astype(np.float32))
        labels.append(label)
    return videos, np.asarray(labels, dtype=np.int64)


def write_embedding_split(
    out_dir: str | Path,
    split: str,
    videos: list[np.ndarray],
    labels: np.ndarray,
    class_names: list[str] | None = None,
    dtype: str = "float32",
    pad_value: float = 0.0,
) -> Path:
    """Write `<split>.npy` and `<split>.json` as prepare_data.py does; returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_classes = int(labels.max()) + 1 if class_names is None else len(class_names)
    class_names = class_names or [f"class_{c}" for c in range(num_classes)]
    max_len = max(len(v) for v in videos)
    dim = videos[0].shape[1]
    arr = np.lib.format.open_memmap(out_dir / f"{split}.npy", mode="w+", dtype=dtype, shape=(len(videos), max_len, dim))
    arr[:] = pad_value
    records = []
    for i, (video, label) in enumerate(zip(videos, labels, strict=True)):
        arr[i, : len(video)] = video
        records.append(
            {"video_idx": i, "video_name": f"{split}_{i:05d}", "video_length": len(video), "label_idx": int(label)}
        )
    arr.flush()
    del arr
    meta = {
        "data": records,
        "memmap_size": [len(videos), max_len, dim],
        "split": split,
        "backbone": "synthetic",
        "weights": "none",
        "fps": 1.0,
        "image_size": 64,
        "resize": "crop",
        "dtype": dtype,
        "max_len": max_len,
        "feature_dim": dim,
        "class_names": class_names,
        "num_classes": num_classes,
    }
    path = out_dir / f"{split}.json"
    atomic_write_json(path, meta)
    return path


def make_local_swap_task(
    num_samples: int,
    num_pairs: int = 2,
    dim: int = 16,
    num_protos: int = 6,
    min_repeat: int = 1,
    max_repeat: int = 6,
    noise: float = 0.5,
    seed: int = 0,
    proto_seed: int = 4321,
) -> tuple[list[np.ndarray], np.ndarray]:
    """A harder order task: class 2i plays prototypes P0..P(K-1) in order, class 2i+1 the same sequence with the
    two middle prototypes swapped (a local change inside a long sequence), every video at its own speed (each
    prototype held for r frames, r drawn from min_repeat..max_repeat: lengths vary up to max/min times).

    Every position holds r frames, so both classes have exactly the same multiset of frames: only the order of
    two neighbouring segments tells them apart, wherever the video's speed puts them."""
    protos = np.random.default_rng(proto_seed).normal(size=(num_pairs, num_protos, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    mid = num_protos // 2
    videos, labels = [], []
    for i in range(num_samples):
        label = i % (2 * num_pairs)
        order = np.arange(num_protos)
        if label % 2:
            order[[mid - 1, mid]] = order[[mid, mid - 1]]
        repeat = int(rng.integers(min_repeat, max_repeat + 1))
        clean = protos[label // 2][np.repeat(order, repeat)]
        frames = clean + noise * rng.normal(size=clean.shape).astype(np.float32)
        videos.append(frames.astype(np.float32))
        labels.append(label)
    return videos, np.asarray(labels, dtype=np.int64)


NUMBERED_STEP = 8  # grey level step between consecutive frames of write_numbered_video


def write_numbered_video(path: str | Path, num_frames: int, fps: int = 10, size: tuple[int, int] = (32, 48)) -> Path:
    """An H.264 video whose frame i is a flat grey of NUMBERED_STEP * i (i < 32), so a decoded frame says its number
    (`frame_number`): the fixture for frame-number segments (Diving48's start_frame/end_frame)."""
    import av

    if num_frames * NUMBERED_STEP > 255:
        raise ValueError(f"at most {255 // NUMBERED_STEP} numbered frames")
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "1", "bf": "0"})
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            img = np.full((*size, 3), NUMBERED_STEP * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def frame_number(rgb: np.ndarray) -> int:
    """The number of a write_numbered_video frame from its decoded pixels."""
    return int(round(float(rgb.mean()) / NUMBERED_STEP))


def make_random_swap_task(
    num_samples: int,
    num_pairs: int = 2,
    dim: int = 16,
    num_protos: int = 8,
    min_repeat: int = 1,
    max_repeat: int = 4,
    noise: float = 0.5,
    seed: int = 0,
    proto_seed: int = 2468,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Harder than make_local_swap_task: class 2i plays prototypes P0..P(K-1) in order, class 2i+1 the same with
    two neighbouring prototypes swapped at a position drawn per video (anywhere from the first pair to the last),
    and every prototype is held for its own number of frames (min_repeat..max_repeat, drawn per prototype), so
    the speed changes within a video and no fixed frame slot lines up with the swap.

    Each prototype keeps its own repeat count when it moves, so both classes draw the same multiset of frames: an
    order-blind head is at chance within a pair. A head must find a local inversion wherever it is."""
    protos = np.random.default_rng(proto_seed).normal(size=(num_pairs, num_protos, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    videos, labels = [], []
    for i in range(num_samples):
        label = i % (2 * num_pairs)
        order = np.arange(num_protos)
        where = int(rng.integers(0, num_protos - 1))
        if label % 2:
            order[[where, where + 1]] = order[[where + 1, where]]
        repeats = rng.integers(min_repeat, max_repeat + 1, size=num_protos)  # per prototype, kept when it moves
        clean = protos[label // 2][np.repeat(order, repeats[order])]
        frames = clean + noise * rng.normal(size=clean.shape).astype(np.float32)
        videos.append(frames.astype(np.float32))
        labels.append(label)
    return videos, np.asarray(labels, dtype=np.int64)
