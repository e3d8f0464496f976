"""Stage 2: per-frame embeddings of every video of a split, streamed into an (N, max_len, D) .npy memmap.

    prepare_data.py -s train -f OUT/frames -j OUT/train_ucf101.json -o DATA [-m resnet18] [-bs 128] [-nw 4] [-g 0]
    prepare_data.py ... -m timm:vit_base_patch16_clip_224.openai [--feature pooled|cls|mean|projected]
    prepare_data.py ... -m hf:facebook/dinov2-small   (or hf:LOCAL_DIR)
    torchrun --nproc_per_node=K prepare_data.py ...   (videos sharded across ranks, one shared memmap)

The backbone's record (models/backbone.py: library, weights, feature, D, input size, resize and crop, mean/std, as
its own configuration says unless --image_size/--resize override) goes into `<split>.json`, so predict.py feeds a
raw video's frames through exactly this preprocessing.

Frames are decoded and resized in DataLoader workers and batched across videos; the backbone runs in eval mode
(BatchNorm uses its running statistics, so a video's embedding never depends on its batch-mates). Rows go
straight into `<split>.npy.partial`; after each flush the finished videos are appended to a progress log, so a
killed run rerun with the same command redoes only unfinished videos and ends byte-identical to an uninterrupted
run (batches are planned over the whole shard, so every frame meets the same batch-mates either way). The .npy is
renamed into place and `<split>.json` is written last, atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from distributed import DistInfo, barrier, main_rank_lock, rank_device, rank_group
from layout import (
    frame_name,
    manifest_videos,
    read_class_names,
    read_frame_settings,
    read_split_json,
    split_id_of,
    video_frames,
)
from models.backbone import (
    BACKBONE_HELP,
    FEATURE_HELP,
    FEATURES,
    WEIGHTS_HELP,
    BackboneRecord,
    build_backbone,
    choose_channels_last,
    embed_batch,
    resolve_backbone,
)
from precision import INFERENCE_PRECISIONS, resolve_precision
from readers import READERS
from sampling import subsample_indices
from threads import set_default_threads
from transforms import RESIZE_MODES, FrameError, ResizeSpec, as_resize_spec, load_frame, normalize_batch
from utils import (
    BadInputError,
    atomic_write_json,
    atomic_write_text,
    check_writable_dir,
    float_in,
    int_at_least,
    log_failure_summary,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    read_json,
    run_cli,
    setup_logging,
    write_failure_report,
)

log = logging.getLogger("actionbert")

DTYPES = ("float32", "float16")
# Fields that say how the embeddings were made: a rerun must match them all, or it would mix two kinds of rows.
IDENTITY_KEYS = ("backbone", "weights", "seed", "feature", "image_size", "resize", "dtype", "max_len_cap", "precision")
IDENTITY_DEFAULTS = {"feature": "pooled"}  # what files written before a key was recorded used
CHECKPOINT_SECONDS = 1.0  # default of --checkpoint_seconds


@dataclass(frozen=True)
class VideoPlan:
    name: str
    label: int
    frame_dir: str
    frames: tuple[str, ...]  # the file names to embed, in order (already subsampled to max_len)
    num_frames: int  # frames in the folder before subsampling


# ----------------------------------------------------------------------------------------------- inputs


def plan_videos(
    entries: Sequence[tuple[str, int]], frames_dir: str | Path, max_len: int | None,
    records: Mapping[str, dict[str, Any]] | None = None,
) -> tuple[list[VideoPlan], list[dict[str, Any]]]:
    """The videos that have frames (layout.video_frames: a missing frame inside a folder is planned, and skipped
    at decoding like a corrupt one; a folder that disagrees with its manifest `records` entry is a failure), with
    the frames to embed; the others as failure records."""
    frames_dir = Path(frames_dir)
    plans, failures = [], []
    for name, label in entries:
        video_dir = frames_dir / name
        num_frames, reason = video_frames(frames_dir, name, (records or {}).get(name))
        if reason is not None:
            failures.append({"file": str(video_dir), "video_name": name, "reason": reason})
            continue
        keep = tuple(frame_name(int(i)) for i in subsample_indices(num_frames, max_len))
        plans.append(VideoPlan(name, label, str(video_dir), keep, num_frames))
    return plans, failures


def source_stamps(records: Mapping[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """{video_name: [source size, source mtime_ns, frame count]} of stage 1's manifest records: what changes when
    stage 1 redoes a video whose source changed, even when it keeps the same number of frames."""
    return {name: [v.get("source_size"), v.get("source_mtime_ns"), v.get("num_frames")]
            for name, v in records.items() if "source_size" in v}


def plan_fingerprint(plans: Sequence[VideoPlan], max_len: int, stamps: dict[str, list[Any]] | None = None) -> str:
    """Hash of what the memmap rows mean; a resume or a 'done already' must see the same one. `stamps` (stage 1's
    source records) make frames re-extracted from a changed source count as other frames."""
    rows = [(p.name, p.label, p.num_frames, p.frames) for p in plans]
    if stamps:
        rows = [(*row, stamps.get(p.name)) for row, p in zip(rows, plans, strict=True)]
    return hashlib.sha256(json.dumps([max_len, rows]).encode()).hexdigest()


def videos_fingerprint(plans: Sequence[VideoPlan]) -> str:
    """Hash of the split's videos and labels alone: equal while only their frames changed (stage 1 redid them)."""
    return hashlib.sha256(json.dumps([(p.name, p.label) for p in plans]).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------- batches


def frame_offsets(videos: Sequence[VideoPlan]) -> np.ndarray:
    """offsets[v] = global index of video v's first frame; offsets[-1] = total frames."""
    return np.concatenate([[0], np.cumsum([len(v.frames) for v in videos])]).astype(np.int64)


class FrameBatches(Dataset):
    """Item k = batch `batch_ids[k]` of the fixed plan that cuts the concatenated frames of all videos into runs
    of batch_size. Batches span videos, and a frame meets the same batch-mates whichever rank, resume or
    world size computes it (the backbone's numerics differ in the last bits between batch shapes)."""

    def __init__(self, videos: Sequence[VideoPlan], batch_ids: Sequence[int], batch_size: int,
                 spec: ResizeSpec | int, resize: str = "crop") -> None:
        self.dirs = [v.frame_dir for v in videos]
        self.frames = [v.frames for v in videos]
        self.offsets = frame_offsets(videos)
        self.batch_ids = list(batch_ids)
        self.batch_size, self.spec = batch_size, as_resize_spec(spec, resize)  # the backbone record's input

    def __len__(self) -> int:
        return len(self.batch_ids)

    def __getitem__(self, k: int) -> dict[str, Any]:
        b = self.batch_ids[k]
        g = np.arange(b * self.batch_size, min((b + 1) * self.batch_size, int(self.offsets[-1])))
        vpos = np.searchsorted(self.offsets, g, side="right") - 1
        fpos = g - self.offsets[vpos]
        images, ok, errors = [], np.ones(len(g), dtype=bool), []
        for j, (v, f) in enumerate(zip(vpos, fpos, strict=True)):
            path = os.path.join(self.dirs[v], self.frames[v][f])
            try:
                images.append(load_frame(path, self.spec))
            except FrameError as exc:
                ok[j] = False
                errors.append(f"{path}: {exc}")
        s = self.spec.size
        x = torch.stack(images) if images else torch.empty((0, 3, s, s), dtype=torch.uint8)
        return {"start": int(g[0]), "vpos": torch.from_numpy(vpos), "fpos": torch.from_numpy(fpos),
                "ok": torch.from_numpy(ok), "images": x, "errors": errors}


def batches_to_do(total_frames: int, done: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """This rank's share (batch b goes to rank b % world_size) of the batches holding any frame not yet done."""
    ids = []
    for b in range(rank, -(-total_frames // batch_size), world_size):
        if not done[b * batch_size : (b + 1) * batch_size].all():
            ids.append(b)
    return ids


# ----------------------------------------------------------------------------------------------- progress


def progress_path(out_dir: Path, split: str, rank: int) -> Path:
    return out_dir / f".{split}.progress.rank{rank}.jsonl"


def progress_files(out_dir: Path, split: str) -> list[Path]:
    return sorted(out_dir.glob(f".{split}.progress.rank*.jsonl"))


def read_progress_file(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header, records {"r": [first, end) global frames, "bad": [global frames]}); a line torn by a kill is
    ignored, since the rows it would have vouched for are simply redone."""
    header, records = None, []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "header" in item:
                header = item["header"]
            elif "r" in item:
                records.append(item)
    return header, records


def read_progress(out_dir: Path, split: str, total_frames: int) -> tuple[list[dict[str, Any]], np.ndarray, set[int],
                                                                         set[int]]:
    """Headers of every rank's log, and the union of their work: a done mask over all frames, the bad frames (not
    embedded), and among them those whose embedding was not finite (their videos fail)."""
    headers, done, bad, nonfinite = [], np.zeros(total_frames, dtype=bool), set(), set()
    for path in progress_files(out_dir, split):
        header, records = read_progress_file(path)
        if header is not None:
            headers.append(header)
        for rec in records:
            done[rec["r"][0] : rec["r"][1]] = True
            bad.update(rec["bad"])
            nonfinite.update(rec.get("nonfinite", ()))
    return headers, done, bad, nonfinite


class ProgressLog:
    """Append-only, fsynced log of finished frame ranges, one file per rank (ranks never write the same file)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        lines = [json.dumps({"header": header})]
        if path.is_file():  # keep this rank's earlier work, dropping any torn line
            lines += [json.dumps(rec) for rec in read_progress_file(path)[1]]
        atomic_write_text(path, "\n".join(lines) + "\n")
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the whole run

    def append(self, records: list[dict[str, Any]]) -> None:
        self.fh.write("".join(json.dumps(rec) + "\n" for rec in records))
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


# ----------------------------------------------------------------------------------------------- outputs


def refuse_mix(out_dir: Path, split: str, theirs: dict[str, Any], ours: dict[str, Any], what: str) -> None:
    def recorded(k: str) -> Any:
        return theirs.get(k, IDENTITY_DEFAULTS.get(k))

    diffs = [f"{k}={recorded(k)!r} (this run: {ours.get(k)!r})" for k in IDENTITY_KEYS if recorded(k) != ours.get(k)]
    if diffs:
        raise BadInputError(
            f"{out_dir} already holds {what} for split {split!r} made with {', '.join(diffs)}; refusing to mix "
            f"them. Use another --out_dir, or delete {out_dir}/{split}.* and {out_dir}/.{split}.progress.* to redo it"
        )


def inspect_outputs(out_dir: Path, split: str, identity: dict[str, Any], fingerprint: str, batch_size: int,
                    videos_fp: str | None = None) -> str:
    """What OUT holds for this split: 'complete', 'resume' (an interrupted run of this command), 'stale' (made by
    this command from the same videos, whose frames have changed since: stage 1 redid them) or 'fresh'.
    Raises BadInputError rather than touch files made another way."""
    npy, meta_path, partial = out_dir / f"{split}.npy", out_dir / f"{split}.json", out_dir / f"{split}.npy.partial"
    if meta_path.is_file():
        meta = read_json(meta_path, "embedding JSON")
        refuse_mix(out_dir, split, meta, identity, meta_path.name)
        if meta.get("plan_sha256") != fingerprint and videos_fp and meta.get("videos_sha256") == videos_fp:
            return "stale"
        if meta.get("plan_sha256") != fingerprint:
            raise BadInputError(
                f"{meta_path} was made from another split file or other frames than this run's; use another "
                f"--out_dir, or delete {out_dir}/{split}.* to redo it"
            )
        if not npy.is_file():
            raise BadInputError(f"{meta_path} exists but {npy} is missing; delete {meta_path} to redo the split")
        return "complete"
    headers = [h for path in progress_files(out_dir, split) if (h := read_progress_file(path)[0]) is not None]
    for header in headers:
        refuse_mix(out_dir, split, header, identity, "an interrupted run")
        if header.get("plan_sha256") != fingerprint and videos_fp and header.get("videos_sha256") == videos_fp:
            return "stale"
        if header.get("plan_sha256") != fingerprint:
            raise BadInputError(
                f"the interrupted run in {out_dir} used another split file or other frames; delete "
                f"{out_dir}/.{split}.progress.* and {partial} to start over"
            )
        if header.get("batch_size") != batch_size:
            raise BadInputError(
                f"the interrupted run in {out_dir} used -bs {header.get('batch_size')}: rerun with it to resume "
                f"(or delete {out_dir}/.{split}.progress.* and {partial} to start over)"
            )
    if headers and (partial.is_file() or npy.is_file()):
        return "resume"
    if npy.is_file():
        raise BadInputError(f"{npy} exists without {meta_path.name}: made by something else; move it away first")
    return "fresh"


def finalize(
    out_dir: Path,
    split: str,
    plans: Sequence[VideoPlan],
    bad: set[int],
    planning_failures: list[dict[str, Any]],
    meta: dict[str, Any],
    strict: bool,
    nonfinite: set[int] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Put `<split>.npy` in place, then the failure report, then the JSON last; safe to repeat after a kill.

    Rows were written at each frame's position; when frames were corrupt the readable ones are packed to the
    front and videos with none are dropped, in a streamed copy (the .partial stays intact until renamed away).
    A video with any `nonfinite` frame (its embedding held NaN/inf) is dropped and listed: a NaN row would turn
    training into NaN.
    """
    npy, partial = out_dir / f"{split}.npy", out_dir / f"{split}.npy.partial"
    offsets = frame_offsets(plans)
    bad_arr = np.zeros(int(offsets[-1]), dtype=bool)
    bad_arr[list(bad)] = True
    nonfinite_arr = np.zeros(int(offsets[-1]), dtype=bool)
    nonfinite_arr[list(nonfinite or ())] = True
    failures, keep = list(planning_failures), []
    for p, plan in enumerate(plans):
        n_nonfinite = int(nonfinite_arr[offsets[p] : offsets[p + 1]].sum())
        if n_nonfinite:
            failures.append({"file": plan.frame_dir, "video_name": plan.name,
                             "reason": f"the backbone's embedding of {n_nonfinite} frame(s) is not finite (NaN/inf)"})
            continue
        n_bad = int(bad_arr[offsets[p] : offsets[p + 1]].sum())
        if n_bad:
            log.warning("%s: skipped %d corrupt frame(s) of %d", plan.frame_dir, n_bad, len(plan.frames))
        if n_bad == len(plan.frames):
            failures.append({"file": plan.frame_dir, "video_name": plan.name,
                             "reason": f"no readable frame ({n_bad} corrupt)"})
        else:
            keep.append(p)
    report = out_dir / f"failed_{split}.json"
    if failures and strict:
        write_failure_report(report, failures)
        raise BadInputError(f"{len(failures)} video(s) unusable under --strict (e.g. {failures[0]['file']}: "
                            f"{failures[0]['reason']}); listed in {report}")
    if not keep:
        write_failure_report(report, failures)
        raise BadInputError(f"no video of {split} has a readable frame; listed in {report}")
    if partial.is_file():
        if not bad:
            os.replace(partial, npy)
        else:
            src = np.load(partial, mmap_mode="r")
            tmp = out_dir / f".{split}.npy.compact.tmp"
            dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(len(keep), *src.shape[1:]))
            for new, p in enumerate(keep):
                good = np.flatnonzero(~bad_arr[offsets[p] : offsets[p + 1]])
                dst[new, : len(good)] = src[p, good]
            dst.flush()
            del dst, src
            os.replace(tmp, npy)
            partial.unlink()
    records = []
    for new, p in enumerate(keep):
        plan = plans[p]
        n_bad = int(bad_arr[offsets[p] : offsets[p + 1]].sum())
        record = {"video_idx": new, "video_name": plan.name, "video_length": len(plan.frames) - n_bad,
                  "label_idx": plan.label, "num_frames": plan.num_frames, "skipped_frames": n_bad}
        if n_bad:  # which frames the rows are (their times: frame k is at k / fps); else the rule of dataset.py
            good = np.flatnonzero(~bad_arr[offsets[p] : offsets[p + 1]])
            record["frame_index"] = [int(Path(plan.frames[g]).stem.split("_")[-1]) - 1 for g in good]
        records.append(record)
    meta = {"data": records, "memmap_size": [len(keep), meta["max_len"], meta["feature_dim"]], **meta}
    meta["skipped_frames"] = sum(r["skipped_frames"] for r in records)
    write_failure_report(report, failures)
    atomic_write_json(out_dir / f"{split}.json", meta)
    for path in progress_files(out_dir, split):
        path.unlink()
    return meta, failures


# ----------------------------------------------------------------------------------------------- extraction


def start_frame_batches(
    videos: Sequence[VideoPlan], batch_ids: Sequence[int], *, batch_size: int, num_workers: int, spec: ResizeSpec,
    pin_memory: bool, seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """The decoded batches `batch_ids`, in order, with the DataLoader workers started now: they decode ahead while
    the caller builds the model, so worker start-up and the first batches overlap the model build."""
    # One cv2 thread, set here in the parent: workers are processes already, and OpenCV's thread pool does not
    # survive fork() (a worker that touches an inherited live pool, even to resize it, hangs).
    cv2.setNumThreads(1)
    loader = DataLoader(
        FrameBatches(videos, batch_ids, batch_size, spec),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)


def check_first_batch(model: torch.nn.Module, batch: dict[str, Any], record: BackboneRecord, *,
                      device: torch.device, precision: str, channels_last: bool) -> torch.Tensor | None:
    """The first decoded batch's features (on the CPU), computed before any output file exists, so a backbone that
    cannot take the frames, or gives other than the record's D features, fails with one clear line and leaves OUT
    untouched. Checking real work costs nothing extra (a separate probe forward would set up batch-1 kernels for
    nothing). None when none of the batch's frames decoded (then a blank frame is what gets checked)."""
    images, size, name, dim = batch["images"], record.image_size, record.backbone, record.dim
    x = images if len(images) else torch.zeros((1, 3, size, size), dtype=torch.uint8)
    try:
        out = embed_batch(model, normalize_batch(x, device, record.mean, record.std, channels_last), precision)
    except Exception as exc:  # torchvision asserts (e.g. ViT's fixed size) surface here
        raise BadInputError(f"backbone {name} cannot embed {size}x{size} frames: {exc}") from exc
    if out.shape != (len(x), dim):
        raise BadInputError(f"backbone {name} gives features of shape {tuple(out.shape[1:])} per frame, expected "
                            f"({dim},)")
    return out.cpu() if len(images) else None


def extract(
    model: torch.nn.Module,
    batches: Iterator[dict[str, Any]],
    num_batches: int,
    arr: np.ndarray,
    on_flush: Callable[[list[dict[str, Any]]], None],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    precision: str,
    channels_last: bool,
    strict: bool = False,
    show_progress: bool = True,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    first_out: torch.Tensor | None = None,
) -> None:
    """Embed the `num_batches` decoded batches (start_frame_batches), writing frame f of video v to arr[v, f];
    frames are normalised with the backbone's `mean` and `std`, and `first_out` holds the first batch's features
    when check_first_batch computed them already.

    Work is reported to `on_flush` only after the memmap holding it has been flushed. On CUDA the copy of
    batch b's features overlaps the forward of batch b+1, and decoding runs ahead in the workers.
    """
    cuda = device.type == "cuda"
    pending_records: list[dict[str, Any]] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        if pending_records:
            arr.flush()  # rows on disk before the log says they are there
            on_flush(list(pending_records))
            pending_records.clear()
        last_flush = time.monotonic()

    def consume(batch: dict[str, Any], feats: torch.Tensor) -> None:
        ok = batch["ok"].numpy().copy()
        rows = feats.numpy()
        finite = np.isfinite(rows).all(1)  # NaN/inf from the backbone: that frame's video fails in finalize
        nonfinite = np.flatnonzero(ok)[~finite]
        ok[nonfinite] = False
        if ok.any():
            arr[batch["vpos"].numpy()[ok], batch["fpos"].numpy()[ok]] = rows[finite]
        start = batch["start"]
        record = {"r": [start, start + len(ok)], "bad": (start + np.flatnonzero(~ok)).tolist()}
        if len(nonfinite):
            record["nonfinite"] = (start + nonfinite).tolist()
            log.debug("non-finite embeddings for %d frame(s) of batch starting at %d", len(nonfinite), start)
        pending_records.append(record)
        if time.monotonic() - last_flush >= checkpoint_seconds:
            flush()

    pending: tuple[dict[str, Any], torch.Tensor, torch.cuda.Event | None] | None = None
    for batch in tqdm(batches, total=num_batches, desc="embedding", unit="batch", disable=not show_progress):
        for err in batch["errors"]:
            if strict:
                raise BadInputError(f"corrupt frame {err} (--strict)")
            log.debug("skipping frame %s", err)
        x, event = batch["images"], None
        if first_out is not None:
            out, first_out = first_out, None
        elif len(x):
            out = embed_batch(model, normalize_batch(x, device, mean, std, channels_last), precision)
            if cuda:
                out = out.to("cpu", non_blocking=True)  # into pinned memory; the event says when it has landed
                event = torch.cuda.Event()
                event.record()
        else:
            out = torch.empty((0, arr.shape[2]))
        if pending is not None:
            if pending[2] is not None:
                pending[2].synchronize()
            consume(pending[0], pending[1])
        pending = (batch, out, event)
    if pending is not None:
        if pending[2] is not None:
            pending[2].synchronize()
        consume(pending[0], pending[1])
    flush()


# ----------------------------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-s", "--split", type=split_name, default=None,
                   help="split name: output files are <out_dir>/<split>.npy/.json (required unless --videos_dir)")
    p.add_argument("-f", "--frames_dir", default=None,
                   help="frames/ folder of stage 1 (<video_name>/frame_*.jpg; required unless --videos_dir)")
    p.add_argument("-j", "--json_file", default=None,
                   help="split JSON of stage 1 (list of {video_name, label_idx}; required unless --videos_dir)")
    p.add_argument("-o", "--out_dir", required=True)
    p.add_argument("-m", "--model", default="resnet18", help=BACKBONE_HELP)
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--feature", choices=FEATURES, default="pooled", help=FEATURE_HELP)
    p.add_argument("-bs", "--batch_size", type=positive_int, default=128, help="frames per forward pass (batches span videos)")
    p.add_argument("-nw", "--num_workers", type=nonnegative_int, default=4, help="DataLoader processes decoding and resizing frames")
    p.add_argument("-g", "--gpu_id", type=int, default=0, help="CUDA device; the CPU is used when there is none. Under "
                   "torchrun each rank uses cuda:LOCAL_RANK instead")
    p.add_argument("--image_size", type=int_at_least(16), default=None, help="input size (default: the backbone's "
                   "own, from its config; 224 for torchvision). Recorded as an override")
    p.add_argument("--resize", choices=RESIZE_MODES, default=None, help="crop: shorter side, then the centre square; "
                   "squash: the whole frame to SxS (old behaviour). Default: the backbone's own (crop for torchvision)")
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto",
                   help="auto: fp16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on for backbones that are mostly convolutions, "
                   "from any library, on the CPU as on CUDA, where it measured faster; off for ViT/Swin/ConvNeXt-like "
                   "ones and Hugging Face transformers). Recorded in the backbone record; predict.py runs it too")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the stored embeddings")
    p.add_argument("--max_len", type=positive_int, default=None,
                   help="cap on frames per video: longer videos are subsampled uniformly (default: no cap)")
    p.add_argument("--seed", type=int, default=0, help="fixes the random backbone of --weights none and data order")
    p.add_argument("--strict", action="store_true", help="fail on any missing video or corrupt frame")
    p.add_argument("--checkpoint_seconds", type=nonnegative_float, default=CHECKPOINT_SECONDS,
                   help="seconds between flushing the memmap and recording finished frames (what a killed run keeps); "
                        "0 = after every batch. Outputs do not depend on it")
    p.add_argument("-v", "--verbose", action="store_true")
    d = p.add_argument_group(
        "straight from videos (--videos_dir, in place of -s/-f/-j: stage 1's inputs and rules, no JPEG files on "
        "disk; every split is written, with stage 1's split files; -nw is the number of decoding processes)")
    d.add_argument("--videos_dir", default=None, help="stage 1's -v: <Class>/<video>.<ext>, or what --split_dir names")
    d.add_argument("--split_dir", "--annotations", dest="split_dir", default=None, help="stage 1's --split_dir")
    d.add_argument("--dataset", default=None, choices=tuple(READERS), help="stage 1's --dataset")
    d.add_argument("--split_id", type=int, default=1, choices=(1, 2, 3), help="stage 1's --split_id")
    d.add_argument("--split_ratio", type=float_in(0.0, 1.0, low_open=True), default=0.8,
                   help="stage 1's -s: train share of the random split (seeded by --seed, as stage 1's)")
    d.add_argument("--val_ratio", type=float_in(0.0, 1.0, high_open=True), default=0.1, help="stage 1's --val_ratio")
    d.add_argument("--allow_missing", action="store_true", help="stage 1's --allow_missing")
    d.add_argument("-fps", "--frame_rate", type=nonnegative_float, default=1.0, help="stage 1's -fps")
    d.add_argument("--frame_size", type=positive_int, default=None, help="stage 1's --frame_size")
    d.add_argument("--jpeg_quality", type=int_at_least(0), default=95,
                   help="frames pass through JPEG at this quality in memory, as stage 1 stores them (the outputs "
                        "equal stage 1 + stage 2's, and predict.py reproduces them); 0 = the decoded pixels as they "
                        "are (no JPEG loss; predict.py then refuses the checkpoint)")
    d.add_argument("--source_fps", type=nonnegative_float, default=None, help="stage 1's --source_fps")
    d.add_argument("--keep_truncated", action="store_true", help="stage 1's --keep_truncated")
    d.add_argument("--video_timeout", type=nonnegative_float, default=3600.0, help="stage 1's --video_timeout")
    d.add_argument("--group_videos", type=positive_int, default=16,
                   help="videos (consecutive in name order) whose frames are batched together: short videos fill "
                        "-bs batches; a rerun redoes a group with any unfinished or failed video")
    return p


def split_name(text: str) -> str:
    """argparse `type=` for -s: a plain file-name part (it names <split>.npy, .json and progress files)."""
    if not text or text.startswith(".") or "/" in text or "\0" in text or len(text.encode()) > 200:
        raise argparse.ArgumentTypeError(f"must be a plain name of at most 200 bytes (e.g. train), got {text!r}")
    return text


def validate_args(args: argparse.Namespace) -> None:
    """What argparse's types cannot check, before any work: the inputs exist and the output folder can be made."""
    for flag, value, low in (("--batch_size", args.batch_size, 1), ("--num_workers", args.num_workers, 0),
                             ("--image_size", args.image_size, 16)):
        if value is not None and value < low:
            raise BadInputError(f"{flag} must be >= {low}, got {value}")
    if args.max_len is not None and args.max_len < 1:
        raise BadInputError(f"--max_len must be >= 1, got {args.max_len}")
    if getattr(args, "videos_dir", None) is not None:
        given = [flag for flag, value in (("-s", args.split), ("-f", args.frames_dir), ("-j", args.json_file)) if value]
        if given:
            raise BadInputError(f"--videos_dir reads the videos and writes every split: drop {', '.join(given)}")
        if not 0 <= args.jpeg_quality <= 100:
            raise BadInputError(f"--jpeg_quality must be in 0..100 (0 = no JPEG), got {args.jpeg_quality}")
        if args.source_fps is not None and (args.source_fps <= 0 or not args.jpeg_quality):
            raise BadInputError("--source_fps needs a rate > 0 and a --jpeg_quality (frame folders are re-encoded)")
        check_writable_dir(args.out_dir, "-o/--out_dir")
        return
    missing = [flag for flag, value in (("-s/--split", args.split), ("-f/--frames_dir", args.frames_dir),
                                        ("-j/--json_file", args.json_file)) if value is None]
    if missing:
        raise BadInputError(f"{', '.join(missing)} required (or --videos_dir to read videos directly)")
    if not Path(args.frames_dir).is_dir():
        raise BadInputError(f"frames folder not found: {args.frames_dir}")
    check_writable_dir(args.out_dir, "-o/--out_dir")


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    validate_args(args)
    if args.videos_dir is not None:
        from direct_embed import embed_videos  # here: direct_embed builds on this module

        return embed_videos(args)
    with rank_group() as info:  # one rank's failure stops every rank, with its message
        # one run per split: two writing one memmap would interleave their rows and progress logs
        with main_rank_lock(info, args.out_dir, f".lock.{args.split}", what=f"split {args.split!r} of this folder"):
            return embed_split(args, info)


def embed_split(args: argparse.Namespace, info: DistInfo) -> int:
    """Plan the split's frames, refuse or resume what OUT holds, embed this rank's share and (rank 0) finalise."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    set_default_threads(local_world)
    device = rank_device(info, args.gpu_id)
    precision = resolve_precision(args.precision, device)
    out_dir = Path(args.out_dir)

    records = read_split_json(args.json_file, unlabelled=True)  # an unlabelled test split is embedded too
    split_id = split_id_of(records, args.json_file)  # the official split, for the checkpoints' data_info
    entries = [(r["video_name"], r["label_idx"]) for r in records]
    class_names = read_class_names(Path(args.json_file).parent, records)
    frame_settings = read_frame_settings(args.frames_dir)
    recorded = manifest_videos(args.frames_dir)
    plans, plan_failures = plan_videos(entries, args.frames_dir, args.max_len, recorded)
    report = out_dir / f"failed_{args.split}.json"
    if plan_failures and args.strict:
        f = plan_failures[0]
        raise BadInputError(f"{len(plan_failures)} video(s) of {args.json_file} have no frames (e.g. {f['file']}: "
                            f"{f['reason']}) and --strict is set")
    if not plans:
        if info.is_main:
            write_failure_report(report, plan_failures)
        raise BadInputError(f"none of the {len(entries)} videos of {args.json_file} has frames in {args.frames_dir}; "
                            f"listed in {report}")
    max_len = max(len(p.frames) for p in plans)
    fingerprint = plan_fingerprint(plans, max_len, source_stamps(recorded))
    videos_fp = videos_fingerprint(plans)
    record = resolve_backbone(args.model, args.weights, args.feature, args.image_size, args.resize, seed=args.seed)
    identity = {"backbone": record.backbone, "weights": record.weights, "seed": record.seed, "feature": record.feature,
                "image_size": record.image_size, "resize": record.resize.mode, "dtype": args.dtype,
                "max_len_cap": args.max_len, "precision": precision}

    state = "fresh"
    if out_dir.is_dir():
        state = inspect_outputs(out_dir, args.split, identity, fingerprint, args.batch_size, videos_fp)
    if state == "stale":
        log.warning("the frames of split %s changed since %s was embedded (stage 1 redid videos whose source "
                    "changed): embedding the split again", args.split, out_dir)
    if state == "complete":
        log.info("%s/%s.npy is complete for this command: nothing to do", out_dir, args.split)
        return 0

    # This rank's work is known before the model exists (a fresh run, or a stale one that rank 0 clears below,
    # starts from nothing, and nobody changes an interrupted run's logs before the barriers below), so the decode
    # workers start on it now, at the record's input, and decode while the backbone is built: start-up overlaps work.
    total = int(frame_offsets(plans)[-1])
    done = (np.zeros(total, dtype=bool) if state in ("fresh", "stale")
            else read_progress(out_dir, args.split, total)[1])
    batch_ids = batches_to_do(total, done, args.batch_size, info.rank, info.world_size)
    batches = start_frame_batches(plans, batch_ids, batch_size=args.batch_size, num_workers=args.num_workers,
                                  spec=record.resize, pin_memory=device.type == "cuda",
                                  seed=args.seed) if batch_ids else iter(())

    model, record = build_backbone(record)
    record = choose_channels_last(record, args.channels_last)  # recorded: predict.py runs the same layout
    dim, channels_last = record.dim, bool(record.channels_last)
    log.info("backbone %s", record.describe())
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    first = next(batches, None)  # decoded while the model was built
    first_out = None
    if first is not None:
        first_out = check_first_batch(model, first, record, device=device, precision=precision,
                                      channels_last=channels_last)
        batches = itertools.chain([first], batches)
    header = {**identity, "plan_sha256": fingerprint, "videos_sha256": videos_fp, "batch_size": args.batch_size}
    partial = out_dir / f"{args.split}.npy.partial"
    shape = (len(plans), max_len, dim)

    barrier(info)  # every rank has looked at OUT before rank 0 changes it
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if state in ("fresh", "stale"):
            for path in (out_dir / f"{args.split}.json", out_dir / f"{args.split}.npy", *progress_files(out_dir, args.split)):
                path.unlink(missing_ok=True)  # the JSON first: it must never describe another .npy
            atomic_write_text(progress_path(out_dir, args.split, 0), json.dumps({"header": header}) + "\n")
            np.lib.format.open_memmap(partial, mode="w+", dtype=args.dtype, shape=shape).flush()
    barrier(info)  # rank 0's fresh files exist before any rank opens them
    log.info("rank %d: %d batch(es) of %d frames to embed (%d of %d frames done before); %dpx %s, D=%d, %s, %s",
             info.rank, len(batch_ids), args.batch_size, int(done.sum()), total, record.image_size, record.resize.mode, dim,
             device, precision)
    if partial.is_file():
        arr = np.load(partial, mmap_mode="r+")
        if arr.shape != shape or arr.dtype != np.dtype(args.dtype):
            raise BadInputError(f"{partial} has shape {arr.shape} {arr.dtype}, expected {shape} {args.dtype}; "
                                f"delete it and {out_dir}/.{args.split}.progress.* to start over")
        plog = ProgressLog(progress_path(out_dir, args.split, info.rank), header)
        try:
            extract(model, batches, len(batch_ids), arr, plog.append, mean=record.mean, std=record.std, device=device,
                    precision=precision, channels_last=channels_last, strict=args.strict,
                    show_progress=info.is_main, checkpoint_seconds=args.checkpoint_seconds, first_out=first_out)
        finally:
            plog.close()
            del arr
    elif batch_ids:
        raise BadInputError(f"{partial} is missing but the interrupted run is unfinished; delete "
                            f"{out_dir}/.{args.split}.progress.* to start over")
    barrier(info)
    if not info.is_main:
        return 0
    _, done, bad, nonfinite = read_progress(out_dir, args.split, total)
    if not done.all():
        raise BadInputError(f"{int((~done).sum())} frame(s) of {args.split} still lack embeddings; rerun the command")
    meta = {"split": args.split, "split_id": split_id, **identity, **frame_settings, "max_len": max_len, "feature_dim": dim,
            "class_names": class_names, "num_classes": len(class_names), "backbone_record": record.to_dict(),
            "subsampled_videos": sum(p.num_frames > len(p.frames) for p in plans), "plan_sha256": fingerprint,
            "videos_sha256": videos_fp}
    meta, failures = finalize(out_dir, args.split, plans, bad, plan_failures, meta, args.strict, nonfinite)
    log_failure_summary(failures, report)
    n, length, d = meta["memmap_size"]
    log.info("wrote %s/%s.npy (%d videos x %d frames x %d) and %s.json; %d video(s) left out, %d corrupt frame(s) "
             "skipped", out_dir, args.split, n, length, d, args.split, len(failures), meta["skipped_frames"])
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
