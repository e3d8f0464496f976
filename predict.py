"""Classify raw videos with a trained checkpoint: video -> frames -> backbone -> head -> top-k labels, one command.

    python predict.py --model_ckpt RUN/checkpoints/best.pth VIDEO_OR_FOLDER [...] [--topk 5] [--json out.json]
                      [--attention_plot out.png] [--occlusion out.png] [--backbone_weights PATH]

Each video is decoded in memory (no frames written) at the checkpoint's fps with stage 1's exact-time sampling,
and its frames go through the same pixels as training saw them: stage 1's shorter-side resize (`frame_size`) and
its JPEG encoding at `jpeg_quality` (video.iter_stored_frames_at_fps: the same bytes stage 1 writes, decoded as
stage 2 reads them), then stage 2's preprocessing and the checkpoint's backbone, both rebuilt from the backbone record
stage 2 stored (library, name, weights, seed, feature; input size, resize and crop, mean/std), the
same uniform subsampling to stage 2's `max_len_cap`, and the stored embedding dtype. So a video gets the same
probabilities here as through prepare_ucf101 -> prepare_data -> main.py --mode test, up to float noise.

End-to-end checkpoints (`e2e_*`) are rebuilt whole from the checkpoint and sample the clip as their evaluation
does (uniform segment centres, `num_clips` views averaged).

`--occlusion` works for every head: each frame the head is given is removed in turn (the rest keep their order)
and the predicted class's probability is scored again; e2e models run their backbone once and occlude the first
view's frame features.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from clip_dataset import eval_clip_from_frames
from models.backbone import (
    BackboneRecord,
    build_backbone,
    embed_batch,
    record_of,
    set_default_threads,
)
from models.base import VideoModel
from models.e2e import is_e2e_name
from precision import INFERENCE_PRECISIONS, resolve_precision
from reports import escape_missing, label_font
from sampling import eval_indices, subsample_indices
from transforms import RESIZE_MODES, ResizeSpec, normalize_batch, preprocess_frame
from utils import (
    NAME_MAX,
    BadInputError,
    atomic_write_bytes,
    atomic_write_json,
    check_writable_file,
    fit_name,
    positive_int,
    resolve_device,
    run_cli,
    setup_logging,
)
from video import VideoDecodeError, is_video_file, iter_stored_frames_at_fps, truncation_reason

log = logging.getLogger("actionbert.predict")

THUMB_HEIGHT = 64  # pixels of the thumbnails kept for --attention_plot
MAX_THUMBS = 16  # thumbnails drawn in the strip; more frames are shown by every k-th one


# ----------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FrameSettings:
    """How training made its inputs from a raw video: stage 1's sampling and JPEGs, stage 2's preprocessing."""

    fps: float
    frame_size: int | None
    jpeg_quality: int
    spec: ResizeSpec  # stage 2's (or the e2e clips') resize and crop: the backbone record's input
    max_len_cap: int | None = None  # stage 2's --max_len (embedding route)
    dtype: str = "float32"  # stored embedding dtype (embedding route)
    clip_len: int | None = None  # end-to-end route
    num_clips: int = 1

    @property
    def image_size(self) -> int:
        return self.spec.size

    @property
    def resize(self) -> str:
        return self.spec.mode


def _require(info: dict[str, Any], key: str, ckpt_path: str | os.PathLike, where: str = "data_info") -> Any:
    if key not in info:
        raise BadInputError(
            f"{ckpt_path}: the checkpoint's {where} lacks {key!r}, which predict.py needs to rebuild the inputs "
            f"training saw (a checkpoint from before it was recorded: retrain, or rerun prepare_data.py and "
            f"main.py with the current code)"
        )
    return info[key]


def embedding_settings(ckpt: dict[str, Any], ckpt_path: str | os.PathLike) -> FrameSettings:
    """FrameSettings of a head trained on stage 2's embeddings, from the checkpoint's data_info."""
    info = ckpt.get("data_info") or {}
    fps = _require(info, "fps", ckpt_path)
    if fps is None:
        raise BadInputError(f"{ckpt_path}: data_info fps is null (stage 2 found no frames manifest); cannot tell "
                            "at which rate to sample the video")
    frame_size = _require(info, "frame_size", ckpt_path)
    if "max_len_cap" in info:
        cap = info["max_len_cap"]
    else:
        cap = None
        log.warning("%s: data_info has no max_len_cap (stage 2's --max_len); frames are not capped", ckpt_path)
    return FrameSettings(
        fps=float(fps),
        frame_size=None if frame_size is None else int(frame_size),
        jpeg_quality=int(_require(info, "jpeg_quality", ckpt_path)),
        spec=checkpoint_backbone(info, ckpt_path).resize,
        max_len_cap=None if cap is None else int(cap),
        dtype=str(info.get("dtype") or "float32"),
    )


def checkpoint_backbone(info: dict[str, Any], ckpt_path: str | os.PathLike) -> BackboneRecord:
    """The backbone record of a checkpoint's data_info; one from before records existed is rebuilt from its
    torchvision backbone name, image_size and resize (the preprocessing it was made with)."""
    if not info.get("backbone_record"):
        _require(info, "backbone", ckpt_path)
        _require(info, "image_size", ckpt_path)
        resize = info.get("resize") or "crop"
        if resize not in RESIZE_MODES:
            raise BadInputError(f"{ckpt_path}: data_info resize {resize!r} is not one of {', '.join(RESIZE_MODES)}")
    return record_of(info, str(ckpt_path))


def e2e_settings(ckpt: dict[str, Any], ckpt_path: str | os.PathLike) -> FrameSettings:
    """FrameSettings of an end-to-end checkpoint: data_info first, then the training arguments it recorded; the
    resize and crop from the model's backbone record (a checkpoint from before records: a torchvision backbone)."""
    merged = {**(ckpt.get("args") or {}), **(ckpt.get("data_info") or {})}
    fps = _require(merged, "fps", ckpt_path, "data_info/args")
    frame_size = _require(merged, "frame_size", ckpt_path, "data_info/args")
    image_size = int(_require(merged, "image_size", ckpt_path, "data_info/args"))
    resize = str(merged.get("resize") or "crop")
    record = (ckpt.get("model_config") or {}).get("backbone_record")
    own = ResizeSpec(**record["resize"]) if record else ResizeSpec(image_size, resize)
    return FrameSettings(
        fps=float(fps),
        frame_size=None if frame_size is None else int(frame_size),
        jpeg_quality=int(_require(merged, "jpeg_quality", ckpt_path, "data_info/args")),
        spec=replace(own, size=image_size, mode=resize),
        clip_len=int(_require(merged, "clip_len", ckpt_path, "data_info/args")),
        num_clips=int(merged.get("num_clips") or 1),
    )


# ----------------------------------------------------------------------------------------------- inputs


def find_videos(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[dict[str, str]]]:
    """Files as given, and every video file under each folder (recursively, sorted; hidden entries skipped).

    A missing path or a folder without videos is a failure record {"file", "reason"}; a file given by name is
    tried whatever its extension (decoding then says whether it is a video)."""
    videos: list[Path] = []
    failures: list[dict[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
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


def decode_video(path: str | os.PathLike, settings: FrameSettings, keep_thumbs: bool = False) -> DecodedVideo:
    """Sample, resize, JPEG-encode and decode, and preprocess one video's frames in memory.

    The decoded JPEGs go through transforms.preprocess_frame, as stage 2's workers do with the stored files.
    """
    out = DecodedVideo([], [])
    info: dict[str, Any] = {}
    frames = iter_stored_frames_at_fps(path, settings.fps, settings.frame_size, settings.jpeg_quality, info=info)
    for t, rgb in frames:
        out.times.append(t)
        out.frames.append(preprocess_frame(rgb, settings.spec))
        if keep_thumbs:
            h, w = rgb.shape[:2]
            size = (max(1, round(w * THUMB_HEIGHT / h)), THUMB_HEIGHT)
            out.thumbs.append(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
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
    settings: FrameSettings
    model: VideoModel  # the head, or the whole end-to-end model
    backbone: torch.nn.Module | None  # None for end-to-end models
    device: torch.device
    precision: str
    input_stats: tuple[Sequence[float], Sequence[float]] | None = None  # the backbone's (mean, std); heads only
    channels_last: bool = False  # the backbone's memory layout, as stage 2 ran it; heads only

    @property
    def is_e2e(self) -> bool:
        return is_e2e_name(self.model_name)


def rebuild_backbone(
    info: dict[str, Any], ckpt_path: str | os.PathLike, override: str | None
) -> tuple[torch.nn.Module, BackboneRecord]:
    """The checkpoint's frame backbone from its record: library, name, feature, input and weights (or
    --backbone_weights) and, for random weights, the seed."""
    record = checkpoint_backbone(info, ckpt_path)
    weights = override or record.weights
    if weights == "none":
        if record.seed is None:
            raise BadInputError(f"{ckpt_path}: a random backbone (weights none) without a recorded seed cannot be "
                                "rebuilt; pass the trained backbone with --backbone_weights PATH")
    elif weights not in ("imagenet", "pretrained") and not Path(weights).exists():
        hint = "" if override else " (recorded in the checkpoint); pass a local copy with --backbone_weights PATH"
        raise BadInputError(f"backbone weights {weights} not found{hint}")
    try:
        return build_backbone(record, weights, flag="--backbone_weights" if override else
                              "the checkpoint's backbone weights")
    except BadInputError as exc:
        if weights in ("imagenet", "pretrained"):
            raise BadInputError(
                f"cannot get the {weights} weights of backbone {record.backbone} that this checkpoint was trained "
                f"with ({exc}). Offline, pass a local copy of them with --backbone_weights PATH"
            ) from exc
        raise


def load_predictor(
    ckpt_path: str | os.PathLike,
    backbone_weights: str | None = None,
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> Predictor:
    """Load the checkpoint, its head (or end-to-end model) and, for heads, the backbone that made its features."""
    device = torch.device(device)
    ckpt = load_checkpoint(ckpt_path)
    name = str(ckpt["model_name"])
    backbone, stats, channels_last = None, None, False
    if is_e2e_name(name):
        settings = e2e_settings(ckpt, ckpt_path)
        if backbone_weights:
            log.info("--backbone_weights ignored: an end-to-end checkpoint holds its backbone's trained weights")
    else:
        settings = embedding_settings(ckpt, ckpt_path)
        info = ckpt.get("data_info") or {}
        backbone, record = rebuild_backbone(info, ckpt_path, backbone_weights)
        backbone = backbone.to(device)
        # stage 2's layout (its record's; the backbone's preference for embeddings older than that), so the
        # features match its numerics closely
        channels_last = bool(record.channels_last)
        if channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        stats = record.mean, record.std
        dim = int(ckpt["feature_dim"])
        size = record.image_size
        x = torch.zeros((1, 3, size, size), dtype=torch.uint8)
        probe = embed_batch(backbone, normalize_batch(x, device, *stats))
        if probe.shape[1] != dim:
            raise BadInputError(f"backbone {record.backbone} gives {probe.shape[1]}-dim features but the head "
                                f"{ckpt_path} expects {dim}")
    return Predictor(
        ckpt_path=str(ckpt_path),
        model_name=name,
        class_names=[str(c) for c in ckpt["class_names"]],
        settings=settings,
        model=model_from_checkpoint(ckpt, device),
        backbone=backbone,
        device=device,
        precision=resolve_precision(precision, device),
        input_stats=stats,
        channels_last=channels_last,
    )


def embed_frames(predictor: Predictor, frames: Sequence[torch.Tensor], batch_size: int) -> torch.Tensor:
    """(T, D) float32 frame embeddings, rounded to the dtype stage 2 stored them in."""
    assert predictor.backbone is not None and predictor.input_stats is not None
    feats = []
    for start in range(0, len(frames), batch_size):
        x = torch.stack(list(frames[start : start + batch_size]))
        x = normalize_batch(x, predictor.device, *predictor.input_stats, predictor.channels_last)
        feats.append(embed_batch(predictor.backbone, x, predictor.precision))
    out = torch.cat(feats).cpu()
    return out.to(getattr(torch, predictor.settings.dtype)).float()


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


def _frame_strip_figure(n: int, thumbs: Sequence[np.ndarray], times: Sequence[float], panel_h: float, title: str):
    """A figure with the sampled frames in a strip over a panel with one column per frame, laid out in inches so
    thumbnails keep their aspect ratio and sit exactly over their column. Returns (fig, panel axes, colour-bar
    axes); the panel's x axis is the frame number, labelled with its time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cell = min(1.2, 16.0 / n)  # width of one frame's column: at most 16 inches of frames in all
    step = max(1, math.ceil(n / MAX_THUMBS))
    h, w = thumbs[0].shape[:2]
    thumb_h = min(2.5, step * cell * h / w)
    left, right, top, gap, bottom = 0.9, 1.2, 0.5, 0.1, 0.6
    fig_w, fig_h = left + n * cell + right, top + thumb_h + gap + panel_h + bottom
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax_img = fig.add_axes((left / fig_w, (bottom + panel_h + gap) / fig_h, n * cell / fig_w, thumb_h / fig_h))
    ax_panel = fig.add_axes((left / fig_w, bottom / fig_h, n * cell / fig_w, panel_h / fig_h), sharex=ax_img)
    ax_bar = fig.add_axes(((left + n * cell + 0.15) / fig_w, bottom / fig_h, 0.15 / fig_w, panel_h / fig_h))
    for i in range(0, n, step):
        span = min(step, n - i)
        ax_img.imshow(thumbs[i], extent=(i - 0.5 + 0.03, i - 0.5 + span - 0.03, 0, 1), aspect="auto")
    ax_img.set_xlim(-0.5, n - 0.5)
    ax_img.set_ylim(0, 1)
    ax_img.set_yticks([])
    ax_img.tick_params(labelbottom=False)
    family = label_font([title])  # a class or file name in CJK or emoji: a font that has it, else escapes
    fig.suptitle(title if family else escape_missing(title), fontsize=10, y=1 - 0.15 / fig_h, va="top",
                 family=family)
    ticks = list(range(0, n, max(1, math.ceil(n / 20))))
    ax_panel.set_xticks(ticks, [f"{times[i]:.1f}" for i in ticks], fontsize=8)
    ax_panel.set_xlabel("time in the video (s)")
    return fig, ax_panel, ax_bar


def _save_figure(fig: Any, out_path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out_path, buf.getvalue())  # a short temporary name, whatever the video's name


def plot_attention(
    out_path: str | os.PathLike,
    maps: np.ndarray,
    times: Sequence[float],
    thumbs: Sequence[np.ndarray],
    title: str,
) -> None:
    """A strip of the sampled frames above the [CLS] attention over time (one row per layer, then rollout)."""
    n = maps.shape[1]
    rows = [f"layer {i + 1}" for i in range(maps.shape[0] - 1)] + ["rollout"]
    fig, ax_att, ax_bar = _frame_strip_figure(n, thumbs, times, 0.3 * len(rows) + 0.1, title)
    im = ax_att.imshow(maps, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0,
                       extent=(-0.5, n - 0.5, len(rows) - 0.5, -0.5))
    ax_att.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(im, cax=ax_bar)
    ax_bar.set_ylabel("[CLS] attn.", fontsize=8)
    ax_bar.tick_params(labelsize=7)
    _save_figure(fig, out_path)


def plot_occlusion(
    out_path: str | os.PathLike,
    drops: np.ndarray,
    times: Sequence[float],
    thumbs: Sequence[np.ndarray],
    title: str,
) -> None:
    """A strip of the sampled frames above, per frame, the drop in the predicted class's probability when that
    frame is removed (up: the frame supported the prediction; down: the prediction is surer without it)."""
    n = len(drops)
    fig, ax, ax_side = _frame_strip_figure(n, thumbs, times, 1.6, title)
    values = np.nan_to_num(np.asarray(drops, dtype=np.float64))
    ax.bar(range(n), values, width=0.8, color=["tab:red" if v > 0 else "tab:blue" for v in values])
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("prob. drop", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax_side.axis("off")
    _save_figure(fig, out_path)


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
def occlusion_drops(head: torch.nn.Module, feats: torch.Tensor, class_idx: int, chunk: int = 64) -> tuple[float, np.ndarray]:
    """(P(class | all T frames), per frame t: that minus P(class | the T-1 other frames, in order)).

    Works for any head over (B, T, D) features and lengths: the T occluded sequences are batched (in chunks, so
    memory stays bounded for long videos) with length T-1; a one-frame video is compared with an empty one, which
    every head scores (padding is masked)."""
    num = feats.shape[0]
    lengths = torch.tensor([num], device=feats.device)
    prob = float(head(feats[None], lengths).float().softmax(-1)[0, class_idx])
    drops = np.empty(num)
    keep = ~torch.eye(num, dtype=torch.bool, device=feats.device)  # row t: every frame but t
    for start in range(0, num, chunk):
        rows = keep[start : start + chunk]
        batch = feats.new_zeros(len(rows), max(num - 1, 1), feats.shape[1])
        if num > 1:
            batch[:] = torch.stack([feats[r] for r in rows])
        occluded = head(batch, torch.full((len(rows),), num - 1, device=feats.device))
        drops[start : start + len(rows)] = prob - occluded.float().softmax(-1)[:, class_idx].cpu().numpy()
    return prob, drops


def kept_frames(num_frames: int, settings: FrameSettings) -> np.ndarray:
    """Indices of the frames the head sees: stage 2's uniform subsampling to its --max_len, all when uncapped."""
    return subsample_indices(num_frames, settings.max_len_cap)


@torch.no_grad()
def predict_video(
    predictor: Predictor, path: str | os.PathLike, batch_size: int = 64, attention: bool = False,
    occlusion: bool = False,
) -> Prediction:
    """Probabilities of one video (with `attention`, the [CLS] attention maps over its frames; with `occlusion`,
    the drop of the predicted class's probability when each frame is removed)."""
    s = predictor.settings
    decoded = decode_video(path, s, keep_thumbs=attention or occlusion)
    num_frames = len(decoded.frames)
    if predictor.is_e2e:
        return _predict_e2e(predictor, str(path), decoded, attention, occlusion)
    keep = kept_frames(num_frames, s)
    frames = [decoded.frames[i] for i in keep]
    times = [decoded.times[i] for i in keep]
    thumbs = [decoded.thumbs[i] for i in keep] if attention or occlusion else []
    feats = embed_frames(predictor, frames, batch_size).to(predictor.device)
    lengths = torch.tensor([len(frames)], device=predictor.device)
    maps = None
    if attention:
        logits, atts = predictor.model(feats[None], lengths, return_attentions=True)
        used = predictor.model.last_frame_index[0].tolist()  # frames the head kept (it subsamples long videos)
        maps = cls_attention([a[0].cpu() for a in atts])[:, : len(used)]
    else:
        logits = predictor.model(feats[None], lengths)
    probs = logits.float().softmax(-1)[0].cpu().numpy()
    occ = None
    if occlusion:  # of the predicted class, over every frame the head was given
        top = int(np.argmax(probs))
        prob, drops = occlusion_drops(predictor.model, feats, top)
        occ = Occlusion(top, prob, drops, list(times), list(thumbs))
    if attention:
        times, thumbs = [times[i] for i in used], [thumbs[i] for i in used]
    return Prediction(str(path), probs, num_frames, times, maps, thumbs, occ)


def _predict_e2e(predictor: Predictor, path: str, decoded: DecodedVideo, attention: bool,
                 occlusion: bool = False) -> Prediction:
    s = predictor.settings
    assert s.clip_len is not None
    # The frames went through the clips' evaluation resize already (decode_video): taking them as they are gives
    # exactly eval_clip_from_frames on the full frames without holding those in memory.
    hwc = [f.permute(1, 2, 0).numpy() for f in decoded.frames]
    clip = eval_clip_from_frames(hwc, s.clip_len, s.spec, s.num_clips, transformed=True).to(predictor.device)
    lengths = torch.tensor([s.clip_len], device=predictor.device)
    model = predictor.model
    logits = model(clip[None], lengths)  # (1, V, T, 3, S, S): logits averaged over the V views
    probs = logits.float().softmax(-1)[0].cpu().numpy()
    ks = eval_indices(len(decoded.frames), s.clip_len, s.num_clips)[0]
    times = [decoded.times[int(k)] for k in ks]
    maps, thumbs, occ = None, [], None
    if occlusion:  # over the first view's frames (the segment centres when num_clips is 1), backbone run once
        feats = model.frame_features(clip[:1], lengths)[0]
        top = int(np.argmax(probs))
        prob, drops = occlusion_drops(model.head, feats, top)
        occ = Occlusion(top, prob, drops, list(times), [decoded.thumbs[int(k)] for k in ks])
    if attention:  # the first view's attention (the segment centres when num_clips is 1)
        feats = model.frame_features(clip[:1], lengths)
        _, atts = model.head(feats, lengths, return_attentions=True)
        used = model.head.last_frame_index[0].tolist()
        maps = cls_attention([a[0].cpu() for a in atts])[:, : len(used)]
        times = [times[i] for i in used]
        thumbs = [decoded.thumbs[int(ks[i])] for i in used]
    return Prediction(path, probs, len(decoded.frames), times, maps, thumbs, occ)


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
    for flag in ("attention_plot", "occlusion"):
        if getattr(args, flag):
            check_writable_file(getattr(args, flag), f"--{flag}")
    set_default_threads()
    device = resolve_device(args.gpu_id)
    predictor = load_predictor(args.model_ckpt, args.backbone_weights, device, args.precision)
    want_attention = args.attention_plot is not None
    if want_attention and not predictor.model.exposes_attention:
        raise BadInputError(
            f"--attention_plot needs a transformer head (bert, roberta, e2e_bert, e2e_roberta); {args.model_ckpt} "
            f"is a {predictor.model_name} model, which has no attention"
        )
    videos, failures = find_videos(args.videos)
    for f in failures:
        print(f"skipped {f['file']}: {f['reason']}")
    attention_paths = plot_paths(args.attention_plot, videos) if want_attention else []
    want_occlusion = args.occlusion is not None
    occlusion_paths = plot_paths(args.occlusion, videos) if want_occlusion else []
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


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
