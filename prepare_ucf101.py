"""Stage 1: split a folder of labelled videos and extract frames at exact times k / fps.

    python prepare_ucf101.py -v VIDEO_DIR -o OUT [-s 0.8] [-fps 1] [--split_dir DIR --split_id 1] [--dataset NAME]

VIDEO_DIR/<Class>/<video>.<ext> in, or the layout of a dataset whose annotation files --split_dir names (one
reader per format in readers/, detected from the files; --source_fps reads folders of frames instead of videos);
OUT/train_ucf101.json, val_ucf101.json (test_ucf101.json with official
splits), classInd.txt, failed_videos.json and frames/<video_name>/frame_000001.jpg ... plus frames/manifest.json
out. Each video is written to frames/.tmp/<name> and renamed when complete, with its metadata (and its source's
size and modification time) in frames/.meta/<name>.json, so a killed run rerun with the same command skips
finished videos whose source is unchanged and ends with the same bytes as an uninterrupted run.

Videos are decoded in worker processes, one video per worker at a time (workpool.run_isolated): a video that
raises, crashes its worker or runs past --video_timeout is listed in failed_videos.json and the rest finish.
OUT is locked for the run (utils.OutputLock): a second run on the same OUT is refused at once.

Across machines: `--shard I --num_shards N` extracts only videos I, I+N, I+2N, ... of the sorted video list into
the shared OUT (any number of shards at once, each resumable like a whole run) and records what it did in
OUT/.shards/shard-I-of-N.json; `--merge_shards N`, with the same arguments, checks that every shard is complete
and was run with these settings and writes the split JSONs, classInd.txt, manifest and failure report once,
byte-identical to one machine's run.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
from tqdm import tqdm

from layout import CLASS_INDEX, MANIFEST, UNLABELLED, frame_name, split_json_name, write_class_index
from readers import READERS, SPLITS, Dataset, ReadOptions, read_dataset
from readers.base import sorted_entries
from splits import group_split
from utils import (
    BadInputError,
    OutputLock,
    atomic_write_json,
    check_writable_dir,
    first_names,
    float_in,
    int_at_least,
    log_failure_summary,
    nonnegative_float,
    positive_int,
    run_cli,
    setup_logging,
    write_failure_report,
)
from video import (
    Segment,
    VideoDecodeError,
    describe_segment,
    iter_folder_jpegs_at_fps,
    iter_jpeg_frames_at_fps,
    segment_json,
    truncation_reason,
)
from workpool import Outcome, run_isolated

log = logging.getLogger("actionbert.prepare")

TMP_DIR = ".tmp"
META_DIR = ".meta"
SHARDS_DIR = ".shards"  # OUT/.shards/shard-I-of-N.json: what each --shard run extracted
VIDEO_TIMEOUT_S = 3600.0  # default of --video_timeout: far above any real video (UCF-101 takes ~0.1 s each)
# Errors writing frames that no other video could escape either: the stage stops instead of listing them all.
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# Test-only fault injection: "action:video_name[,action:video_name...]" with action segfault, kill, exit, hang or
# raise, applied in the worker after the video's first frame is written (tests kill a worker mid-video with it).
FAULT_ENV = "ACTIONBERT_TEST_FAULT"


@dataclass(frozen=True)
class VideoItem:
    """One video of this run: a reader's record, with its label as the split's class name (None: unlabelled).
    `video_name` is unique and names its frames folder."""

    class_name: str | None
    rel_path: str  # relative to VIDEO_DIR: a video file, or with --source_fps a frame folder
    video_name: str
    group: str
    segment: Segment | None = None


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Split labelled videos into train/val(/test) and extract frames at exact times k/fps.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-v", "--video_dir", required=True,
                   help="folder of <Class>/<video>.<ext>, or of the videos (frame folders) --split_dir's files name")
    p.add_argument("-o", "--out_dir", required=True, help="output folder (split JSONs, classInd.txt, frames/)")
    p.add_argument("-s", "--split_ratio", type=float_in(0.0, 1.0, low_open=True), default=0.8,
                   help="train share of the random split")
    p.add_argument("-fps", "--frame_rate", type=nonnegative_float, default=1.0,
                   help="frames per second to keep; 0 keeps all")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split and of the val carve")
    p.add_argument("--split_dir", "--annotations", dest="split_dir", default=None,
                   help="the dataset's split / annotation files: a folder, or one CSV/JSON file (format detected; "
                        "see --dataset)")
    p.add_argument("--dataset", default=None, choices=tuple(READERS),
                   help="the format of the files, where detection is not wanted: "
                        + "; ".join(f"{r.name} = {r.description}" for r in READERS.values()))
    p.add_argument("--source_fps", type=_positive_float, default=None,
                   help="the videos are folders of JPEG/PNG frames at this rate (numbered files, e.g. 00001.jpg), "
                        "resampled to -fps at exact times without decoding video")
    p.add_argument("--split_id", type=int, default=1, choices=(1, 2, 3), help="official split number")
    p.add_argument(
        "--val_ratio",
        type=float_in(0.0, 1.0, high_open=True),
        default=0.1,
        help="with official splits that have no val: share of train (whole groups, per class) held out as "
             "val; test is never touched",
    )
    p.add_argument("--allow_missing", action="store_true", help="skip videos named in split files but not found")
    p.add_argument("--frame_size", type=positive_int, default=None,
                   help="resize the shorter side to N px; unset keeps the original size")
    p.add_argument("--jpeg_quality", type=_jpeg_quality, default=95, help="JPEG quality of the frames (1-100)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                   help="decoding processes (each holds one video at a time; a crash in one fails only its video)")
    p.add_argument("--video_timeout", type=nonnegative_float, default=VIDEO_TIMEOUT_S,
                   help="seconds one video may take before its worker is killed and the video listed as failed "
                        "(0 = no limit)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any input had to be left out")
    p.add_argument(
        "--keep_truncated",
        action="store_true",
        help="keep videos that decode far shorter than their header declares (left out by default)",
    )
    p.add_argument("--shard", type=int_at_least(0), default=None,
                   help="with --num_shards N: extract only this shard (0..N-1) of the sorted video list into OUT, "
                        "for one of N machines sharing OUT; no split JSON or manifest is written (see --merge_shards)")
    p.add_argument("--num_shards", type=positive_int, default=None, help="how many shards --shard counts")
    p.add_argument("--merge_shards", type=positive_int, default=None, metavar="N",
                   help="after all N shards finished: check them and write the split JSONs, classInd.txt, manifest "
                        "and failure report, as one run would (pass the shards' other arguments unchanged)")
    p.add_argument("--verbose", action="store_true", help="debug logging (with the traceback of unexpected errors)")
    return p


def check_shard_args(args: argparse.Namespace) -> None:
    """--shard and --num_shards come together and agree; --merge_shards goes alone."""
    shard, num = getattr(args, "shard", None), getattr(args, "num_shards", None)
    if (shard is None) != (num is None):
        raise BadInputError("--shard and --num_shards go together (e.g. --shard 0 --num_shards 4)")
    if shard is not None and shard >= num:
        raise BadInputError(f"--shard must be in 0..{num - 1} with --num_shards {num}, got {shard}")
    if shard is not None and getattr(args, "merge_shards", None) is not None:
        raise BadInputError("--merge_shards runs after the shards, not as one of them: drop --shard/--num_shards")


def _positive_float(text: str) -> float:
    value = nonnegative_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _jpeg_quality(text: str) -> int:
    value = int_at_least(1)(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be in 1..100, got {value}")
    return value


# ----- frame extraction ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractTask:
    video_name: str
    source: str  # relative path, recorded in the manifest and in failure reports
    path: str  # absolute path
    frames_dir: str
    fps: float
    frame_size: int | None
    jpeg_quality: int
    keep_truncated: bool
    segment: Segment | None = None  # seconds of the video to sample, or frame numbers (video.FrameSpan)
    source_fps: float | None = None  # set: `path` is a folder of frames at this rate
    tmp_dir: str | None = None  # where the video is assembled (default frames/.tmp; a shard has its own)

    @property
    def tmp(self) -> Path:
        return Path(self.tmp_dir or Path(self.frames_dir) / TMP_DIR) / self.video_name


def _settings(fps: float, frame_size: int | None, jpeg_quality: int, source_fps: float | None = None) -> dict[str, Any]:
    """The settings every frame of one frames folder shares (source_fps only where frame folders are read)."""
    settings = {"fps": float(fps), "frame_size": frame_size, "jpeg_quality": jpeg_quality}
    return settings if source_fps is None else {**settings, "source_fps": float(source_fps)}


def source_stamp(path: str | os.PathLike) -> dict[str, int] | None:
    """Size and modification time (ns) of a source, through symbolic links: what a rerun compares to know that
    the video it extracted before is still the same file. A frame folder's are its files' total size and latest
    modification time (a directory's own time misses a frame rewritten in place). None when it cannot be read."""
    try:
        st = os.stat(path)
        if not os.path.isdir(path):
            return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}
        size, mtime = 0, st.st_mtime_ns
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_file():
                    est = entry.stat()
                    size, mtime = size + est.st_size, max(mtime, est.st_mtime_ns)
        return {"source_size": size, "source_mtime_ns": mtime}
    except OSError:
        return None


def _test_fault(video_name: str) -> None:
    """Test-only: act out the fault FAULT_ENV asks for on this video (see FAULT_ENV)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        action, _, name = item.partition(":")
        if name != video_name:
            continue
        if action == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "exit":
            os._exit(3)
        elif action == "hang":
            while True:
                time.sleep(60)
        elif action == "raise":
            raise RuntimeError(f"test fault injected on {video_name}")


def video_meta(task: ExtractTask, stamp: dict[str, int] | None, times: list[float], info: dict[str, Any]
               ) -> dict[str, Any]:
    """The record of one sampled video (its settings, source, stamp, timestamps, timing), or VideoDecodeError
    when the sampling cannot be kept: a truncated video (unless --keep_truncated), a segment holding no frame, a
    source that vanished. Stage 1 and prepare_data.py --videos_dir both judge a video by it."""
    reason = None if task.keep_truncated else truncation_reason(info)
    if not times and task.segment is not None:
        reason = (f"{describe_segment(task.segment)} holds no frame (the video lasts "
                  f"{info.get('duration', 0.0):.2f} s)")
    if reason:
        raise VideoDecodeError(task.path, reason + " (--keep_truncated keeps such videos)")
    if stamp is None:
        raise VideoDecodeError(task.path, "unreadable (it vanished while being read)")
    meta = {
        **_settings(task.fps, task.frame_size, task.jpeg_quality, task.source_fps),
        "source": task.source,
        **({} if task.segment is None else {"segment": segment_json(task.segment)}),
        **stamp,
        "num_frames": len(times),
        "timestamps": times,
        "timing": info.get("timing", "decoded"),
    }
    if info.get("replaced_timestamps"):
        meta["replaced_timestamps"] = info["replaced_timestamps"]
    if info.get("decoder_errors"):
        meta["decoder_errors"] = info["decoder_errors"]
    return meta


def extract_video(task: ExtractTask) -> dict[str, Any]:
    """Write one video's frames to frames/.tmp/<name>, its metadata to frames/.meta/<name>.json, then rename the
    folder into place. Returns {"video_name", "meta"}, {"video_name", "failure"} for a video that cannot be
    decoded, or {"video_name", "fatal"} when frames cannot be written at all (a full disk). Any other exception
    propagates, after the temporary folder is removed: the worker pool makes it the video's failure."""
    frames_dir = Path(task.frames_dir)
    tmp = task.tmp
    stamp = source_stamp(task.path)  # before decoding: a source changed meanwhile is redone by the next run
    times: list[float] = []
    info: dict[str, Any] = {}
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        if task.source_fps is not None:
            frames = iter_folder_jpegs_at_fps(task.path, task.source_fps, task.fps, task.frame_size,
                                              task.jpeg_quality, segment=task.segment, info=info)
        else:
            frames = iter_jpeg_frames_at_fps(task.path, task.fps, task.frame_size, task.jpeg_quality, info=info,
                                             segment=task.segment)
        for k, (t, buf) in enumerate(frames):
            with open(tmp / frame_name(k), "wb") as fh:
                fh.write(buf)
            times.append(round(t, 6))
            if k == 0:
                _test_fault(task.video_name)
        meta = video_meta(task, stamp, times, info)
        atomic_write_json(frames_dir / META_DIR / f"{task.video_name}.json", meta, indent=None, durable=False)
        final = frames_dir / task.video_name
        if final.is_dir() and not final.is_symlink():  # a folder without matching metadata, e.g. an older run's
            shutil.rmtree(final)
        os.replace(tmp, final)
    except VideoDecodeError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return {"video_name": task.video_name, "failure": {"file": task.source, "reason": exc.reason}}
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in FATAL_WRITE_ERRNOS:
            return {"video_name": task.video_name, "fatal": f"cannot write frames under {frames_dir}: "
                    f"{exc.strerror or exc}"}
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"video_name": task.video_name, "meta": meta}


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def finished_meta(frames_dir: Path, item: VideoItem, settings: dict[str, Any], source: Path) -> dict[str, Any] | None:
    """The metadata of a video already extracted with these settings from the same, unchanged source (same path,
    size and modification time), else None. A record without the source's size (an older run) is redone."""
    folder = frames_dir / item.video_name
    meta = _read_meta(frames_dir / META_DIR / f"{item.video_name}.json")
    if meta is None or not isinstance(meta, dict) or not folder.is_dir() or meta.get("source") != item.rel_path:
        return None
    if meta.get("segment") != segment_json(item.segment):
        return None
    if any(meta.get(k) != v for k, v in settings.items()):
        return None
    stamp = source_stamp(source)
    if stamp is None or any(meta.get(k) != v for k, v in stamp.items()):
        return None
    n = meta.get("num_frames", 0)
    if not isinstance(n, int) or n < 1 or not (folder / frame_name(n - 1)).is_file():
        return None
    return meta


def check_frames_settings(frames_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix frames taken with other fps, frame size or JPEG quality into one frames folder."""
    sources = []
    manifest = _read_meta(frames_dir / MANIFEST)
    if isinstance(manifest, dict):
        sources.append((frames_dir / MANIFEST, manifest))
    meta_dir = frames_dir / META_DIR
    if meta_dir.is_dir():
        for entry in sorted_entries(meta_dir):
            if entry.name.endswith(".json") and (frames_dir / entry.name[: -len(".json")]).is_dir():
                meta = _read_meta(Path(entry.path))
                if isinstance(meta, dict):
                    sources.append((Path(entry.path), meta))
    keys = (*settings, *(k for k in ("source_fps",) if k not in settings))  # video files vs frame folders too
    for path, meta in sources:
        old = {k: meta.get(k) for k in keys}
        if old != {k: settings.get(k) for k in keys}:
            raise BadInputError(
                f"{frames_dir} already holds frames made with {_fmt(old)} (see {path}); this run asks for "
                f"{_fmt(settings)}. Mixing them in one frames folder is refused: use another --out_dir, "
                f"or delete {frames_dir} to start over"
            )


def _fmt(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def extract_all(
    items: list[VideoItem], video_dir: Path, frames_dir: Path, args: argparse.Namespace,
    source_fps: float | None = None, shard: str | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Extract every video not already done; returns ({video_name: meta}, {video_name: failure}). Completion order
    does not matter: every output is keyed by video name. `shard` (its name) assembles videos in its own
    frames/.tmp/<shard>, so shards sharing one frames folder never clear each other's unfinished videos."""
    settings = _settings(args.frame_rate, args.frame_size, args.jpeg_quality, source_fps)
    frames_dir.mkdir(parents=True, exist_ok=True)
    check_frames_settings(frames_dir, settings)
    tmp = frames_dir / TMP_DIR if shard is None else frames_dir / TMP_DIR / shard
    if tmp.is_dir():
        leftovers = [e.name for e in sorted_entries(tmp)]
        if leftovers:
            log.info("redoing %d video(s) left unfinished by an interrupted run: %s", len(leftovers), first_names(leftovers))
        shutil.rmtree(tmp)
    metas: dict[str, dict[str, Any]] = {}
    tasks = []
    changed = []
    for item in items:
        source = video_dir / item.rel_path  # the names on disk: a split file may spell the class otherwise
        meta = finished_meta(frames_dir, item, settings, source)
        if meta is not None:
            metas[item.video_name] = meta
            continue
        if (frames_dir / item.video_name).is_dir():
            changed.append(item.rel_path)
        tasks.append(ExtractTask(item.video_name, item.rel_path, str(source), str(frames_dir), args.frame_rate,
                                 args.frame_size, args.jpeg_quality, args.keep_truncated, item.segment, source_fps,
                                 None if shard is None else str(tmp)))
    if metas:
        log.info("%d video(s) already extracted, skipping them", len(metas))
    if changed:
        log.info("redoing %d video(s) whose source changed since they were extracted (or whose record is "
                 "incomplete): %s", len(changed), first_names(changed))
    # Largest files first, so a long video does not start last and leave the other workers idle at the end.
    tasks.sort(key=lambda t: (-_file_size(t.path), t.video_name))
    failures: dict[str, dict[str, str]] = {}
    timeout = args.video_timeout or None
    bar = tqdm(total=len(items), initial=len(metas), desc="extracting frames", unit="video", dynamic_ncols=True)
    outcomes = run_isolated(extract_video, tasks, min(args.workers, max(1, len(tasks))), timeout,
                            initializer=_init_worker, initargs=(args.verbose,))
    with contextlib.closing(outcomes), bar:  # a raise here stops the workers now, not at garbage collection
        for outcome in outcomes:
            task = tasks[outcome.index]
            res = _result_of(outcome, task, frames_dir, settings, video_dir)
            if "fatal" in res:
                raise BadInputError(res["fatal"])
            if "meta" in res:
                metas[task.video_name] = res["meta"]
            else:
                failures[task.video_name] = res["failure"]
                log.warning("%s: %s", res["failure"]["file"], res["failure"]["reason"])
            bar.update(1)
    if tmp.is_dir():
        shutil.rmtree(tmp)
    if shard is not None:
        with contextlib.suppress(OSError):  # the last shard to finish removes frames/.tmp; the others leave it
            (frames_dir / TMP_DIR).rmdir()
    return metas, failures


def _result_of(outcome: Outcome, task: ExtractTask, frames_dir: Path, settings: dict[str, Any],
               video_dir: Path) -> dict[str, Any]:
    """A worker's outcome as extract_video's result: a raised exception, a dead worker or a timeout becomes the
    video's failure (the traceback at debug level), unless the video was complete on disk before it happened."""
    if outcome.ok:
        return outcome.result
    shutil.rmtree(task.tmp, ignore_errors=True)
    if outcome.kind != "error":  # died or killed after renaming its folder into place: nothing is lost
        item = VideoItem(None, task.source, task.video_name, "", task.segment)
        meta = finished_meta(frames_dir, item, settings, Path(task.path))
        if meta is not None:
            return {"video_name": task.video_name, "meta": meta}
    return {"video_name": task.video_name, "failure": outcome_failure(outcome, task.source, "extracting", "extraction")}


def outcome_failure(outcome: Outcome, source: str, doing: str, work: str) -> dict[str, str]:
    """The failure record of a video whose worker raised (the traceback at debug level), died or timed out, in the
    words of the stage: `doing` "extracting" / `work` "extraction" for stage 1, "decoding" for the direct route."""
    if outcome.kind == "error":
        log.debug("%s: traceback of the unexpected error:\n%s", source, outcome.traceback)
        reason = f"unexpected error while {doing} ({outcome.error}); --verbose logs its traceback"
    elif outcome.kind == "timeout":
        reason = f"{work} {outcome.error} (--video_timeout); its worker was stopped"
    else:
        reason = f"{outcome.error} while {doing} it"
    return {"file": source, "reason": reason}


def _init_worker(verbose: bool) -> None:
    """One OpenCV thread per worker process (resizing, range expansion): the processes are the parallelism."""
    setup_logging(verbose)
    cv2.setNumThreads(1)


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def build_manifest(metas: dict[str, dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    videos = {}
    for name in sorted(metas):
        m = metas[name]
        entry = {"num_frames": m["num_frames"], "timestamps": m["timestamps"], "source": m["source"],
                 "source_size": m["source_size"], "source_mtime_ns": m["source_mtime_ns"]}
        entry["timing"] = m.get("timing", "decoded")
        if m.get("segment") is not None:
            entry["segment"] = m["segment"]
        for key in ("replaced_timestamps", "decoder_errors"):  # present only when non-zero
            if m.get(key):
                entry[key] = m[key]
        videos[name] = entry
    return {**settings, "videos": videos}


# ----- splits --------------------------------------------------------------------------------------------------


def split_records(items: list[VideoItem], class_names: list[str], metas: dict[str, dict[str, Any]],
                  split_id: int | None = None) -> list[dict]:
    """Split JSON records, sorted by label then name so reruns write identical files. `split_id`: the official
    split they come from (recorded in each record, so that every later stage can tell the splits' runs apart).
    An unlabelled video (an official test split without labels) has label_idx UNLABELLED and no class_name."""
    label_of = {c: i for i, c in enumerate(class_names)}
    records = [
        {
            "video_name": it.video_name,
            "label_idx": UNLABELLED if it.class_name is None else label_of[it.class_name],
            **({} if it.class_name is None else {"class_name": it.class_name}),
            "video_path": it.rel_path,
            "group": it.group,
            **({} if it.segment is None else {"segment": segment_json(it.segment)}),
            "num_frames": metas[it.video_name]["num_frames"],
            **({} if split_id is None else {"split_id": split_id}),
        }
        for it in items
    ]
    return sorted(records, key=lambda r: (r["label_idx"], r["video_name"]))


@dataclass
class Plan:
    """What this run extracts, worked out (read-only) before OUT is created or locked. `sides`: the dataset's
    own train/val/test, or with no official split "all" (split by --split_ratio) and "test" (unlabelled)."""

    dataset: Dataset
    official: bool
    sides: dict[str, list[VideoItem]]
    to_extract: list[VideoItem]
    failures: list[dict[str, str]]
    source_fps: float | None  # frame folders' rate; None: the media are video files


def read_options(args: argparse.Namespace, video_dir: Path) -> ReadOptions:
    annotations = Path(args.split_dir) if args.split_dir else None
    return ReadOptions(video_dir, annotations, args.split_id, args.allow_missing, frames=args.source_fps is not None)


def plan_run(args: argparse.Namespace, video_dir: Path) -> Plan:
    dataset = read_dataset(read_options(args, video_dir), args.dataset)
    official = any(r.split is not None for r in dataset.records)
    sides: dict[str, list[VideoItem]] = {side: [] for side in (SPLITS if official else ("all", "test"))}
    for r in dataset.records:
        item = VideoItem(r.label, r.path, r.name, r.group, r.segment)
        if official and r.split is None:
            raise BadInputError(f"{dataset.format}: {r.path} has no split while others have one")
        side = r.split if official else "all" if r.label is not None else "test"
        if r.label is None and side != "test":
            raise BadInputError(f"{dataset.format}: {r.path} has no label but is in the {side} split "
                                "(only a test split may be unlabelled)")
        if side not in sides:
            raise BadInputError(f"{dataset.format}: {r.path} has split {side!r}, expected one of {', '.join(SPLITS)}")
        sides[side].append(item)
    if dataset.class_names is not None:
        known = set(dataset.class_names)
        unknown = sorted({r.label for r in dataset.records if r.label is not None and r.label not in known})
        if unknown:
            raise BadInputError(f"{dataset.format}: label(s) {first_names(unknown)} are not among its "
                                f"{len(known)} classes")
    to_extract = sorted({it.video_name: it for side in sides.values() for it in side}.values(),
                        key=lambda it: it.video_name)
    source_fps = args.source_fps if args.source_fps is not None else dataset.source_fps
    if source_fps is not None and args.source_fps is None:
        log.info("%s is distributed as frame folders at %g fps (--source_fps overrides it)", dataset.format, source_fps)
    return Plan(dataset, official, sides, to_extract, list(dataset.failures), source_fps)


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    check_shard_args(args)
    video_dir, out_dir = Path(args.video_dir), check_writable_dir(args.out_dir, "-o/--out_dir")
    plan = plan_run(args, video_dir)  # every refusal of the inputs comes before OUT is created
    if args.merge_shards is not None:
        with OutputLock(out_dir, what="stage-1 output folder"):  # exclusive: no shard is running
            return merge_shards(args, video_dir, out_dir, plan)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.shard is not None:
        name = shard_name(args.shard, args.num_shards)
        with OutputLock(out_dir, what="stage-1 output folder", shared=True), \
                OutputLock(out_dir / SHARDS_DIR, f"{name}.lock", what=f"stage-1 {name}"):
            return run_shard(args, video_dir, out_dir, plan)
    with OutputLock(out_dir, what="stage-1 output folder"):
        return _main(args, video_dir, out_dir, plan)


def split_outputs(plan: Plan, metas: dict[str, dict[str, Any]], args: argparse.Namespace
                  ) -> tuple[dict[str, list[VideoItem]], list[str]]:
    """({split: items}, class names) of the videos that were extracted. Official splits keep their sides, with
    val carved from train (whole groups, per class, seeded) where the dataset has none; otherwise the labelled
    videos are split train/val by --split_ratio. Unlabelled videos only ever go to test."""
    usable = {side: [it for it in items if it.video_name in metas] for side, items in plan.sides.items()}
    labelled = [it for items in usable.values() for it in items if it.class_name is not None]
    class_names = plan.dataset.class_names
    if class_names is None:
        class_names = sorted({it.class_name for it in labelled if it.class_name is not None})
        dropped = sorted({it.class_name for items in plan.sides.values() for it in items
                          if it.class_name is not None} - set(class_names))
        if dropped:
            log.warning("class folder(s) with no usable video, left out of classInd.txt: %s", first_names(dropped))
    if plan.official:
        train, val = usable["train"], usable["val"]
        if not plan.sides["val"]:
            train, val = group_split(train, 1.0 - args.val_ratio, args.seed)
        outputs = {"train": train, "val": val}
    else:
        train, val = group_split(usable["all"], args.split_ratio, args.seed)
        outputs = {"train": train, "val": val}
    if plan.sides["test"]:
        outputs["test"] = usable["test"]
    return outputs, class_names


def _main(args: argparse.Namespace, video_dir: Path, out_dir: Path, plan: Plan) -> int:
    metas, extract_failures = extract_all(plan.to_extract, video_dir, out_dir / "frames", args, plan.source_fps)
    return write_outputs(args, out_dir, plan, metas, [*plan.failures, *extract_failures.values()])


def write_outputs(args: argparse.Namespace, out_dir: Path, plan: Plan, metas: dict[str, dict[str, Any]],
                  failures: list[dict[str, str]], manifest: Path | None = None) -> int:
    """The run's shared outputs from every video's metadata: the manifest (`manifest`, by default in frames/),
    classInd.txt, the split JSONs and the failure report (what a whole run, a merge of shards and
    prepare_data.py --videos_dir all end with), then the exit summary."""
    settings = _settings(args.frame_rate, args.frame_size, args.jpeg_quality, plan.source_fps)
    atomic_write_json(manifest or out_dir / "frames" / MANIFEST, build_manifest(metas, settings))

    outputs, class_names = split_outputs(plan, metas, args)
    write_class_index(out_dir / CLASS_INDEX, class_names)
    split_id = plan.dataset.split_id if plan.official else None
    for side, items in outputs.items():
        atomic_write_json(out_dir / split_json_name(side), split_records(items, class_names, metas, split_id))
    report = out_dir / "failed_videos.json"
    write_failure_report(report, failures)

    counts = ", ".join(f"{len(items)} {side}" for side, items in outputs.items())
    log.info("%d usable video(s) (%s), %d class(es); outputs in %s", len(metas), counts, len(class_names), out_dir)
    log_failure_summary(sorted(failures, key=lambda f: f["file"]), report)
    if not metas or not outputs["train"]:
        log.error("nothing usable is left: no video could be extracted into the train split")
        return 1
    if args.strict and failures:
        log.error("--strict: %d input(s) left out, see %s", len(failures), report)
        return 1
    return 0


# ----- shards across machines ----------------------------------------------------------------------------------


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard}-of-{num_shards}"


def shard_items(items: list[VideoItem], shard: int, num_shards: int) -> list[VideoItem]:
    """Shard `shard`'s videos: every num_shards-th of the list sorted by video name, from position `shard`. It
    depends on the names alone (never on timing or file sizes), so every machine computes the same disjoint
    shares, which differ in length by at most one video."""
    ordered = sorted(items, key=lambda it: it.video_name)
    return ordered[shard::num_shards]


def plan_digest(plan: Plan) -> str:
    """Hash of what the run extracts and how its splits are formed: the videos of each side with their labels,
    groups and segments, and the class list. Shards whose plans differ (other split files, another --split_id, a
    video folder that lists otherwise on one machine) would merge into a wrong whole."""
    sides = {side: [[it.video_name, it.rel_path, it.class_name, it.group, it.segment] for it in items]
             for side, items in plan.sides.items()}
    blob = [plan.dataset.format, plan.official, plan.dataset.split_id if plan.official else None,
            plan.dataset.class_names, plan.source_fps, sides]
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def shard_identity(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    """What every shard and the merge must agree on: frame settings, the options that decide failures and
    splits, and the plan's digest. Stored in each shard's record and compared key by key at the merge."""
    return {
        **_settings(args.frame_rate, args.frame_size, args.jpeg_quality, plan.source_fps),
        "keep_truncated": bool(args.keep_truncated),
        "split_ratio": args.split_ratio,
        "seed": args.seed,
        "val_ratio": args.val_ratio,
        "split_id": plan.dataset.split_id if plan.official else None,
        "num_videos": len(plan.to_extract),
        "plan_sha256": plan_digest(plan),
    }


def shard_record_path(out_dir: Path, shard: int, num_shards: int) -> Path:
    return out_dir / SHARDS_DIR / f"{shard_name(shard, num_shards)}.json"


def run_shard(args: argparse.Namespace, video_dir: Path, out_dir: Path, plan: Plan) -> int:
    """Extract this shard's videos into OUT/frames and write its record (last, atomically: a record means the
    shard is complete). A rerun skips the videos already done, like a whole run."""
    name = shard_name(args.shard, args.num_shards)
    items = shard_items(plan.to_extract, args.shard, args.num_shards)
    log.info("%s: %d of the %d video(s)", name, len(items), len(plan.to_extract))
    metas, failures = extract_all(items, video_dir, out_dir / "frames", args, plan.source_fps, shard=name)
    record = {"shard": args.shard, "num_shards": args.num_shards, **shard_identity(args, plan),
              "videos": sorted(it.video_name for it in items),  # sorted: a rerun writes the same bytes
              "metas": dict(sorted(metas.items())), "failures": dict(sorted(failures.items()))}
    path = shard_record_path(out_dir, args.shard, args.num_shards)
    atomic_write_json(path, record, indent=None)
    log.info("%s done: %d video(s) extracted, %d failed; recorded in %s. When all %d shards are done, run the same "
             "command with --merge_shards %d instead of --shard/--num_shards", name, len(metas), len(failures), path,
             args.num_shards, args.num_shards)
    for failure in sorted(failures.values(), key=lambda f: f["file"]):
        log.warning("  %s: %s", failure["file"], failure["reason"])
    if args.strict and failures:
        log.error("--strict: %d video(s) of %s failed, see %s", len(failures), name, path)
        return 1
    return 0


def read_shard_record(out_dir: Path, shard: int, num_shards: int, identity: dict[str, Any],
                      expected: list[str]) -> dict[str, Any]:
    """Shard `shard`'s record, refused (one BadInputError naming the shard and its file) when it is missing, was
    run with other settings or another plan, or does not account for exactly its share of the videos."""
    name, path = shard_name(shard, num_shards), shard_record_path(out_dir, shard, num_shards)
    rerun = f"rerun it: the same command with --shard {shard} --num_shards {num_shards} instead of --merge_shards"
    record = _read_meta(path)
    if record is None:
        what = "is missing" if not path.exists() else "cannot be read"
        raise BadInputError(f"{name} is not complete: its record {path} {what} (the shard never finished); {rerun}")
    if not isinstance(record, dict) or not isinstance(record.get("metas"), dict) \
            or not isinstance(record.get("failures"), dict):
        raise BadInputError(f"{name}: {path} is not a shard record; {rerun}")
    diffs = [f"{k}={record.get(k)!r} (this merge: {v!r})" for k, v in identity.items() if record.get(k) != v]
    if diffs:
        raise BadInputError(f"{name} ({path}) does not match this merge: it was run with {', '.join(diffs)}. Merge "
                            f"with the shards' own arguments, or {rerun} and this merge's arguments")
    done = set(record["metas"]) | set(record["failures"])
    if done != set(expected):
        missing, extra = sorted(set(expected) - done), sorted(done - set(expected))
        raise BadInputError(f"{name} ({path}) does not account for its share of the videos (missing: "
                            f"{first_names(missing) or 'none'}; not its own: {first_names(extra) or 'none'}); "
                            f"{rerun}")
    return record


def merge_shards(args: argparse.Namespace, video_dir: Path, out_dir: Path, plan: Plan) -> int:
    """Check every shard's record against this command and the frames on disk, then write the outputs a whole
    run writes, from the shards' metadata: the same bytes as one machine's run with these arguments."""
    num, frames_dir = args.merge_shards, out_dir / "frames"
    identity = shard_identity(args, plan)
    metas: dict[str, dict[str, Any]] = {}
    failures = list(plan.failures)  # the reader's own (missing files, stray entries) are every shard's: once
    for shard in range(num):
        expected = [it.video_name for it in shard_items(plan.to_extract, shard, num)]
        record = read_shard_record(out_dir, shard, num, identity, expected)
        for video, meta in record["metas"].items():
            n = meta.get("num_frames") if isinstance(meta, dict) else None
            if not isinstance(n, int) or n < 1 or not (frames_dir / video / frame_name(n - 1)).is_file():
                raise BadInputError(f"{shard_name(shard, num)} recorded {video} as extracted but its frames are "
                                    f"missing under {frames_dir / video}; rerun that shard")
        metas.update(record["metas"])
        failures += record["failures"].values()
    if (frames_dir / TMP_DIR).is_dir():  # unfinished videos of killed shard runs, redone since (no shard runs now)
        shutil.rmtree(frames_dir / TMP_DIR)
    log.info("merging %d shard(s): %d video(s) extracted, %d failed", num, len(metas), len(failures) - len(plan.failures))
    return write_outputs(args, out_dir, plan, metas, failures)


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
