"""Train/val/test splits: the official split record the UCF-101 and HMDB51 readers fill (readers/), and seeded
group-aware random splits.

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

from utils import BadInputError, first_names

log = logging.getLogger("actionbert.splits")

_UCF_GROUP = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c\d+$", re.IGNORECASE)
# HMDB51 meta tags: body part, camera motion, number of people, viewpoint, quality; then the clip number.
_HMDB_GROUP = re.compile(
    r"^(?P<source>.+_(?:f|h|u|l)_(?:cm|nm)_np\d+_(?:fr|ba|le|ri)_(?:bad|med|goo))_\d+$", re.IGNORECASE
)


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


def checked_split(split: OfficialSplit, split_id: int, split_dir: Path) -> OfficialSplit:
    """A split read from `split_dir`, checked (check_official_split) and logged."""
    check_official_split(split)
    log.info("%s split %d from %s: %d classes, %d train and %d test videos", split.format, split_id, split_dir,
             len(split.class_names), len(split.train), len(split.test))
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
