"""Stage 3: train a head over frame embeddings, or a CNN jointly with it (e2e_*), resume it exactly, test it,
and scale it with torchrun.

    main.py --mode train --expt_dir D --expt_name E --run_name R --model bert --data_dir DATA
    main.py --mode test --model_ckpt D/E/R/checkpoints/best.pth --data_dir DATA --split test
    main.py --mode train --model e2e_bilstm --split_json_dir PREPARED [--frames_dir PREPARED/frames] ...
    main.py --mode test --model_ckpt D/E/R/checkpoints/best.pth --split_json_dir PREPARED --split test
    torchrun --nproc_per_node=2 main.py --mode train ...

Two data routes feed one training loop: stage 2's embeddings (`dataset.EmbeddingDataset`, batches of padded
"feats") or stage 1's frames (`clip_dataset.ClipDataset`, batches of uint8 "clips" for `models.e2e`). Each route
is a function that returns `SplitData`; the loops only see a batch's inputs, lengths and labels.

Read top to bottom, as torchvision's references/video_classification/train.py: `train_one_epoch` and `evaluate`
are the loops, `train(args)` wires data, model, `Optimization` (AdamW, schedule, scaler, loss) and the run's
`RunState` (epoch, step, best, history, partial epoch), which `restore_run_state` takes back from a checkpoint and
`save_training_checkpoint` writes; `test(args)` evaluates a checkpoint and writes the reports.

Every run lives in <expt_dir>/<expt_name>/<run_name>/: checkpoints/{best,last}.pth, train_log.txt,
metrics.jsonl, tensorboard/, curves.png, and test mode's results_<split>.json, per_class_<split>.csv,
predictions_<split>.csv and confusion_<split>.png (with --probes: probes_<split>.json, probes_per_class_<split>.csv).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from checkpoint import (
    build_checkpoint,
    check_compatible,
    load_checkpoint,
    model_from_checkpoint,
    read_head_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from clip_dataset import ClipDataset, clip_collate, clip_provenance
from dataset import (
    EmbeddingDataset,
    SplitInfo,
    feature_stats,
    load_split_info,
    pad_collate,
    stats_from_sums,
)
from distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    main_rank_lock,
    rank_device,
    rank_group,
)
from layout import read_class_names, read_split_json, split_id_of, split_json_path
from metrics import MetricAccumulator
from models import MODEL_NAMES, POSITION_MODELS, build_model
from models.backbone import (
    BACKBONE_HELP,
    FEATURE_HELP,
    FEATURES,
    WEIGHTS_HELP,
    BackboneRecord,
    record_of,
    resolve_backbone,
)
from models.base import VideoModel
from models.e2e import E2E_MODEL_NAMES, E2E_PREFIX, build_e2e_model, is_e2e_name
from precision import PRECISIONS, autocast, training_precision
from probes import NONE, PROBE_NAMES, ProbedDataset, summarise_probes
from reports import plot_confusion, plot_curves
from samplers import EvalSampler, TrainSampler
from sampling import TemporalAugment
from transforms import RESIZE_MODES, ResizeSpec
from utils import (
    BadInputError,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    check_writable_dir,
    first_names,
    float_in,
    int_at_least,
    log_failure_summary,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    probability,
    run_cli,
    set_seed,
    setup_logging,
    write_failure_report,
)

log = logging.getLogger("actionbert")

CURVES_EVERY_S = 30.0  # curves.png is redrawn at most this often (a redraw costs ~0.5 s) and at the end
HEAD_KWARGS = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "dropout", "pretrained", "positions")
ALL_MODEL_NAMES = (*MODEL_NAMES, *E2E_MODEL_NAMES)
# End-to-end clip settings: train mode's defaults; test mode takes the checkpoint's unless a flag is given.
CLIP_DEFAULTS = {"clip_len": 8, "num_clips": 1}  # and --image_size: the backbone's own
# Rank r seeds its generators with seed + RANK_SEED_STRIDE * r: distinct dropout masks per rank, the same for a given
# --seed (a prime, so the streams of nearby seeds and ranks do not coincide).
RANK_SEED_STRIDE = 7919


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train or test a temporal head (" + ", ".join(MODEL_NAMES) + ") over per-frame embeddings, or "
        "a CNN trained jointly with it on frames (e2e_<head>).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("run")
    g.add_argument("--mode", choices=("train", "test"), default="train")
    g.add_argument("--expt_dir", default="expts", help="root folder of all experiments")
    g.add_argument("--expt_name", default="default", help="experiment folder under --expt_dir")
    g.add_argument("--run_name", default=None, help="run folder under the experiment (default: the model name; "
                   "test mode: the checkpoint's own run folder)")
    g.add_argument("--data_dir", default=None, help="stage 2 output: <split>.npy + <split>.json (heads over "
                   "embeddings; e2e_* models read --split_json_dir instead)")
    g.add_argument("--model", choices=ALL_MODEL_NAMES, default=None, help="head to train, or e2e_<head> for a CNN "
                   "trained jointly with it (test mode: read from the checkpoint; if given it must match)")
    g.add_argument("--model_ckpt", default=None, help="train: resume from this checkpoint; test: the checkpoint "
                   "to evaluate")
    g.add_argument("--resume", default="auto", help="train: 'auto' resumes from the run folder's "
                   "checkpoints/last.pth when it exists, 'none' starts afresh, or a checkpoint path")
    g.add_argument("--split", default="val", help="test mode: the split to evaluate (val or test)")
    g.add_argument("--probes", nargs="*", choices=PROBE_NAMES, default=[], metavar="PROBE",
                   help="test mode: also evaluate with each video's frames changed, one run per probe: "
                   f"{', '.join(PROBE_NAMES)} (shuffle is seeded by --seed and the video name). Writes "
                   "probes_<split>.json and probes_per_class_<split>.csv")
    g.add_argument("--num_cls", type=positive_int, default=None, help="number of classes; read from the data, a value "
                   "that disagrees with it is an error")
    g.add_argument("--strict", action="store_true", help="refuse data with any bad record instead of leaving "
                   "it out with a warning")
    g.add_argument("--seed", type=int, default=0, help="fixes initialisation, data order and augmentation")

    g = p.add_argument_group("head")
    g.add_argument("--num_layers", type=positive_int, default=1)
    g.add_argument("--hidden_size", type=positive_int, default=None, help="default: the head's own")
    g.add_argument("--num_heads", type=positive_int, default=None, help="attention heads (bert, roberta)")
    g.add_argument("--intermediate_size", type=positive_int, default=None, help="feed-forward size (bert, roberta)")
    g.add_argument("--dropout", type=probability, default=None, help="default: the head's own")
    g.add_argument("--pretrained", default=None, help="bert/roberta: Hugging Face name or local directory")
    g.add_argument("--positions", choices=("learned", "none"), default=None, help="bert/roberta: the encoder's "
                   "position embeddings (learned, the default) or none at all, which makes it an order-blind set "
                   "model (the ablation that isolates attention from order)")

    g = p.add_argument_group("end-to-end (e2e_* models: the frame backbone trained jointly with the head on stage "
                             "1's frames)")
    g.add_argument("--split_json_dir", default=None, help="stage 1 output: <split>_ucf101.json and classInd.txt")
    g.add_argument("--frames_dir", default=None, help="stage 1's frames/<video_name>/frame_*.jpg (default: "
                   "SPLIT_JSON_DIR/frames)")
    g.add_argument("--backbone", default="resnet18", help=BACKBONE_HELP)
    g.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    g.add_argument("--feature", choices=FEATURES, default="pooled", help=FEATURE_HELP)
    g.add_argument("--clip_len", type=positive_int, default=None, help="frames per clip: one random frame per segment in "
                   "training, segment centres in evaluation (default 8; test mode: the checkpoint's)")
    g.add_argument("--num_clips", type=positive_int, default=None, help="evaluation views per video, logits averaged "
                   "(default 1; test mode: the checkpoint's)")
    g.add_argument("--image_size", type=int_at_least(16), default=None, help="frame size fed to the backbone "
                   "(default: the backbone's own, 224 for torchvision; test mode: the checkpoint's)")
    g.add_argument("--resize", choices=RESIZE_MODES, default=None, help="evaluation resize (default: the "
                   "backbone's own; crop: shorter side then centre crop, squash: whole frame)")
    g.add_argument("--freeze_backbone_stages", type=nonnegative_int, default=0, help="freeze the first K backbone "
                   "stages. ResNets: stem, layer1..layer4 (5 freezes the whole CNN); timm/hf ViTs: the patch embedding "
                   "and the first K blocks (blocks + 1 freezes all); timm/hf CNNs: the stem with stage 1, then one "
                   "stage each")
    g.add_argument("--grad_checkpointing", action="store_true", help="recompute backbone activations in "
                   "backward: less memory, ~30%% more compute")
    g.add_argument("--backbone_lr", type=nonnegative_float, default=None, help="peak learning rate of the backbone "
                   "(default: --lr)")
    g.add_argument("--init_head_from", default=None, help="start the head from this checkpoint (a head trained "
                   "by main.py on embeddings of the same classes: the two-step recipe); its hyper-parameters win")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=positive_int, default=256, help="global batch, split over torchrun processes")
    g.add_argument("--epochs", type=positive_int, default=300)
    g.add_argument("--lr", type=nonnegative_float, default=1e-4, help="peak AdamW learning rate (finite; 0 keeps "
                   "the weights as they are, e.g. to check an initialisation)")
    g.add_argument("--weight_decay", type=nonnegative_float, default=0.01, help="AdamW decay; never on biases, norms, "
                   "embeddings")
    g.add_argument("--warmup_epochs", type=nonnegative_float, default=1.0, help="linear warm-up, then cosine decay to 0")
    g.add_argument("--warmup_steps", type=nonnegative_int, default=None, help="warm-up in steps; overrides --warmup_epochs")
    g.add_argument("--grad_clip", type=nonnegative_float, default=1.0, help="max gradient norm (0 = off)")
    g.add_argument("--label_smoothing", type=probability, default=0.0)
    g.add_argument("--balanced", action="store_true", help="sample classes equally often (with replacement)")
    g.add_argument("--group_by_length", action=argparse.BooleanOptionalAction, default=None,
                   help="batch videos of similar length together (Hugging Face Trainer's group_by_length: random "
                   "mega-batches sorted by length, cut into batches, batch order shuffled), so padding costs little. "
                   "Default: on for the sequence heads (bilstm, bert, roberta), off for meanpool and e2e_* (fixed "
                   "clip length)")

    g = p.add_argument_group("temporal augmentation (training split only)")
    g.add_argument("--temporal_crop", type=float_in(0.0, 1.0, low_open=True), default=1.0, help="keep a random window of at least this "
                   "fraction of the frames (1 = off)")
    g.add_argument("--temporal_stride", type=positive_int, default=1, help="take every s-th frame, s random in "
                   "1..this (1 = off)")
    g.add_argument("--frame_dropout", type=probability, default=0.0, help="drop each frame with this probability")

    g = p.add_argument_group("hardware")
    g.add_argument("--gpu_id", type=int, default=0, help="CUDA device, as in prepare_data.py and predict.py; the "
                   "CPU is used (one log line) without CUDA. Under torchrun each rank uses cuda:LOCAL_RANK")
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="torch.amp precision; overrides --opt_lvl. fp16 uses a GradScaler and runs as asked on the "
                   "CPU too (slowly; logged); bf16 on a GPU without it runs fp16")
    g.add_argument("--opt_lvl", type=int, choices=(0, 1, 2, 3), default=1,
                   help="alias of --precision kept from apex (torch.amp only): 0 = fp32, 1 = fp16 autocast + "
                   "GradScaler, 2 and 3 = bf16. Without CUDA its fp16 runs fp32 (logged)")
    g.add_argument("--num_workers", type=nonnegative_int, default=4)

    g = p.add_argument_group("logging")
    g.add_argument("--log_interval", type=nonnegative_int, default=50, help="steps between TensorBoard scalars")
    g.add_argument("--save_interval", type=nonnegative_int, default=1000, help="steps between last.pth saves inside an "
                   "epoch (0 = only at epoch ends)")
    g.add_argument("--stop_after_epochs", type=positive_int, default=None, help="end this invocation after this many "
                   "epochs (time-limited cluster jobs): rerun the same command to go on exactly where it stopped")
    g.add_argument("--stop_after_steps", type=positive_int, default=None, help="end this invocation at this global step, "
                   "saving last.pth first (also mid-epoch)")
    g.add_argument("--verbose", action="store_true")
    return p


# ----------------------------------------------------------------------------------------------- helpers


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's Python, NumPy and torch generators."""
    return seed + RANK_SEED_STRIDE * rank


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear from 1/warmup to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def head_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Head hyper-parameters the user set; unset ones keep the head's defaults (heads ignore unused ones; `check_args`
    has refused --positions for a head without positions, where it would silently mean nothing)."""
    return {k: getattr(args, k) for k in HEAD_KWARGS if getattr(args, k) is not None}


def train_run_dir(args: argparse.Namespace) -> Path:
    return Path(args.expt_dir) / args.expt_name / (args.run_name or args.model)


def test_run_dir(args: argparse.Namespace, ckpt: dict[str, Any]) -> Path:
    """--run_name when given, else the run folder the checkpoint lives in (RUN/checkpoints/x.pth -> RUN)."""
    if args.run_name:
        return Path(args.expt_dir) / args.expt_name / args.run_name
    path = Path(args.model_ckpt).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot check one by one, refused before any work: train mode without --model, a
    transformer whose width does not split into its attention heads (Hugging Face would raise deep inside model
    construction), --group_by_length for an e2e model (its clips all have one length), --positions for a head without
    position embeddings, --probes outside test mode."""
    if args.mode == "train" and args.model is None:
        raise BadInputError("--model is required in train mode (choose from " + ", ".join(ALL_MODEL_NAMES) + ")")
    if args.mode == "train" and args.probes:
        raise BadInputError("--probes evaluates a trained checkpoint: use it with --mode test --model_ckpt F")
    if args.group_by_length and args.model and is_e2e_name(args.model):
        raise BadInputError(f"--group_by_length groups videos by their number of embeddings; {args.model} trains on "
                            "clips that all have --clip_len frames (leave the flag out)")
    head = (args.model or "").removeprefix(E2E_PREFIX)
    if args.positions is not None and args.model and head not in POSITION_MODELS:
        raise BadInputError(f"--positions applies to {', '.join(POSITION_MODELS)} (and e2e_ of them), not "
                            f"{args.model}: the other heads have no position embeddings to remove")
    if head in POSITION_MODELS and not args.pretrained:
        import inspect

        from models.transformer import TransformerHead

        defaults = inspect.signature(TransformerHead.__init__).parameters
        hidden = args.hidden_size or defaults["hidden_size"].default
        heads = args.num_heads or defaults["num_heads"].default
        if hidden % heads:
            raise BadInputError(f"--hidden_size {hidden} is not divisible by --num_heads {heads}: each attention "
                                "head takes an equal share of the width")


# Heads whose cost grows with the padded width of a batch: length grouping is on by default for them.
SEQUENCE_HEADS = ("bilstm", "bert", "roberta")


def resolve_group_by_length(args: argparse.Namespace) -> bool:
    """--group_by_length, defaulting to on for the sequence heads over embeddings; written back into `args` so
    the run's log and checkpoints record it (and a resume cannot silently change it). `check_args` has refused it
    for e2e models."""
    if args.group_by_length is None:
        args.group_by_length = args.model in SEQUENCE_HEADS
    return bool(args.group_by_length)


def check_num_cls(flag: int | None, data: SplitData) -> None:
    if flag is not None and flag != data.num_classes:
        raise BadInputError(
            f"--num_cls {flag} disagrees with the data: {data.source} has {data.num_classes} classes "
            "(leave --num_cls out; it is read from the data)"
        )


# ----------------------------------------------------------------------------------------------- data routes


@dataclass
class SplitData:
    """One split as the loops and the reports see it, whichever route made it.

    `dataset` yields (input, label, index) for a key `index` or `(index, epoch)` (dataset.TrainSampler's), and
    `collate` batches them into {"feats" or "clips", "lengths", "labels", "indices"}.
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
    time_axis: int = 0  # where time is in an item's input: 0 for (T, D) rows, -4 for (T, 3, H, W) clips

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)


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


def batch_inputs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model input of a batch: padded frame embeddings (pad_collate) or uint8 clips (clip_collate)."""
    return batch["feats"] if "feats" in batch else batch["clips"]


def embedding_split(args: argparse.Namespace, split: str, train: bool = False) -> SplitData:
    """Stage 2's `<split>.npy/.json`; the training split gets the temporal augmentation."""
    if not args.data_dir:
        raise BadInputError(f"--data_dir is required for --model {args.model or 'of the checkpoint'} (stage 2's "
                            "output); e2e_* models read --split_json_dir instead")
    info = load_split_info(args.data_dir, split, args.strict)
    augment = TemporalAugment(args.temporal_crop, args.temporal_stride, args.frame_dropout) if train else None
    return SplitData(split, EmbeddingDataset(info, augment, args.seed), pad_collate, info.names, info.labels,
                     info.class_names, str(info.json_path), info.feature_dim, info.lengths, info.provenance,
                     info.skipped)


def clip_settings(args: argparse.Namespace, ckpt: dict[str, Any] | None = None) -> ClipSettings:
    """Resolve the e2e flags, writing them back into `args` (so checkpoints record what was used).

    clip_len and num_clips: the flag, else (test mode) the checkpoint's, else CLIP_DEFAULTS. The backbone and its
    input: the flags (--backbone, --weights, --feature, --image_size, --resize over the backbone's own config) or,
    in test mode, the checkpoint's backbone record (--image_size still overrides the clips' size)."""
    if not args.split_json_dir:
        raise BadInputError("e2e_* models need --split_json_dir (stage 1's output: <split>_ucf101.json, "
                            "classInd.txt and frames/)")
    saved = {**((ckpt or {}).get("args") or {}), **((ckpt or {}).get("data_info") or {})}
    for key, default in CLIP_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, int(saved.get(key) or default))
        if getattr(args, key) < 1:
            raise BadInputError(f"--{key} must be >= 1, got {getattr(args, key)}")
    if ckpt is None:
        record = resolve_backbone(args.backbone, args.weights, args.feature, args.image_size, args.resize)
        spec = record.resize
    else:
        record = record_of({**saved, **ckpt["model_config"]}, str(args.model_ckpt))
        size = args.image_size or saved.get("image_size") or record.image_size
        spec = replace(record.resize, size=int(size), mode=args.resize or record.resize.mode)
    args.weights, args.feature = record.weights, record.feature
    args.image_size, args.resize = spec.size, spec.mode
    split_json_dir = Path(args.split_json_dir)
    frames_dir = Path(args.frames_dir) if args.frames_dir else split_json_dir / "frames"
    return ClipSettings(split_json_dir, frames_dir, args.clip_len, args.num_clips, record, spec)


def clip_split(args: argparse.Namespace, split: str, clips: ClipSettings, train: bool = False) -> SplitData:
    """Stage 1's `<split>_ucf101.json` over `frames/`; training clips are TSN-sampled and augmented."""
    path = split_json_path(clips.split_json_dir, split)
    entries = read_split_json(path)
    class_names = read_class_names(clips.split_json_dir, entries)
    ds = ClipDataset(clips.frames_dir, entries, clips.clip_len, train=train, image_size=clips.spec,
                     num_clips=clips.num_clips, seed=args.seed, strict=args.strict)
    provenance = clip_provenance(clips.frames_dir, backbone=clips.record.backbone, weights=clips.record.weights,
                                 feature=clips.record.feature, image_size=clips.image_size, resize=clips.spec.mode,
                                 clip_len=clips.clip_len, num_clips=clips.num_clips,
                                 split_id=split_id_of(entries, path))
    return SplitData(split, ds, clip_collate, ds.names, ds.labels, class_names, str(path), None, None, provenance,
                     ds.failures, time_axis=-4)


def load_split(args: argparse.Namespace, split: str, clips: ClipSettings | None, train: bool = False) -> SplitData:
    return embedding_split(args, split, train) if clips is None else clip_split(args, split, clips, train)


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


def report_skipped(data: SplitData, run_dir: Path) -> None:
    """Videos a split had to leave out: failed_videos_<split>.json in the run folder and the log."""
    if data.skipped:
        report = run_dir / f"failed_videos_{data.split}.json"
        write_failure_report(report, data.skipped)
        log_failure_summary(data.skipped, report)


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
        yield batch_inputs(batch), batch["lengths"]


# ----------------------------------------------------------------------------------------------- model and optimiser


def feature_mean_std(info: SplitInfo, dist_info: DistInfo) -> tuple[np.ndarray, np.ndarray]:
    """Training split's per-dimension mean/std over real frames, each rank streaming its share."""
    total, total_sq, count = feature_stats(info, rank=dist_info.rank, world_size=dist_info.world_size)
    packed = torch.from_numpy(np.concatenate([total, total_sq, [count]]))
    packed = all_reduce_sum(packed, dist_info).numpy()
    dim = info.feature_dim
    return stats_from_sums(packed[:dim], packed[dim : 2 * dim], int(packed[-1]))


def build_fresh_model(args: argparse.Namespace, train_data: SplitData, sampler: TrainSampler, batch_size: int,
                      device: torch.device, dist_info: DistInfo) -> VideoModel:
    """A new model on `device` with its input standardisation set: from the training split's embeddings (heads),
    from the backbone's features of the first training batches (e2e), or from --init_head_from's head."""
    if not is_e2e_name(args.model):
        if args.init_head_from:
            raise BadInputError("--init_head_from starts the head of an e2e_* model; a head over embeddings is "
                                "resumed with --model_ckpt")
        model = build_model(args.model, input_dim=train_data.feature_dim, num_classes=train_data.num_classes,
                            **head_kwargs(args))
        mean, std = feature_mean_std(train_data.dataset.info, dist_info)
        model.set_feature_stats(torch.from_numpy(mean), torch.from_numpy(std))
        return model.prepare_for_device(device)
    kwargs = head_kwargs(args)
    head = None
    if args.init_head_from:
        head = read_head_checkpoint(args.init_head_from)
        # the same classes in the same order, or the head's classifier rows would mean other classes
        if head.class_names != train_data.class_names:
            raise BadInputError(f"--init_head_from {head.path} was trained on other class names than the data's "
                                f"({len(head.class_names or [])} against {train_data.num_classes}, or another order)")
        if E2E_PREFIX + head.name != args.model:
            raise BadInputError(f"--init_head_from {head.path} holds a {head.name!r} head, not the head of "
                                f"{args.model}; pass --model {E2E_PREFIX}{head.name} or another checkpoint")
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


@dataclass
class Optimization:
    """AdamW with its warm-up + cosine schedule, the fp16 GradScaler and the loss: what a training step uses and
    updates, saved and restored together."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module
    grad_clip: float

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def step(self, loss: torch.Tensor, parameters: Iterator[torch.nn.Parameter]) -> None:
        """Backward (scaled for fp16), clip the gradient norm to grad_clip (0 = off), step, advance the schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def state_dicts(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}}

    def load_state_dicts(self, ckpt: dict[str, Any], follow_new_schedule: bool = False) -> None:
        """The saved optimiser, schedule and scaler. With `follow_new_schedule` (the command changed --lr,
        --backbone_lr, --epochs or the warm-up), this command's peak learning rates and schedule take over from the
        restored step: the saved state would otherwise keep the old peaks and silently ignore the new flags."""
        peaks = [group["initial_lr"] for group in self.optimizer.param_groups]  # this command's
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if follow_new_schedule:
            self.scheduler.base_lrs = peaks
            factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)  # this command's warm-up and length
            for group, peak in zip(self.optimizer.param_groups, peaks, strict=True):
                group["initial_lr"], group["lr"] = peak, peak * factor


def make_optimization(model: VideoModel, args: argparse.Namespace, device: torch.device, precision: str,
                      steps_per_epoch: int) -> Optimization:
    """AdamW over the model's own parameter groups (an e2e model's backbone gets --backbone_lr, its frozen stages
    no state at all), warm-up then cosine decay to 0 over all epochs, a GradScaler for fp16."""
    total_steps = steps_per_epoch * args.epochs
    warmup = args.warmup_steps if args.warmup_steps is not None else round(args.warmup_epochs * steps_per_epoch)
    warmup = max(0, min(warmup, total_steps))
    groups = model.param_groups(weight_decay=args.weight_decay, lr=args.lr, backbone_lr=args.backbone_lr)
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    return Optimization(
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total_steps)),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        criterion=torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
        grad_clip=args.grad_clip,
    )


# ----------------------------------------------------------------------------------------------- run state


@dataclass
class RunState:
    """Where a training run stands: what a checkpoint records besides the weights and the optimiser, and what a
    resume restores (`restore_run_state`)."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of epoch `epoch` done (a resume skips them)
    global_step: int = 0
    best_metric: float = -1.0  # best val top-1 so far
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per completed epoch
    partial: dict[str, Any] | None = None  # this rank's metric sums of the unfinished epoch, while not yet used


# Settings that make another run: resuming a run folder with other values would silently ignore the new ones.
RUN_DEFINING = (*HEAD_KWARGS, "seed", "batch_size", "balanced", "group_by_length", "temporal_crop", "temporal_stride",
                "frame_dropout", "backbone", "weights", "feature", "clip_len", "num_clips", "image_size", "resize",
                "freeze_backbone_stages",
                "backbone_lr", "init_head_from")
# ... of which only e2e_* models use these (a head over embeddings takes its backbone from the data)
E2E_ONLY = ("backbone", "weights", "feature", "clip_len", "num_clips", "image_size", "resize", "freeze_backbone_stages",
            "backbone_lr", "init_head_from")


def check_same_settings(saved: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    """--resume auto found a run in this folder: refuse if it was started with other settings."""
    keys = RUN_DEFINING if is_e2e_name(args.model) else [k for k in RUN_DEFINING if k not in E2E_ONLY]
    diffs = [f"--{k} {saved[k]} -> {getattr(args, k)}" for k in keys if k in saved and saved[k] != getattr(args, k)]
    if diffs:
        raise BadInputError(
            f"the run folder already holds a run ({path}) started with other settings ({', '.join(diffs)}); "
            "pass another --run_name, --resume none to start afresh, or the same settings to resume"
        )


def check_same_head(ckpt: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    """Resuming from any checkpoint (--model_ckpt, --resume PATH, auto): a head flag whose value differs from the
    checkpoint's model would be silently ignored (the model is rebuilt from the checkpoint), so refuse it. Only
    settings the model records are compared (meanpool has no --num_layers to disagree with)."""
    config = ckpt.get("model_config") or {}
    diffs = [f"--{key} {value} (the checkpoint's model has {config[key]})" for key, value in head_kwargs(args).items()
             if config.get(key) is not None and config[key] != value]
    if diffs:
        raise BadInputError(f"{path} holds a model built with other head settings: {', '.join(diffs)}; resuming "
                            "keeps the checkpoint's model: give its values, or --resume none to start afresh")


# Settings a resume may change: the run then follows the new schedule from where it stands (said in one line).
SCHEDULE_KEYS = ("epochs", "lr", "backbone_lr", "warmup_epochs", "warmup_steps")


def schedule_changes(ckpt: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The schedule flags whose value differs from the checkpoint's run, as `--flag old -> new`."""
    saved = ckpt.get("args") or {}
    return [f"--{k} {saved[k]} -> {getattr(args, k)}" for k in SCHEDULE_KEYS
            if k in saved and saved[k] != getattr(args, k)]


def resume_path(args: argparse.Namespace, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: --model_ckpt, --resume PATH, or (--resume auto) the run folder's last.pth."""
    if args.model_ckpt:
        return Path(args.model_ckpt)
    if args.resume in (None, "", "none"):
        return None
    if args.resume == "auto":
        last = run_dir / "checkpoints" / "last.pth"
        return last if last.is_file() else None
    return Path(args.resume)


def resume_checkpoint(
    args: argparse.Namespace, run_dir: Path, data: SplitData
) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint this invocation resumes (and its path), checked against the model and the data; (None, None)
    for a fresh run."""
    path = resume_path(args, run_dir)
    if path is None:
        return None, None
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, path, args.model, data.num_classes, data.feature_dim, data.class_names)
    if "optimizer" not in ckpt:
        raise BadInputError(f"{path} holds no training state (optimizer, epoch) to resume from")
    if not args.model_ckpt and args.resume == "auto":
        check_same_settings(ckpt.get("args") or {}, args, path)
    check_same_head(ckpt, args, path)
    return ckpt, path


def restore_run_state(ckpt: dict[str, Any], opt: Optimization, dist_info: DistInfo, seed: int,
                      steps_per_epoch: int, changed_schedule: Sequence[str] = ()) -> RunState:
    """The optimiser, schedule, scaler, counters, history and every RNG as `ckpt` saved them, so the run goes on
    exactly as if never stopped (same world size: each rank takes back its own RNG and partial-epoch sums).
    `changed_schedule` (`schedule_changes`): the command's new schedule is followed from here, and said."""
    if changed_schedule:
        log.warning("resuming with a changed schedule (%s): this run now differs from a straight run with either "
                    "schedule", ", ".join(changed_schedule))
    opt.load_state_dicts(ckpt, follow_new_schedule=bool(changed_schedule))
    epoch = int(ckpt["epoch"])
    state = RunState(
        epoch=epoch,
        batch_in_epoch=int(ckpt.get("batch_in_epoch", 0)),
        global_step=int(ckpt["global_step"]),
        best_metric=float(ckpt["best_metric"]),
        best_epoch=int(ckpt.get("best_epoch", 0)),
        history=[h for h in ckpt.get("history", []) if h["epoch"] <= epoch],
    )
    rngs = ckpt.get("rng") or []
    if len(rngs) == dist_info.world_size:
        set_rng_state(rngs[dist_info.rank])
    else:
        log.warning("checkpoint RNG state is from %d process(es), now %d: resume is not bit-exact",
                    len(rngs), dist_info.world_size)
        set_seed(rank_seed(seed, dist_info.rank) + epoch)
    partials = ckpt.get("train_partial") or []
    if state.batch_in_epoch and len(partials) == dist_info.world_size:
        state.partial = partials[dist_info.rank]
    if state.batch_in_epoch >= steps_per_epoch:  # a different batch size than before: restart the epoch
        state.batch_in_epoch, state.partial = 0, None
    return state


def save_training_checkpoint(
    ckpt_dir: Path,
    model: VideoModel,
    data: SplitData,
    opt: Optimization,
    state: RunState,
    dist_info: DistInfo,
    partial: MetricAccumulator | None = None,
    best: bool = False,
    **extra: Any,
) -> None:
    """last.pth (and best.pth with `best`) of the run as `state` says it stands; `partial` holds this rank's sums
    of an unfinished epoch. Every rank contributes its RNG state and partial sums; rank 0 writes."""
    gathered = all_gather_objects((rng_state(), partial.state() if partial is not None else None), dist_info)
    if not dist_info.is_main:
        return
    ckpt = build_checkpoint(
        model,
        data.class_names,
        data.provenance,
        **opt.state_dicts(),
        epoch=state.epoch,
        batch_in_epoch=state.batch_in_epoch,
        global_step=state.global_step,
        best_metric=state.best_metric,
        best_epoch=state.best_epoch,
        history=state.history,
        rng=[g[0] for g in gathered],
        train_partial=[g[1] for g in gathered] if partial is not None else [],
        **extra,
    )
    save_checkpoint(ckpt, ckpt_dir / "last.pth", *([ckpt_dir / "best.pth"] if best else []))


# ----------------------------------------------------------------------------------------------- run outputs


def add_file_log(path: Path, args: argparse.Namespace) -> logging.Handler:
    """train_log.txt: the full command and every argument, then all log lines of the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)
    log.info("command: %s", shlex.join([sys.executable, *sys.argv]))
    log.info("args: %s", json.dumps(vars(args), sort_keys=True))
    return handler


def write_metrics_jsonl(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in history))


class CurvePlotter:
    """curves.png, redrawn at most every CURVES_EVERY_S (a redraw dominates short epochs) and once at the end."""

    def __init__(self, path: Path) -> None:
        self.path, self.drawn_at, self.epochs = path, -math.inf, 0

    def update(self, history: list[dict[str, Any]], final: bool = False) -> None:
        due = self.epochs != len(history) if final else time.monotonic() - self.drawn_at >= CURVES_EVERY_S
        if history and due:
            plot_curves(history, self.path)
            self.drawn_at, self.epochs = time.monotonic(), len(history)


def write_epoch_outputs(run_dir: Path, state: RunState, train_metrics: dict[str, float],
                        val_metrics: dict[str, float], writer: Any, curves: CurvePlotter) -> None:
    """Rank 0's files after an epoch: metrics.jsonl, curves.png (when due) and the TensorBoard scalars."""
    write_metrics_jsonl(run_dir / "metrics.jsonl", state.history)
    curves.update(state.history)
    for key in ("loss", "top1", "top5", "mean_class_acc"):
        writer.add_scalar(f"val/{key}", val_metrics[key], state.epoch)
    for key in ("loss", "top1"):
        writer.add_scalar(f"train/{key}", train_metrics[key], state.epoch)
    writer.flush()


# ----------------------------------------------------------------------------------------------- loops


def nonfinite_loss_error(loss: float, state: RunState, indices: torch.Tensor, names: Sequence[str]) -> BadInputError:
    """The error a NaN/inf training loss stops the run with, naming the step and the batch's videos."""
    videos = [names[i] for i in indices.tolist()]
    return BadInputError(
        f"the training loss is {loss} at step {state.global_step + 1} (epoch {state.epoch + 1}) on a batch of "
        f"{len(videos)} video(s): {first_names(videos, 8)}. Stopped before the weights took it in; the run's "
        "checkpoints hold the last finite state. Check these videos' inputs, or lower --lr"
    )


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    opt: Optimization,
    state: RunState,
    args: argparse.Namespace,
    *,
    device: torch.device,
    precision: str,
    num_classes: int,
    steps_per_epoch: int,
    save_partial: Callable[[MetricAccumulator], None],
    names: Sequence[str],
    writer: Any = None,
    show: bool = True,
) -> tuple[MetricAccumulator, bool]:
    """Train epoch `state.epoch` from batch `state.batch_in_epoch` to its end, or until global step
    --stop_after_steps. Returns this rank's metric sums and whether it stopped at that step. A NaN/inf loss stops
    the run before the optimiser step, naming the batch's videos (`names`, by dataset index).

    Inside the epoch, `save_partial(sums)` saves last.pth every --save_interval steps and where it stops; a step
    already passed (a rerun of the stopped command) never stops it again, so rerunning the same command resumes.
    """
    acc = MetricAccumulator(num_classes)
    if state.partial is not None:
        acc.load_state(state.partial)
        state.partial = None
    model.train()
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}/{args.epochs}", initial=state.batch_in_epoch,
               total=steps_per_epoch, disable=not show, dynamic_ncols=True)
    stopped = False
    for batch in bar:
        inputs = batch_inputs(batch).to(device, non_blocking=True)
        lengths, labels = batch["lengths"].to(device), batch["labels"].to(device)
        with autocast(precision, device):
            logits = model(inputs, lengths)
        loss = opt.criterion(logits.float(), labels)
        loss_value = loss.item()  # one device sync per step; the check, the sums and the logs all read it
        if not math.isfinite(loss_value):
            raise nonfinite_loss_error(loss_value, state, batch["indices"], names)
        opt.step(loss, model.parameters())
        state.global_step += 1
        state.batch_in_epoch += 1
        acc.update(logits, labels, loss_value * len(labels))
        if writer is not None and args.log_interval > 0 and state.global_step % args.log_interval == 0:
            writer.add_scalar("train/loss_step", loss_value, state.global_step)
            writer.add_scalar("train/lr", opt.lr, state.global_step)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{opt.lr:.2e}")
        stopped = state.global_step == args.stop_after_steps
        mid_epoch = state.batch_in_epoch < steps_per_epoch
        if mid_epoch and (stopped or (args.save_interval > 0 and state.global_step % args.save_interval == 0)):
            save_partial(acc)
        if stopped:
            break
    bar.close()
    return acc, stopped


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str,
    num_classes: int,
    collect: bool = False,
    show: bool = True,
    names: Sequence[str] | None = None,
) -> tuple[MetricAccumulator, list[tuple[int, list[int], list[float]]]]:
    """This rank's sums (reduce them) and, with `collect`, (index, top-5 classes, top-5 probs) per sample.
    NaN/inf outputs (non-finite inputs) are an error naming their videos (`names`, by dataset index)."""
    model.eval()
    acc = MetricAccumulator(num_classes)
    outputs: list[tuple[int, list[int], list[float]]] = []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not show, dynamic_ncols=True):
        inputs = batch_inputs(batch).to(device, non_blocking=True)
        lengths, labels = batch["lengths"].to(device), batch["labels"].to(device)
        with autocast(precision, device):
            logits = model(inputs, lengths)
        logits = logits.float()
        finite = torch.isfinite(logits).all(1)
        if not bool(finite.all()):
            idx = batch["indices"][~finite.cpu()].tolist()
            videos = [names[i] if names is not None else str(i) for i in idx]
            raise BadInputError(f"non-finite (NaN/inf) model outputs for {len(videos)} video(s): "
                                f"{first_names(videos, 10)}; their inputs hold NaN/inf values")
        loss = F.cross_entropy(logits, labels, reduction="sum")
        acc.update(logits, labels, loss.item())
        if collect:
            probs = logits.softmax(1).cpu()
            top = probs.topk(min(5, num_classes), 1)
            for i, idx in enumerate(batch["indices"].tolist()):
                outputs.append((idx, top.indices[i].tolist(), top.values[i].tolist()))
    return acc, outputs


# ----------------------------------------------------------------------------------------------- train


def train(args: argparse.Namespace, dist_info: DistInfo) -> int:
    """Train --model on the train split, evaluating on val after every epoch; resumes the run folder's last.pth.
    `main` holds the run folder locked meanwhile."""
    device = rank_device(dist_info, args.gpu_id)
    precision = training_precision(args.precision, args.opt_lvl, device)
    run_dir = train_run_dir(args)
    ckpt_dir = run_dir / "checkpoints"
    clips = clip_settings(args) if is_e2e_name(args.model) else None  # before the log records the arguments
    grouping_given = args.group_by_length is not None
    resolve_group_by_length(args)
    handler = add_file_log(run_dir / "train_log.txt", args) if dist_info.is_main else None

    # data
    train_data = load_split(args, "train", clips, train=True)
    val_data = load_split(args, "val", clips)
    check_same_classes(train_data, val_data)
    check_num_cls(args.num_cls, train_data)
    num_classes = train_data.num_classes
    if dist_info.is_main:
        for data in (train_data, val_data):
            report_skipped(data, run_dir)
    what = f"D={train_data.feature_dim}" if clips is None else (
        f"clips of {clips.clip_len} frames at {clips.image_size} px, {clips.num_clips} eval view(s)")
    log.info("data: %d train / %d val videos, %d classes, %s, %s", len(train_data), len(val_data), num_classes,
             what, precision)

    ckpt, ckpt_path = resume_checkpoint(args, run_dir, train_data)
    if ckpt is not None and not grouping_given and args.group_by_length and "group_by_length" not in (
            ckpt.get("args") or {}):
        log.info("%s is from before --group_by_length: resuming it with the random batches it started with", ckpt_path)
        args.group_by_length = False

    world = dist_info.world_size
    per_rank_batch = max(1, args.batch_size // world)
    if per_rank_batch * world != args.batch_size:
        log.warning("--batch_size %d is not a multiple of %d processes: %d per process", args.batch_size, world,
                    per_rank_batch)
    grouped = args.group_by_length and train_data.lengths is not None
    sampler = TrainSampler(train_data.labels, args.seed, args.balanced, world, dist_info.rank,
                           lengths=train_data.lengths if grouped else None,
                           batch_size=per_rank_batch if grouped else None)
    pin = device.type == "cuda"
    train_loader = make_train_loader(train_data, sampler, per_rank_batch, args, pin)
    val_loader = make_eval_loader(val_data, per_rank_batch, args.num_workers, dist_info, pin)
    steps_per_epoch = math.ceil(sampler.num_samples / per_rank_batch)

    # model
    set_seed(args.seed)
    if ckpt is not None:
        model = model_from_checkpoint(ckpt, device)
        if model.supports_grad_checkpointing:  # a memory setting, free to change between invocations
            model.set_grad_checkpointing(args.grad_checkpointing)
        log.info("resuming from %s (epoch %d, step %d)", ckpt_path, ckpt["epoch"], ckpt["global_step"])
    else:
        model = build_fresh_model(args, train_data, sampler, per_rank_batch, device, dist_info)
    num_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s: %s, %d parameters (%d trainable)", args.model, json.dumps(model.config, default=str),
             num_params, trainable)
    train_model: torch.nn.Module = model
    if dist_info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    # optimisation and where the run stands
    opt = make_optimization(model, args, device, precision, steps_per_epoch)
    if ckpt is not None:
        state = restore_run_state(ckpt, opt, dist_info, args.seed, steps_per_epoch, schedule_changes(ckpt, args))
    else:
        state = RunState()
        set_seed(rank_seed(args.seed, dist_info.rank))

    save = functools.partial(save_training_checkpoint, ckpt_dir, model, train_data, opt, state, dist_info,
                             num_params=num_params, precision=precision, args=vars(args))

    writer, curves = None, CurvePlotter(run_dir / "curves.png")
    if dist_info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=state.global_step or None)
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    if state.epoch >= args.epochs:
        log.info("already trained for %d of %d epochs; nothing to do", state.epoch, args.epochs)
    end_epoch = args.epochs
    if args.stop_after_epochs is not None:
        end_epoch = min(end_epoch, state.epoch + args.stop_after_epochs)
    for epoch in range(state.epoch, end_epoch):
        t0 = time.time()
        sampler.set_epoch(epoch)
        sampler.set_start(state.batch_in_epoch * per_rank_batch)
        train_acc, stopped = train_one_epoch(
            train_model, train_loader, opt, state, args, device=device, precision=precision,
            num_classes=num_classes, steps_per_epoch=steps_per_epoch, save_partial=save, names=train_data.names,
            writer=writer, show=dist_info.is_main,
        )
        if state.batch_in_epoch == steps_per_epoch:  # the epoch is complete: evaluate, record, save
            train_metrics = train_acc.reduce(dist_info).compute()
            val_acc, _ = evaluate(model, val_loader, device, precision, num_classes, show=dist_info.is_main,
                                  names=val_data.names)
            val_metrics = val_acc.reduce(dist_info).compute()
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            state.history.append({
                "epoch": state.epoch,
                "step": state.global_step,
                "lr": opt.lr,
                **{f"train_{k}": v for k, v in train_metrics.items() if k != "count"},
                **{f"val_{k}": v for k, v in val_metrics.items()},
                "epoch_time_s": round(time.time() - t0, 3),
            })
            is_best = val_metrics["top1"] > state.best_metric
            if is_best:
                state.best_metric, state.best_epoch = val_metrics["top1"], state.epoch
            save(best=is_best)
            log.info("epoch %d/%d: train loss %.4f top1 %.4f | val loss %.4f top1 %.4f top5 %.4f mca %.4f (%d)%s",
                     state.epoch, args.epochs, train_metrics["loss"], train_metrics["top1"], val_metrics["loss"],
                     val_metrics["top1"], val_metrics["top5"], val_metrics["mean_class_acc"], val_metrics["count"],
                     " best" if is_best else "")
            if dist_info.is_main:
                write_epoch_outputs(run_dir, state, train_metrics, val_metrics, writer, curves)
        if stopped:
            log.info("stopped at step %d (--stop_after_steps); rerun the same command to resume", state.global_step)
            break
    if writer is not None:
        writer.close()
    if dist_info.is_main:
        curves.update(state.history, final=True)
        log.info("best val top-1 %.4f at epoch %d; checkpoints in %s", max(state.best_metric, 0.0), state.best_epoch,
                 ckpt_dir)
        logging.getLogger().removeHandler(handler)
        handler.close()
    barrier(dist_info)
    return 0


# ----------------------------------------------------------------------------------------------- test


def write_test_outputs(
    run_dir: Path,
    split: str,
    info: SplitData | SplitInfo,
    acc: MetricAccumulator,
    outputs: list[tuple[int, list[int], list[float]]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """results_<split>.json, per_class_<split>.csv, predictions_<split>.csv and confusion_<split>.png.

    `info` gives the class names and each evaluated index's video name and label (any route's SplitData)."""
    names = info.class_names
    results = {"split": split, **acc.compute(), "num_classes": len(names), **extra}
    atomic_write_json(run_dir / f"results_{split}.json", results)

    atomic_write_csv(run_dir / f"per_class_{split}.csv", acc.per_class(names))

    buf = io.StringIO()
    k = min(5, len(names))
    writer = csv.writer(buf)
    writer.writerow(["video", "true_label", "predicted", "correct"]
                    + [c for r in range(1, k + 1) for c in (f"top{r}", f"prob{r}")])
    for idx, classes, probs in sorted(outputs):
        true = int(info.labels[idx])
        tops = [v for c, pr in zip(classes, probs, strict=True) for v in (names[c], f"{pr:.6f}")]
        writer.writerow([info.names[idx], names[true], names[classes[0]], int(classes[0] == true), *tops])
    atomic_write_text(run_dir / f"predictions_{split}.csv", buf.getvalue())

    plot_confusion(acc.confusion.numpy(), names, run_dir / f"confusion_{split}.png",
                   title=f"{split}: top-1 {results['top1']:.3f}, mean class acc {results['mean_class_acc']:.3f}")
    return results


def evaluate_probes(model: torch.nn.Module, info: SplitData, args: argparse.Namespace, device: torch.device,
                    precision: str, dist_info: DistInfo) -> dict[str, MetricAccumulator]:
    """The same checkpoint on the same split once per --probes entry, each video's frames changed by the probe
    (probes.py) as they are read: still one video at a time from the memmap or the frame folder."""
    accs = {}
    for probe in dict.fromkeys(args.probes):
        probed = dataclasses.replace(info, dataset=ProbedDataset(info.dataset, probe, info.names, args.seed,
                                                                 info.time_axis))
        loader = make_eval_loader(probed, max(1, args.batch_size // dist_info.world_size), args.num_workers,
                                  dist_info, device.type == "cuda")
        acc, _ = evaluate(model, loader, device, precision, info.num_classes, show=dist_info.is_main)
        accs[probe] = acc.reduce(dist_info)
    return accs


def write_probe_outputs(run_dir: Path, split: str, class_names: list[str], accs: dict[str, MetricAccumulator],
                        extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """probes_<split>.json (each probe's and the unchanged run's metrics, with the probes' drops) and
    probes_per_class_<split>.csv (each class's accuracy under every probe, and its drop)."""
    summary, rows = summarise_probes({p: a.compute() for p, a in accs.items()},
                                     {p: a.per_class(class_names) for p, a in accs.items()})
    atomic_write_json(run_dir / f"probes_{split}.json", {"split": split, **extra, "probes": summary})
    atomic_write_csv(run_dir / f"probes_per_class_{split}.csv", rows)
    log.info("%s, order probes: top1 %.4f unchanged; %s", split, summary[NONE]["top1"],
             "; ".join(f"{p} {r['top1']:.4f} (drop {r['top1_drop']:+.4f})" for p, r in summary.items() if p != NONE))
    return summary


def test(args: argparse.Namespace, dist_info: DistInfo) -> int:
    if not args.model_ckpt:
        raise BadInputError("--mode test needs --model_ckpt (e.g. RUN/checkpoints/best.pth)")
    ckpt = load_checkpoint(args.model_ckpt)
    check_compatible(ckpt, args.model_ckpt, args.model)  # the model first: it decides which data route to read
    run_dir = check_writable_dir(test_run_dir(args, ckpt), "the report folder (--expt_dir/--expt_name/--run_name)")
    clips = clip_settings(args, ckpt) if is_e2e_name(str(ckpt["model_name"])) else None
    info = load_split(args, args.split, clips)
    check_num_cls(args.num_cls, info)
    check_compatible(ckpt, args.model_ckpt, None, info.num_classes, info.feature_dim, info.class_names)
    device = rank_device(dist_info, args.gpu_id)
    # evaluate in the precision training runs in on this device (the same flags, the same rule)
    precision = training_precision(args.precision, args.opt_lvl, device)
    model = model_from_checkpoint(ckpt, device)
    loader = make_eval_loader(info, max(1, args.batch_size // dist_info.world_size), args.num_workers, dist_info,
                              device.type == "cuda")
    acc, outputs = evaluate(model, loader, device, precision, info.num_classes, collect=True, names=info.names,
                            show=dist_info.is_main)
    acc.reduce(dist_info)
    outputs = [o for part in all_gather_objects(outputs, dist_info) for o in part]
    probe_accs = evaluate_probes(model, info, args, device, precision, dist_info)
    if dist_info.is_main:
        extra = {"checkpoint": str(args.model_ckpt), "model": ckpt["model_name"], "epoch": ckpt.get("epoch"),
                 "precision": precision, "skipped": len(info.skipped)}
        if clips is not None:
            extra.update(clip_len=clips.clip_len, num_clips=clips.num_clips, image_size=clips.image_size)
        report_skipped(info, run_dir)
        results = write_test_outputs(run_dir, args.split, info, acc, outputs, extra)
        log.info("%s: top1 %.4f top5 %.4f mean class acc %.4f loss %.4f over %d videos; reports in %s",
                 args.split, results["top1"], results["top5"], results["mean_class_acc"], results["loss"],
                 results["count"], run_dir)
        if probe_accs:
            write_probe_outputs(run_dir, args.split, info.class_names, {NONE: acc, **probe_accs},
                                {**extra, "probe_seed": args.seed})
    barrier(dist_info)
    return 0


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)  # first, so that init_distributed's line (rank, device, backend) is logged
    check_args(args)
    with rank_group() as dist_info:  # one rank's failure stops every rank, with its message
        if not dist_info.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        if args.mode == "test":
            return test(args, dist_info)
        run_dir = check_writable_dir(train_run_dir(args), "the run folder (--expt_dir/--expt_name/--run_name)")
        # a second run in this folder is refused at once: two would overwrite each other's checkpoints and metrics
        with main_rank_lock(dist_info, run_dir, what="training run folder"):
            return train(args, dist_info)


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
