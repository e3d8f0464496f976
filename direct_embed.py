"""prepare_data.py --videos_dir: per-frame embeddings straight from videos, with no JPEG copy of the dataset on disk.

    prepare_data.py --videos_dir VIDEOS -o DATA [--split_dir ANN] [-fps 1] [--frame_size N] [-m resnet18] ...

The same inputs as stage 1 (its readers, its splits) and the same outputs as stage 1 + stage 2: in DATA the split
JSONs, classInd.txt, manifest.json and failed_videos.json stage 1 writes, and `<split>.npy` + `<split>.json` (the
backbone record included) for every split, as stage 2 writes them.

Each video is decoded in a worker process (workpool.run_isolated, as stage 1 does: a raise, a crash or a timeout
fails only its video), sampled at exact times by video.py, and by default passed through JPEG at --jpeg_quality in
memory, exactly as stage 1 stores it, so the pixels equal the two-stage route's and predict.py reproduces them
(--jpeg_quality 0 feeds the decoded pixels as they are: no JPEG loss, but predict.py, which re-encodes as stage 1
does, then refuses the checkpoint). The backbone runs in this process on groups of --group_videos consecutive videos
of the name-sorted list, their frames cut into -bs batches together (a video's rows depend on its group alone,
never on timing or on where a killed run stopped). Each finished video's rows go to
DATA/.videos/<name>.npy with its record, so a killed run rerun with the same command skips them; the split files
are assembled from them at the end, byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

import prepare_data as pd
import prepare_ucf101 as p1
from layout import CLASS_INDEX, frame_name
from models.backbone import build_backbone, choose_channels_last, embed_batch, resolve_backbone
from precision import resolve_precision
from sampling import subsample_indices
from threads import set_default_threads
from transforms import FrameError, ResizeSpec, decode_jpeg, normalize_batch, resize_frame
from utils import BadInputError, OutputLock, atomic_write_json, first_names, resolve_device, write_failure_report
from video import (
    VideoDecodeError,
    _convert,
    frame_to_bgr,
    iter_folder_jpegs_at_fps,
    iter_jpeg_frames_at_fps,
    iter_sampled_frames,
    segment_json,
)
from workpool import Outcome, run_isolated

log = logging.getLogger("actionbert")

STORE_DIR = ".videos"  # DATA/.videos/<name>.npy (float32 rows) and <name>.json (the video's record)


@dataclass(frozen=True)
class DecodeTask:
    """One video to decode: stage 1's task (source, fps, frame size, JPEG quality or None, segment) and the
    backbone's input (resize and crop)."""

    extract: p1.ExtractTask
    spec: ResizeSpec


def _rgb_frames(task: p1.ExtractTask, info: dict[str, Any]):
    """(time, RGB frame) at stage 1's exact times: through JPEG at task.jpeg_quality as stage 1 stores it, or
    (jpeg_quality None) the decoded pixels, shorter side at frame_size, as stage 1 resizes them before encoding."""
    if task.source_fps is not None or task.jpeg_quality is not None:
        if task.source_fps is not None:
            frames = iter_folder_jpegs_at_fps(task.path, task.source_fps, task.fps, task.frame_size,
                                              task.jpeg_quality, segment=task.segment, info=info)
        else:
            frames = iter_jpeg_frames_at_fps(task.path, task.fps, task.frame_size, task.jpeg_quality, info=info,
                                             segment=task.segment)
        last, rgb = None, None
        for t, data in frames:
            if data is not last:  # a frame kept for several samples is encoded (and decoded) once
                try:
                    last, rgb = data, decode_jpeg(data)
                except FrameError as exc:
                    raise VideoDecodeError(task.path, f"frame at {t:.3f} s: {exc}") from None
            yield t, rgb
        return
    last_frame, rgb = None, None
    for t, frame in iter_sampled_frames(task.path, task.fps, info=info, segment=task.segment):
        if frame is not last_frame:
            bgr = _convert(task.path, t, frame_to_bgr, frame, task.frame_size)
            last_frame, rgb = frame, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        yield t, rgb


def decode_video(task: DecodeTask) -> dict[str, Any]:
    """In a worker: the video's frames as the backbone's uint8 (n, 3, S, S) input and its stage-1 record,
    {"meta", "frames"}; or {"failure"} for a video that cannot be sampled (stage 1's rules: p1.video_meta)."""
    ex = task.extract
    stamp = p1.source_stamp(ex.path)  # before decoding: a source changed meanwhile is redone by the next run
    info: dict[str, Any] = {}
    times, frames = [], []
    try:
        for k, (t, rgb) in enumerate(_rgb_frames(ex, info)):
            frames.append(np.ascontiguousarray(resize_frame(rgb, task.spec).transpose(2, 0, 1)))
            times.append(round(t, 6))
            if k == 0:
                p1._test_fault(ex.video_name)
        meta = p1.video_meta(ex, stamp, times, info)
    except VideoDecodeError as exc:
        return {"failure": {"file": ex.source, "reason": exc.reason}}
    return {"meta": meta, "frames": np.stack(frames)}


# ----------------------------------------------------------------------------------------------- the store


def _read_json(path: Path) -> Any:
    return p1._read_meta(path)


def stored_video(store: Path, item: p1.VideoItem, settings: dict[str, Any], key: dict[str, Any],
                 source: Path) -> dict[str, Any] | None:
    """The record of a video embedded before with these settings and this backbone from the same, unchanged
    source, else None (it is redone)."""
    meta = _read_json(store / f"{item.video_name}.json")
    if not isinstance(meta, dict) or meta.get("embedding") != key or meta.get("source") != item.rel_path:
        return None
    if meta.get("segment") != segment_json(item.segment):
        return None
    if any(meta.get(k) != v for k, v in settings.items()):
        return None
    stamp = p1.source_stamp(source)
    if stamp is None or any(meta.get(k) != v for k, v in stamp.items()):
        return None
    try:
        rows = np.load(store / f"{item.video_name}.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    return meta if rows.shape == (meta.get("num_frames"), key["feature_dim"]) else None


def check_store(store: Path, key: dict[str, Any]) -> None:
    """Refuse to mix rows of another backbone, frame settings or batch size into one output folder."""
    if not store.is_dir():
        return
    for entry in sorted(store.glob("*.json")):
        meta = _read_json(entry)
        theirs = meta.get("embedding") if isinstance(meta, dict) else None
        if isinstance(theirs, dict) and theirs != key:
            diffs = [f"{k}={theirs.get(k)!r} (this run: {v!r})" for k, v in key.items() if theirs.get(k) != v]
            raise BadInputError(f"{store.parent} already holds embeddings made with {', '.join(diffs)} (see {entry}); "
                                f"refusing to mix them. Use another -o/--out_dir, or delete {store} to start over")


def save_rows(store: Path, name: str, rows: np.ndarray, meta: dict[str, Any]) -> None:
    """The video's rows, then its record (which vouches for them), each written under a temporary name first."""
    fd, tmp = tempfile.mkstemp(dir=store, prefix=".rows-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, rows)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, store / f"{name}.npy")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    atomic_write_json(store / f"{name}.json", meta, indent=None, durable=False)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------------------------- the run


def stage1_args(args: argparse.Namespace) -> argparse.Namespace:
    """Stage 1's namespace for this command's video inputs, so its readers, splits and rules run unchanged."""
    s1 = p1.get_args_parser().parse_args(["-v", args.videos_dir, "-o", args.out_dir])
    for name in ("split_dir", "dataset", "split_id", "val_ratio", "allow_missing", "frame_size", "source_fps",
                 "keep_truncated", "video_timeout", "strict", "verbose", "seed", "split_ratio", "frame_rate"):
        setattr(s1, name, getattr(args, name))
    s1.jpeg_quality = args.jpeg_quality or None
    s1.workers = max(1, args.num_workers)
    return s1


class Embedder:
    """The backbone, built on the first video that needs it (a rerun with every video done builds none)."""

    def __init__(self, args: argparse.Namespace, device: torch.device, precision: str) -> None:
        self.args, self.device, self.precision = args, device, precision
        self.record = resolve_backbone(args.model, args.weights, args.feature, args.image_size, args.resize,
                                       seed=args.seed)
        self.model: torch.nn.Module | None = None
        self.checked = False

    def built_record(self):
        """The record once the backbone is built (D and the memory layout are known only then)."""
        if self.model is None:
            model, record = build_backbone(self.record)
            record = choose_channels_last(record, self.args.channels_last)
            log.info("backbone %s", record.describe())
            model = model.to(self.device)
            if record.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self.model, self.record = model, record
        return self.record

    def rows(self, frames: np.ndarray) -> np.ndarray:
        """float32 (n, D) of uint8 (n, 3, S, S), in batches of up to -bs; the first batch is checked as stage 2
        checks it (a backbone that cannot take the frames fails in one line)."""
        record = self.built_record()
        cl, out = bool(record.channels_last), []
        for i in range(0, len(frames), self.args.batch_size):
            x = torch.from_numpy(frames[i : i + self.args.batch_size])
            if not self.checked:
                out.append(pd.check_first_batch(self.model, {"images": x}, record, device=self.device,
                                                precision=self.precision, channels_last=cl).numpy())
                self.checked = True
                continue
            feats = embed_batch(self.model, normalize_batch(x, self.device, record.mean, record.std, cl),
                                self.precision)
            out.append(feats.cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


def embed_videos(args: argparse.Namespace) -> int:
    """The whole direct route: plan as stage 1, embed every video not done (isolated decoding), then write stage
    1's split files and stage 2's split embeddings."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BadInputError("--videos_dir runs in one process: across machines, run stage 1 with --shard and "
                            "stage 2 under torchrun")
    set_default_threads(1)
    s1 = stage1_args(args)
    video_dir, out_dir = Path(args.videos_dir), Path(args.out_dir)
    plan = p1.plan_run(s1, video_dir)  # every refusal of the inputs comes before OUT is created
    device = resolve_device(args.gpu_id)
    precision = resolve_precision(args.precision, device)
    embedder = Embedder(args, device, precision)
    rec = embedder.record
    identity = {"backbone": rec.backbone, "weights": rec.weights, "seed": rec.seed, "feature": rec.feature,
                "image_size": rec.image_size, "resize": rec.resize.mode, "dtype": args.dtype,
                "max_len_cap": args.max_len, "precision": precision}
    settings = p1._settings(s1.frame_rate, s1.frame_size, s1.jpeg_quality, plan.source_fps)
    out_dir.mkdir(parents=True, exist_ok=True)
    with OutputLock(out_dir, what="embedding output folder"):
        store = out_dir / STORE_DIR
        key = {**settings, "backbone": rec.backbone, "weights": rec.weights, "seed": rec.seed,
               "feature": rec.feature, "image_size": rec.image_size, "resize": rec.resize.mode,
               "precision": precision, "batch_size": args.batch_size, "group_videos": args.group_videos,
               "feature_dim": None}
        metas, failures = _embed_all(plan, video_dir, store, s1, embedder, settings, key, args)
        code = p1.write_outputs(s1, out_dir, plan, metas, [*plan.failures, *failures.values()],
                                manifest=out_dir / p1.MANIFEST)
        if metas:
            write_split_embeddings(out_dir, plan, metas, s1, embedder, identity, settings, args)
        return code


def video_groups(items: list[p1.VideoItem], size: int) -> list[list[p1.VideoItem]]:
    """Consecutive runs of `size` videos of the name-sorted plan: the frames of one group's videos are embedded
    together (cut into -bs batches), so short videos still fill batches, and a frame's batch-mates depend on its
    group alone, never on timing or on where a killed run stopped."""
    ordered = sorted(items, key=lambda it: it.video_name)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def _embed_all(plan: p1.Plan, video_dir: Path, store: Path, s1: argparse.Namespace, embedder: Embedder,
               settings: dict[str, Any], key: dict[str, Any], args: argparse.Namespace,
               ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Embed every group of videos that is not wholly stored already (a group is the unit of resume: a rerun
    redoes a group with any unfinished or failed video, all of it, so its batches are the same as before);
    ({video_name: record}, {video_name: failure})."""
    store.mkdir(parents=True, exist_ok=True)
    key["feature_dim"] = embedder.built_record().dim  # part of what a stored row means
    check_store(store, key)
    metas, tasks, group_of, groups = {}, [], [], video_groups(plan.to_extract, args.group_videos)
    for g, group in enumerate(groups):
        stored = {it.video_name: stored_video(store, it, settings, key, video_dir / it.rel_path) for it in group}
        if all(meta is not None for meta in stored.values()):
            metas.update(stored)
            continue
        for item in group:  # in plan order: groups complete roughly one after another, so few wait in memory
            ex = p1.ExtractTask(item.video_name, item.rel_path, str(video_dir / item.rel_path), str(store),
                                s1.frame_rate, s1.frame_size, s1.jpeg_quality, s1.keep_truncated, item.segment,
                                plan.source_fps)
            tasks.append(DecodeTask(ex, embedder.record.resize))
            group_of.append(g)
    if metas:
        log.info("%d video(s) already embedded, skipping them", len(metas))
    failures: dict[str, dict[str, str]] = {}
    waiting: dict[int, dict[int, dict[str, Any]]] = {}  # group -> {task index: decoded result}
    sizes = {g: group_of.count(g) for g in set(group_of)}
    bar = tqdm(total=len(plan.to_extract), initial=len(metas), desc="embedding videos", unit="video",
               dynamic_ncols=True)
    outcomes = run_isolated(decode_video, tasks, min(s1.workers, max(1, len(tasks))), s1.video_timeout or None,
                            initializer=p1._init_worker, initargs=(args.verbose,))
    with contextlib.closing(outcomes), bar:
        for outcome in outcomes:
            g = group_of[outcome.index]
            waiting.setdefault(g, {})[outcome.index] = _decoded(outcome, tasks[outcome.index].extract)
            if len(waiting[g]) < sizes[g]:
                continue
            done = waiting.pop(g)
            _embed_group([(tasks[i].extract, done[i]) for i in sorted(done)], embedder, store, key, metas, failures)
            bar.update(len(done))
    return metas, failures


def _embed_group(results: list[tuple[p1.ExtractTask, dict[str, Any]]], embedder: Embedder, store: Path,
                 key: dict[str, Any], metas: dict[str, dict[str, Any]], failures: dict[str, dict[str, str]]) -> None:
    """Embed the decoded videos of one group together, in plan order, and store each video's rows; a video whose
    decoding failed, or whose rows are not finite, is listed instead."""
    good = [(ex, res) for ex, res in results if "meta" in res]
    rows = embedder.rows(np.concatenate([res["frames"] for _, res in good])) if good else None
    start = 0
    for ex, res in results:
        if "meta" in res:
            n = len(res["frames"])
            mine, start = rows[start : start + n], start + n
            bad = int((~np.isfinite(mine).all(1)).sum())
            if bad:
                res = {"failure": {"file": ex.source, "reason": f"the backbone's embedding of {bad} frame(s) is "
                                                                "not finite (NaN/inf)"}}
            else:
                meta = {**res["meta"], "embedding": key}
                save_rows(store, ex.video_name, np.ascontiguousarray(mine), meta)
                metas[ex.video_name] = meta
        if "failure" in res:
            failures[ex.video_name] = res["failure"]
            log.warning("%s: %s", res["failure"]["file"], res["failure"]["reason"])


def _decoded(outcome: Outcome, ex: p1.ExtractTask) -> dict[str, Any]:
    """A worker's outcome as decode_video's result: a raise, a dead worker or a timeout fails only its video."""
    if outcome.ok:
        return outcome.result
    return {"failure": p1.outcome_failure(outcome, ex.source, "decoding", "decoding")}


def write_split_embeddings(out_dir: Path, plan: p1.Plan, metas: dict[str, dict[str, Any]], s1: argparse.Namespace,
                           embedder: Embedder, identity: dict[str, Any], settings: dict[str, Any],
                           args: argparse.Namespace) -> None:
    """`<split>.npy` and `<split>.json` of every split, as stage 2 writes them from stage 1's files: the same
    record order (the split JSON's), the same --max_len subsampling, fingerprints and backbone record."""
    record = embedder.built_record()
    outputs, class_names = p1.split_outputs(plan, metas, s1)
    split_id = plan.dataset.split_id if plan.official else None
    frame_settings = {"fps": settings["fps"], "frame_size": settings["frame_size"],
                      "jpeg_quality": settings["jpeg_quality"]}
    store = out_dir / STORE_DIR
    for side, items in outputs.items():
        records = p1.split_records(items, class_names, metas, split_id)
        if not records:
            continue  # stage 2 refuses an empty split: nothing to embed
        plans = [pd.VideoPlan(r["video_name"], r["label_idx"], str(store / r["video_name"]),
                              tuple(frame_name(int(i)) for i in subsample_indices(r["num_frames"], args.max_len)),
                              r["num_frames"]) for r in records]
        max_len = max(len(p.frames) for p in plans)
        stamps = pd.source_stamps({r["video_name"]: metas[r["video_name"]] for r in records})
        npy_tmp = out_dir / f".{side}.npy.partial"
        arr = np.lib.format.open_memmap(npy_tmp, mode="w+", dtype=args.dtype, shape=(len(plans), max_len, record.dim))
        for v, p in enumerate(plans):
            rows = np.load(store / f"{p.name}.npy", mmap_mode="r")
            arr[v, : len(p.frames)] = rows[subsample_indices(p.num_frames, args.max_len)]
        arr.flush()
        del arr
        (out_dir / f"{side}.json").unlink(missing_ok=True)  # the JSON must never describe another .npy
        os.replace(npy_tmp, out_dir / f"{side}.npy")
        data = [{"video_idx": v, "video_name": p.name, "video_length": len(p.frames), "label_idx": p.label,
                 "num_frames": p.num_frames, "skipped_frames": 0} for v, p in enumerate(plans)]
        meta = {"data": data, "memmap_size": [len(plans), max_len, record.dim], "split": side, "split_id": split_id,
                **identity, **frame_settings, "max_len": max_len, "feature_dim": record.dim,
                "class_names": class_names, "num_classes": len(class_names), "backbone_record": record.to_dict(),
                "subsampled_videos": sum(p.num_frames > len(p.frames) for p in plans),
                "plan_sha256": pd.plan_fingerprint(plans, max_len, stamps),
                "videos_sha256": pd.videos_fingerprint(plans), "skipped_frames": 0}
        write_failure_report(out_dir / f"failed_{side}.json", [])  # every failure is in failed_videos.json
        atomic_write_json(out_dir / f"{side}.json", meta)
        log.info("wrote %s/%s.npy (%d videos x %d frames x %d) and %s.json", out_dir, side, len(plans), max_len,
                 record.dim, side)
    log.info("split files in %s (%s, %s)", out_dir, CLASS_INDEX, first_names(sorted(outputs)))
