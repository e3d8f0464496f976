"""Diving48 (48 dive classes), V2 annotations.

    ANN/Diving48_V2_train.json    [{"vid_name": "-mmq0PT-u8k_00155", "label": 0, "start_frame": 0,
    ANN/Diving48_V2_test.json       "end_frame": 184}, ...]
    ANN/Diving48_vocab.json       [["Back", "15som", "05Twis", "FREE"], ...]: class i's four attributes
    VIDEOS/<vid_name>.mp4         one flat folder

The published clips are already trimmed to the dive: start_frame/end_frame count frames of that clip (0 to its
last frame, as TRN's and mmaction2's lists use them), so the whole clip is sampled. A clip whose frame range does
not start at 0 is kept whole, and the count of such clips is logged. Train maps to train (val carved from it,
seeded, by source video: the YouTube id before the last `_`), test to test. Class i is named by its attributes
joined with `_`.
Videos not on disk are listed in failed_videos.json: a partial copy finishes (--strict fails it).
"""

from __future__ import annotations

import logging

from readers.base import Dataset, Entry, MediaIndex, Reader, ReadOptions, build_records, read_json_list, require_files
from utils import BadInputError, read_json

log = logging.getLogger("actionbert.readers")

FILES = {"train": "Diving48_V2_train.json", "test": "Diving48_V2_test.json"}
VOCAB = "Diving48_vocab.json"


def detect(options: ReadOptions) -> bool:
    return options.annotations is not None and (options.annotations / VOCAB).is_file()


def class_names(path) -> list[str]:
    vocab = read_json(path, "Diving48 vocabulary")
    if not isinstance(vocab, list) or not all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in vocab):
        raise BadInputError(f"{path}: expected a list of attribute lists, e.g. [[\"Back\", \"15som\", \"05Twis\", \"FREE\"]]")
    return ["_".join(v) for v in vocab]


def read(options: ReadOptions) -> Dataset:
    ann = options.annotations
    assert ann is not None
    require_files(ann, [VOCAB, *FILES.values()], "Diving48")
    names = class_names(ann / VOCAB)
    media = MediaIndex(options, depth=1)
    entries, failures, offset = [], [], 0
    for side, file_name in FILES.items():
        items = read_json_list(ann / file_name, ("vid_name", "label", "start_frame", "end_frame"), "Diving48 list")
        for n, item in enumerate(items):
            vid, label, where = str(item["vid_name"]), item["label"], f"{file_name}[{n}]"
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(names):
                failures.append({"file": f"{vid}.mp4", "reason": f"{where}: label {label!r} is not a class index "
                                 f"0..{len(names) - 1} of {VOCAB}"})
                continue
            offset += item["start_frame"] != 0
            group = vid.rsplit("_", 1)[0].casefold()  # clips of one YouTube video
            entries.append(Entry(media.find(vid) or f"{vid}.mp4", names[label], where, split=side, group=group))
    if offset:
        log.info("%d Diving48 clip(s) have a start_frame other than 0; their clips are sampled whole", offset)
    records, missing = build_records(entries, options, missing_fatal=False)  # a partial copy: listed
    return Dataset("diving48", records, names, failures + missing)


READER = Reader(
    name="diving48",
    description="Diving48 (Diving48_V2_{train,test}.json, Diving48_vocab.json over <vid_name>.mp4)",
    detect=detect,
    read=read,
)
