"""UCF-101's official splits (UCF101TrainTestSplits-RecognitionTask) over `<Class>/<video>` folders.

    SPLIT_DIR/classInd.txt        `1 ApplyEyeMakeup` ... (1-based ids: the label order)
    SPLIT_DIR/trainlist0N.txt     `ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`
    SPLIT_DIR/testlist0N.txt      `ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`

Train and test map to the project's train and test; val is carved from train by stage 1 (whole groups).
"""

from __future__ import annotations

from pathlib import Path

from layout import CLASS_INDEX, read_class_index
from readers import folder
from splits import OfficialSplit, SplitEntry, name_key
from utils import BadInputError, read_lines


def is_split_dir(split_dir: Path) -> bool:
    if not split_dir.is_dir():
        return False
    names = {p.name for p in split_dir.iterdir()}
    return CLASS_INDEX in names and any(n.startswith("trainlist") for n in names)


def read_split(split_dir: Path, split_id: int) -> OfficialSplit:
    """Split `split_id`: classInd.txt's classes, the train list (labels checked against classInd.txt) and the
    test list. File names may hold spaces; a class absent from classInd.txt is refused."""
    class_names = read_class_index(split_dir / CLASS_INDEX)
    label_of = {name_key(c): i for i, c in enumerate(class_names)}

    def entries(name: str, with_label: bool) -> list[SplitEntry]:
        path = split_dir / name
        if not path.is_file():
            raise BadInputError(f"UCF-101 split file missing: {path}")
        out = []
        for n, line in enumerate(read_lines(path, "split file"), 1):
            parts = line.rsplit(None, 1) if with_label else [line]  # file names may hold spaces
            rel = parts[0].replace("\\", "/")
            if "/" not in rel:
                raise BadInputError(f"{path}: line {n} is not `<Class>/<video>`: {line!r}")
            cls, file_name = rel.rsplit("/", 1)
            if name_key(cls) not in label_of:
                raise BadInputError(f"{path}: line {n} names class {cls!r}, absent from classInd.txt")
            if with_label and (len(parts) != 2 or not parts[1].isdigit()):
                raise BadInputError(f"{path}: line {n} is not `<Class>/<video> <label>`: {line!r}")
            if with_label and int(parts[1]) != label_of[name_key(cls)] + 1:
                raise BadInputError(f"{path}: line {n} gives label {parts[1]} for {cls}, classInd.txt says otherwise")
            out.append(SplitEntry(class_names[label_of[name_key(cls)]], file_name, name))
        return out

    split = OfficialSplit(
        "ucf101",
        class_names,
        entries(f"trainlist{split_id:02d}.txt", True),
        entries(f"testlist{split_id:02d}.txt", False),
    )
    return split


READER = folder.split_files_reader(
    "ucf101", "UCF-101 split files (classInd.txt, trainlist0N.txt, testlist0N.txt) over <Class>/<video>", is_split_dir, read_split
)
