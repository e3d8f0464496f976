"""`<Class>/<video>` folders: the class is the folder's name. With no split files, stage 1 makes a seeded,
group-aware random train/val split of them. With --source_fps each video is a folder of frames,
`<Class>/<video>/00001.jpg ...`.

The official UCF-101 and HMDB51 splits (readers/ucf101.py, readers/hmdb51.py) name videos in this layout too:
`records_from_split` matches their entries to the videos found here.
"""

from __future__ import annotations

import errno
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from readers.base import Dataset, Reader, ReadOptions, Record, assign_video_names, sorted_entries
from splits import OfficialSplit, checked_split, match_entries, video_group
from utils import BadInputError, first_names
from video import IMAGE_EXTENSIONS, is_video_file

log = logging.getLogger("actionbert.readers")


@dataclass(frozen=True)
class Found:
    """A video found under the media folder: `class_name` is its folder, `stem` what split files match."""

    class_name: str
    file_name: str
    name: str  # unique video_name
    group: str

    @property
    def rel_path(self) -> str:
        return f"{self.class_name}/{self.file_name}"

    @property
    def stem(self) -> str:
        return Path(self.file_name).stem


@dataclass
class ScanResult:
    videos: list[Found]
    failures: list[dict[str, str]]
    ignored: list[str]


def _unreadable(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "unreadable: a symbolic-link loop (too many levels of symbolic links)"
    return f"unreadable ({exc.strerror or exc})"


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def scan_video_dir(video_dir: Path, frames: bool = False) -> ScanResult:
    """Find VIDEO_DIR/<Class>/<video> files (with `frames`, <Class>/<video>/ frame folders) with os.scandir
    (names may hold glob characters such as `[`).

    Hidden entries are skipped; other entries are ignored (returned in `ignored`, logged); videos outside a class
    folder, class folders with no video, and entries that cannot be read (symbolic-link loops, folders that
    cannot be listed) are failures: one bad entry never stops the scan. Broken links with a video extension are
    found, and fail later as unreadable.
    """
    if not video_dir.is_dir():
        raise BadInputError(f"video folder not found: {video_dir}")
    try:
        top = sorted_entries(video_dir)
    except OSError as exc:
        raise BadInputError(f"video folder {video_dir} cannot be listed: {exc.strerror or exc}") from None
    found: list[tuple[str, str]] = []  # (class, file name)
    failures: list[dict[str, str]] = []
    ignored: list[str] = []
    for entry in top:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError as exc:
            failures.append({"file": entry.name, "reason": _unreadable(exc)})
            continue
        if not is_dir:
            if is_video_file(entry.name):
                failures.append({"file": entry.name, "reason": "video outside any class folder (VIDEO_DIR/<Class>/)"})
            else:
                ignored.append(entry.name)
            continue
        try:
            subs = sorted_entries(Path(entry.path))
        except OSError as exc:
            failures.append({"file": entry.name + "/", "reason": f"class folder cannot be listed ({exc.strerror or exc})"})
            continue
        count, other = 0, defaultdict(int)
        for sub in subs:
            rel = f"{entry.name}/{sub.name}"
            if sub.name.startswith("."):
                continue
            try:
                sub_is_dir = sub.is_dir()
            except OSError as exc:
                failures.append({"file": rel, "reason": _unreadable(exc)})
                count += 1
                continue
            if sub_is_dir == frames and (frames or is_video_file(sub.name)):
                found.append((entry.name, sub.name))
                count += 1
            else:
                other["folder" if sub_is_dir else "image" if _is_image(sub.name) else "video" if is_video_file(sub.name) else ""] += 1
                ignored.append(rel + "/" if sub_is_dir else rel)
        if count == 0:
            failures.append({"file": entry.name + "/", "reason": _empty_reason(frames, other)})
    if ignored:
        log.info("ignoring %d non-video entr%s: %s", len(ignored), "y" if len(ignored) == 1 else "ies", first_names(ignored))
    names = assign_video_names(found, folders=frames)
    videos = [
        Found(c, f, names[(c, f)], video_group(f if frames else Path(f).stem) or names[(c, f)].casefold())
        for c, f in sorted(found)  # no group in the name: its own
    ]
    return ScanResult(videos, failures, ignored)


def _empty_reason(frames: bool, other: dict[str, int]) -> str:
    """Why a class folder holds no video, with what it holds instead when that points at the other layout."""
    if frames:
        if other["video"]:
            return f"empty class folder: no frame folders (it holds {other['video']} video file(s): drop --source_fps)"
        if other["image"]:
            return (f"empty class folder: no frame folders (it holds {other['image']} image(s): a frame folder "
                    "outside any class folder? expected VIDEO_DIR/<Class>/<video>/<frames>)")
        return "empty class folder: no frame folders"
    if other["folder"]:
        return f"empty class folder: no video files (it holds {other['folder']} folder(s): frame folders need --source_fps)"
    return "empty class folder: no video files"


def records_of(videos: list[Found]) -> list[Record]:
    return [Record(v.rel_path, v.class_name, v.name, v.group) for v in videos]


def records_from_split(official: OfficialSplit, scan: ScanResult, options: ReadOptions) -> Dataset:
    """The entries of official train/test lists matched to found videos (relabelled with the list's spelling of
    the class); entries naming absent videos are refused, or with --allow_missing listed as failures."""
    records: list[Record] = []
    missing_failures: list[dict[str, str]] = []
    all_missing = []
    used = set()
    sides: dict[str, list[str]] = defaultdict(list)  # video -> the list entries naming it
    for side, entries in (("train", official.train), ("test", official.test)):
        pairs, missing = match_entries(entries, scan.videos)
        records += [Record(it.rel_path, e.class_name, it.name, it.group, split=side) for e, it in pairs]
        used.update(it.name for _, it in pairs)
        all_missing.extend(missing)
        for e, it in pairs:
            sides[it.rel_path].append(f"{e.class_name}/{e.file_name} ({e.source})")
    # Entries that differ in the lists can still land on one file (matching falls back to a unique stem).
    twice = sorted(f"{rel} <- {' and '.join(names)}" for rel, names in sides.items() if len(names) > 1)
    if twice:
        raise BadInputError(f"{len(twice)} video(s) are named by more than one split-file entry (a duplicate, or "
                            f"a train/test leak): {first_names(twice)}")
    if all_missing:
        names = [f"{e.class_name}/{e.file_name}" for e in all_missing]
        msg = f"{len(all_missing)} video(s) named in the split files are not in the video folder: {first_names(names)}"
        if not options.allow_missing:
            raise BadInputError(msg + " (--allow_missing skips them)")
        log.warning("%s; skipping them (--allow_missing)", msg)
        missing_failures = [
            {"file": f"{e.class_name}/{e.file_name}", "reason": f"named in {e.source} but not found"}
            for e in all_missing
        ]
    unused = [it.rel_path for it in scan.videos if it.name not in used]
    if unused:
        log.info("%d video(s) are in neither list of this split and are not extracted: %s", len(unused), first_names(unused))
    return Dataset(official.format, records, official.class_names, scan.failures + missing_failures, options.split_id)


def split_files_reader(name: str, description: str, is_split_dir: Callable[[Path], bool],
                       read_split: Callable[[Path, int], OfficialSplit]) -> Reader:
    """The reader of official split files over <Class>/<video> folders (UCF-101, HMDB51): detected by
    `is_split_dir(--split_dir)`; the video folder is scanned (and checked) before the split files are read."""

    def read(options: ReadOptions) -> Dataset:
        assert options.annotations is not None
        found = scan(options)
        split = checked_split(read_split(options.annotations, options.split_id), options.split_id, options.annotations)
        return records_from_split(split, found, options)

    return Reader(name, description, lambda o: o.annotations is not None and is_split_dir(o.annotations), read)


def scan(options: ReadOptions) -> ScanResult:
    result = scan_video_dir(options.media_dir, options.frames)
    log.info("found %d %s in %d class folder(s)", len(result.videos),
             "frame folder(s)" if options.frames else "video file(s)", len({v.class_name for v in result.videos}))
    return result


def read(options: ReadOptions) -> Dataset:
    result = scan(options)
    return Dataset("folder", records_of(result.videos), None, result.failures)


READER = Reader(
    name="folder",
    description="<Class>/<video> folders (or <Class>/<video>/ frame folders with --source_fps), no split files",
    detect=lambda options: options.annotations is None,
    read=read,
    needs_annotations=False,
)
