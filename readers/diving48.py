"""Diving48 (48 dive classes), V2 annotations.

    ANN/Diving48_V2_train.json    [{"vid_name": "-mmq0PT-u8k_00155", "label": 0, "start_frame": 0,
    ANN/Diving48_V2_test.json       "end_frame": 184}, ...]
    ANN/Diving48_vocab.json       [["Back", "15som", "05Twis", "FREE"], ...]: class i's four attributes
    VIDEOS/<vid_name>.mp4         one flat folder

start_frame/end_frame number frames of the clip (0-based, both included, as TRN's and mmaction2's lists count
them) and cut the exact-time sampling to the interval those frames are shown (a video.FrameSpan): stage 1 takes the
interval from the decoded timestamps of those very frames, which is exact whatever the frame rate, where converting
the numbers to seconds with a nominal rate would drift on variable-rate files. The published clips mostly span
0..their last frame, so the whole clip is sampled; an end_frame past the clip's last frame ends at the clip's end.
A range that is not two integers 0 <= start_frame <= end_frame is that entry's failure. Train maps to train (val carved from it,
seeded, by source video: the YouTube id before the last `_`), test to test. Class i is named by its attributes
joined with `_`.
Videos not on disk are listed in failed_videos.json: a partial copy finishes (--strict fails it).
"""

from __future__ import annotations

import logging

from readers.base import Dataset, Entry, MediaIndex, Reader, ReadOptions, build_records, read_json_list, require_files
from utils import BadInputError, read_json
from video import FrameSpan

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


def frame_span(start: object, end: object) -> FrameSpan | None:
    """The annotation's frames as a FrameSpan, or None when they are not integers 0 <= start <= end."""
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (start, end)) or not 0 <= start <= end:
        return None
    return FrameSpan(start, end)


def read(options: ReadOptions) -> Dataset:
    ann = options.annotations
    assert ann is not None
    require_files(ann, [VOCAB, *FILES.values()], "Diving48")
    names = class_names(ann / VOCAB)
    media = MediaIndex(options, depth=1)
    entries, failures, offset = [], [], 0
    for side, file_name in FILES.items():
        items, bad = read_json_list(ann / file_name, ("vid_name", "label", "start_frame", "end_frame"), "Diving48 list")
        failures += bad
        for n, item in items:
            vid, label, where = str(item["vid_name"]), item["label"], f"{file_name}[{n}]"
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(names):
                failures.append({"file": f"{vid}.mp4", "reason": f"{where}: label {label!r} is not a class index "
                                 f"0..{len(names) - 1} of {VOCAB}"})
                continue
            span = frame_span(item["start_frame"], item["end_frame"])
            if span is None:
                failures.append({"file": f"{vid}.mp4", "reason": f"{where}: start_frame {item['start_frame']!r} and "
                                 f"end_frame {item['end_frame']!r} are not frame numbers 0 <= start <= end"})
                continue
            offset += span.first != 0
            group = vid.rsplit("_", 1)[0].casefold()  # clips of one YouTube video
            entries.append(Entry(media.find(vid) or f"{vid}.mp4", names[label], where, span, split=side,
                                 group=group))
    if offset:
        log.info("%d Diving48 clip(s) start after their first frame (start_frame > 0): sampled from there", offset)
    records, missing = build_records(entries, options, missing_fatal=False)  # a partial copy: listed
    return Dataset("diving48", records, names, failures + missing)


READER = Reader(
    name="diving48",
    description="Diving48 (Diving48_V2_{train,test}.json, Diving48_vocab.json over <vid_name>.mp4)",
    detect=detect,
    read=read,
)
