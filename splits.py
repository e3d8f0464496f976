"""Train/val/test splits: official UCF-101 and HMDB51 split files, and seeded group-aware random splits.

Clips cut from one long source video look alike, so a split that puts some on each side leaks. UCF-101 names its
clips `v_<Class>_g<NN>_c<MM>` (group NN) and HMDB51 `<source>_<tags>_<N>` (clip N of a source); every split here
keeps a group on one side. Names with neither pattern are their own group.
"""

from __future__ import annotations

import logging
import os
import random
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from layout import CLASS_INDEX, read_class_index
from utils import BadInputError, first_names, read_lines

log = logging.getLogger("actionbert.splits")

_UCF_GROUP = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c\d+$", re.IGNORECASE)
# HMDB51 meta tags: body part, camera motion, number of people, viewpoint, quality; then the clip number.
_HMDB_GROUP = re.compile(
    r"^(?P<source>.+_(?:f|h|u|l)_(?:cm|nm)_np\d+_(?:fr|ba|le|ri)_(?:bad|med|goo))_\d+$", re.IGNORECASE
)
_HMDB_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<id>\d+)\.txt$")


def name_key(name: str) -> str:
    """How names are compared: Unicode NFC (macOS writes names decomposed, NFD; lists are usually composed) and
    case-folded. Files keep their names on disk; only comparisons use the key."""
    return unicodedata.normalize("NFC", name).casefold()


class HasGroup(Protocol):
    class_name: str
    group: str


def video_group(stem: str) -> str | None:
    """The source-video group of a UCF-101 or HMDB51 clip name (case-insensitive); None for other names, which
    callers treat as a group of their own."""
    m = _UCF_GROUP.match(stem)
    if m:
        return f"v_{m['cls']}_g{int(m['group']):02d}".casefold()
    m = _HMDB_GROUP.match(stem)
    if m:
        return m["source"].casefold()
    return None


def group_split(items: Sequence[HasGroup], ratio: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Split into (first, second) with about `ratio` of each class's videos first, whole groups only.

    Stratified by class and seeded; the result depends only on the items, ratio and seed, not on their order.
    A class with two or more groups gets at least one group on each side when 0 < ratio < 1.
    """
    if not 0.0 <= ratio <= 1.0:
        raise BadInputError(f"split ratio must be within [0, 1], got {ratio}")
    by_class: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        by_class[item.class_name][item.group].append(item)
    rng = random.Random(seed)
    first: list[Any] = []
    second: list[Any] = []
    for cls in sorted(by_class):
        groups = [by_class[cls][g] for g in sorted(by_class[cls])]
        rng.shuffle(groups)
        target = ratio * sum(len(g) for g in groups)
        a: list[list[Any]] = []
        b: list[list[Any]] = []
        count = 0
        for g in groups:
            if count + len(g) / 2 <= target:
                a.append(g)
                count += len(g)
            else:
                b.append(g)
        if len(groups) >= 2 and 0 < ratio < 1:
            if not b:
                b.append(a.pop())
            elif not a:
                a.append(b.pop(0))
        first.extend(v for g in a for v in g)
        second.extend(v for g in b for v in g)
    return first, second


# ----- official split files -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitEntry:
    """One video named by an official split file: its class (as the split names it) and file name."""

    class_name: str
    file_name: str
    source: str  # split file it came from, for messages

    @property
    def stem(self) -> str:
        return os.path.splitext(self.file_name)[0]


@dataclass
class OfficialSplit:
    format: str  # "ucf101" or "hmdb51"
    class_names: list[str]  # label order (0-based)
    train: list[SplitEntry]
    test: list[SplitEntry]


def detect_split_format(split_dir: str | Path) -> str:
    """'ucf101' (classInd.txt + trainlist0N.txt) or 'hmdb51' (<class>_test_splitN.txt), from the files present."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise BadInputError(f"split folder not found: {split_dir}")
    names = {p.name for p in split_dir.iterdir()}
    if CLASS_INDEX in names and any(n.startswith("trainlist") for n in names):
        return "ucf101"
    if any(_HMDB_SPLIT_FILE.match(n) for n in names):
        return "hmdb51"
    raise BadInputError(
        f"{split_dir} holds neither UCF-101 split files (classInd.txt, trainlist0N.txt, testlist0N.txt) "
        "nor HMDB51 ones (<class>_test_splitN.txt)"
    )


def _read_ucf101(split_dir: Path, split_id: int) -> OfficialSplit:
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

    return OfficialSplit(
        "ucf101",
        class_names,
        entries(f"trainlist{split_id:02d}.txt", True),
        entries(f"testlist{split_id:02d}.txt", False),
    )


def _read_hmdb51(split_dir: Path, split_id: int) -> OfficialSplit:
    files = {}
    for p in split_dir.iterdir():
        m = _HMDB_SPLIT_FILE.match(p.name)
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
    return OfficialSplit("hmdb51", class_names, train, test)


def read_official_split(split_dir: str | Path, split_id: int) -> OfficialSplit:
    """Read UCF-101 or HMDB51 split `split_id`, detecting which from the files.

    Labels follow classInd.txt for UCF-101; for HMDB51 they follow class_list.txt when it lists exactly the
    split files' classes, else sorted class names (prepare_ucf101.py writes the order used to classInd.txt).
    """
    split_dir = Path(split_dir)
    fmt = detect_split_format(split_dir)
    split = _read_ucf101(split_dir, split_id) if fmt == "ucf101" else _read_hmdb51(split_dir, split_id)
    check_official_split(split)
    log.info(
        "%s split %d from %s: %d classes, %d train and %d test videos",
        fmt,
        split_id,
        split_dir,
        len(split.class_names),
        len(split.train),
        len(split.test),
    )
    return split


def _entry_key(e: SplitEntry) -> tuple[str, str]:
    return name_key(e.class_name), name_key(e.stem)


def _names(entries: Iterable[SplitEntry], limit: int = 5) -> str:
    return first_names([f"{e.class_name}/{e.file_name} ({e.source})" for e in entries], limit)


def check_official_split(split: OfficialSplit) -> None:
    """Refuse a video listed twice in one list (it would be written twice) or in both train and test (a silent
    train/test leak). Names compare as name_key does, so an NFC and an NFD spelling are the same video."""
    for side, entries in (("train", split.train), ("test", split.test)):
        seen: dict[tuple[str, str], SplitEntry] = {}
        twice = []
        for e in entries:
            if _entry_key(e) in seen:
                twice.append(e)
            seen.setdefault(_entry_key(e), e)
        if twice:
            raise BadInputError(f"{len(twice)} video(s) are listed more than once in the {side} list: {_names(twice)}")
    train_keys = {_entry_key(e) for e in split.train}
    both = [e for e in split.test if _entry_key(e) in train_keys]
    if both:
        raise BadInputError(
            f"{len(both)} video(s) are in both the train and the test list (a train/test leak): {_names(both)}; "
            "fix the split files"
        )


def match_entries(
    entries: Sequence[SplitEntry], items: Sequence[Any]
) -> tuple[list[tuple[SplitEntry, Any]], list[SplitEntry]]:
    """Pair split entries with found videos (objects with .class_name and .stem) by class and file stem,
    compared by name_key (case-insensitive, NFC); return (pairs, missing).

    An entry whose class folder differs falls back to a stem that is unique among all found videos.
    """
    by_class_stem = {(name_key(it.class_name), name_key(it.stem)): it for it in items}
    by_stem: dict[str, list[Any]] = defaultdict(list)
    for it in items:
        by_stem[name_key(it.stem)].append(it)
    pairs, missing = [], []
    for e in entries:
        it = by_class_stem.get(_entry_key(e))
        if it is None and len(by_stem.get(name_key(e.stem), [])) == 1:
            it = by_stem[name_key(e.stem)][0]
        if it is None:
            missing.append(e)
        else:
            pairs.append((e, it))
    return pairs, missing
