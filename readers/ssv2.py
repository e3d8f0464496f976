"""Something-Something v2 (174 classes), as 20BN published it.

    ANN/something-something-v2-labels.json       {"Approaching something with your camera": "0", ...}
                                                 (template without brackets -> class index, as a string)
    ANN/something-something-v2-train.json        [{"id": "78687", "label": "...", "template": "Holding [something]
    ANN/something-something-v2-validation.json     next to [something]", "placeholders": [...]}, ...]
    ANN/something-something-v2-test.json         [{"id": "..."}]   (no labels)
    VIDEOS/<id>.webm                             one flat folder

A video's class is its `template` with `[` and `]` removed (the `label` field has the objects filled in). Train,
validation and test map to train, val and test; test is unlabelled (label_idx -1).
Videos not on disk are listed in failed_videos.json: a partial copy finishes (--strict fails it).
"""

from __future__ import annotations

from readers.base import Dataset, Entry, MediaIndex, Reader, ReadOptions, build_records, read_json_list, require_files
from splits import name_key
from utils import BadInputError, read_json

PREFIX = "something-something-v2-"
LABELS = PREFIX + "labels.json"
SIDES = (("train", "train"), ("validation", "val"), ("test", "test"))


def detect(options: ReadOptions) -> bool:
    return options.annotations is not None and (options.annotations / LABELS).is_file()


def class_names(path) -> list[str]:
    """Class names in index order from labels.json, whose indices are strings ("0" ... "173")."""
    labels = read_json(path, "SSv2 labels")
    if not isinstance(labels, dict) or not all(isinstance(v, str | int) for v in labels.values()):
        raise BadInputError(f"{path}: expected {{template: index as a string}}, e.g. {{\"Holding something\": \"0\"}}")
    try:
        by_index = {int(v): k for k, v in labels.items()}
    except ValueError:
        raise BadInputError(f"{path}: a class index is not a number (expected \"0\" ... \"{len(labels) - 1}\")") from None
    if sorted(by_index) != list(range(len(labels))):
        raise BadInputError(f"{path}: class indices must be 0..{len(labels) - 1}, each once")
    return [by_index[i] for i in range(len(labels))]


def template_class(template: str) -> str:
    return template.replace("[", "").replace("]", "")


def read(options: ReadOptions) -> Dataset:
    ann = options.annotations
    assert ann is not None
    require_files(ann, [LABELS, PREFIX + "train.json", PREFIX + "validation.json"], "Something-Something v2")
    names = class_names(ann / LABELS)
    by_key = {name_key(c): c for c in names}
    media = MediaIndex(options, depth=1)
    entries, failures = [], []
    for file_side, side in SIDES:
        path = ann / f"{PREFIX}{file_side}.json"
        if side == "test" and not path.is_file():
            continue
        items, bad = read_json_list(path, ("id",) if side == "test" else ("id", "template"), f"SSv2 {file_side} list")
        failures += bad
        for n, item in items:
            vid, where = str(item["id"]), f"{path.name}[{n}]"
            label = None
            if side != "test":
                label = by_key.get(name_key(template_class(str(item["template"]))))
                if label is None:
                    failures.append({"file": f"{vid}.webm", "reason": f"{where}: template {item['template']!r} "
                                     f"is none of the {len(names)} classes of {LABELS}"})
                    continue
            entries.append(Entry(media.find(vid) or f"{vid}.webm", label, where, split=side))
    records, missing = build_records(entries, options, missing_fatal=False)  # a partial copy: listed
    return Dataset("ssv2", records, names, failures + missing)


READER = Reader(
    name="ssv2",
    description=f"Something-Something v2 ({PREFIX}{{labels,train,validation,test}}.json over <id>.webm)",
    detect=detect,
    read=read,
)
