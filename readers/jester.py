"""Jester (27 hand gestures), as 20BN published it: JPEG frames at 12 fps, not videos.

    ANN/jester-v1-labels.csv        one class name per line (the label order)
    ANN/jester-v1-train.csv         `34870;Drumming Fingers` lines (semicolon-separated)
    ANN/jester-v1-validation.csv
    ANN/jester-v1-test.csv          `id` lines (no labels)
    FRAMES/<id>/00001.jpg ...       one folder per video

Train, validation and test map to train, val and test; test is unlabelled. Frames are read at 12 fps unless
--source_fps says otherwise.
Videos not on disk are listed in failed_videos.json: a partial copy finishes (--strict fails it).
"""

from __future__ import annotations

import dataclasses

from readers.base import (
    Dataset,
    Entry,
    EntryFile,
    MediaIndex,
    Reader,
    ReadOptions,
    build_records,
    read_csv_rows,
    require_files,
)
from utils import read_lines

PREFIX = "jester-v1-"
LABELS = PREFIX + "labels.csv"
SOURCE_FPS = 12.0
SIDES = (("train", "train"), ("validation", "val"), ("test", "test"))


def detect(options: ReadOptions) -> bool:
    return options.annotations is not None and (options.annotations / LABELS).is_file()


def read(options: ReadOptions) -> Dataset:
    ann = options.annotations
    assert ann is not None
    require_files(ann, [LABELS, PREFIX + "train.csv", PREFIX + "validation.csv"], "Jester")
    names = read_lines(ann / LABELS, "Jester labels")
    known = set(names)
    options = dataclasses.replace(options, frames=True)  # Jester ships frame folders
    media = MediaIndex(options, depth=1)
    entries, failures = [], []
    for file_side, side in SIDES:
        path = ann / f"{PREFIX}{file_side}.csv"
        if side == "test" and not path.is_file():
            continue
        listed = EntryFile(path)
        for n, row in enumerate(read_csv_rows(path, delimiter=";"), 1):
            where = f"{path.name}:{n}"
            if len(row) != (1 if side == "test" else 2) or not row[0]:
                listed.fail(where, f"not `{'id' if side == 'test' else 'id;label'}` (semicolon-separated): "
                            f"{';'.join(row)!r}")
                continue
            listed.ok()
            label = None if side == "test" else row[1]
            if label is not None and label not in known:
                failures.append({"file": row[0], "reason": f"{where}: label {label!r} is not in {LABELS}"})
                continue
            entries.append(Entry(media.find(row[0]) or row[0], label, where, split=side))
        failures += listed.failures()
    records, missing = build_records(entries, options, missing_fatal=False)  # a partial copy: listed
    return Dataset("jester", records, names, failures + missing, source_fps=SOURCE_FPS)


READER = Reader(
    name="jester",
    description=f"Jester ({PREFIX}{{labels,train,validation,test}}.csv over <id>/ frame folders at 12 fps)",
    detect=detect,
    read=read,
)
