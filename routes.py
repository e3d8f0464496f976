"""The two data routes of stage 3 and predict.py, one object each: heads over stage 2's embeddings
(`EmbeddingRoute`) and e2e_<head> models over stage 1's frames (`ClipRoute`).

A route builds a split's data (`SplitData`: a Dataset, its collate, names, labels), its model (fresh, from a
checkpoint, or a checkpoint's head) and its frame settings (how predict.py turns a raw video into the inputs the
model was trained on). `route_for(model_name)` is the only place that reads a model name to pick a route: the
training and evaluation loops, test mode, the probes and predict.py only call the route. Both collates emit one
batch layout, {"inputs", "lengths", "labels", "indices", "views"}: a video's V evaluation views are V consecutive
rows of inputs and lengths (labels and indices stay one per video), and engine.evaluate averages their logits.

Both routes sample frames by one rule (sampling.py): `--clip_len` T segments (alias `--num_segments`; TSN: a
random frame per segment in training, the centres in evaluation) and `--num_clips` K views; the embedding route
feeds every stored frame when --clip_len is not given. The checkpoint's data_info records both, so test mode and
predict.py sample as the run did unless a flag says otherwise.

A new data route is one class here with the methods `EmbeddingRoute` has, and one line in `route_for`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from checkpoint import Checkpoint, ModelRecord, read_head_checkpoint
from clip_dataset import ClipDataset, clip_collate, clip_provenance, eval_clip_from_frames
from dataset import EmbeddingDataset, SplitInfo, feature_stats, load_split_info, pad_collate, stats_from_sums
from direction import flip_policy
from distributed import DistInfo, all_reduce_sum
from layout import read_class_names, read_split_json, split_id_of, split_json_path
from models import MODEL_NAMES, build_model, head_names
from models.backbone import BackboneRecord, build_backbone, embed_batch, resolve_backbone
from models.base import VideoModel
from models.e2e import (
    E2E_MODEL_NAMES,
    E2E_PREFIX,
    build_e2e_model,
    e2e_model_names,
    head_of_e2e,
    is_e2e_name,
    load_e2e_model,
)
from reports import report_skipped
from samplers import EvalSampler, TrainSampler
from sampling import Segments, TemporalAugment, average_views, eval_indices, subsample_indices
from transforms import ResizeSpec, normalize_batch
from utils import BadInputError

log = logging.getLogger("actionbert")

ALL_MODEL_NAMES = (*MODEL_NAMES, *E2E_MODEL_NAMES)  # of the built-in heads


def all_model_names() -> tuple[str, ...]:
    """Every --model choice: each registered head and its e2e_ model."""
    return (*head_names(), *e2e_model_names())
HEAD_KWARGS = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "dropout", "pretrained", "positions",
               "kernel_size", "num_frames", "subsets_per_scale")
# End-to-end clip settings: train mode's defaults; test mode takes the checkpoint's unless a flag is given.
CLIP_DEFAULTS = {"clip_len": 8, "num_clips": 1}  # and --image_size: the backbone's own


def head_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Head hyper-parameters the user set; unset ones keep the head's defaults (heads ignore unused ones; `check_args`
    has refused --positions for a head without positions, where it would silently mean nothing)."""
    return {k: getattr(args, k) for k in HEAD_KWARGS if getattr(args, k) is not None}


# ----------------------------------------------------------------------------------------------- records


@dataclass
class SplitData:
    """One split as the loops and the reports see it, whichever route made it.

    `dataset` yields (input, label, index) for a key `index` or `(index, epoch)` (samplers.TrainSampler's), and
    `collate` batches them into {"inputs", "lengths", "labels", "indices", "views"} (a video's evaluation views as
    consecutive rows).
    """

    split: str
    dataset: Dataset
    collate: Callable[[Sequence[Any]], dict[str, torch.Tensor]]
    names: list[str]
    labels: np.ndarray
    class_names: list[str]
    source: str  # the file that messages name
    feature_dim: int | None  # embeddings' D; None for clips (the model's backbone decides it)
    lengths: np.ndarray | None = None  # each video's frame count (embeddings); None for clips (all clip_len)
    provenance: dict[str, Any] = field(default_factory=dict)  # the checkpoint's data_info
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"file", "reason"} of videos left out
    time_axis: int = -2  # where time is in an item's input: -2 for (T, D) or (V, T, D) rows, -4 for clips

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)


def check_labelling(data: SplitData) -> bool:
    """True for a labelled split, False for an all-unlabelled one; a split of both kinds is refused: its accuracy
    would be over a part of it that nobody chose, and its unlabelled rows could not be told from wrong ones."""
    unlabelled = int((data.labels < 0).sum())
    if 0 < unlabelled < len(data.labels):
        raise BadInputError(f"{data.source}: {unlabelled} of {len(data.labels)} videos are unlabelled (label_idx -1) "
                            "and the rest labelled; test mode takes a split that is all labelled (accuracy) or all "
                            "unlabelled (predictions only): give the two kinds their own splits")
    return unlabelled == 0


@dataclass(frozen=True)
class ClipSettings:
    """The e2e route's inputs: where the frames are, how clips are cut from them, and the backbone they feed."""

    split_json_dir: Path
    frames_dir: Path
    clip_len: int
    num_clips: int
    record: BackboneRecord  # the backbone (D unknown until built) and its input
    spec: ResizeSpec  # the input clips are cut at: the record's, at --image_size in test mode

    @property
    def image_size(self) -> int:
        return self.spec.size


@dataclass(frozen=True)
class FrameSettings:
    """How training made its inputs from a raw video (predict.py): stage 1's sampling and JPEGs, stage 2's
    preprocessing or the clips' resize, and the route's own cut (stage 2's cap, or the clip length and views)."""

    fps: float
    frame_size: int | None
    jpeg_quality: int
    spec: ResizeSpec  # stage 2's (or the e2e clips') resize and crop: the backbone record's input
    max_len_cap: int | None = None  # stage 2's --max_len (embedding route)
    dtype: str = "float32"  # stored embedding dtype (embedding route)
    clip_len: int | None = None  # TSN segments (e2e: always; embeddings: None = every kept frame)
    num_clips: int = 1  # evaluation views, logits averaged

    @property
    def image_size(self) -> int:
        return self.spec.size

    @property
    def resize(self) -> str:
        return self.spec.mode


@dataclass
class Inference:
    """What predict.py loads once besides the model: the frame backbone of a head over embeddings (None when the
    model holds its own), its input statistics and memory layout."""

    backbone: torch.nn.Module | None = None
    input_stats: tuple[Sequence[float], Sequence[float]] | None = None
    channels_last: bool = False


@dataclass
class Encoded:
    """One video as its route hands it to the head: the (T, D) features the head is given (None when not asked
    for), the decoded frames they come from, and the whole model's logits when the route computes them itself."""

    feats: torch.Tensor | None
    frames: list[int]
    logits: torch.Tensor | None = None


def _frame_settings(data: Any, **route: Any) -> FrameSettings:
    fps = data.require("fps")
    if fps is None:
        raise BadInputError(f"{data.path}: data_info fps is null (stage 2 found no frames manifest); cannot tell "
                            "at which rate to sample the video")
    frame_size = data.require("frame_size")
    quality = data.require("jpeg_quality")
    if quality is None:
        raise BadInputError(f"{data.path}: data_info jpeg_quality is null: the embeddings were made from raw pixels "
                            "(prepare_data.py --videos_dir --jpeg_quality 0), which predict.py cannot reproduce (it "
                            "passes frames through JPEG as stage 1 stores them); embed with a --jpeg_quality and retrain")
    return FrameSettings(fps=float(fps), frame_size=None if frame_size is None else int(frame_size),
                         jpeg_quality=int(quality), **route)


# ----------------------------------------------------------------------------------------------- loaders


def make_train_loader(data: SplitData, sampler: TrainSampler, batch_size: int, args: argparse.Namespace,
                      pin: bool) -> DataLoader:
    return DataLoader(
        data.dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=data.collate,
        num_workers=args.num_workers,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the loader off the global RNG
    )


def make_eval_loader(data: SplitData, batch_size: int, num_workers: int, dist_info: DistInfo, pin: bool) -> DataLoader:
    """Every sample once, no drop_last, no augmentation."""
    return DataLoader(
        data.dataset,
        batch_size=batch_size,
        sampler=EvalSampler(len(data), dist_info.world_size, dist_info.rank),
        collate_fn=data.collate,
        num_workers=num_workers,
        pin_memory=pin,
        drop_last=False,
    )


def first_train_batches(data: SplitData, sampler: TrainSampler, batch_size: int,
                        max_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, lengths) of the first batches of epoch 0's global order, the same on every rank: what the
    e2e model's feature statistics are estimated from, read in this process (a few batches)."""
    order = sampler.global_order()[: batch_size * max_batches]
    for start in range(0, len(order), batch_size):
        batch = data.collate([data.dataset[(i, 0)] for i in order[start : start + batch_size]])
        yield batch["inputs"], batch["lengths"]


def check_same_classes(train: SplitData, other: SplitData) -> None:
    """A validation split must share the training split's classes and feature size."""
    if other.class_names != train.class_names:
        raise BadInputError(
            f"{other.source} has {other.num_classes} classes that differ from the {train.num_classes} of "
            f"{train.source}; prepare both splits from the same class list"
        )
    if other.feature_dim != train.feature_dim:
        raise BadInputError(f"{other.source} has feature dim {other.feature_dim} but {train.source} has "
                            f"{train.feature_dim}")


def feature_mean_std(info: SplitInfo, dist_info: DistInfo) -> tuple[np.ndarray, np.ndarray]:
    """Training split's per-dimension mean/std over real frames, each rank streaming its share."""
    total, total_sq, count = feature_stats(info, rank=dist_info.rank, world_size=dist_info.world_size)
    packed = torch.from_numpy(np.concatenate([total, total_sq, [count]]))
    packed = all_reduce_sum(packed, dist_info).numpy()
    dim = info.feature_dim
    return stats_from_sums(packed[:dim], packed[dim : 2 * dim], int(packed[-1]))


def check_num_cls(flag: int | None, data: SplitData) -> None:
    if flag is not None and flag != data.num_classes:
        raise BadInputError(
            f"--num_cls {flag} disagrees with the data: {data.source} has {data.num_classes} classes "
            "(leave --num_cls out; it is read from the data)"
        )


# ----------------------------------------------------------------------------------------------- embeddings


class EmbeddingRoute:
    """Heads over stage 2's frame embeddings (`--data_dir`): the backbone ran once, in prepare_data.py."""

    prefix: ClassVar[str] = ""
    # main.py flags that only this route's runs use (a resume compares them); the others' are ignored here
    own_settings: ClassVar[tuple[str, ...]] = ("clip_len", "num_clips")
    fixed_length: ClassVar[bool] = False  # every input has one length (length grouping means nothing)
    # how the inputs were made, from flags: a checkpoint whose data_info lacks one has it in its args
    input_flags: ClassVar[tuple[str, ...]] = ()

    def __init__(self, args: argparse.Namespace, ckpt: Checkpoint | None = None) -> None:
        self.args = args
        self.segments = embedding_segments(args, ckpt)

    @classmethod
    def head_name(cls, model_name: str) -> str:
        """The head of a model name of this route (`e2e_bert` -> `bert`)."""
        return model_name.removeprefix(cls.prefix)

    @classmethod
    def model_name(cls, head: str) -> str:
        return cls.prefix + head

    def describe(self, data: SplitData) -> str:
        seg = self.segments
        if not seg.enabled:
            return f"D={data.feature_dim}, every stored frame"
        return f"D={data.feature_dim}, {seg.clip_len} segments, {seg.num_clips} eval view(s)"

    def report_extra(self) -> dict[str, Any]:
        """What test mode's reports record about this route's inputs (clip_len None: every stored frame)."""
        return {"clip_len": self.segments.clip_len, "num_clips": self.segments.num_clips}

    def load_split(self, split: str, train: bool = False, unlabelled: bool = False) -> SplitData:
        """Stage 2's `<split>.npy/.json`; the training split gets the temporal augmentation. With `unlabelled` (test
        mode) videos without a label (label_idx -1) are kept, else they are left out as bad records."""
        args = self.args
        if not args.data_dir:
            raise BadInputError(f"--data_dir is required for --model {args.model or 'of the checkpoint'} (stage 2's "
                                "output); e2e_* models read --split_json_dir instead")
        info = load_split_info(args.data_dir, split, args.strict, unlabelled=unlabelled)
        augment = TemporalAugment(args.temporal_crop, args.temporal_stride, args.frame_dropout) if train else None
        seg = self.segments
        # the sampling travels in the checkpoint's data_info, beside how the embeddings were made
        provenance = {**info.provenance, "clip_len": seg.clip_len, "num_clips": seg.num_clips}
        # every frame's timestamp travels with it where the split records its fps (the loops pass them to a head
        # with --positions time only)
        known = info.fps is not None and all(frames is not None for frames in info.frame_index)
        dataset = EmbeddingDataset(info, augment, args.seed, seg, with_times=known)
        return SplitData(split, dataset, pad_collate, info.names, info.labels, info.class_names, str(info.json_path),
                         info.feature_dim, info.lengths, provenance, info.skipped)

    def build_model(self, train_data: SplitData, sampler: TrainSampler, batch_size: int, device: torch.device,
                    dist_info: DistInfo) -> VideoModel:
        """A new head on `device`, its input standardisation from the training split's embeddings."""
        args = self.args
        if args.init_head_from:
            raise BadInputError("--init_head_from starts the head of an e2e_* model; a head over embeddings is "
                                "resumed with --model_ckpt")
        model = build_model(args.model, input_dim=train_data.feature_dim, num_classes=train_data.num_classes,
                            **head_kwargs(args))
        mean, std = feature_mean_std(train_data.dataset.info, dist_info)
        model.set_feature_stats(torch.from_numpy(mean), torch.from_numpy(std))
        return model.prepare_for_device(device)

    @staticmethod
    def model_from_checkpoint(model: ModelRecord, device: torch.device) -> VideoModel:
        config = dict(model.config)
        config.pop("name", None)
        # a pretrained transformer's weights are in model_state: do not look for the original directory again
        config.pop("pretrained", None)
        try:
            head = build_model(model.name, **config)
            head.load_state_dict(model.state)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise BadInputError(f"cannot rebuild model {model.name!r} from the checkpoint: {exc}") from exc
        head.config["name"] = model.name
        if "pretrained" in model.config:
            head.config["pretrained"] = model.config["pretrained"]
        return head

    @staticmethod
    def head_of(model: ModelRecord) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], str | None]:
        """(head name, config, weights, backbone it was trained on if the model records it) of a checkpoint."""
        return model.name, model.config, model.state, None

    @staticmethod
    def head(model: VideoModel) -> torch.nn.Module:
        """The part of the model that takes (B, T, D) frame features and lengths."""
        return model

    @staticmethod
    def frame_settings(ckpt: Checkpoint) -> FrameSettings:
        data = ckpt.data
        if "max_len_cap" in data:
            cap = data.get("max_len_cap")
        else:
            cap = None
            log.warning("%s: data_info has no max_len_cap (stage 2's --max_len); frames are not capped", data.path)
        clip_len = data.get("clip_len")  # None (and checkpoints from before segments): every frame
        return _frame_settings(data, spec=data.backbone().resize, max_len_cap=None if cap is None else int(cap),
                               dtype=str(data.get("dtype") or "float32"),
                               clip_len=None if clip_len is None else int(clip_len),
                               num_clips=int(data.get("num_clips") or 1))

    @staticmethod
    def inference(ckpt: Checkpoint, backbone_weights: str | None, device: torch.device) -> Inference:
        """The backbone that made the head's features (stage 2's memory layout, so they match its numerics)."""
        backbone, record = rebuild_backbone(ckpt, backbone_weights)
        backbone = backbone.to(device)
        channels_last = bool(record.channels_last)
        if channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        stats = record.mean, record.std
        size = record.image_size
        probe = embed_batch(backbone, normalize_batch(torch.zeros((1, 3, size, size), dtype=torch.uint8), device,
                                                      *stats))
        if probe.shape[1] != ckpt.model.feature_dim:
            raise BadInputError(f"backbone {record.backbone} gives {probe.shape[1]}-dim features but the head "
                                f"{ckpt.path} expects {ckpt.model.feature_dim}")
        return Inference(backbone, stats, channels_last)

    @staticmethod
    def encode(predictor: Any, decoded: Any, batch_size: int, need_feats: bool) -> Encoded:
        """The frames the head sees (stage 2's cap, then the run's segments) embedded by the backbone as stage 2
        stored them, each frame once. With segments, the logits of the views averaged as test mode does; the
        head's features are the first view's."""
        views = embedding_views(len(decoded.frames), predictor.settings)
        feats = gather_embedded(predictor, decoded.frames, views, batch_size)
        logits = None
        if predictor.settings.clip_len is not None:
            logits = view_logits(predictor.model, feats, view_times(predictor, decoded.times, views))
        return Encoded(feats[0], [int(i) for i in views[0]], logits)

    @staticmethod
    def window_units(predictor: Any, frames: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
        """predict.py --window: what each sampled frame is kept as while its windows are open, computed once per
        frame: its embedding (D floats, not the image)."""
        return list(embed_frames(predictor, frames, batch_size))

    @staticmethod
    def classify_window(predictor: Any, units: list[torch.Tensor], batch_size: int,
                        times: Sequence[float] | None = None) -> torch.Tensor:
        """(1, num_classes) logits of one window's units (stage 2's --max_len cap and the run's segments applied
        within the window); `times`, each unit's timestamp in seconds, go to a head with --positions time (and
        only there)."""
        views = embedding_views(len(units), predictor.settings)
        feats = torch.stack(units).to(predictor.device)[torch.from_numpy(views).to(predictor.device)]
        return view_logits(predictor.model, feats, view_times(predictor, times, views))


def rebuild_backbone(ckpt: Checkpoint, override: str | None) -> tuple[torch.nn.Module, BackboneRecord]:
    """The checkpoint's frame backbone from its record: library, name, feature, input and weights (or
    --backbone_weights) and, for random weights, the seed."""
    record = ckpt.data.backbone()
    weights = override or record.weights
    if weights == "none":
        if record.seed is None:
            raise BadInputError(f"{ckpt.path}: a random backbone (weights none) without a recorded seed cannot be "
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


def kept_frames(num_frames: int, settings: FrameSettings) -> np.ndarray:
    """Indices of the frames the head sees: stage 2's uniform subsampling to its --max_len, all when uncapped."""
    return subsample_indices(num_frames, settings.max_len_cap)


def embedding_views(num_frames: int, settings: FrameSettings) -> np.ndarray:
    """(V, T) indices into a video's decoded frames that a head over embeddings sees: stage 2's cap (the rows test
    mode reads), then the run's segments of those; without segments one view of every kept frame."""
    keep = kept_frames(num_frames, settings)
    return keep[Segments(settings.clip_len, settings.num_clips).eval(len(keep))]


def gather_embedded(predictor: Any, frames: Sequence[torch.Tensor], views: np.ndarray,
                    batch_size: int) -> torch.Tensor:
    """(V, T, D) embeddings of `frames` at `views`, on the predictor's device: each frame used embedded once."""
    used, where = np.unique(views, return_inverse=True)
    feats = embed_frames(predictor, [frames[i] for i in used], batch_size).to(predictor.device)
    return feats[torch.from_numpy(where.reshape(views.shape)).to(predictor.device)]


def view_times(predictor: Any, times: Sequence[float] | None, views: np.ndarray) -> torch.Tensor | None:
    """(V, T) seconds of the frames at `views` for a head with --positions time (None for the others)."""
    if not predictor.model.uses_times:
        return None
    if times is None:
        raise ValueError("a head with --positions time needs each frame's timestamp")
    return torch.tensor(np.asarray(times, dtype=np.float32)[views], device=predictor.device)


def view_logits(head: torch.nn.Module, feats: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
    """(1, num_classes): the head on each of one video's (V, T, D) views, logits averaged as in evaluation;
    `times` (V, T) seconds for a head with --positions time."""
    lengths = torch.full((feats.shape[0],), feats.shape[1], device=feats.device)
    return average_views(head(feats, lengths, **({} if times is None else {"times": times})), feats.shape[0])


def embed_frames(predictor: Any, frames: Sequence[torch.Tensor], batch_size: int) -> torch.Tensor:
    """(T, D) float32 frame embeddings, rounded to the dtype stage 2 stored them in."""
    inference = predictor.inference
    assert inference.backbone is not None and inference.input_stats is not None
    feats = []
    for start in range(0, len(frames), batch_size):
        x = torch.stack(list(frames[start : start + batch_size]))
        x = normalize_batch(x, predictor.device, *inference.input_stats, inference.channels_last)
        feats.append(embed_batch(inference.backbone, x, predictor.precision))
    out = torch.cat(feats).cpu()
    return out.to(getattr(torch, predictor.settings.dtype)).float()


# ----------------------------------------------------------------------------------------------- clips


class ClipRoute(EmbeddingRoute):
    """e2e_<head>: a CNN trained jointly with the head on clips cut from stage 1's frames (`--split_json_dir`)."""

    prefix: ClassVar[str] = E2E_PREFIX
    own_settings: ClassVar[tuple[str, ...]] = ("backbone", "weights", "feature", "clip_len", "num_clips", "image_size",
                                               "resize", "freeze_backbone_stages", "backbone_lr", "init_head_from",
                                               "hflip")
    fixed_length: ClassVar[bool] = True
    input_flags: ClassVar[tuple[str, ...]] = ("fps", "frame_size", "jpeg_quality", "backbone", "weights", "feature",
                                              "image_size", "resize", "clip_len", "num_clips")

    def __init__(self, args: argparse.Namespace, ckpt: Checkpoint | None = None) -> None:
        self.args = args  # its sampling is the clips' (clip_settings), not the embedding route's
        self.clips = clip_settings(args, ckpt)

    def describe(self, data: SplitData) -> str:
        c = self.clips
        return f"clips of {c.clip_len} frames at {c.image_size} px, {c.num_clips} eval view(s)"

    def report_extra(self) -> dict[str, Any]:
        c = self.clips
        return {"clip_len": c.clip_len, "num_clips": c.num_clips, "image_size": c.image_size}

    def load_split(self, split: str, train: bool = False, unlabelled: bool = False) -> SplitData:
        """Stage 1's `<split>_ucf101.json` over `frames/`; training clips are TSN-sampled and augmented. With
        `unlabelled` (test mode) videos without a label (label_idx -1) are accepted, else refused."""
        clips = self.clips
        path = split_json_path(clips.split_json_dir, split)
        entries = read_split_json(path, unlabelled=unlabelled)
        class_names = read_class_names(clips.split_json_dir, entries)
        flip = flip_policy(class_names, getattr(self.args, "hflip", None) or "auto")
        if train:
            log.info("horizontal flips of training clips: %s", flip.reason)
        ds = ClipDataset(clips.frames_dir, entries, clips.clip_len, train=train, image_size=clips.spec,
                         num_clips=clips.num_clips, seed=self.args.seed, strict=self.args.strict,
                         hflip=flip.enabled, flip_label_map=flip.swap, unlabelled=unlabelled)
        provenance = clip_provenance(clips.frames_dir, backbone=clips.record.backbone, weights=clips.record.weights,
                                     feature=clips.record.feature, image_size=clips.image_size,
                                     resize=clips.spec.mode, clip_len=clips.clip_len, num_clips=clips.num_clips,
                                     split_id=split_id_of(entries, path))
        return SplitData(split, ds, clip_collate, ds.names, ds.labels, class_names, str(path), None, None,
                         provenance, ds.failures, time_axis=-4)

    def build_model(self, train_data: SplitData, sampler: TrainSampler, batch_size: int, device: torch.device,
                    dist_info: DistInfo) -> VideoModel:
        """A new e2e model on `device`; its standardisation from the backbone's features of the first training
        batches, or with --init_head_from's head."""
        args = self.args
        kwargs = head_kwargs(args)
        head = None
        if args.init_head_from:
            head = read_head_checkpoint(args.init_head_from)
            # the same classes in the same order, or the head's classifier rows would mean other classes
            if head.class_names != train_data.class_names:
                raise BadInputError(f"--init_head_from {head.path} was trained on other class names than the data's "
                                    f"({len(head.class_names or [])} against {train_data.num_classes}, or another "
                                    "order)")
            if self.model_name(head.name) != args.model:
                raise BadInputError(f"--init_head_from {head.path} holds a {head.name!r} head, not the head of "
                                    f"{args.model}; pass --model {self.model_name(head.name)} or another checkpoint")
            log.info("head hyper-parameters from %s: %s", head.path, json.dumps(head.build_kwargs, default=str))
            kwargs = {**kwargs, **head.build_kwargs}
        model = build_e2e_model(args.model, train_data.num_classes, backbone=args.backbone, weights=args.weights,
                                feature=args.feature, image_size=args.image_size, resize=args.resize,
                                freeze_backbone_stages=args.freeze_backbone_stages,
                                grad_checkpointing=args.grad_checkpointing, **kwargs)
        model.prepare_for_device(device)
        if head is not None:
            model.load_head(head)
        else:
            frames = model.estimate_feature_stats(first_train_batches(train_data, sampler, batch_size, max_batches=8))
            log.info("feature standardisation estimated from %d training frames", frames)
        return model

    @staticmethod
    def model_from_checkpoint(model: ModelRecord, device: torch.device) -> VideoModel:
        return load_e2e_model(model.config, model.state)  # BadInputError when it does not fit

    @staticmethod
    def head_of(model: ModelRecord) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], str | None]:
        name, config, state = head_of_e2e({**model.config, "name": model.name}, model.state)
        return name, config, state, model.config.get("backbone")

    @staticmethod
    def head(model: VideoModel) -> torch.nn.Module:
        return model.head

    @staticmethod
    def frame_settings(ckpt: Checkpoint) -> FrameSettings:
        """The clips' settings (data_info first, then the flags the run recorded: `checkpoint.records_of`); the
        resize and crop from the model's backbone record (before records: a torchvision backbone)."""
        data = ckpt.data
        image_size = int(data.require("image_size"))
        resize = str(data.get("resize") or "crop")
        record = ckpt.model.config.get("backbone_record")
        own = ResizeSpec(**record["resize"]) if record else ResizeSpec(image_size, resize)
        return _frame_settings(data, spec=replace(own, size=image_size, mode=resize),
                               clip_len=int(data.require("clip_len")), num_clips=int(data.get("num_clips") or 1))

    @staticmethod
    def inference(ckpt: Checkpoint, backbone_weights: str | None, device: torch.device) -> Inference:
        if backbone_weights:
            log.info("--backbone_weights ignored: an end-to-end checkpoint holds its backbone's trained weights")
        return Inference()

    @staticmethod
    def encode(predictor: Any, decoded: Any, batch_size: int, need_feats: bool) -> Encoded:
        """The evaluation clip (segment centres, `num_clips` views, logits averaged) through the whole model; the
        head's features are the first view's (the segment centres when num_clips is 1), the backbone run once."""
        s = predictor.settings
        # The frames went through the clips' evaluation resize already (decode_video): taking them as they are gives
        # exactly eval_clip_from_frames on the full frames without holding those in memory.
        hwc = [f.permute(1, 2, 0).numpy() for f in decoded.frames]
        clip = eval_clip_from_frames(hwc, s.clip_len, s.spec, s.num_clips, transformed=True).to(predictor.device)
        lengths = torch.tensor([s.clip_len], device=predictor.device)
        logits = predictor.model(clip[None], lengths)  # (1, V, T, 3, S, S): logits averaged over the V views
        feats = predictor.model.frame_features(clip[:1], lengths)[0] if need_feats else None
        ks = eval_indices(len(decoded.frames), s.clip_len, s.num_clips)[0]
        return Encoded(feats, [int(k) for k in ks], logits)

    @staticmethod
    def window_units(predictor: Any, frames: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
        """predict.py --window: the preprocessed frames themselves (the clip is cut per window)."""
        return list(frames)

    @staticmethod
    def classify_window(predictor: Any, units: list[torch.Tensor], batch_size: int) -> torch.Tensor:
        """(1, num_classes) logits of the evaluation clip cut from one window's frames."""
        decoded = SimpleNamespace(frames=units)
        return ClipRoute.encode(predictor, decoded, batch_size, need_feats=False).logits


def embedding_segments(args: argparse.Namespace, ckpt: Checkpoint | None = None) -> Segments:
    """The embedding route's sampling: --clip_len and --num_clips, else (test mode) the checkpoint's, else every
    frame in one view. `args` keeps what the user gave (a resume compares it with the run's)."""
    saved = ckpt.data if ckpt is not None else {}
    clip_len = getattr(args, "clip_len", None)
    if clip_len is None:
        clip_len = saved.get("clip_len")
    num_clips = getattr(args, "num_clips", None) or saved.get("num_clips") or 1
    if clip_len is None and num_clips != 1:
        raise BadInputError(f"--num_clips {num_clips} takes views of --clip_len segments; without --clip_len a head "
                            "over embeddings sees every stored frame, a single view (add --clip_len T)")
    return Segments(None if clip_len is None else int(clip_len), int(num_clips))


def clip_settings(args: argparse.Namespace, ckpt: Checkpoint | None = None) -> ClipSettings:
    """Resolve the e2e flags, writing them back into `args` (so checkpoints record what was used).

    clip_len and num_clips: the flag, else (test mode) the checkpoint's, else CLIP_DEFAULTS. The backbone and its
    input: the flags (--backbone, --weights, --feature, --image_size, --resize over the backbone's own config) or,
    in test mode, the checkpoint's backbone record (--image_size still overrides the clips' size)."""
    if not args.split_json_dir:
        raise BadInputError("e2e_* models need --split_json_dir (stage 1's output: <split>_ucf101.json, "
                            "classInd.txt and frames/)")
    for key, default in CLIP_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, int((ckpt.data.get(key) if ckpt else None) or default))
        if getattr(args, key) < 1:
            raise BadInputError(f"--{key} must be >= 1, got {getattr(args, key)}")
    if ckpt is None:
        record = resolve_backbone(args.backbone, args.weights, args.feature, args.image_size, args.resize)
        spec = record.resize
    else:
        record = ckpt.data.backbone()
        size = args.image_size or ckpt.data.get("image_size") or record.image_size
        spec = replace(record.resize, size=int(size), mode=args.resize or record.resize.mode)
    args.weights, args.feature = record.weights, record.feature
    args.image_size, args.resize = spec.size, spec.mode
    split_json_dir = Path(args.split_json_dir)
    frames_dir = Path(args.frames_dir) if args.frames_dir else split_json_dir / "frames"
    return ClipSettings(split_json_dir, frames_dir, args.clip_len, args.num_clips, record, spec)


# ----------------------------------------------------------------------------------------------- the registry


ROUTES = (EmbeddingRoute, ClipRoute)


def route_for(model_name: str) -> type[EmbeddingRoute]:
    """The route of a model name: the one place that tells an e2e_<head> from a head over embeddings."""
    return ClipRoute if is_e2e_name(model_name) else EmbeddingRoute


def model_from_checkpoint(ckpt: Checkpoint, device: str | torch.device = "cpu") -> VideoModel:
    """Rebuild the checkpoint's model through its route, weights (feature statistics included) loaded, on `device`,
    in eval mode."""
    model = route_for(ckpt.model_name).model_from_checkpoint(ckpt.model, torch.device(device))
    return model.prepare_for_device(torch.device(device)).eval()


# ----------------------------------------------------------------------------------------------- training data


@dataclass
class TrainData:
    """A training run's data as the loops take it: both splits, the sampler and loaders, the batch per rank."""

    train: SplitData
    val: SplitData
    sampler: TrainSampler
    train_loader: DataLoader
    val_loader: DataLoader
    per_rank_batch: int
    steps_per_epoch: int


def load_splits(route: EmbeddingRoute, args: argparse.Namespace, dist_info: DistInfo,
                run_dir: Path) -> tuple[SplitData, SplitData]:
    """The train and val splits through the route, checked against each other and --num_cls."""
    train_data = route.load_split("train", train=True)
    val_data = route.load_split("val")
    check_same_classes(train_data, val_data)
    check_num_cls(args.num_cls, train_data)
    if dist_info.is_main:
        for data in (train_data, val_data):
            report_skipped(data, run_dir)
    return train_data, val_data


def training_data(train_data: SplitData, val_data: SplitData, args: argparse.Namespace, dist_info: DistInfo,
                  pin: bool) -> TrainData:
    """This rank's sampler (length-grouped when asked and the route's inputs have lengths) and loaders."""
    world = dist_info.world_size
    per_rank_batch = max(1, args.batch_size // world)
    if per_rank_batch * world != args.batch_size:
        log.warning("--batch_size %d is not a multiple of %d processes: %d per process", args.batch_size, world,
                    per_rank_batch)
    grouped = args.group_by_length and train_data.lengths is not None
    sampler = TrainSampler(train_data.labels, args.seed, args.balanced, world, dist_info.rank,
                           lengths=train_data.lengths if grouped else None,
                           batch_size=per_rank_batch if grouped else None)
    return TrainData(train_data, val_data, sampler, make_train_loader(train_data, sampler, per_rank_batch, args, pin),
                     make_eval_loader(val_data, per_rank_batch, args.num_workers, dist_info, pin), per_rank_batch,
                     math.ceil(sampler.num_samples / per_rank_batch))
