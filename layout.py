"""The files one stage hands the next, read and written in one place: split JSONs, classInd.txt, stage 1's
frames folder (which files are frames) and its manifest.json.

    OUT/<split>_ucf101.json     [{"video_name", "label_idx", ...}]: the two keys are the contract, extra keys are fine
    OUT/classInd.txt            `1 ClassName` lines, label_idx + 1 in order (UCF-101's own format)
    OUT/frames/<video_name>/frame_000001.jpg ...   frame k is the file frame_<k>.jpg, k = 1, 2, ...
    OUT/frames/manifest.json    {"fps", "frame_size", "jpeg_quality", "videos": {name: {"num_frames", ...}}}

What a frames folder holds, as stage 2 and the end-to-end clip route both read it: a video has as many frames as
the highest k of its `frame_<k>.jpg` files (`frame_name` spells k). Other files in the folder (notes, thumbnails,
.DS_Store, frames under another name) are not frames and are ignored. A number missing below the highest (a gap:
a frame deleted or lost after stage 1, which writes every folder whole) is a missing frame, and readers treat it
exactly as a corrupt one: stage 2 leaves it out and counts it in `skipped_frames`, a clip uses the nearest readable
frame of the same video instead (transforms.FrameError for both). So the two routes see the same frames at the
same positions. A folder whose highest k differs from the frame count its manifest record names is left out
whole by both routes (`video_frames`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from utils import BadInputError, atomic_write_text, read_json, read_lines

log = logging.getLogger("actionbert")

CLASS_INDEX = "classInd.txt"
# label_idx of a video without a label (an official test split that publishes none: SSv2's, Jester's). Only a
# split JSON read with `unlabelled=True` (stage 2, which embeds them) accepts it.
UNLABELLED = -1
MANIFEST = "manifest.json"
# Stage 1's settings that decide the pixels of every frame: predict.py must repeat them on a raw video.
FRAME_SETTINGS = ("fps", "frame_size", "jpeg_quality")

_FRAME_NAME = "frame_{:06d}.jpg"
_FRAME_FILE = re.compile(r"frame_(\d+)\.jpg")


# ----------------------------------------------------------------------------------------------- split JSON


def split_json_name(split: str) -> str:
    """The file name stage 1 gives a split's JSON."""
    return f"{split}_ucf101.json"


def split_json_path(split_json_dir: str | os.PathLike, split: str) -> Path:
    """`<dir>/<split>_ucf101.json` as stage 1 writes it (or `<dir>/<split>.json`)."""
    base = Path(split_json_dir)
    for candidate in (base / split_json_name(split), base / f"{split}.json"):
        if candidate.is_file():
            return candidate
    raise BadInputError(f"no {split} split in {base}: expected {split_json_name(split)} (stage 1's output)")


def check_split_entries(records: Any, source: str = "split", unlabelled: bool = False) -> list[dict[str, Any]]:
    """A split's records, refused with a message naming `source` unless each has a str video_name and an int
    label_idx >= 0 (not a bool; UNLABELLED too with `unlabelled`), no video_name appears twice, and there is at
    least one."""
    if not isinstance(records, list):
        raise BadInputError(f"{source} must hold a list of {{video_name, label_idx}} records, not "
                            f"{type(records).__name__}")
    seen = set()
    for k, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("video_name"), str) or "label_idx" not in rec:
            raise BadInputError(f"{source}: record {k} lacks video_name/label_idx: {rec!r:.120}")
        label = rec["label_idx"]
        if isinstance(label, bool) or not isinstance(label, int) or (label < 0 and not (unlabelled and label == UNLABELLED)):
            raise BadInputError(f"{source}: record {k} has label_idx {label!r}, not an int >= 0"
                                + ("" if unlabelled else f" (an unlabelled video, {UNLABELLED}, is for stage 2 only)"
                                   if label == UNLABELLED else ""))
        name = rec["video_name"]
        if name in seen:
            raise BadInputError(f"{source}: video_name {name!r} appears twice")
        seen.add(name)
    if not records:
        raise BadInputError(f"{source} lists no videos")
    return records


def read_split_json(path: str | os.PathLike, unlabelled: bool = False) -> list[dict[str, Any]]:
    """A split JSON's records ({"video_name", "label_idx", ...}), checked by `check_split_entries`."""
    return check_split_entries(read_json(path, "split JSON"), f"split JSON {path}", unlabelled)


def split_id_of(records: Sequence[Any], source: str | os.PathLike = "split JSON") -> int | None:
    """The official split id stage 1 recorded in each record of a split JSON (`split_id`), None for a random split.

    Stages 2 and 3 carry it into the checkpoint's data_info, so that compare_runs.py can tell the official splits'
    runs apart and average over them."""
    ids = {r.get("split_id") for r in records if isinstance(r, dict)}
    if len(ids) > 1:
        raise BadInputError(f"{source} mixes records of several official splits ({', '.join(sorted(map(str, ids)))}); "
                            "rerun prepare_ucf101.py for one --split_id")
    found = next(iter(ids), None)
    return None if found is None else int(found)


# ----------------------------------------------------------------------------------------------- classInd.txt


def read_class_index(path: str | os.PathLike) -> list[str]:
    """Class names in label order from a `1 ClassName` file (UCF-101's classInd.txt); ids must be 1..N.
    A name may contain spaces (class folders of the user's own videos do); stage 1 writes them as they are."""
    path = Path(path)
    names: list[str] = []
    for n, line in enumerate(read_lines(path, "split file"), 1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise BadInputError(f"{path}: line {n} is not `<id> <ClassName>`: {line!r}")
        if int(parts[0]) != len(names) + 1:
            raise BadInputError(f"{path}: line {n} has id {parts[0]}, expected {len(names) + 1}")
        names.append(parts[1])
    if not names:
        raise BadInputError(f"{path}: no classes")
    return names


def format_class_index(class_names: Iterable[str]) -> str:
    return "".join(f"{i} {name}\n" for i, name in enumerate(class_names, 1))


def write_class_index(path: str | os.PathLike, class_names: Iterable[str]) -> None:
    atomic_write_text(path, format_class_index(class_names))


def read_class_names(split_dir: str | os.PathLike, entries: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Class names in label order for a split's entries: classInd.txt in `split_dir` (stage 1 writes it beside the
    split JSONs) when present, and then every label_idx must be one of its lines; else each label's class_name
    from the entries, and class_<i> for a label without one (with a warning)."""
    path = Path(split_dir) / CLASS_INDEX
    num = 1 + max((int(e["label_idx"]) for e in entries), default=-1)
    if path.is_file():
        names = read_class_index(path)
        bad = [e for e in entries if e["label_idx"] >= len(names)]
        if bad:
            raise BadInputError(f"{len(bad)} video(s) have a label_idx outside the {len(names)} classes of {path}, "
                                f"first {bad[0]['video_name']!r} (label_idx {bad[0]['label_idx']})")
        return names
    names = [f"class_{i}" for i in range(num)]
    for e in entries:
        if isinstance(e.get("class_name"), str):
            names[int(e["label_idx"])] = e["class_name"]
    if entries:
        log.warning("no %s: class names taken from the split's class_name fields, else class_<i>", path)
    return names


# ----------------------------------------------------------------------------------------------- frames


def frame_name(index: int) -> str:
    """File name of the 0-based frame `index` (files count from 1: frame_000001.jpg is index 0)."""
    return _FRAME_NAME.format(index + 1)


def frame_path(frames_dir: str | os.PathLike, video_name: str, index: int) -> Path:
    return Path(frames_dir) / video_name / frame_name(index)


def count_frames(video_dir: str | os.PathLike) -> int:
    """Frames of one video folder: the highest k of its frame_<k>.jpg files, 0 without any (or without the
    folder). See the module docstring for stray files and gaps."""
    try:
        with os.scandir(video_dir) as it:
            names = [e.name for e in it if e.is_file()]
    except OSError:
        return 0
    count = 0
    for name in names:
        m = _FRAME_FILE.fullmatch(name)
        if m and frame_name(int(m[1]) - 1) == name:  # frame_1.jpg or frame_0000001.jpg would not be read back
            count = max(count, int(m[1]))
    return count


def video_frames(
    frames_dir: str | os.PathLike, video_name: str, record: Mapping[str, Any] | None = None
) -> tuple[int, str | None]:
    """(number of frames, None) of a split entry's frames folder, or (0, why it is unusable): the failure reason
    both routes report for a video they leave out. `record` is the video's entry in stage 1's manifest
    (`manifest_videos`): a folder whose frames end elsewhere than its record says (two stage-1 runs writing one
    folder, frames deleted) disagrees with it, and using it would hide that."""
    if Path(video_name).is_absolute() or ".." in Path(video_name).parts:
        return 0, "video_name is not a plain folder name"
    folder = Path(frames_dir) / video_name
    if not folder.is_dir():
        return 0, "no frames folder"
    n = count_frames(folder)
    if not n:
        return 0, "frames folder holds no frame_NNNNNN.jpg files"
    expected = (record or {}).get("num_frames")
    if isinstance(expected, int) and not isinstance(expected, bool) and n != expected:
        return 0, f"the folder holds {n} frame(s) but stage 1's manifest records {expected}; rerun prepare_ucf101.py"
    return n, None


# ----------------------------------------------------------------------------------------------- manifest.json


def read_manifest(frames_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Stage 1's frames/manifest.json, or None when there is none (frames made by something else)."""
    path = Path(frames_dir) / MANIFEST
    if not path.is_file():
        return None
    manifest = read_json(path, "frames manifest")
    if not isinstance(manifest, dict):
        raise BadInputError(f"frames manifest {path} must hold a JSON object, not {type(manifest).__name__}")
    return manifest


def manifest_videos(frames_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Stage 1's per-video records ({video_name: {"num_frames", "source_size", "source_mtime_ns", ...}}) from
    the manifest; {} without one."""
    videos = (read_manifest(frames_dir) or {}).get("videos")
    if not isinstance(videos, dict):
        return {}
    return {name: v for name, v in videos.items() if isinstance(v, dict)}


def read_frame_settings(frames_dir: str | os.PathLike) -> dict[str, Any]:
    """Stage 1's fps, frame_size and jpeg_quality from the frames manifest: predict.py needs all three to
    reproduce from a raw video the exact pixels later stages read. Null (with a warning) without a manifest."""
    manifest = read_manifest(frames_dir)
    if manifest is None:
        log.warning("no %s: fps, frame_size and jpeg_quality recorded as null (predict.py will refuse)",
                    Path(frames_dir) / MANIFEST)
        return dict.fromkeys(FRAME_SETTINGS)
    fps = manifest.get("fps")
    return {"fps": None if fps is None else float(fps), "frame_size": manifest.get("frame_size"),
            "jpeg_quality": manifest.get("jpeg_quality")}
