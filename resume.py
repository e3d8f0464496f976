"""Resume rules of a training run: which checkpoint an invocation resumes, which settings it must share with the run
it resumes (or may change: the schedule), restoring where the run stood, and writing last.pth/best.pth.

Checkpoints are read through `checkpoint.read_checkpoint`'s records, so these rules hold for every format written so
far, and under today's flag names.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checkpoint import (
    Checkpoint,
    RunSettings,
    build_checkpoint,
    check_compatible,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from distributed import DistInfo, all_gather_objects
from engine import Optimization, RunState, rank_seed
from metrics import MetricAccumulator
from models.base import VideoModel
from routes import HEAD_KWARGS, ROUTES, SplitData, head_kwargs, route_for
from utils import BadInputError, set_seed

log = logging.getLogger("actionbert")

# Settings that make another run: resuming a run folder with other values would silently ignore the new ones.
RUN_DEFINING = (*HEAD_KWARGS, "seed", "batch_size", "balanced", "group_by_length", "temporal_crop", "temporal_stride",
                "frame_dropout", "backbone", "weights", "feature", "clip_len", "num_clips", "image_size", "resize",
                "freeze_backbone_stages", "backbone_lr", "init_head_from", "hflip")
# ... of which a route uses only its own among every route's `own_settings` (a head over embeddings takes its
# backbone from the data)
ROUTE_ONLY = tuple(dict.fromkeys(k for route in ROUTES for k in route.own_settings))


def check_same_settings(saved: RunSettings, args: argparse.Namespace, path: Path) -> None:
    """--resume auto found a run in this folder: refuse if it was started with other settings."""
    own = route_for(args.model).own_settings
    keys = [k for k in RUN_DEFINING if k not in ROUTE_ONLY or k in own]
    diffs = [f"--{k} {saved[k]} -> {getattr(args, k)}" for k in keys if k in saved and saved[k] != getattr(args, k)]
    if diffs:
        raise BadInputError(
            f"the run folder already holds a run ({path}) started with other settings ({', '.join(diffs)}); "
            "pass another --run_name, --resume none to start afresh, or the same settings to resume"
        )


def check_same_head(ckpt: Checkpoint, args: argparse.Namespace, path: Path) -> None:
    """Resuming from any checkpoint (--model_ckpt, --resume PATH, auto): a head flag whose value differs from the
    checkpoint's model would be silently ignored (the model is rebuilt from the checkpoint), so refuse it. Only
    settings the model records are compared (meanpool has no --num_layers to disagree with)."""
    config = ckpt.model.config
    diffs = [f"--{key} {value} (the checkpoint's model has {config[key]})" for key, value in head_kwargs(args).items()
             if config.get(key) is not None and config[key] != value]
    if diffs:
        raise BadInputError(f"{path} holds a model built with other head settings: {', '.join(diffs)}; resuming "
                            "keeps the checkpoint's model: give its values, or --resume none to start afresh")


# Settings a resume may change: the run then follows the new schedule from where it stands (said in one line).
SCHEDULE_KEYS = ("epochs", "lr", "backbone_lr", "warmup_epochs", "warmup_steps")


def schedule_changes(ckpt: Checkpoint, args: argparse.Namespace) -> list[str]:
    """The schedule flags whose value differs from the checkpoint's run, as `--flag old -> new`."""
    saved = ckpt.settings
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
) -> tuple[Checkpoint | None, Path | None]:
    """The checkpoint this invocation resumes (and its path), checked against the model and the data; (None, None)
    for a fresh run."""
    path = resume_path(args, run_dir)
    if path is None:
        return None, None
    ckpt = read_checkpoint(path)
    check_compatible(ckpt, path, args.model, data.num_classes, data.feature_dim, data.class_names)
    if ckpt.training is None:
        raise BadInputError(f"{path} holds no training state (optimizer, epoch) to resume from")
    if not args.model_ckpt and args.resume == "auto":
        check_same_settings(ckpt.settings, args, path)
    check_same_head(ckpt, args, path)
    return ckpt, path


def restore_run_state(ckpt: Checkpoint, opt: Optimization, dist_info: DistInfo, seed: int,
                      steps_per_epoch: int, changed_schedule: Sequence[str] = ()) -> RunState:
    """The optimiser, schedule, scaler, counters, history and every RNG as `ckpt` saved them, so the run goes on
    exactly as if never stopped (same world size: each rank takes back its own RNG and partial-epoch sums).
    `changed_schedule` (`schedule_changes`): the command's new schedule is followed from here, and said."""
    if changed_schedule:
        log.warning("resuming with a changed schedule (%s): this run now differs from a straight run with either "
                    "schedule", ", ".join(changed_schedule))
    saved = ckpt.training
    assert saved is not None  # resume_checkpoint refused a checkpoint without it
    opt.load_state_dicts(saved, follow_new_schedule=bool(changed_schedule))
    epoch = saved.epoch
    state = RunState(
        epoch=epoch,
        batch_in_epoch=saved.batch_in_epoch,
        global_step=saved.global_step,
        best_metric=saved.best_metric,
        best_epoch=saved.best_epoch,
        history=[h for h in saved.history if h["epoch"] <= epoch],
    )
    rngs = saved.rng
    if len(rngs) == dist_info.world_size:
        set_rng_state(rngs[dist_info.rank])
    else:
        log.warning("checkpoint RNG state is from %d process(es), now %d: resume is not bit-exact",
                    len(rngs), dist_info.world_size)
        set_seed(rank_seed(seed, dist_info.rank) + epoch)
    partials = saved.train_partial
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
