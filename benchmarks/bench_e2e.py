"""End-to-end training speed and memory, with and without gradient checkpointing of the backbone.

Times full training steps (uint8 clips -> normalise -> CNN on every frame -> head -> loss -> backward -> AdamW)
on synthetic clips already in memory, so the numbers are the model's cost, not JPEG decoding's (which runs in
DataLoader workers, in parallel with the step).

CPU (default when there is no GPU): 112 px. Each configuration runs in its own subprocess, so its peak resident
memory (getrusage ru_maxrss of that process) is its own; the table also gives the peak above the RSS measured
just before the first step (activations, gradients, optimizer state).
GPU: 224 px, bf16 autocast, channels_last, resnet18 and resnet50; the batch size doubles from 1 until CUDA runs
out of memory, and the largest batch that fits is timed; peak memory is torch.cuda.max_memory_allocated.

    python benchmarks/bench_e2e.py [--device cpu|cuda] [--steps 4] [--batch_size 4] [--clip_len 8]

Prints one line with the ratios (checkpointing / plain) and appends a table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

from models.e2e import build_e2e_model  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="e2e_bilstm", help="e2e_<head>: the head trained with the backbone")
    p.add_argument("--backbones", nargs="+", default=None,
                   help="default: resnet18 on the CPU, resnet18 and resnet50 on a GPU")
    p.add_argument("--image_size", type=int, default=None, help="default: 112 on the CPU, 224 on a GPU")
    p.add_argument("--clip_len", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=4, help="clips per step on the CPU (a GPU searches its own)")
    p.add_argument("--max_batch", type=int, default=1024, help="GPU: stop doubling the batch here")
    p.add_argument("--steps", type=int, default=4, help="timed steps per configuration (after 1 warm-up step)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    p.add_argument("--num_classes", type=int, default=101)
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # JSON config: run one CPU config, print JSON
    return p


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_step(model: torch.nn.Module, device: torch.device, precision: str):
    """One training step on a given batch, as main.py runs it (autocast for bf16; no scaler needed)."""
    opt = torch.optim.AdamW(model.param_groups(weight_decay=0.01, lr=1e-4, backbone_lr=1e-4))
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step(clips: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(clips, lengths), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def synthetic_batch(batch: int, clip_len: int, size: int, num_classes: int, device: torch.device):
    g = torch.Generator().manual_seed(batch)
    clips = torch.randint(0, 256, (batch, clip_len, 3, size, size), dtype=torch.uint8, generator=g).to(device)
    lengths = torch.full((batch,), clip_len, dtype=torch.long, device=device)
    labels = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    return clips, lengths, labels


def build(cfg: dict[str, Any], device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_e2e_model(cfg["model"], num_classes=cfg["num_classes"], backbone=cfg["backbone"], weights="none",
                            grad_checkpointing=cfg["grad_checkpointing"])
    return model.prepare_for_device(device).train()


def time_steps(step, batch, steps: int, device: torch.device) -> tuple[float, float]:
    """Clips per wall-clock second and per CPU second of this process, over `steps` steps after a warm-up step.
    The CPU-time rate is the steadier one on a shared machine (other processes stretch wall time, not ours)."""
    step(*batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(*batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    clips = steps * batch[0].shape[0]
    return clips / (time.perf_counter() - start), clips / (time.process_time() - cpu_start)


def run_cpu_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Inside the subprocess: one configuration, its speed and its own peak RSS."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = torch.device("cpu")
    model = build(cfg, device)
    batch = synthetic_batch(cfg["batch_size"], cfg["clip_len"], cfg["image_size"], cfg["num_classes"], device)
    step = make_step(model, device, "fp32")
    base = _rss_mb()
    clips_per_s, clips_per_cpu_s = time_steps(step, batch, cfg["steps"], device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"clips_per_s": clips_per_s, "clips_per_cpu_s": clips_per_cpu_s, "peak_mb": peak,
            "above_start_mb": peak - base}


def cpu_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for backbone in args.backbones:
        for ckpt in (False, True):
            cfg = {"model": args.model, "backbone": backbone, "grad_checkpointing": ckpt, "image_size": args.image_size,
                   "clip_len": args.clip_len, "batch_size": args.batch_size, "steps": args.steps,
                   "threads": args.threads, "num_classes": args.num_classes}
            # A fixed mmap threshold makes glibc hand every large tensor back to the OS when freed, so RSS
            # follows live memory instead of the allocator's high-water mark of fragmented heap.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True,
                                  text=True, check=False, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"configuration {cfg} failed:\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({**cfg, **result, "precision": "fp32"})
            print(f"{backbone} ckpt={ckpt}: {result['clips_per_s']:.2f} clips/s "
                  f"({result['clips_per_cpu_s']:.2f}/CPU-s), peak RSS {result['peak_mb']:.0f} MB "
                  f"(+{result['above_start_mb']:.0f} MB)", file=sys.stderr)
    return rows


def _fits(cfg: dict[str, Any], batch_size: int, device: torch.device) -> dict[str, Any] | None:
    """Time `batch_size` clips on the GPU, or None when it runs out of memory."""
    model = step = batch = None
    try:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        model = build(cfg, device)
        step = make_step(model, device, "bf16")
        batch = synthetic_batch(batch_size, cfg["clip_len"], cfg["image_size"], cfg["num_classes"], device)
        clips_per_s, clips_per_cpu_s = time_steps(step, batch, cfg["steps"], device)
        return {"clips_per_s": clips_per_s, "clips_per_cpu_s": clips_per_cpu_s,
                "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    except torch.OutOfMemoryError:
        return None
    finally:
        del model, step, batch
        torch.cuda.empty_cache()


def gpu_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device("cuda", torch.cuda.current_device())
    torch.backends.cudnn.benchmark = True
    rows = []
    for backbone in args.backbones:
        for ckpt in (False, True):
            cfg = {"model": args.model, "backbone": backbone, "grad_checkpointing": ckpt, "image_size": args.image_size,
                   "clip_len": args.clip_len, "steps": args.steps, "num_classes": args.num_classes}
            best, size = None, 1
            while size <= args.max_batch:
                result = _fits(cfg, size, device)
                if result is None:
                    break
                best = {**cfg, **result, "batch_size": size, "precision": "bf16", "above_start_mb": float("nan")}
                print(f"{backbone} ckpt={ckpt} batch {size}: {result['clips_per_s']:.1f} clips/s, "
                      f"{result['peak_mb']:.0f} MB", file=sys.stderr)
                size *= 2
            if best is None:
                raise SystemExit(f"{backbone}: not even one clip of {args.clip_len} frames fits on the GPU")
            best["capped"] = size > args.max_batch
            rows.append(best)
    return rows


def machine(device: str) -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    text = f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"
    if device == "cuda":
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def ratio_line(rows: list[dict[str, Any]]) -> str:
    parts = []
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        plain = next(r for r in rows if r["backbone"] == backbone and not r["grad_checkpointing"])
        ckpt = next(r for r in rows if r["backbone"] == backbone and r["grad_checkpointing"])
        per_clip = (ckpt["peak_mb"] / ckpt["batch_size"]) / (plain["peak_mb"] / plain["batch_size"])
        part = (f"{backbone}: grad checkpointing / plain = {ckpt['clips_per_s'] / plain['clips_per_s']:.2f}x clips/s")
        if plain["above_start_mb"] == plain["above_start_mb"]:  # CPU: the CPU-time rate is the fair one
            part += f" ({ckpt['clips_per_cpu_s'] / plain['clips_per_cpu_s']:.2f}x per CPU second)"
        part += f", {per_clip:.2f}x peak memory per clip"
        if plain["above_start_mb"] == plain["above_start_mb"]:  # not NaN: the CPU's growth during training
            part += f" ({ckpt['above_start_mb'] / max(plain['above_start_mb'], 1e-9):.2f}x growth during training)"
        if ckpt["batch_size"] != plain["batch_size"]:
            part += f", largest batch {plain['batch_size']} -> {ckpt['batch_size']}"
        parts.append(part)
    return "; ".join(parts)


def append_table(path: str, args: argparse.Namespace, rows: list[dict[str, Any]], line: str) -> None:
    cmd = "python benchmarks/bench_e2e.py " + shlex.join(sys.argv[1:])
    lines = [
        "",
        f"## End-to-end training ({args.model}), {args.device}, {args.image_size} px, clip_len {args.clip_len}",
        "",
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; {machine(args.device)}; "
        f"`{cmd}`. Synthetic in-memory clips (decoding excluded), AdamW step included.",
        "",
        "| backbone | grad ckpt | precision | batch (clips) | clips/s | clips/CPU-s | peak memory MB "
        "| growth during training MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        batch = f"{r['batch_size']}" + (" (largest that fits)" if args.device == "cuda" and not r.get("capped") else "")
        growth = "-" if r["above_start_mb"] != r["above_start_mb"] else f"{r['above_start_mb']:.0f}"
        lines.append(f"| {r['backbone']} | {'yes' if r['grad_checkpointing'] else 'no'} | {r['precision']} | {batch} "
                     f"| {r['clips_per_s']:.2f} | {r['clips_per_cpu_s']:.2f} | {r['peak_mb']:.0f} | {growth} |")
    memory = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "peak RSS of the configuration's process"
    lines += ["", f"Peak memory: {memory}. {line}", ""]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


def main(args: argparse.Namespace) -> int:
    if args.worker:
        print(json.dumps(run_cpu_config(json.loads(args.worker))))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available")
    args.image_size = args.image_size or (224 if args.device == "cuda" else 112)
    args.backbones = args.backbones or (["resnet18", "resnet50"] if args.device == "cuda" else ["resnet18"])
    rows = gpu_benchmark(args) if args.device == "cuda" else cpu_benchmark(args)
    line = ratio_line(rows)
    append_table(args.out, args, rows, line)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
