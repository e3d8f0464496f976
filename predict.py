"""Classify raw videos with a trained checkpoint: video -> frames -> backbone -> head -> top-k labels, one command.

    python predict.py --model_ckpt RUN/checkpoints/best.pth VIDEO_OR_FOLDER [...] [--topk 5] [--json out.json]
                      [--attention_plot out.png] [--occlusion out.png] [--backbone_weights PATH]

Each video is decoded in memory (no frames written) at the checkpoint's fps with stage 1's exact-time sampling,
and its frames go through the same pixels as training saw them: stage 1's shorter-side resize (`frame_size`) and
its JPEG encoding at `jpeg_quality` (video.iter_stored_frames_at_fps: the same bytes stage 1 writes, decoded as
stage 2 reads them), then stage 2's preprocessing and the checkpoint's backbone, both rebuilt from the backbone record
stage 2 stored (library, name, weights, seed, feature; input size, resize and crop, mean/std), the
same uniform subsampling to stage 2's `max_len_cap`, the stored embedding dtype, and the run's TSN segments and
views of those frames when it was trained with --clip_len (logits of the views averaged). So a video gets the same
probabilities here as through prepare_ucf101 -> prepare_data -> main.py --mode test, up to float noise.

End-to-end checkpoints (`e2e_*`) are rebuilt whole from the checkpoint and sample the clip as their evaluation
does (uniform segment centres, `num_clips` views averaged). Both go through one prediction path (`predict_video`):
the checkpoint's route (routes.py) turns the decoded frames into the head's frame features, and attention and
occlusion are computed on those the same way; the figures are drawn by reports.py.

`--occlusion` works for every head: each frame the head is given is removed in turn (the rest keep their order)
and the predicted class's probability is scored again; e2e models run their backbone once and occlude the first
view's frame features.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from checkpoint import read_checkpoint
from models.base import VideoModel
from precision import INFERENCE_PRECISIONS, resolve_precision
from reports import plot_attention, plot_occlusion
from routes import (
    EmbeddingRoute,
    FrameSettings,
    Inference,
    model_from_checkpoint,
    route_for,
)
from threads import set_default_threads
from transforms import preprocess_frame
from utils import (
    NAME_MAX,
    BadInputError,
    atomic_write_json,
    check_writable_file,
    fit_name,
    float_in,
    positive_int,
    resolve_device,
    run_cli,
    setup_logging,
)
from video import IMAGE_EXTENSIONS, VideoDecodeError, is_video_file, iter_stored_frames_at_fps, truncation_reason
from windows import Timeline, check_window, encode_stream, sliding_windows

log = logging.getLogger("actionbert.predict")

THUMB_HEIGHT = 64  # pixels of the thumbnails kept for --attention_plot and --occlusion


# ----------------------------------------------------------------------------------------------- settings


# ----------------------------------------------------------------------------------------------- inputs


def _frame_folders(path: Path) -> list[Path]:
    """With --source_fps: the folder itself when it holds image files (one video), else its subfolders that do
    (a dataset's media folder of <id>/00001.jpg ..., sorted)."""
    def has_images(folder: Path) -> bool:
        return any(f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") for f in folder.iterdir())

    if has_images(path):
        return [path]
    return sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".") and has_images(d))


def find_videos(paths: Sequence[str | os.PathLike],
                frame_folders: bool = False) -> tuple[list[Path], list[dict[str, str]]]:
    """Files as given, and every video file under each folder (recursively, sorted; hidden entries skipped). With
    `frame_folders` (--source_fps) a folder is a frame folder (one video), or a folder of such folders.

    A missing path or a folder without videos is a failure record {"file", "reason"}; a file given by name is
    tried whatever its extension (decoding then says whether it is a video)."""
    videos: list[Path] = []
    failures: list[dict[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and frame_folders:
            found = _frame_folders(path)
            if not found:
                failures.append({"file": str(path), "reason": "folder holds no frame folders (numbered JPEG/PNG "
                                 "frames, e.g. 00001.jpg)"})
            videos += found
        elif path.is_dir():
            found = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / f for f in files if not f.startswith(".") and is_video_file(f)]
            if not found:
                failures.append({"file": str(path), "reason": "folder holds no video files"})
            videos += sorted(found, key=lambda p: p.relative_to(path).parts)
        elif path.exists() or path.is_symlink():
            videos.append(path)
        else:
            failures.append({"file": str(path), "reason": "no such file or folder"})
    return videos, failures


@dataclass
class DecodedVideo:
    times: list[float]  # seconds of each sampled frame
    frames: list[torch.Tensor]  # uint8 (3, S, S), preprocessed as stage 2 does
    thumbs: list[np.ndarray] = field(default_factory=list)  # small RGB frames, for --attention_plot


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A small copy of a frame, THUMB_HEIGHT pixels high, for the figures' strips."""
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(1, round(w * THUMB_HEIGHT / h)), THUMB_HEIGHT), interpolation=cv2.INTER_AREA)


def decode_video(path: str | os.PathLike, settings: FrameSettings, keep_thumbs: bool = False,
                 source_fps: float | None = None) -> DecodedVideo:
    """Sample, resize, JPEG-encode and decode, and preprocess one video's frames in memory (with `source_fps`, a
    frame folder's, resampled as stage 1 does).

    The decoded JPEGs go through transforms.preprocess_frame, as stage 2's workers do with the stored files.
    """
    out = DecodedVideo([], [])
    info: dict[str, Any] = {}
    frames = iter_stored_frames_at_fps(path, settings.fps, settings.frame_size, settings.jpeg_quality, info=info,
                                       source_fps=source_fps)
    for t, rgb in frames:
        out.times.append(t)
        out.frames.append(preprocess_frame(rgb, settings.spec))
        if keep_thumbs:
            out.thumbs.append(_thumbnail(rgb))
    if not out.frames:
        raise VideoDecodeError(path, "no frames at the sampling times")
    reason = truncation_reason(info)
    if reason:  # stage 1 leaves such videos out of training by default; here the user asked for this one
        log.warning("%s: %s; classifying the part that decodes", path, reason)
    return out


# ----------------------------------------------------------------------------------------------- model


@dataclass
class Predictor:
    """Everything loaded once and used for every video."""

    ckpt_path: str
    model_name: str
    class_names: list[str]
    route: type[EmbeddingRoute]  # the checkpoint's data route: how a video becomes the model's inputs
    settings: FrameSettings
    model: VideoModel  # the head, or the whole end-to-end model
    device: torch.device
    precision: str
    inference: Inference  # the frame backbone of a head over embeddings, its input statistics and layout
    source_fps: float | None = None  # --source_fps: folders are frame folders at this rate

    def frame_rate_of(self, path: str | os.PathLike) -> float | None:
        """The source rate of `path` when it is a frame folder (--source_fps given), None for a video file."""
        return self.source_fps if self.source_fps is not None and Path(path).is_dir() else None


def load_predictor(
    ckpt_path: str | os.PathLike,
    backbone_weights: str | None = None,
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> Predictor:
    """Load the checkpoint, its model and what its route needs besides (a head's backbone)."""
    device = torch.device(device)
    ckpt = read_checkpoint(ckpt_path)
    route = route_for(ckpt.model_name)
    settings = route.frame_settings(ckpt)
    inference = route.inference(ckpt, backbone_weights, device)
    return Predictor(
        ckpt_path=str(ckpt_path),
        model_name=ckpt.model_name,
        class_names=list(ckpt.data.class_names),
        route=route,
        settings=settings,
        model=model_from_checkpoint(ckpt, device),
        device=device,
        precision=resolve_precision(precision, device),
        inference=inference,
    )


# ----------------------------------------------------------------------------------------------- attention


def cls_attention(attentions: Sequence[torch.Tensor]) -> np.ndarray:
    """(layers + 1, T) attention of [CLS] to each frame: one row per layer (mean over heads, renormalised over
    the frames so rows compare) and a last row of attention rollout (Abnar & Zuidema 2020: per layer, heads
    averaged, plus the residual identity, rows renormalised; the product over layers).

    `attentions` are one (heads, T+1, T+1) map per layer for a single video, token 0 being [CLS]."""
    rows = []
    rollout = None
    for att in attentions:
        a = att.float().mean(0)  # (T+1, T+1)
        cls = a[0, 1:]
        rows.append(cls / cls.sum().clamp_min(1e-12))
        a = a + torch.eye(a.shape[0])
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    roll = rollout[0, 1:]
    rows.append(roll / roll.sum().clamp_min(1e-12))
    return torch.stack(rows).numpy()


def plot_paths(out: str | os.PathLike, videos: Sequence[Path]) -> list[Path]:
    """One video: exactly `out`. Several: `<out stem>_<video stem>.png` beside it, made unique by a counter."""
    out = Path(out)
    if len(videos) == 1:
        return [out]
    paths, seen = [], set()
    for v in videos:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", v.stem) or "video"
        room = NAME_MAX - len((out.suffix or ".png").encode()) - 8  # the suffix and a counter always fit
        candidate, k = fit_name(f"{out.stem}_{stem}", room), 1
        while candidate.casefold() in seen:
            k += 1
            candidate = f"{fit_name(f'{out.stem}_{stem}', room)}_{k}"
        seen.add(candidate.casefold())
        paths.append(out.with_name(candidate + (out.suffix or ".png")))
    return paths


# ----------------------------------------------------------------------------------------------- prediction


@dataclass
class Occlusion:
    """Which moments matter: per frame the model was given, how much the predicted class's probability drops when
    that frame alone is removed from the sequence (the others keep their order)."""

    class_idx: int
    prob: float  # the class's probability with every frame
    drops: np.ndarray  # (T,): prob - prob without frame t
    times: list[float]
    thumbs: list[np.ndarray] = field(default_factory=list)

    def to_json(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {"label": class_names[self.class_idx], "class_idx": self.class_idx, "prob": self.prob,
                "times": [round(t, 6) for t in self.times],
                "drops": [None if not math.isfinite(d) else float(d) for d in self.drops]}


@dataclass
class Prediction:
    video: str
    probs: np.ndarray  # (num_classes,)
    num_frames: int  # frames sampled at the checkpoint's fps
    times: list[float]  # time of each frame the model used
    attention: np.ndarray | None = None  # (layers + 1, T) from cls_attention
    thumbs: list[np.ndarray] = field(default_factory=list)  # of the frames the attention refers to
    occlusion: Occlusion | None = None

    def topk(self, class_names: Sequence[str], k: int) -> list[dict[str, Any]]:
        order = np.argsort(-self.probs, kind="stable")[: min(k, len(self.probs))]
        return [{"label": class_names[i], "class_idx": int(i), "prob": float(self.probs[i])} for i in order]


@torch.no_grad()
def occlusion_drops(head: torch.nn.Module, feats: torch.Tensor, class_idx: int, chunk: int = 64,
                    times: torch.Tensor | None = None) -> tuple[float, np.ndarray]:
    """(P(class | all T frames), per frame t: that minus P(class | the T-1 other frames, in order)).

    Works for any head over (B, T, D) features and lengths: the T occluded sequences are batched (in chunks, so
    memory stays bounded for long videos) with length T-1; a one-frame video is compared with an empty one, which
    every head scores (padding is masked). `times` (T,) seconds: a head with --positions time gets them, each
    remaining frame keeping its own time."""
    num = feats.shape[0]
    lengths = torch.tensor([num], device=feats.device)
    timed = times is not None and getattr(head, "uses_times", False)
    prob = float(head(feats[None], lengths, **({"times": times[None]} if timed else {})).float().softmax(-1)[
        0, class_idx])
    drops = np.empty(num)
    keep = ~torch.eye(num, dtype=torch.bool, device=feats.device)  # row t: every frame but t
    for start in range(0, num, chunk):
        rows = keep[start : start + chunk]
        batch = feats.new_zeros(len(rows), max(num - 1, 1), feats.shape[1])
        kwargs = {}
        if num > 1:
            batch[:] = torch.stack([feats[r] for r in rows])
        if timed:
            kwargs["times"] = (torch.stack([times[r] for r in rows]) if num > 1
                               else times.new_zeros(len(rows), 1))
        occluded = head(batch, torch.full((len(rows),), num - 1, device=feats.device), **kwargs)
        drops[start : start + len(rows)] = prob - occluded.float().softmax(-1)[:, class_idx].cpu().numpy()
    return prob, drops


@torch.no_grad()
def predict_video(
    predictor: Predictor, path: str | os.PathLike, batch_size: int = 64, attention: bool = False,
    occlusion: bool = False,
) -> Prediction:
    """Probabilities of one video (with `attention`, the [CLS] attention maps over its frames; with `occlusion`,
    the drop of the predicted class's probability when each frame is removed), for every route: the route turns
    the decoded frames into the head's (T, D) features (and, e2e, the whole model's logits), the rest is common."""
    decoded = decode_video(path, predictor.settings, keep_thumbs=attention or occlusion,
                           source_fps=predictor.frame_rate_of(path))
    enc = predictor.route.encode(predictor, decoded, batch_size, need_feats=attention or occlusion)
    head = predictor.route.head(predictor.model)
    times = [decoded.times[i] for i in enc.frames]
    thumbs = [decoded.thumbs[i] for i in enc.frames] if attention or occlusion else []
    lengths = torch.tensor([len(enc.frames)], device=predictor.device)
    # --positions time: each frame at its time in the video (stage 1's k / fps), as in training
    frame_times = torch.tensor(times, dtype=torch.float32, device=predictor.device)
    timed = {"times": frame_times[None]} if getattr(head, "uses_times", False) else {}
    logits, maps = enc.logits, None
    if attention:
        head_logits, atts = head(enc.feats[None], lengths, return_attentions=True, **timed)
        used = head.last_frame_index[0].tolist()  # frames the head kept (it subsamples long videos)
        maps = cls_attention([a[0].cpu() for a in atts])[:, : len(used)]
        logits = head_logits if logits is None else logits
    if logits is None:
        logits = head(enc.feats[None], lengths, **timed)
    probs = logits.float().softmax(-1)[0].cpu().numpy()
    occ = None
    if occlusion:  # of the predicted class, over every frame the head was given
        top = int(np.argmax(probs))
        prob, drops = occlusion_drops(head, enc.feats, top, times=frame_times)
        occ = Occlusion(top, prob, drops, list(times), list(thumbs))
    if attention:
        times, thumbs = [times[i] for i in used], [thumbs[i] for i in used]
    return Prediction(str(path), probs, len(decoded.frames), times, maps, thumbs, occ)


@torch.no_grad()
def predict_windows(predictor: Predictor, path: str | os.PathLike, window: float, stride: float,
                    batch_size: int = 64) -> Timeline:
    """One prediction per window of `window` seconds every `stride` seconds (windows.py): the frames stream from
    the video, each is turned into the route's unit once (an embedding for a head, the frame for e2e), and only
    the open windows' units are kept, so memory does not grow with the video's length. A window with fewer frames
    than the head needs (its `min_frames`) is listed as skipped."""
    s = predictor.settings
    check_window(window, stride, s.fps)
    timeline = Timeline(Path(path).name, predictor.class_names, window, stride, s.fps)
    route, min_frames = predictor.route, predictor.route.head(predictor.model).min_frames
    info: dict[str, Any] = {}

    def frames() -> Iterator[tuple[float, torch.Tensor]]:
        for t, rgb in iter_stored_frames_at_fps(path, s.fps, s.frame_size, s.jpeg_quality, info=info,
                                                source_fps=predictor.frame_rate_of(path)):
            timeline.strip.offer(t, lambda rgb=rgb: _thumbnail(rgb))
            timeline.num_frames += 1
            yield t, preprocess_frame(rgb, s.spec)

    units = encode_stream(frames(), lambda batch: route.window_units(predictor, batch, batch_size), batch_size)
    with tqdm(desc=f"{Path(path).name}: windows", unit="window", leave=False, dynamic_ncols=True) as progress:
        for win, times, kept in sliding_windows(units, window, stride, s.fps):
            progress.update(1)
            if len(kept) < min_frames:
                timeline.add(win, times, None, f"{len(kept)} frame(s); the head needs {min_frames}")
                continue
            # --positions time: a window is classified as a clip that starts at its first frame, so its frames'
            # times count from the window's start (a training video's count from its own first frame)
            timed = {"times": [t - win.start for t in times]} if predictor.model.uses_times else {}
            logits = route.classify_window(predictor, kept, batch_size, **timed)
            probs = logits.float().softmax(-1)[0].cpu().numpy()
            if not np.isfinite(probs).all():
                raise BadInputError(f"the model's output is not finite (NaN/inf) in the window at {win.start:g} s")
            timeline.add(win, times, probs)
    if not timeline.results:
        raise VideoDecodeError(path, "no frames at the sampling times")
    reason = truncation_reason(info)
    if reason:
        log.warning("%s: %s; the timeline covers the part that decodes", path, reason)
    return timeline


def timeline_summary(timeline: Timeline) -> str:
    """The windows as runs of one top-1 label: `start-end s  label  (mean prob, windows)`, partial ones marked."""
    lines = [f"{timeline.video}  ({len(timeline.results)} windows of {timeline.window:g} s every "
             f"{timeline.stride:g} s)"]
    runs: list[list[Any]] = []
    for r, label in zip(timeline.results, timeline.labels(), strict=True):
        prob = r.top(1)[0][1] if r.probs is not None else math.nan
        if runs and runs[-1][0] == label:
            runs[-1][2] = r.window.end
            runs[-1][3].append(prob)
        else:
            runs.append([label, r.window.start, r.window.end, [prob]])
    for label, start, end, probs in runs:
        text = "(skipped: too few frames)" if label is None else f"{label}  (mean prob {np.mean(probs):.3f})"
        lines.append(f"  {start:8.1f}-{end:<8.1f}s  {text}  [{len(probs)} window(s)]")
    if any(r.window.partial for r in timeline.results):
        last = timeline.results[-1].window
        lines.append(f"  the last window ({last.start:g}-{last.end:g} s) is partial: the video ends inside it")
    return "\n".join(lines)


def failure_reason(exc: Exception) -> str:
    """One line for an exception from one video's work; its traceback goes to the debug log (-v)."""
    log.debug("traceback:", exc_info=exc)
    if isinstance(exc, BadInputError):
        return str(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unexpected error ({type(exc).__name__}{': ' + first if first else ''}); -v logs its traceback"


def format_table(pred: Prediction, class_names: Sequence[str], k: int, fps: float) -> str:
    """A small aligned table of one video's top-k classes."""
    top = pred.topk(class_names, k)
    width = max(len("class"), *(len(t["label"]) for t in top))
    lines = [f"{pred.video}  ({pred.num_frames} frame{'s' if pred.num_frames != 1 else ''} at {fps:g} fps)",
             f"  {'rank':>4}  {'class':<{width}}  {'prob':>7}"]
    for r, t in enumerate(top, 1):
        lines.append(f"  {r:>4}  {t['label']:<{width}}  {t['prob']:>7.4f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files or folders (all video files inside, "
                   "recursively, sorted)")
    p.add_argument("--model_ckpt", required=True, help="checkpoint from main.py, e.g. RUN/checkpoints/best.pth")
    p.add_argument("--topk", type=positive_int, default=5, help="classes to print per video")
    p.add_argument("--json", default=None, help="also write [{video, topk: [{label, class_idx, prob}], num_frames"
                   "[, occlusion: {label, class_idx, prob, times, drops}]}] to this file")
    p.add_argument("--backbone_weights", default=None, help="local weights of the checkpoint's backbone, used "
                   "instead of those it records (offline use, e.g. when pretrained weights cannot be downloaded): a "
                   "torchvision/timm state_dict or .safetensors file, or an HF model folder")
    p.add_argument("--attention_plot", default=None, metavar="OUT.png", help="bert/roberta heads (and e2e_bert/"
                   "e2e_roberta): draw the [CLS] attention over time per layer and rolled out, under the sampled "
                   "frames. One video: OUT.png; several: OUT_<video stem>.png beside it")
    p.add_argument("--occlusion", default=None, metavar="OUT.png", help="every head: per sampled frame, the drop "
                   "in the predicted class's probability when that frame is removed, drawn under the frames (which "
                   "moments the prediction rests on); --json then includes the curve. One video: OUT.png; several: "
                   "OUT_<video stem>.png beside it")
    p.add_argument("--window", type=float_in(0.0, low_open=True), default=None, metavar="SECONDS", help="classify each window of "
                   "this many seconds instead of the whole video (any length: memory does not grow with it)")
    p.add_argument("--stride", type=float_in(0.0, low_open=True), default=None, metavar="SECONDS",
                   help="seconds between window starts (default: --window, windows side by side)")
    p.add_argument("--timeline", default=None, metavar="OUT.png", help="with --window: the top classes' "
                   "probability over time above a strip of frames, and OUT.csv beside it (one row per window: start, "
                   "end, frames, partial, top-k). One video: OUT.png; several: OUT_<video stem>.png")
    p.add_argument("--source_fps", type=float_in(0.0, low_open=True), default=None, metavar="R", help="the "
                   "videos are frame folders at R fps (as stage 1's --source_fps; Jester: 12): a folder of numbered "
                   "JPEG/PNG frames is one video, a folder of such folders one video each; resampled to the "
                   "checkpoint's fps by stage 1's rule")
    p.add_argument("--gpu_id", type=int, default=0, help="CUDA device; the CPU is used when there is none")
    p.add_argument("--batch_size", type=positive_int, default=64, help="frames per backbone forward pass")
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto", help="backbone precision; auto: fp16 "
                   "autocast on CUDA, fp32 on the CPU (as prepare_data.py)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    if args.topk < 1 or args.batch_size < 1:
        raise BadInputError(f"--topk and --batch_size must be >= 1 (got {args.topk}, {args.batch_size})")
    if args.json:  # refused now, not after every video was classified
        check_writable_file(args.json, "--json")
    for flag in ("attention_plot", "occlusion", "timeline"):
        if getattr(args, flag):
            check_writable_file(getattr(args, flag), f"--{flag}")
    if args.window is None and (args.stride is not None or args.timeline):
        raise BadInputError("--stride and --timeline go with --window SECONDS")
    if args.window is not None and (args.attention_plot or args.occlusion):
        raise BadInputError("--attention_plot and --occlusion explain one prediction per video; leave out --window")
    set_default_threads()
    device = resolve_device(args.gpu_id)
    predictor = load_predictor(args.model_ckpt, args.backbone_weights, device, args.precision)
    predictor.source_fps = args.source_fps
    want_attention = args.attention_plot is not None
    if want_attention and not predictor.model.exposes_attention:
        raise BadInputError(
            f"--attention_plot needs a transformer head (bert, roberta, e2e_bert, e2e_roberta); {args.model_ckpt} "
            f"is a {predictor.model_name} model, which has no attention"
        )
    videos, failures = find_videos(args.videos, frame_folders=args.source_fps is not None)
    for f in failures:
        print(f"skipped {f['file']}: {f['reason']}")
    attention_paths = plot_paths(args.attention_plot, videos) if want_attention else []
    want_occlusion = args.occlusion is not None
    occlusion_paths = plot_paths(args.occlusion, videos) if want_occlusion else []
    if args.window is not None:
        return predict_timelines(args, predictor, videos, failures)
    results = []
    for n, path in enumerate(videos):
        try:
            pred = predict_video(predictor, path, args.batch_size, attention=want_attention,
                                 occlusion=want_occlusion)
            if not np.isfinite(pred.probs).all():
                raise BadInputError("the model's output is not finite (NaN/inf)")
        except Exception as exc:  # one video's failure, whatever raised it, is that video's line
            reason = exc.reason if isinstance(exc, VideoDecodeError) else failure_reason(exc)
            print(f"skipped {path}: {reason}")
            failures.append({"file": str(path), "reason": reason})
            continue
        print(format_table(pred, predictor.class_names, args.topk, predictor.settings.fps))
        results.append({"video": str(path), "topk": pred.topk(predictor.class_names, args.topk),
                        "num_frames": pred.num_frames})
        top = pred.topk(predictor.class_names, 1)[0]
        if want_attention:
            title = f"{path.name}: {top['label']} ({top['prob']:.3f}), {predictor.model_name} [CLS] attention"
            try:
                plot_attention(attention_paths[n], pred.attention, pred.times, pred.thumbs, title)
                print(f"  attention plot: {attention_paths[n]}")
            except Exception as exc:
                print(f"  no attention plot for {path}: {failure_reason(exc)}")
        if pred.occlusion is not None:
            occ = pred.occlusion
            results[-1]["occlusion"] = occ.to_json(predictor.class_names)
            title = (f"{path.name}: {top['label']} ({top['prob']:.3f}), {predictor.model_name}: drop in "
                     f"P({top['label']}) when one frame is removed")
            try:
                plot_occlusion(occlusion_paths[n], occ.drops, occ.times, occ.thumbs, title)
                print(f"  occlusion plot: {occlusion_paths[n]}")
            except Exception as exc:
                print(f"  no occlusion plot for {path}: {failure_reason(exc)}")
    if args.json:
        atomic_write_json(args.json, results)
    total = len(results) + len(failures)
    if failures:
        log.warning("%d of %d input(s) could not be classified", len(failures), total)
    if not results:
        raise BadInputError(f"no video could be classified ({len(failures)} input(s) failed)")
    return 0


def predict_timelines(args: argparse.Namespace, predictor: Predictor, videos: list[Path],
                      failures: list[dict[str, str]]) -> int:
    """--window: a timeline per video (summary printed; --json, --timeline PNG and CSV), each video isolated."""
    stride = args.stride or args.window
    try:  # a window the checkpoint's sampling cannot fill is the command's error, not every video's
        check_window(args.window, stride, predictor.settings.fps)
    except ValueError as exc:
        raise BadInputError(str(exc)) from None
    timeline_paths = plot_paths(args.timeline, videos) if args.timeline else []
    results = []
    for n, path in enumerate(tqdm(videos, desc="videos", unit="video", disable=len(videos) < 2)):
        try:
            timeline = predict_windows(predictor, path, args.window, stride, args.batch_size)
        except Exception as exc:  # one video's failure is that video's line
            reason = exc.reason if isinstance(exc, VideoDecodeError) else failure_reason(exc)
            print(f"skipped {path}: {reason}")
            failures.append({"file": str(path), "reason": reason})
            continue
        print(timeline_summary(timeline))
        results.append({"video": str(path), "timeline": timeline.to_json(args.topk),
                        "num_frames": timeline.num_frames})
        if timeline_paths:
            png = timeline_paths[n]
            timeline.write_csv(png.with_suffix(".csv"), args.topk)
            try:
                timeline.plot(png)
                print(f"  timeline: {png} and {png.with_suffix('.csv')}")
            except Exception as exc:
                print(f"  no timeline plot for {path}: {failure_reason(exc)} (the CSV is {png.with_suffix('.csv')})")
    if args.json:
        atomic_write_json(args.json, results)
        print(f"predictions: {args.json}")
    if failures:
        log.warning("%d of %d input(s) could not be classified", len(failures), len(results) + len(failures))
    if not results:
        raise BadInputError(f"no video could be classified ({len(failures)} input(s) failed)")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
