"""Training throughput of one epoch under three batchings of the same videos: padding every batch to the split's
maximum (fixed, the original loader), to the batch's own longest video (dynamic), and dynamic padding of
length-grouped batches (grouped: main.py's --group_by_length, Hugging Face Trainer's recipe).

UCF-101-shaped data: 9537 videos (split 1's training list), lengths from a log-normal fitted to UCF-101's clip
durations at 1 fps (mean ~7.2 s, shortest ~1 s, longest 71 s, a long tail), D=512, 101 classes. Every mode trains
`bert` with 4 layers through main.py's training step (autocast + Optimization.step) on the batches main.py's sampler
plans for epoch 0, read through dataset.py from a .npy memmap.

On a small CPU a whole epoch takes long, so by default each mode's epoch is estimated from --num_batches batches:
its batches are sorted by padded size (width x batch) and cut into that many equal strata; the median batch of each
stratum is timed and scaled to its stratum's padded frames (a stratified ratio estimate: grouped epochs mix very
narrow and very wide batches, which the first few batches would misrepresent). --num_batches 0 times every batch.

    python benchmarks/bench_train.py [--num_batches 4] [--device cpu] [--precision fp32]

Prints `fixed/grouped = R` (target >= 5) and `fixed/dynamic = R`, and appends a table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]

from dataset import EmbeddingDataset, fixed_pad_collate, load_split_info, pad_collate  # noqa: E402
from engine import Optimization  # noqa: E402
from models import build_model  # noqa: E402
from precision import autocast  # noqa: E402
from samplers import TrainSampler  # noqa: E402

MODES = ("fixed", "dynamic", "grouped")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_videos", type=int, default=9537)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--num_classes", type=int, default=101)
    p.add_argument("--max_len", type=int, default=71, help="longest video in frames (UCF-101's 71 s at 1 fps)")
    p.add_argument("--model", default="bert")
    p.add_argument("--num_layers", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--num_batches", type=int, default=4, help="batches timed per mode, one per stratum (0 = the "
                   "whole epoch)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--no_append", action="store_true", help="print only; do not append to BENCHMARKS.md")
    return p


def ucf101_like_lengths(n: int, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """Frame counts at 1 fps: log-normal durations (mean ~7.2 s, sigma 0.55), at least 1 s, the longest exactly
    `max_len` s (UCF-101's longest clip is 71 s), frames at t = 0, 1, ... s inside the clip."""
    durations = rng.lognormal(mean=math.log(7.2) - 0.55**2 / 2, sigma=0.55, size=n)
    durations = np.clip(durations, 1.0, max_len - 0.5)
    durations[int(rng.integers(n))] = max_len - 0.01
    return np.ceil(durations).astype(np.int64)


def epoch_plan(mode: str, labels: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int) -> list[list[int]]:
    """Epoch 0's batches as main.py's sampler plans them (one process): random for fixed and dynamic (the same
    batches), length-grouped for grouped."""
    grouped = mode == "grouped"
    sampler = TrainSampler(labels, seed, lengths=lengths if grouped else None, batch_size=batch_size if grouped else None)
    order = [i for i, _ in sampler]
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def padded_width(mode: str, batch: list[int], lengths: np.ndarray, max_len: int) -> int:
    return max_len if mode == "fixed" else int(lengths[batch].max())


def stratified_sample(costs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(batch, weight) pairs: the batches sorted by cost (padded frames) and cut into k equal strata; each
    stratum's median batch is timed and scaled up to the whole stratum by cost (a ratio estimate: time taken as
    proportional to padded frames within a stratum). k <= 0 or >= the batch count: every batch, weight 1."""
    if k <= 0 or k >= len(costs):
        return [(i, 1.0) for i in range(len(costs))]
    strata = np.array_split(np.argsort(costs, kind="stable"), k)
    return [(int(s[len(s) // 2]), float(costs[s].sum() / costs[s[len(s) // 2]])) for s in strata]


def write_data(folder: Path, lengths: np.ndarray, fill: np.ndarray, dim: int, max_len: int, num_classes: int,
               rng: np.random.Generator) -> None:
    """A stage-2 split of every video, with real rows only for the videos in `fill` (the memmap file is sparse,
    so only the rows the timed batches read take disk space)."""
    arr = np.lib.format.open_memmap(folder / "train.npy", mode="w+", dtype=np.float32,
                                    shape=(len(lengths), max_len, dim))
    for video in np.unique(fill):
        arr[video, : lengths[video]] = rng.standard_normal((int(lengths[video]), dim), dtype=np.float32)
    arr.flush()
    del arr
    records = [{"video_idx": i, "video_name": f"v{i:05d}", "video_length": int(n), "label_idx": i % num_classes}
               for i, n in enumerate(lengths)]
    meta = {"data": records, "memmap_size": [len(lengths), max_len, dim], "split": "train", "feature_dim": dim,
            "num_classes": num_classes, "class_names": [f"class_{c}" for c in range(num_classes)]}
    (folder / "train.json").write_text(json.dumps(meta))


def plain_optimization(model: torch.nn.Module, device: torch.device, precision: str) -> Optimization:
    """main.py's optimisation step (AdamW, fp16's GradScaler, gradient clipping at 1) at a constant learning rate."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return Optimization(optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
                        criterion=torch.nn.CrossEntropyLoss(), grad_clip=1.0)


def time_batches(model, loader, device: torch.device, precision: str) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each batch of `loader` after the first (a warm-up for kernels and allocators):
    main.py's step (autocast forward, loss, Optimization.step with fp16's GradScaler)."""
    model.train()
    opt = plain_optimization(model, device, precision)
    walls, cpus = [], []
    for i, batch in enumerate(loader):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        feats = batch["inputs"].to(device, non_blocking=True)
        lengths, labels = batch["lengths"].to(device), batch["labels"].to(device)
        with autocast(precision, device):
            logits = model(feats, lengths)
        opt.step(opt.criterion(logits.float(), labels), model.parameters())
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
    return walls, cpus


@dataclass
class ModeResult:
    mode: str
    mean_width: float  # over the whole epoch's batches
    padded_frames: int  # frames the epoch computes on, padding included
    epoch_s: float  # estimated (or measured, with --num_batches 0) wall seconds of the epoch
    epoch_cpu_s: float
    timed: int  # batches timed
    batches: int  # batches in the epoch


class EpochData:
    """Every mode's epoch plan over UCF-101-shaped lengths, and a stage-2 split on disk holding the videos its
    timed batches read (a context manager: the split lives in a temporary folder). Also used by gpu_check.py."""

    def __init__(self, lengths: np.ndarray, dim: int, num_classes: int, batch_size: int, modes: list[str],
                 num_batches: int, seed: int = 0) -> None:
        self.lengths, self.dim, self.num_classes = lengths, dim, num_classes
        self.max_len = int(lengths.max())
        labels = np.arange(len(lengths)) % num_classes
        self.plans, self.samples = {}, {}
        for mode in modes:
            plan = epoch_plan(mode, labels, lengths, batch_size, seed)
            costs = np.array([padded_width(mode, b, lengths, self.max_len) * len(b) for b in plan])
            self.plans[mode], self.samples[mode] = plan, stratified_sample(costs, num_batches)
        self.widest = [int(i) for i in np.argsort(-lengths, kind="stable")[:batch_size]]  # the warm-up batch
        self.fill = np.concatenate([self.plans[m][i] for m in modes for i, _ in self.samples[m]] + [self.widest])
        self.seed = seed
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> EpochData:
        self._tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
        write_data(Path(self._tmp.name), self.lengths, self.fill, self.dim, self.max_len, self.num_classes,
                   np.random.default_rng(self.seed + 1))
        self.info = load_split_info(self._tmp.name, "train")
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    def time_epoch(self, model: torch.nn.Module, mode: str, device: torch.device, precision: str) -> ModeResult:
        """`mode`'s epoch seconds for `model` (trained in place from its current weights)."""
        plan, sample = self.plans[mode], self.samples[mode]
        collate = fixed_pad_collate(self.max_len) if mode == "fixed" else pad_collate
        loader = DataLoader(EmbeddingDataset(self.info), batch_sampler=[self.widest] + [plan[i] for i, _ in sample],
                            collate_fn=collate, num_workers=0, pin_memory=device.type == "cuda")
        walls, cpus = time_batches(model, loader, device, precision)
        weights = np.array([w for _, w in sample])
        widths = [padded_width(mode, b, self.lengths, self.max_len) for b in plan]
        padded = int(sum(w * len(b) for w, b in zip(widths, plan, strict=True)))
        return ModeResult(mode, float(np.mean(widths)), padded, float(weights @ walls), float(weights @ cpus),
                          len(sample), len(plan))


def measure_modes(model_name: str, num_layers: int, modes: list[str], lengths: np.ndarray, batch_size: int,
                  num_batches: int, dim: int, num_classes: int, device: torch.device, precision: str,
                  seed: int = 0) -> dict[str, ModeResult]:
    """Each mode's epoch time for the same videos, every mode from the same initial weights."""
    torch.manual_seed(seed)
    model = build_model(model_name, input_dim=dim, num_classes=num_classes, num_layers=num_layers).to(device)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    with EpochData(lengths, dim, num_classes, batch_size, modes, num_batches, seed) as data:
        for mode in modes:
            model.load_state_dict(init_state)
            results[mode] = data.time_epoch(model, mode, device, precision)
    return results


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    lengths = ucf101_like_lengths(args.num_videos, args.max_len, np.random.default_rng(args.seed))
    results = measure_modes(args.model, args.num_layers, args.modes, lengths, args.batch_size, args.num_batches,
                            args.dim, args.num_classes, device, args.precision, args.seed)
    for r in results.values():
        print(f"{r.mode}: mean width {r.mean_width:.1f}, epoch ~{r.epoch_s:.1f} s ({r.timed} of {r.batches} "
              "batches timed)", flush=True)
    if "fixed" in results:
        for mode in ("grouped", "dynamic"):
            if mode in results:
                print(f"fixed/{mode} = {results['fixed'].epoch_s / results[mode].epoch_s:.2f} (CPU time "
                      f"{results['fixed'].epoch_cpu_s / results[mode].epoch_cpu_s:.2f})")
    if not args.no_append:
        append_table(args, lengths, results)
    return 0


def append_table(args, lengths, results: dict[str, ModeResult]) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    any_result = next(iter(results.values()))
    scope = ("whole epoch" if args.num_batches <= 0 else
             f"{any_result.timed} of {any_result.batches} batches per mode, one per stratum of padded size")
    lines = [
        "",
        f"## Training: fixed vs dynamic vs length-grouped padding ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {cpu}, {torch.get_num_threads()} torch threads ({os.cpu_count()} cores), GPU: {gpu}, "
        f"torch {torch.__version__}, device {args.device}.",
        f"Data: {args.num_videos} videos, lengths at 1 fps mean {lengths.mean():.2f}, min {lengths.min()}, "
        f"max {lengths.max()}, median {int(np.median(lengths))}, 99th percentile {int(np.percentile(lengths, 99))}; "
        f"D={args.dim}; `{args.model}` with {args.num_layers} layers (head defaults otherwise), batch "
        f"{args.batch_size}, {args.precision}, forward + backward + AdamW step; timed: {scope} (after one warm-up "
        "batch of the longest videos).",
        f"Command: `{shlex.join([sys.executable, *sys.argv])}`",
        f"Load average (1 min) at the end: {os.getloadavg()[0]:.1f} (other jobs share the cores when above "
        f"{os.cpu_count()}; the CPU-time ratio is the steadier number then).",
        "",
        "| batching | mean batch width (frames) | padded frames / epoch | wall s / epoch | CPU s / epoch | "
        "fixed / this (wall) |",
        "|---|---|---|---|---|---|",
    ]
    base = results.get("fixed")
    for r in results.values():
        ratio = f"{base.epoch_s / r.epoch_s:.2f}" if base else "-"
        lines.append(f"| {r.mode} | {r.mean_width:.1f} | {r.padded_frames} | {r.epoch_s:.1f} | {r.epoch_cpu_s:.1f} "
                     f"| {ratio} |")
    if base and "grouped" in results:
        g = results["grouped"]
        lines.append(f"\n`fixed/grouped = {base.epoch_s / g.epoch_s:.2f}` (wall; CPU-time ratio "
                     f"{base.epoch_cpu_s / g.epoch_cpu_s:.2f}; target >= 5)\n")
    with open(args.out, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
