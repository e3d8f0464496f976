"""What every dataset reader returns, and the small helpers several readers share.

A reader turns one dataset format's files (annotation files, a media folder) into `Record`s; stage 1
(prepare_ucf101.py) turns records into work (frames extracted at exact times, split JSONs). A reader never decodes
media: it says which file or frame folder is which labelled video, and which entries could not be used.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layout import MANIFEST
from splits import name_key, video_group
from utils import NAME_MAX, BadInputError, first_names, fit_name, read_json
from video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, FrameSpan, Segment

log = logging.getLogger("actionbert.readers")

# The project's splits, in the order stage 1 writes them. A dataset's own "validation" is "val".
SPLITS = ("train", "val", "test")
# A video_name names its frames folder and its record <name>.json: at most NAME_MAX bytes with the suffix.
VIDEO_NAME_MAX = NAME_MAX - len(".json")
RESERVED_NAMES = frozenset({MANIFEST})  # frames/ entries that no video may take


@dataclass(frozen=True)
class Record:
    """One labelled (or unlabelled) video as a dataset names it.

    path: the video file or frame folder, relative to the media folder (-v), '/'-separated.
    label: class name; None for an unlabelled video (an official test split without labels).
    segment: (start, end) seconds of the video to sample, or a video.FrameSpan of frame numbers (Diving48's
        start_frame/end_frame, applied to the decoded frames exactly); None for all of it.
    split: the dataset's own split ("train", "val", "test"), None where the dataset has none.
    group: videos cut from one source share a group, kept on one side of any split stage 1 makes.
    name: the video_name (frames folder, split JSON key): unique, fits a file name.
    """

    path: str
    label: str | None
    name: str
    group: str
    segment: Segment | None = None
    split: str | None = None


@dataclass
class Dataset:
    """A reader's answer. `class_names` gives the label order (None: sorted class names of the usable videos);
    `failures` are entries left out with their reason ({"file", "reason"}), written to failed_videos.json;
    `source_fps` the frame rate of frame folders where the format states one (Jester: 12)."""

    format: str
    records: list[Record]
    class_names: list[str] | None = None
    failures: list[dict[str, str]] = field(default_factory=list)
    split_id: int | None = None
    source_fps: float | None = None


@dataclass(frozen=True)
class ReadOptions:
    """What a reader may use from stage 1's command line."""

    media_dir: Path  # -v: videos or frame folders
    annotations: Path | None  # --split_dir: a folder of the dataset's files, or one file
    split_id: int = 1
    allow_missing: bool = False  # entries naming absent media are skipped instead of refused
    frames: bool = False  # --source_fps given: media are frame folders, not video files


@dataclass(frozen=True)
class Reader:
    """A registry entry: `detect(options)` says whether the files are this format (unambiguously), `read` reads
    them. `needs_annotations`: the format lives in annotation files (--split_dir), not in the folder layout."""

    name: str
    description: str
    detect: Callable[[ReadOptions], bool]
    read: Callable[[ReadOptions], Dataset]
    needs_annotations: bool = True


# ----- naming ---------------------------------------------------------------------------------------------------


def assign_video_names(found: Sequence[tuple[str, str]], folders: bool = False) -> dict[tuple[str, str], str]:
    """Name each (folder, file) by its file stem (a frame folder, `folders`, by its whole name); stems shared by several files (compared by splits.name_key:
    case-insensitively and after Unicode NFC, so frame folders stay distinct on any file system) become
    `<folder>__<stem>`, then `<folder>__<file name>` ('/' in a folder path becomes '__').

    A name longer than VIDEO_NAME_MAX bytes (a long folder in front of a long stem) is cut to fit with a hash of
    the whole (utils.fit_name), so its frames folder and record can be created, and the same videos get the same
    names on every rerun. `manifest.json` is taken: a video of that stem gets the longer forms."""

    def unique(candidates: dict[tuple[str, str], str]) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]]]:
        candidates = {k: fit_name(v, VIDEO_NAME_MAX) for k, v in candidates.items()}
        seen: dict[str, int] = defaultdict(int, {name_key(r): 1 for r in RESERVED_NAMES})
        for name in candidates.values():
            seen[name_key(name)] += 1
        ok = {k: v for k, v in candidates.items() if seen[name_key(v)] == 1}
        return ok, set(candidates) - set(ok)

    def prefix(folder: str) -> str:
        return folder.replace("/", "__") + "__" if folder else ""

    def stem(file_name: str) -> str:
        return file_name if folders else Path(file_name).stem

    names, clash = unique({(c, f): stem(f) for c, f in found})
    if clash:
        log.info(
            "%d videos share a file name with a video in another folder; naming them <Class>__<stem>: %s",
            len(clash),
            first_names(sorted(f"{c}/{f}" for c, f in clash)),
        )
        more, clash = unique({(c, f): f"{prefix(c)}{stem(f)}" for c, f in clash})
        names.update(more)
        if clash:
            more, clash = unique({(c, f): f"{prefix(c)}{f.replace('.', '_')}" for c, f in clash})
            names.update(more)
        for n, key in enumerate(sorted(clash), 1):  # only file names equal up to case in one folder remain
            names[key] = fit_name(f"{prefix(key[0])}{key[1].replace('.', '_')}", VIDEO_NAME_MAX - len(f"__{n}")) + f"__{n}"
    return names


def sorted_entries(folder: Path) -> list[os.DirEntry]:
    """A folder's entries by name (os.scandir: names may hold glob characters such as `[`)."""
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def split_rel(path: str) -> tuple[str, str]:
    """'a/b/c.mp4' -> ('a/b', 'c.mp4'); a flat 'c.mp4' -> ('', 'c.mp4')."""
    folder, _, name = path.rpartition("/")
    return folder, name


# ----- what the annotation readers share ------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One video as an annotation file names it, before its media are found; `source` is "file:line" (messages)."""

    path: str
    label: str | None
    source: str
    segment: Segment | None = None
    split: str | None = None
    group: str | None = None


class MediaIndex:
    """The media folder's videos (with `frames`, frame folders) down to `depth` folders, by stem: one listing instead of a
    stat per entry and extension (Kinetics lists 650k clips), so lookups cost nothing per missing clip."""

    def __init__(self, options: ReadOptions, depth: int = 2) -> None:
        media = options.media_dir
        if not media.is_dir():
            raise BadInputError(f"video folder not found: {media}")
        self.by_stem: dict[str, list[str]] = defaultdict(list)
        self._walk(media, "", depth, options.frames)

    def _walk(self, folder: Path, prefix: str, depth: int, frames: bool) -> None:
        try:
            entries = sorted_entries(folder)
        except OSError:
            return  # an unreadable sub-folder: its videos are reported missing, by name
        for entry in entries:
            if entry.name.startswith("."):
                continue
            self._add(entry, prefix, frames)
            if depth > 1 and entry.is_dir() and not (frames and _holds_images(entry.path)):
                self._walk(Path(entry.path), prefix + entry.name + "/", depth - 1, frames)

    def _add(self, entry: os.DirEntry, prefix: str, frames: bool) -> None:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if frames and is_dir:
            self.by_stem[name_key(entry.name)].append(prefix + entry.name)
        elif not frames and not is_dir and Path(entry.name).suffix.lower() in VIDEO_EXTENSIONS:
            self.by_stem[name_key(Path(entry.name).stem)].append(prefix + entry.name)

    def find(self, stem: str, folder: str | None = None) -> str | None:
        """The video of this stem: in `folder` (a per-class folder) or flat, else the only one anywhere."""
        found = self.by_stem.get(name_key(stem), [])
        for rel in found:
            if split_rel(rel)[0] in ("", folder):
                return rel
        return found[0] if len(found) == 1 else None


def _holds_images(folder: str) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(Path(e.name).suffix.lower() in IMAGE_EXTENSIONS for e in it)
    except OSError:
        return False


class EntryFile:
    """One annotation file of a published dataset, read entry by entry. An entry that cannot be read (a damaged
    or hand-edited copy: a cut line, a missing key, a time that is not a number) is that entry's failure, listed in
    failed_videos.json with the file, its line or item and what is wrong, while the rest of the file is used, as
    for a clip that is not on disk. A file none of whose entries can be read is of another format: refused in one
    line naming it and its first bad entry."""

    def __init__(self, path: Path) -> None:
        self.path, self.read = path, 0
        self.bad: list[tuple[str, str, str | None]] = []  # (where, reason, video)

    def ok(self) -> None:
        self.read += 1

    def fail(self, where: str, reason: str, video: str | None = None) -> None:
        """The entry at `where` (`file:line`, `file[item]`) cannot be used; `video`: the clip it names, where known
        (the failure's "file", else `where` is)."""
        self.bad.append((where, reason, video))

    def failures(self) -> list[dict[str, str]]:
        if self.bad and not self.read:
            where, reason, _ = self.bad[0]
            raise BadInputError(f"{self.path}: none of its {len(self.bad)} entr{'y' if len(self.bad) == 1 else 'ies'} "
                                f"can be read; the first: {where}: {reason}")
        return [{"file": video, "reason": f"{where}: {reason}"} if video else {"file": where, "reason": reason}
                for where, reason, video in self.bad]


def read_json_list(path: Path, keys: Sequence[str], what: str) -> tuple[list[tuple[int, dict[str, Any]]],
                                                                         list[dict[str, str]]]:
    """The (index, object) items of a JSON list whose objects have `keys`, and the failures of the items that are
    not such objects (EntryFile: refused when none is). A file that is not a list is refused in one line naming it
    and what was expected."""
    data = read_json(path, what)
    if not isinstance(data, list):
        raise BadInputError(f"{path}: expected a list of {{{', '.join(keys)}}} objects ({what}), "
                            f"not {type(data).__name__}")
    listed, items = EntryFile(path), []
    for n, item in enumerate(data):
        if isinstance(item, dict) and all(k in item for k in keys):
            listed.ok()
            items.append((n, item))
        else:
            listed.fail(f"{path.name}[{n}]", f"not an object with {', '.join(keys)} ({what}): {item!r:.120}")
    return items, listed.failures()


def require_files(folder: Path, names: Sequence[str], fmt: str) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise BadInputError(f"{folder}: {fmt} needs {', '.join(names)}; missing {', '.join(missing)}")


def build_records(entries: Sequence[Entry], options: ReadOptions, missing_fatal: bool = True) -> tuple[list[Record], list[dict[str, str]]]:
    """Records of the entries whose media exist, named uniquely (assign_video_names; one video cut into several
    segments gets one name per segment), grouped by `group`, else by the UCF/HMDB name pattern, else by video
    (the segments of one video stay on one side of a split).

    Entries naming absent media are refused unless --allow_missing (or `missing_fatal=False`: datasets where
    absence is normal, Kinetics); either way they are returned as failures for failed_videos.json. An entry listed
    twice (same path and segment) is refused, naming both places."""
    seen: dict[tuple[str, Segment | None], str] = {}
    for e in entries:
        key = (e.path, e.segment)
        if key in seen:
            raise BadInputError(f"{e.path} is listed twice ({seen[key]} and {e.source})")
        seen[key] = e.source
    present, missing = [], []
    for e in entries:
        path = options.media_dir / e.path
        (present if (path.is_dir() if options.frames else path.is_file()) else missing).append(e)
    failures = [{"file": e.path, "reason": f"named in {e.source} but not found"} for e in missing]
    if missing:
        msg = (f"{len(missing)} video(s) named in the annotation files are not in {options.media_dir}: "
               f"{first_names([e.path for e in missing])}")
        if missing_fatal and not options.allow_missing:
            raise BadInputError(msg + " (--allow_missing skips them)")
        log.warning("%s; skipping them%s", msg, " (--allow_missing)" if missing_fatal else " (--strict makes it fatal)")

    def key(e: Entry) -> tuple[str, str]:
        folder, file = split_rel(e.path)
        if e.segment is None or isinstance(e.segment, FrameSpan):  # a span trims a clip; the clip keeps its name
            return folder, file
        stem, ext = (file, "") if options.frames else (Path(file).stem, Path(file).suffix)
        return folder, f"{stem}_{e.segment[0]:g}-{e.segment[1]:g}s{ext}"

    names = assign_video_names([key(e) for e in present], folders=options.frames)
    records = []
    for e in present:
        name = names[key(e)]
        group = e.group or video_group(Path(e.path).stem) or e.path.casefold()  # a video's segments: one group
        records.append(Record(e.path, e.label, name, group, e.segment, e.split))
    return records, failures


def seconds(value: Any, where: str) -> float:
    """A finite time in seconds >= 0 from an annotation field, or a BadInputError naming `where`."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise BadInputError(f"{where}: {value!r} is not a time in seconds") from None
    if not math.isfinite(t) or t < 0:
        raise BadInputError(f"{where}: time {value!r} must be a finite number >= 0")
    return t


def check_segment(start: float, end: float, where: str) -> tuple[float, float]:
    if not end > start:
        raise BadInputError(f"{where}: segment end {end} must come after its start {start}")
    return start, end


def read_csv_rows(path: Path, delimiter: str = ",") -> list[list[str]]:
    """Non-blank rows of a CSV file (UTF-8, a BOM allowed), whitespace around fields stripped."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path}: cannot be read as CSV ({exc})") from None
    return [[cell.strip() for cell in row] for row in rows if any(cell.strip() for cell in row)]
