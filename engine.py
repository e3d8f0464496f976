"""The training engine both data routes share: the optimiser and its schedule (`Optimization`), where a run stands
(`RunState`), and the loops `train_one_epoch` and `evaluate`, as torchvision's references/video_classification
keeps them beside its `main`. main.py wires them; the benchmarks import them from here.

A batch is {"inputs", "lengths", "labels", "indices", "views"} whichever route collated it (routes.py), so nothing
here knows which model or data it runs; evaluation averages each video's view rows (sampling.average_views).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from distributed import DistInfo
from metrics import MetricAccumulator
from models.base import VideoModel
from precision import autocast
from probes import ProbedDataset
from routes import make_eval_loader
from sampling import average_views
from utils import BadInputError, first_names

# Rank r seeds its generators with seed + RANK_SEED_STRIDE * r: distinct dropout masks per rank, the same for a given
# --seed (a prime, so the streams of nearby seeds and ranks do not coincide).
RANK_SEED_STRIDE = 7919


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's Python, NumPy and torch generators."""
    return seed + RANK_SEED_STRIDE * rank


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear from 1/warmup to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------------------------- optimisation


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

    def load_state_dicts(self, saved: Any, follow_new_schedule: bool = False) -> None:
        """The saved optimiser, schedule and scaler (a `checkpoint.TrainingState`). With `follow_new_schedule` (the command changed --lr,
        --backbone_lr, --epochs or the warm-up), this command's peak learning rates and schedule take over from the
        restored step: the saved state would otherwise keep the old peaks and silently ignore the new flags."""
        peaks = [group["initial_lr"] for group in self.optimizer.param_groups]  # this command's
        self.optimizer.load_state_dict(saved.optimizer)
        self.scheduler.load_state_dict(saved.scheduler)
        if saved.scaler:
            self.scaler.load_state_dict(saved.scaler)
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


# ----------------------------------------------------------------------------------------------- loops


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
        inputs = batch["inputs"].to(device, non_blocking=True)
        lengths, labels = batch["lengths"].to(device), batch["labels"].to(device)
        with autocast(precision, device):
            logits = model(inputs, lengths, **time_kwargs(model, batch, device))
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


def time_kwargs(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """`times=` for a model that reads each frame's timestamp (`uses_times`: --positions time), nothing for the
    others; such a model without the batch's "times" is a clear error (the split records no fps)."""
    if not getattr(getattr(model, "module", model), "uses_times", False):  # DDP keeps the model in .module
        return {}
    if "times" not in batch:
        raise BadInputError("--positions time needs each frame's timestamp, and this split's JSON does not give "
                            "them (no fps recorded by prepare_data.py, or corrupt frames skipped without a "
                            "frame_index); rerun prepare_data.py on stage 1's frames")
    return {"times": batch["times"].to(device, non_blocking=True)}


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
    timing: dict[str, float] | None = None,
    labelled: bool = True,
) -> tuple[MetricAccumulator, list[tuple[int, list[int], list[float]]]]:
    """This rank's sums (reduce them) and, with `collect`, (index, top-5 classes, top-5 probs) per sample.
    NaN/inf outputs (non-finite inputs) are an error naming their videos (`names`, by dataset index). A `timing`
    dict gets this rank's "seconds" (data loading included), "frames" (the model's input frames, every view
    counted) and "videos". An unlabelled split (`labelled` False: label_idx -1, routes.check_labelling) is only
    predicted: the sums stay empty."""
    model.eval()
    start, frames, videos = time.perf_counter(), 0, 0
    acc = MetricAccumulator(num_classes)
    outputs: list[tuple[int, list[int], list[float]]] = []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not show, dynamic_ncols=True):
        inputs = batch["inputs"].to(device, non_blocking=True)
        lengths, labels = batch["lengths"].to(device), batch["labels"].to(device)
        with autocast(precision, device):
            logits = model(inputs, lengths, **time_kwargs(model, batch, device))
        logits = average_views(logits.float(), batch.get("views", 1))  # each video's V view rows -> one row
        finite = torch.isfinite(logits).all(1)
        if not bool(finite.all()):
            idx = batch["indices"][~finite.cpu()].tolist()
            videos = [names[i] if names is not None else str(i) for i in idx]
            raise BadInputError(f"non-finite (NaN/inf) model outputs for {len(videos)} video(s): "
                                f"{first_names(videos, 10)}; their inputs hold NaN/inf values")
        if labelled:
            loss = F.cross_entropy(logits, labels, reduction="sum")
            acc.update(logits, labels, loss.item())  # .item() waits for the device: the time below is the work's
        else:
            logits = logits.cpu()  # the same wait for the device, for the timing
        frames, videos = frames + int(lengths.sum()), videos + len(labels)  # lengths: one per view row
        if collect:
            probs = logits.softmax(1).cpu()
            top = probs.topk(min(5, num_classes), 1)
            for i, idx in enumerate(batch["indices"].tolist()):
                outputs.append((idx, top.indices[i].tolist(), top.values[i].tolist()))
    if timing is not None:
        timing.update(seconds=time.perf_counter() - start, frames=frames, videos=videos)
    return acc, outputs


def evaluate_probes(model: torch.nn.Module, info: Any, args: argparse.Namespace, device: torch.device,
                    precision: str, dist_info: DistInfo) -> dict[str, MetricAccumulator]:
    """The same checkpoint on the same split once per --probes entry, each video's frames changed by the probe
    (probes.py) as they are read: still one video at a time from the memmap or the frame folder, whichever route
    made `info` (a `routes.SplitData`)."""
    accs = {}
    for probe in dict.fromkeys(args.probes):
        probed = dataclasses.replace(info, dataset=ProbedDataset(info.dataset, probe, info.names, args.seed,
                                                                 info.time_axis))
        loader = make_eval_loader(probed, max(1, args.batch_size // dist_info.world_size), args.num_workers,
                                  dist_info, device.type == "cuda")
        acc, _ = evaluate(model, loader, device, precision, info.num_classes, show=dist_info.is_main)
        accs[probe] = acc.reduce(dist_info)
    return accs
