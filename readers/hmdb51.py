"""HMDB51's official splits (testTrainMulti_7030_splits) over `<Class>/<video>` folders.

    SPLIT_DIR/<class>_test_split<N>.txt   `<video>.avi <id> ` lines: 1 = train, 2 = test, 0 = unused
    SPLIT_DIR/class_list.txt              optional: the label order (else sorted class names)

Train and test map to the project's train and test; val is carved from train by stage 1 (whole groups: clips of
one source video share a group, splits.video_group).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from readers import folder
from splits import OfficialSplit, SplitEntry
from utils import BadInputError, read_lines

log = logging.getLogger("actionbert.readers")

SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<id>\d+)\.txt$")


def is_split_dir(split_dir: Path) -> bool:
    return split_dir.is_dir() and any(SPLIT_FILE.match(p.name) for p in split_dir.iterdir())


def read_split(split_dir: Path, split_id: int) -> OfficialSplit:
    """Split `split_id`. Labels follow class_list.txt when it lists exactly the split files' classes, else
    sorted class names (stage 1 writes the order used to classInd.txt)."""
    files = {}
    for p in split_dir.iterdir():
        m = SPLIT_FILE.match(p.name)
        if m and int(m["id"]) == split_id:
            files[m["cls"]] = p
    if not files:
        raise BadInputError(f"{split_dir}: no HMDB51 files for split {split_id} (<class>_test_split{split_id}.txt)")
    class_names = sorted(files)
    class_list = split_dir / "class_list.txt"
    if class_list.is_file():
        listed = read_lines(class_list, "split file")
        if sorted(listed) == class_names:
            class_names = listed
        else:
            log.warning("%s does not match the split files' classes; using sorted class names", class_list)
    train, test = [], []
    for cls in class_names:
        path = files[cls]
        for n, line in enumerate(read_lines(path, "split file"), 1):
            parts = line.rsplit(None, 1)  # file names may hold spaces
            if len(parts) != 2 or parts[1] not in {"0", "1", "2"}:
                raise BadInputError(f"{path}: line {n} is not `<video> <0|1|2>`: {line!r}")
            if parts[1] == "1":
                train.append(SplitEntry(cls, parts[0], path.name))
            elif parts[1] == "2":
                test.append(SplitEntry(cls, parts[0], path.name))
    split = OfficialSplit("hmdb51", class_names, train, test)
    return split


READER = folder.split_files_reader(
    "hmdb51", "HMDB51 split files (<class>_test_splitN.txt) over <Class>/<video>", is_split_dir, read_split
)
