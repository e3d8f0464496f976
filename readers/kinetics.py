"""Kinetics-400/600/700 as the CVDF/DeepMind annotation CSVs describe it.

    ANN/train.csv, validate.csv, test.csv (or one CSV)   label,youtube_id,time_start,time_end,split[,is_cc]
                                                         (test may lack the label column, or leave it empty)
    VIDEOS/[<split>/][<label>/]<youtube_id>_<start:06d>_<end:06d>.mp4   per-class or flat folders

The clips are already cut to [time_start, time_end], so each is sampled whole. Many YouTube videos are gone:
clips that are not on disk are counted and listed in failed_videos.json, never fatal (--strict makes the run
exit non-zero), and so is a line that cannot be read (readers.base.EntryFile). The `split` column maps train,
val/validate and test to train, val and test; clips of one YouTube video share a group.
"""

from __future__ import annotations

from pathlib import Path

from readers.base import Dataset, Entry, EntryFile, MediaIndex, Reader, ReadOptions, build_records, read_csv_rows
from readers.generic import SPLIT_NAMES
from utils import BadInputError

HEADER = ("label", "youtube_id", "time_start", "time_end", "split")


def _csvs(ann: Path) -> list[Path]:
    if ann.is_file():
        return [ann]
    return sorted(p for p in ann.glob("*.csv") if p.is_file())


def _header(path: Path) -> list[str] | None:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        first = fh.readline().strip().split(",")
    return first if {"youtube_id", "time_start", "time_end"} <= set(first) else None


def detect(options: ReadOptions) -> bool:
    ann = options.annotations
    return ann is not None and ann.exists() and any(_header(p) for p in _csvs(ann))


def clip_stem(youtube_id: str, start: str, end: str) -> str:
    """The file stem the download scripts give a clip: `<youtube_id>_<start:06d>_<end:06d>` (whole seconds)."""
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


def read(options: ReadOptions) -> Dataset:
    ann = options.annotations
    assert ann is not None
    media = MediaIndex(options, depth=3)  # VIDEOS/<split>/<label>/<clip>.mp4 at most
    entries, failures = [], []
    for path in _csvs(ann):
        header = _header(path)
        if header is None:
            raise BadInputError(f"{path}: not a Kinetics CSV (expected the header {','.join(HEADER)}[,is_cc])")
        listed = EntryFile(path)
        for n, row in enumerate(read_csv_rows(path)[1:], 2):
            where = f"{path.name}:{n}"
            f = dict(zip(header, row, strict=False))
            try:
                stem = clip_stem(f["youtube_id"], f["time_start"], f["time_end"]) if f.get("youtube_id") else None
            except (KeyError, ValueError, OverflowError):
                stem = None
            split = SPLIT_NAMES.get(f.get("split", "").casefold())
            clip = f"{stem}.mp4" if stem else None
            if len(row) != len(header):
                listed.fail(where, f"{len(row)} field(s), the header {len(header)}: {','.join(row)!r:.120}", clip)
            elif stem is None:
                listed.fail(where, f"no youtube_id, or time_start/time_end are not numbers: {','.join(row)!r:.120}")
            elif split is None:
                listed.fail(where, f"split {f.get('split')!r} is none of train, val, test", clip)
            else:
                listed.ok()
                label = f.get("label") or None
                found = media.find(stem, label)
                entries.append(Entry(found or f"{stem}.mp4", label, where, split=split,
                                     group=f["youtube_id"].casefold()))
        failures += listed.failures()
    if not entries:
        raise BadInputError(f"{ann}: no Kinetics clips listed")
    records, missing = build_records(entries, options, missing_fatal=False)
    # The classes the CSVs name, not those with clips on disk: a class whose clips are all gone keeps its index.
    names = sorted({e.label for e in entries if e.label is not None})
    return Dataset("kinetics", records, names, failures + missing)


READER = Reader(
    name="kinetics",
    description="Kinetics CSVs (label,youtube_id,time_start,time_end,split[,is_cc]) over <id>_<start>_<end>.mp4",
    detect=detect,
    read=read,
)
