"""Stage 3: train a head over frame embeddings, resume it exactly, test it, and scale it with torchrun.

    main.py --mode train --expt_dir D --expt_name E --run_name R --model bert --data_dir DATA
    main.py --mode test --model_ckpt D/E/R/checkpoints/best.pth --data_dir DATA --split test
    torchrun --nproc_per_node=2 main.py --mode train ...

Every run lives in <expt_dir>/<expt_name>/<run_name>/: checkpoints/{best,last}.pth, train_log.txt,
metrics.jsonl, tensorboard/, curves.png, and test mode's results_<split>.json, per_class_<split>.csv,
predictions_<split>.csv and confusion_<split>.png.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from checkpoint import (
    build_checkpoint,
    check_compatible,
    load_checkpoint,
    model_from_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dataset import (
    EmbeddingDataset,
    EvalSampler,
    SplitInfo,
    TemporalAugment,
    TrainSampler,
    check_same_classes,
    feature_stats,
    load_split_info,
    pad_collate,
    stats_from_sums,
)
from distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, cleanup, init_distributed
from metrics import MetricAccumulator
from models import MODEL_NAMES, build_model
from reports import plot_confusion, plot_curves
from utils import BadInputError, atomic_write_json, atomic_write_text, resolve_device, run_cli, set_seed, setup_logging

log = logging.getLogger("actionbert")

OPT_LVL_PRECISION = {0: "fp32", 1: "fp16", 2: "bf16", 3: "bf16"}
HEAD_KWARGS = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "dropout", "pretrained")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train or test a temporal head (bilstm, bert, roberta, meanpool) over per-frame embeddings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("run")
    g.add_argument("--mode", choices=("train", "test"), default="train")
    g.add_argument("--expt_dir", default="expts", help="root folder of all experiments")
    g.add_argument("--expt_name", default="default", help="experiment folder under --expt_dir")
    g.add_argument("--run_name", default=None, help="run folder under the experiment (default: the model name; "
                   "test mode: the checkpoint's own run folder)")
    g.add_argument("--data_dir", required=True, help="stage 2 output: <split>.npy + <split>.json")
    g.add_argument("--model", choices=MODEL_NAMES, default=None, help="head to train (test mode: read from the "
                   "checkpoint; if given it must match)")
    g.add_argument("--model_ckpt", default=None, help="train: resume from this checkpoint; test: the checkpoint "
                   "to evaluate")
    g.add_argument("--resume", default="auto", help="train: 'auto' resumes from the run folder's "
                   "checkpoints/last.pth when it exists, 'none' starts afresh, or a checkpoint path")
    g.add_argument("--split", default="val", help="test mode: the split to evaluate (val or test)")
    g.add_argument("--num_cls", type=int, default=None, help="number of classes; read from the data, a value "
                   "that disagrees with it is an error")
    g.add_argument("--strict", action="store_true", help="refuse data with any bad record instead of leaving "
                   "it out with a warning")
    g.add_argument("--seed", type=int, default=0, help="fixes initialisation, data order and augmentation")

    g = p.add_argument_group("head")
    g.add_argument("--num_layers", type=int, default=1)
    g.add_argument("--hidden_size", type=int, default=None, help="default: the head's own")
    g.add_argument("--num_heads", type=int, default=None, help="attention heads (bert, roberta)")
    g.add_argument("--intermediate_size", type=int, default=None, help="feed-forward size (bert, roberta)")
    g.add_argument("--dropout", type=float, default=None, help="default: the head's own")
    g.add_argument("--pretrained", default=None, help="bert/roberta: Hugging Face name or local directory")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=256, help="global batch, split over torchrun processes")
    g.add_argument("--epochs", type=int, default=300)
    g.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
    g.add_argument("--weight_decay", type=float, default=0.01, help="AdamW decay; never on biases, norms, "
                   "embeddings")
    g.add_argument("--warmup_epochs", type=float, default=1.0, help="linear warm-up, then cosine decay to 0")
    g.add_argument("--warmup_steps", type=int, default=None, help="warm-up in steps; overrides --warmup_epochs")
    g.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    g.add_argument("--label_smoothing", type=float, default=0.0)
    g.add_argument("--balanced", action="store_true", help="sample classes equally often (with replacement)")

    g = p.add_argument_group("temporal augmentation (training split only)")
    g.add_argument("--temporal_crop", type=float, default=1.0, help="keep a random window of at least this "
                   "fraction of the frames (1 = off)")
    g.add_argument("--temporal_stride", type=int, default=1, help="take every s-th frame, s random in "
                   "1..this (1 = off)")
    g.add_argument("--frame_dropout", type=float, default=0.0, help="drop each frame with this probability")

    g = p.add_argument_group("hardware")
    g.add_argument("--gpu_id", type=int, default=1, help="CUDA device; the CPU is used (one log line) "
                   "without CUDA")
    g.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="torch.amp precision; overrides --opt_lvl. fp16 uses a GradScaler; fp16 asked on the CPU "
                   "runs in fp32 (logged)")
    g.add_argument("--opt_lvl", type=int, choices=(0, 1, 2, 3), default=1,
                   help="alias of --precision kept from apex (torch.amp only): 0 = fp32, 1 = fp16 autocast + "
                   "GradScaler, 2 and 3 = bf16")
    g.add_argument("--num_workers", type=int, default=4)

    g = p.add_argument_group("logging")
    g.add_argument("--log_interval", type=int, default=50, help="steps between TensorBoard scalars")
    g.add_argument("--save_interval", type=int, default=1000, help="steps between last.pth saves inside an "
                   "epoch (0 = only at epoch ends)")
    g.add_argument("--stop_after_epochs", type=int, default=None, help="end this invocation after this many "
                   "epochs (time-limited cluster jobs): rerun the same command to go on exactly where it stopped")
    g.add_argument("--stop_after_steps", type=int, default=None, help="end this invocation at this global step, "
                   "saving last.pth first (also mid-epoch)")
    g.add_argument("--verbose", action="store_true")
    return p


# ----------------------------------------------------------------------------------------------- helpers


def resolve_precision(precision: str | None, opt_lvl: int, device: torch.device) -> str:
    """The precision actually used. fp16 on the CPU falls back to fp32: CPU fp16 kernels are slow and partial."""
    chosen = precision or OPT_LVL_PRECISION[int(opt_lvl)]
    if chosen == "fp16" and device.type != "cuda":
        log.info("fp16 was asked (--opt_lvl/--precision) but there is no CUDA device: training in fp32")
        return "fp32"
    if chosen == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.info("this GPU has no bf16 support: using fp16 with a GradScaler")
        return "fp16"
    return chosen


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: biases, norm scales, embeddings and the [CLS] vector are exempt."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lowered = name.lower()
        if param.ndim <= 1 or "embed" in lowered or "norm" in lowered or "cls" in lowered:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear from 1/warmup to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def head_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Head hyper-parameters the user set; unset ones keep the head's defaults (heads ignore unused ones)."""
    return {k: getattr(args, k) for k in HEAD_KWARGS if getattr(args, k) is not None}


def train_run_dir(args: argparse.Namespace) -> Path:
    return Path(args.expt_dir) / args.expt_name / (args.run_name or args.model)


def test_run_dir(args: argparse.Namespace, ckpt: dict[str, Any]) -> Path:
    """--run_name when given, else the run folder the checkpoint lives in (RUN/checkpoints/x.pth -> RUN)."""
    if args.run_name:
        return Path(args.expt_dir) / args.expt_name / args.run_name
    path = Path(args.model_ckpt).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def check_num_cls(flag: int | None, info: SplitInfo) -> None:
    if flag is not None and flag != info.num_classes:
        raise BadInputError(
            f"--num_cls {flag} disagrees with the data: {info.json_path} has {info.num_classes} classes "
            "(leave --num_cls out; it is read from the data)"
        )


def make_eval_loader(info: SplitInfo, batch_size: int, num_workers: int, dist_info: DistInfo, pin: bool) -> DataLoader:
    """Every sample once, no drop_last, no augmentation."""
    return DataLoader(
        EmbeddingDataset(info),
        batch_size=batch_size,
        sampler=EvalSampler(len(info), dist_info.world_size, dist_info.rank),
        collate_fn=pad_collate,
        num_workers=num_workers,
        pin_memory=pin,
        drop_last=False,
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str,
    num_classes: int,
    collect: bool = False,
    show: bool = True,
) -> tuple[MetricAccumulator, list[tuple[int, list[int], list[float]]]]:
    """This rank's sums (reduce them) and, with `collect`, (index, top-5 classes, top-5 probs) per sample."""
    model.eval()
    acc = MetricAccumulator(num_classes)
    outputs: list[tuple[int, list[int], list[float]]] = []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not show, dynamic_ncols=True):
        feats = batch["feats"].to(device, non_blocking=True)
        lengths, labels = batch["lengths"].to(device), batch["labels"].to(device)
        with autocast(precision, device):
            logits = model(feats, lengths)
        logits = logits.float()
        loss = F.cross_entropy(logits, labels, reduction="sum")
        acc.update(logits, labels, loss.item())
        if collect:
            probs = logits.softmax(1).cpu()
            top = probs.topk(min(5, num_classes), 1)
            for i, idx in enumerate(batch["indices"].tolist()):
                outputs.append((idx, top.indices[i].tolist(), top.values[i].tolist()))
    return acc, outputs


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


def feature_mean_std(info: SplitInfo, dist_info: DistInfo) -> tuple[np.ndarray, np.ndarray]:
    """Training split's per-dimension mean/std over real frames, each rank streaming its share."""
    total, total_sq, count = feature_stats(info, rank=dist_info.rank, world_size=dist_info.world_size)
    packed = torch.from_numpy(np.concatenate([total, total_sq, [count]]))
    packed = all_reduce_sum(packed, dist_info).numpy()
    dim = info.feature_dim
    return stats_from_sums(packed[:dim], packed[dim : 2 * dim], int(packed[-1]))


# Settings that make another run: resuming a run folder with other values would silently ignore the new ones.
RUN_DEFINING = (*HEAD_KWARGS, "seed", "batch_size", "balanced", "temporal_crop", "temporal_stride", "frame_dropout")


def check_same_settings(saved: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    """--resume auto found a run in this folder: refuse if it was started with other settings."""
    diffs = [f"--{k} {saved[k]} -> {getattr(args, k)}" for k in RUN_DEFINING
             if k in saved and saved[k] != getattr(args, k)]
    if diffs:
        raise BadInputError(
            f"the run folder already holds a run ({path}) started with other settings ({', '.join(diffs)}); "
            "pass another --run_name, --resume none to start afresh, or the same settings to resume"
        )


def resume_path(args: argparse.Namespace, run_dir: Path) -> Path | None:
    if args.model_ckpt:
        return Path(args.model_ckpt)
    if args.resume in (None, "", "none"):
        return None
    if args.resume == "auto":
        last = run_dir / "checkpoints" / "last.pth"
        return last if last.is_file() else None
    return Path(args.resume)


# ----------------------------------------------------------------------------------------------- train


def train(args: argparse.Namespace, dist_info: DistInfo) -> int:
    if args.model is None:
        raise BadInputError("--model is required in train mode (choose from " + ", ".join(MODEL_NAMES) + ")")
    device = torch.device("cuda", dist_info.local_rank) if dist_info.enabled and torch.cuda.is_available() else None
    device = device or resolve_device(args.gpu_id)
    precision = resolve_precision(args.precision, args.opt_lvl, device)
    run_dir = train_run_dir(args)
    ckpt_dir = run_dir / "checkpoints"
    handler = add_file_log(run_dir / "train_log.txt", args) if dist_info.is_main else None

    train_info = load_split_info(args.data_dir, "train", args.strict)
    val_info = load_split_info(args.data_dir, "val", args.strict)
    check_same_classes(train_info, val_info)
    check_num_cls(args.num_cls, train_info)
    num_classes, dim = train_info.num_classes, train_info.feature_dim
    log.info("data: %d train / %d val videos, %d classes, D=%d, %s", len(train_info), len(val_info), num_classes,
             dim, precision)

    ckpt_path = resume_path(args, run_dir)
    ckpt = None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        check_compatible(ckpt, ckpt_path, args.model, num_classes, dim, train_info.class_names)
        if "optimizer" not in ckpt:
            raise BadInputError(f"{ckpt_path} holds no training state (optimizer, epoch) to resume from")
        if not args.model_ckpt and args.resume == "auto":
            check_same_settings(ckpt.get("args") or {}, args, ckpt_path)

    set_seed(args.seed)
    if ckpt is not None:
        model = model_from_checkpoint(ckpt)
        log.info("resuming from %s (epoch %d, step %d)", ckpt_path, ckpt["epoch"], ckpt["global_step"])
    else:
        model = build_model(args.model, input_dim=dim, num_classes=num_classes, **head_kwargs(args))
        mean, std = feature_mean_std(train_info, dist_info)
        model.set_feature_stats(torch.from_numpy(mean), torch.from_numpy(std))
    num_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %s, %d parameters", args.model, json.dumps(model.config, default=str), num_params)
    model.to(device)
    train_model: torch.nn.Module = model
    if dist_info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    world = dist_info.world_size
    per_rank_batch = max(1, args.batch_size // world)
    if per_rank_batch * world != args.batch_size:
        log.warning("--batch_size %d is not a multiple of %d processes: %d per process", args.batch_size, world,
                    per_rank_batch)
    augment = TemporalAugment(args.temporal_crop, args.temporal_stride, args.frame_dropout)
    sampler = TrainSampler(train_info.labels, args.seed, args.balanced, world, dist_info.rank)
    train_loader = DataLoader(
        EmbeddingDataset(train_info, augment, args.seed),
        batch_size=per_rank_batch,
        sampler=sampler,
        collate_fn=pad_collate,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(args.seed),  # keeps the loader off the global RNG
    )
    val_loader = make_eval_loader(val_info, per_rank_batch, args.num_workers, dist_info, device.type == "cuda")

    steps_per_epoch = math.ceil(sampler.num_samples / per_rank_batch)
    total_steps = steps_per_epoch * args.epochs
    warmup = args.warmup_steps if args.warmup_steps is not None else round(args.warmup_epochs * steps_per_epoch)
    warmup = max(0, min(warmup, total_steps))
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    start_epoch, skip_batches, global_step = 0, 0, 0
    best_top1, best_epoch, history = -1.0, 0, []
    partial_state = None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, skip_batches = int(ckpt["epoch"]), int(ckpt.get("batch_in_epoch", 0))
        global_step, best_top1 = int(ckpt["global_step"]), float(ckpt["best_metric"])
        best_epoch, history = int(ckpt.get("best_epoch", 0)), list(ckpt.get("history", []))
        history = [h for h in history if h["epoch"] <= start_epoch]
        rngs = ckpt.get("rng") or []
        if len(rngs) == world:
            set_rng_state(rngs[dist_info.rank])
        else:
            log.warning("checkpoint RNG state is from %d process(es), now %d: resume is not bit-exact",
                        len(rngs), world)
            set_seed(args.seed + 7919 * dist_info.rank + start_epoch)
        partials = ckpt.get("train_partial") or []
        if skip_batches and len(partials) == world:
            partial_state = partials[dist_info.rank]
        if skip_batches >= steps_per_epoch:  # a different batch size than before: restart the epoch
            skip_batches, partial_state = 0, None
    else:
        set_seed(args.seed + 7919 * dist_info.rank)  # distinct dropout masks per rank, same for a given seed

    writer = None
    if dist_info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=global_step or None)
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    def save(epoch_done: int, batch_in_epoch: int, acc: MetricAccumulator | None, best: bool = False) -> None:
        # every rank contributes its RNG state (and partial epoch sums); rank 0 writes
        gathered = all_gather_objects((rng_state(), acc.state() if acc is not None else None), dist_info)
        if not dist_info.is_main:
            return
        ckpt_out = build_checkpoint(
            model,
            train_info.class_names,
            train_info.provenance,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler.is_enabled() else {},
            epoch=epoch_done,
            batch_in_epoch=batch_in_epoch,
            global_step=global_step,
            best_metric=best_top1,
            best_epoch=best_epoch,
            history=history,
            rng=[g[0] for g in gathered],
            train_partial=[g[1] for g in gathered] if acc is not None else [],
            num_params=num_params,
            precision=precision,
            args=vars(args),
        )
        save_checkpoint(ckpt_out, ckpt_dir / "last.pth", *([ckpt_dir / "best.pth"] if best else []))

    if start_epoch >= args.epochs:
        log.info("already trained for %d of %d epochs; nothing to do", start_epoch, args.epochs)
    end_epoch = args.epochs
    if args.stop_after_epochs is not None:
        end_epoch = min(end_epoch, start_epoch + args.stop_after_epochs)
    stopped = False
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        sampler.set_epoch(epoch)
        sampler.set_start(skip_batches * per_rank_batch)
        acc = MetricAccumulator(num_classes)
        if partial_state is not None:
            acc.load_state(partial_state)
            partial_state = None
        train_model.train()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", initial=skip_batches,
                   total=steps_per_epoch, disable=not dist_info.is_main, dynamic_ncols=True)
        for batch_idx, batch in enumerate(bar, start=skip_batches):
            feats = batch["feats"].to(device, non_blocking=True)
            lengths, labels = batch["lengths"].to(device), batch["labels"].to(device)
            with autocast(precision, device):
                logits = train_model(feats, lengths)
            loss = criterion(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            global_step += 1
            acc.update(logits, labels, loss.item() * len(labels))
            if writer is not None and args.log_interval > 0 and global_step % args.log_interval == 0:
                writer.add_scalar("train/loss_step", loss.item(), global_step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], global_step)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            mid_epoch = batch_idx + 1 < steps_per_epoch
            stop_here = args.stop_after_steps is not None and global_step == args.stop_after_steps
            if mid_epoch and (stop_here or (args.save_interval > 0 and global_step % args.save_interval == 0)):
                save(epoch, batch_idx + 1, acc)
            if stop_here and mid_epoch:
                stopped = True
                break
        bar.close()
        if stopped:
            log.info("stopped at step %d (--stop_after_steps); rerun the same command to resume", global_step)
            break
        skip_batches = 0
        train_metrics = acc.reduce(dist_info).compute()
        val_acc, _ = evaluate(model, val_loader, device, precision, num_classes, show=dist_info.is_main)
        val_metrics = val_acc.reduce(dist_info).compute()
        record = {
            "epoch": epoch + 1,
            "step": global_step,
            "lr": scheduler.get_last_lr()[0],
            **{f"train_{k}": v for k, v in train_metrics.items() if k != "count"},
            **{f"val_{k}": v for k, v in val_metrics.items()},
            "epoch_time_s": round(time.time() - t0, 3),
        }
        history.append(record)
        is_best = val_metrics["top1"] > best_top1
        if is_best:
            best_top1, best_epoch = val_metrics["top1"], epoch + 1
        save(epoch + 1, 0, None, best=is_best)
        log.info("epoch %d/%d: train loss %.4f top1 %.4f | val loss %.4f top1 %.4f top5 %.4f mca %.4f (%d)%s",
                 epoch + 1, args.epochs, train_metrics["loss"], train_metrics["top1"], val_metrics["loss"],
                 val_metrics["top1"], val_metrics["top5"], val_metrics["mean_class_acc"], val_metrics["count"],
                 " best" if is_best else "")
        if dist_info.is_main:
            write_metrics_jsonl(run_dir / "metrics.jsonl", history)
            plot_curves(history, run_dir / "curves.png")
            for key in ("loss", "top1", "top5", "mean_class_acc"):
                writer.add_scalar(f"val/{key}", val_metrics[key], epoch + 1)
            for key in ("loss", "top1"):
                writer.add_scalar(f"train/{key}", train_metrics[key], epoch + 1)
            writer.flush()
        if args.stop_after_steps is not None and global_step == args.stop_after_steps:
            log.info("stopped at step %d (--stop_after_steps); rerun the same command to resume", global_step)
            break
    if writer is not None:
        writer.close()
    if dist_info.is_main:
        log.info("best val top-1 %.4f at epoch %d; checkpoints in %s", max(best_top1, 0.0), best_epoch, ckpt_dir)
        logging.getLogger().removeHandler(handler)
        handler.close()
    barrier(dist_info)
    return 0


# ----------------------------------------------------------------------------------------------- test


def write_test_outputs(
    run_dir: Path,
    split: str,
    info: SplitInfo,
    acc: MetricAccumulator,
    outputs: list[tuple[int, list[int], list[float]]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """results_<split>.json, per_class_<split>.csv, predictions_<split>.csv and confusion_<split>.png."""
    names = info.class_names
    results = {"split": split, **acc.compute(), "num_classes": len(names), **extra}
    atomic_write_json(run_dir / f"results_{split}.json", results)

    buf = io.StringIO()
    rows = acc.per_class(names)
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / f"per_class_{split}.csv", buf.getvalue())

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


def test(args: argparse.Namespace, dist_info: DistInfo) -> int:
    if not args.model_ckpt:
        raise BadInputError("--mode test needs --model_ckpt (e.g. RUN/checkpoints/best.pth)")
    ckpt = load_checkpoint(args.model_ckpt)
    info = load_split_info(args.data_dir, args.split, args.strict)
    check_num_cls(args.num_cls, info)
    check_compatible(ckpt, args.model_ckpt, args.model, info.num_classes, info.feature_dim, info.class_names)
    device = torch.device("cuda", dist_info.local_rank) if dist_info.enabled and torch.cuda.is_available() else None
    device = device or resolve_device(args.gpu_id)
    precision = resolve_precision(args.precision, args.opt_lvl, device)
    model = model_from_checkpoint(ckpt, device)
    loader = make_eval_loader(info, max(1, args.batch_size // dist_info.world_size), args.num_workers, dist_info,
                              device.type == "cuda")
    acc, outputs = evaluate(model, loader, device, precision, info.num_classes, collect=True,
                            show=dist_info.is_main)
    acc.reduce(dist_info)
    outputs = [o for part in all_gather_objects(outputs, dist_info) for o in part]
    if dist_info.is_main:
        run_dir = test_run_dir(args, ckpt)
        extra = {"checkpoint": str(args.model_ckpt), "model": ckpt["model_name"], "epoch": ckpt.get("epoch"),
                 "precision": precision, "skipped": len(info.skipped)}
        results = write_test_outputs(run_dir, args.split, info, acc, outputs, extra)
        log.info("%s: top1 %.4f top5 %.4f mean class acc %.4f loss %.4f over %d videos; reports in %s",
                 args.split, results["top1"], results["top5"], results["mean_class_acc"], results["loss"],
                 results["count"], run_dir)
    barrier(dist_info)
    return 0


def main(args: argparse.Namespace) -> int:
    dist_info = init_distributed()
    setup_logging(args.verbose)
    if not dist_info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return train(args, dist_info) if args.mode == "train" else test(args, dist_info)
    finally:
        cleanup(dist_info)


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
