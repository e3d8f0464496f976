"""Your own annotation file: a CSV or JSON of `path,label[,start,end]` over a folder of videos (flat or not).

    videos.csv      path,label,start,end,split          (a header row; or headerless, path,label[,start,end])
                    clips/a.mp4,Jumping,2.5,6.0,train
                    clips/b.mp4,,,,test                 (an empty label: unlabelled, goes to test)
    videos.json     [{"path": "clips/a.mp4", "label": "Jumping", "start": 2.5, "end": 6.0, "split": "train"}, ...]

`path` is relative to -v (with --source_fps, a frame folder); `start`/`end` (seconds, both or neither) cut the
exact-time sampling to that interval, so one long video can give several labelled segments. Optional columns:
`split` (train, val or validation, test: the official mapping, val carved from train when absent; without any
split column stage 1 splits train/val by --split_ratio) and `group` (videos of one group stay on one side).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from readers.base import (
    Dataset,
    Entry,
    Reader,
    ReadOptions,
    build_records,
    check_segment,
    read_csv_rows,
    seconds,
)
from utils import BadInputError, read_json
from video import VIDEO_EXTENSIONS

COLUMNS = ("path", "label", "start", "end", "split", "group")
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


def _header(row: list[str]) -> bool:
    return bool(row) and row[0].casefold() == "path"


def detect(options: ReadOptions) -> bool:
    """A .csv whose header starts `path` (or whose first field is a video file name), or a .json list whose first
    item has a "path"."""
    path = options.annotations
    if path is None or not path.is_file():
        return False
    if path.suffix.lower() == ".csv":
        rows = read_csv_rows(path)
        return bool(rows) and (_header(rows[0]) or Path(rows[0][0]).suffix.lower() in VIDEO_EXTENSIONS)
    if path.suffix.lower() == ".json":
        data = read_json(path, "annotation file")
        return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "path" in data[0]
    return False


def _fields_of_csv(path: Path) -> list[tuple[dict[str, str], str]]:
    rows = read_csv_rows(path)
    if rows and _header(rows[0]):
        names = [c.casefold() for c in rows[0]]
        unknown = [c for c in names if c not in COLUMNS]
        if unknown or "label" not in names:
            raise BadInputError(f"{path}: header {','.join(rows[0])!r} must name path,label and optionally "
                                f"start,end,split,group (unknown: {', '.join(unknown) or 'none'})")
        body, start = rows[1:], 2
    else:
        names, body, start = list(COLUMNS[:4]), rows, 1
    out = []
    for n, row in enumerate(body, start):
        if len(row) > len(names) or len(row) < 2:
            raise BadInputError(f"{path}: line {n} has {len(row)} field(s), expected {','.join(names)}: {row!r}")
        out.append((dict(zip(names, row, strict=False)), f"{path.name}:{n}"))
    return out


def _fields_of_json(path: Path) -> list[tuple[dict[str, Any], str]]:
    data = read_json(path, "annotation file")
    if not isinstance(data, list):
        raise BadInputError(f"{path}: expected a list of {{path, label[, start, end]}} objects, "
                            f"not {type(data).__name__}")
    out = []
    for n, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise BadInputError(f"{path}: item {n} is not an object with a string \"path\": {item!r:.100}")
        unknown = sorted(set(item) - set(COLUMNS))
        if unknown:
            raise BadInputError(f"{path}: item {n} has unknown key(s) {', '.join(unknown)} "
                                f"(expected {', '.join(COLUMNS)})")
        out.append((item, f"{path.name}[{n}]"))
    return out


def entry_of(fields: dict[str, Any], where: str) -> Entry:
    """One annotation as an Entry: an empty or null label is unlabelled; start and end come together."""
    path = str(fields["path"]).replace("\\", "/").strip()
    if not path or Path(path).is_absolute() or ".." in Path(path).parts:
        raise BadInputError(f"{where}: path {path!r} must be relative to the video folder (-v)")
    label = fields.get("label")
    label = None if label is None or str(label).strip() == "" else str(label).strip()
    start, end = fields.get("start"), fields.get("end")
    has = [v is not None and str(v).strip() != "" for v in (start, end)]
    if has[0] != has[1]:
        raise BadInputError(f"{where}: give both start and end (seconds) or neither")
    segment = check_segment(seconds(start, where), seconds(end, where), where) if has[0] else None
    split = fields.get("split")
    if split is not None and str(split).strip() != "":
        if str(split).strip().casefold() not in SPLIT_NAMES:
            raise BadInputError(f"{where}: split {split!r} is none of {', '.join(SPLIT_NAMES)}")
        split = SPLIT_NAMES[str(split).strip().casefold()]
    else:
        split = None
    group = fields.get("group")
    return Entry(path, label, where, segment, split, str(group) if group not in (None, "") else None)


def read(options: ReadOptions) -> Dataset:
    path = options.annotations
    if path is None or not path.is_file():
        raise BadInputError(f"annotation file not found: {path}")
    rows = _fields_of_json(path) if path.suffix.lower() == ".json" else _fields_of_csv(path)
    entries = [entry_of(fields, where) for fields, where in rows]
    if not entries:
        raise BadInputError(f"{path}: no annotations")
    with_split = [e for e in entries if e.split is not None]
    if with_split and len(with_split) != len(entries):
        e = next(e for e in entries if e.split is None)
        raise BadInputError(f"{e.source}: no split, while other lines give one (give every line a split, or none)")
    unlabelled = [e for e in entries if e.label is None and e.split not in (None, "test")]
    if unlabelled:
        raise BadInputError(f"{unlabelled[0].source}: an unlabelled video can only be in the test split")
    records, failures = build_records(entries, options)
    return Dataset("generic", records, None, failures)


READER = Reader(
    name="generic",
    description="your own CSV/JSON of path,label[,start,end][,split][,group] (--split_dir FILE)",
    detect=detect,
    read=read,
)
