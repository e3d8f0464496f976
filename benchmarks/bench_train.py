"""Training throughput: batches padded to their own longest video (dynamic) against padding to the split's maximum.

UCF-101-shaped data: 9537 videos (split 1's training list), lengths from a log-normal fitted to UCF-101's
clip durations at 1 fps (mean ~7.2 s, shortest ~1 s, longest 71 s, a long tail), D=512, 101 classes.
Both modes train `bert` with 4 layers on exactly the same batches, read through dataset.py from a .npy
memmap. On a small CPU a whole epoch takes long, so by default the first --num_batches batches of a
seeded epoch order are timed and the epoch time is extrapolated (--num_batches 0 times the whole epoch).

    python benchmarks/bench_train.py [--num_batches 4] [--device cpu]

Prints `fixed/dynamic = R` and appends a table to BENCHMARKS.md.
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
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset import EmbeddingDataset, fixed_pad_collate, load_split_info, pad_collate  # noqa: E402
from models import build_model  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_videos", type=int, default=9537)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--num_classes", type=int, default=101)
    p.add_argument("--max_len", type=int, default=71, help="longest video in frames (UCF-101's 71 s at 1 fps)")
    p.add_argument("--model", default="bert")
    p.add_argument("--num_layers", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--num_batches", type=int, default=4, help="batches timed per mode (0 = the whole epoch)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    return p


def ucf101_like_lengths(n: int, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """Frame counts at 1 fps: log-normal durations (mean ~7.2 s, sigma 0.55), at least 1 s, the longest exactly
    `max_len` s (UCF-101's longest clip is 71 s), frames at t = 0, 1, ... s inside the clip."""
    durations = rng.lognormal(mean=math.log(7.2) - 0.55**2 / 2, sigma=0.55, size=n)
    durations = np.clip(durations, 1.0, max_len - 0.5)
    durations[int(rng.integers(n))] = max_len - 0.01
    return np.ceil(durations).astype(np.int64)


def write_data(folder: Path, lengths: np.ndarray, rows_used: np.ndarray, dim: int, max_len: int, num_classes: int,
               rng: np.random.Generator) -> None:
    """A stage-2 style split holding only the videos the timed batches read (the file stays ~0.3 GB)."""
    arr = np.lib.format.open_memmap(folder / "train.npy", mode="w+", dtype=np.float32,
                                    shape=(len(rows_used), max_len, dim))
    records = []
    for new_row, video in enumerate(rows_used):
        n = int(lengths[video])
        arr[new_row, :n] = rng.standard_normal((n, dim), dtype=np.float32)
        records.append({"video_idx": new_row, "video_name": f"v{video:05d}", "video_length": n,
                        "label_idx": int(video % num_classes)})
    arr.flush()
    del arr
    meta = {"data": records, "memmap_size": [len(rows_used), max_len, dim], "split": "train",
            "feature_dim": dim, "num_classes": num_classes,
            "class_names": [f"class_{c}" for c in range(num_classes)]}
    (folder / "train.json").write_text(json.dumps(meta))


def time_mode(model, init_state, loader, device) -> tuple[float, float, list[int]]:
    """Wall and CPU seconds for the timed batches (after one untimed warm-up step), padded width of each batch."""
    model.load_state_dict(init_state)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    widths, elapsed, cpu = [], 0.0, 0.0
    for i, batch in enumerate(loader):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        feats = batch["feats"].to(device, non_blocking=True)
        lengths, labels = batch["lengths"].to(device), batch["labels"].to(device)
        loss = torch.nn.functional.cross_entropy(model(feats, lengths), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first batch warms up kernels and allocators
            elapsed += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
            widths.append(int(batch["feats"].shape[1]))
    return elapsed, cpu, widths


def main(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    lengths = ucf101_like_lengths(args.num_videos, args.max_len, rng)
    order = rng.permutation(args.num_videos)
    epoch_batches = math.ceil(args.num_videos / args.batch_size)
    timed = epoch_batches if args.num_batches <= 0 else min(args.num_batches, epoch_batches - 1)
    used = order[: (timed + 1) * args.batch_size]  # +1: the warm-up batch
    with tempfile.TemporaryDirectory() as tmp:
        write_data(Path(tmp), lengths, used, args.dim, args.max_len, args.num_classes, rng)
        info = load_split_info(tmp, "train")
        model = build_model(args.model, input_dim=args.dim, num_classes=args.num_classes,
                            num_layers=args.num_layers).to(device)
        init_state = {k: v.clone() for k, v in model.state_dict().items()}
        results = {}
        for mode, collate in (("dynamic", pad_collate), ("fixed", fixed_pad_collate(args.max_len))):
            loader = DataLoader(EmbeddingDataset(info), batch_size=args.batch_size, shuffle=False,
                                collate_fn=collate, num_workers=0, pin_memory=device.type == "cuda")
            seconds, cpu, widths = time_mode(model, init_state, loader, device)
            results[mode] = {"seconds": seconds, "cpu": cpu, "per_batch": seconds / len(widths), "widths": widths,
                             "epoch_s": seconds / len(widths) * epoch_batches}
            print(f"{mode}: {seconds:.2f} s for {len(widths)} batches, mean width {np.mean(widths):.1f}, "
                  f"epoch ~{results[mode]['epoch_s']:.1f} s", flush=True)
    ratio = results["fixed"]["seconds"] / results["dynamic"]["seconds"]
    print(f"fixed/dynamic = {ratio:.2f} (CPU time {results['fixed']['cpu'] / results['dynamic']['cpu']:.2f})")
    append_table(args, lengths, results, ratio, epoch_batches)
    return 0


def append_table(args, lengths, results, ratio, epoch_batches) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    timed = len(results["dynamic"]["widths"])
    scope = "whole epoch" if timed >= epoch_batches - 1 else f"{timed} of {epoch_batches} batches, extrapolated"
    lines = [
        "",
        f"## Training: dynamic vs fixed padding ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {cpu}, {torch.get_num_threads()} torch threads ({os.cpu_count()} cores), GPU: {gpu}, "
        f"torch {torch.__version__}, device {args.device}.",
        f"Data: {args.num_videos} videos, lengths at 1 fps mean {lengths.mean():.2f}, min {lengths.min()}, "
        f"max {lengths.max()}, median {int(np.median(lengths))}, 99th percentile {int(np.percentile(lengths, 99))}; "
        f"D={args.dim}; `{args.model}` with {args.num_layers} layers (head defaults otherwise), batch "
        f"{args.batch_size}, fp32, forward + backward + AdamW step; timed: {scope} (same batches in both modes, "
        "after one warm-up batch).",
        f"Command: `{shlex.join([sys.executable, *sys.argv])}`",
        f"Load average (1 min) at the end: {os.getloadavg()[0]:.1f} (other jobs share the cores when above "
        f"{os.cpu_count()}; the CPU-time ratio is the steadier number then).",
        "",
        "| padding | mean batch width (frames) | wall s / batch | CPU s / batch | wall s / epoch | ratio (wall) |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("dynamic", "fixed"):
        r = results[mode]
        lines.append(f"| {mode} | {np.mean(r['widths']):.1f} | {r['per_batch']:.3f} | "
                     f"{r['cpu'] / len(r['widths']):.3f} | {r['epoch_s']:.1f} | "
                     f"{r['seconds'] / results['dynamic']['seconds']:.2f} |")
    cpu_ratio = results["fixed"]["cpu"] / results["dynamic"]["cpu"]
    lines.append(f"\n`fixed/dynamic = {ratio:.2f}` (wall; CPU-time ratio {cpu_ratio:.2f})\n")
    with open(args.out, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
