"""Embedding extraction against the model limit: the whole prepare_data.py stage, start-up included (model build,
worker start-up, planning, read, decode, resize, normalise, forward, write, final rename) vs the backbone's fastest
forward pass alone (the better of the two memory layouts) on the same frames, batch size, threads, device and
precision.

    .venv/bin/python benchmarks/bench_embed.py [-m resnet18] [--image_size 224] [-bs 32] [-nw 2] [--copies 1]
    .venv/bin/python benchmarks/bench_embed.py -m timm:vit_small_patch16_224 --weights none

-m takes any backbone prepare_data.py takes (torchvision, timm:NAME, hf:DIR); the image size defaults to the
backbone's own, and both runs use the backbone record's preprocessing.

Frames are extracted from the real clips in ../shared/data/videos at UCF-101's 320x240, 711 real frames (or taken
from an existing stage-1 frames folder with --frames_dir/--json_file). The stage runs in this process, as a
pipeline script calling prepare_data.main would, so Python's own start-up and `import torch` are not in it; one
run of the CLI in a subprocess (`python prepare_data.py ...`, interpreter and imports included) is reported beside
it. Prints `stage/model = R` (target >= 0.9) and appends a table to BENCHMARKS.md. Forward and stage runs alternate
(--repeats each, forward first and last) and the fastest of each counts, so a burst of load from other jobs on a
shared machine does not decide the ratio; CPU seconds (the process and its reaped DataLoader workers) are reported
too, the steadier measure there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

import prepare_data  # noqa: E402
from layout import read_split_json  # noqa: E402
from models.backbone import build_backbone, embed_batch  # noqa: E402
from precision import resolve_precision  # noqa: E402
from transforms import normalize_batch  # noqa: E402
from utils import resolve_device, setup_logging  # noqa: E402

# every 2nd frame of vtest and bikes, all of carphone and tree: 711 frames of real footage
BENCH_STEPS = {"vtest.avi": 2, "bikes.mp4": 2, "carphone_pristine.mp4": 1, "tree.avi": 1}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_forward(model, num_frames: int, batch_size: int, image_size: int, device, precision: str,
                 channels_last: bool, stats: tuple[Sequence[float], Sequence[float]]) -> float:
    """Seconds for the forward pass alone over num_frames frames in batches of batch_size (plus one warm-up batch
    of each size used, so kernel choice and allocation are not timed). `model` must already be in the layout;
    `stats` is its record's (mean, std)."""
    x = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8)
    xn = normalize_batch(x, device, *stats, channels_last)
    sizes = [batch_size] * (num_frames // batch_size) + ([num_frames % batch_size] if num_frames % batch_size else [])
    for n in sorted(set(sizes)):
        embed_batch(model, xn[:n], precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for n in sizes:
        out = embed_batch(model, xn[:n], precision)
    out.cpu()
    return time.perf_counter() - t0


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (the DataLoader workers of finished stage runs)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default="resnet18")
    p.add_argument("--image_size", type=int, default=None, help="default: the backbone's own (224 for torchvision)")
    p.add_argument("--weights", default="none", help="as prepare_data.py's (default none: nothing to download)")
    p.add_argument("-bs", "--batch_size", type=int, default=32)
    p.add_argument("-nw", "--num_workers", type=int, default=2)
    p.add_argument("-g", "--gpu_id", type=int, default=0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--copies", type=int, default=1, help="repeat each clip's frames under new names (more frames)")
    p.add_argument("--frames_dir", default=None, help="use an existing stage-1 frames folder instead")
    p.add_argument("--json_file", default=None)
    p.add_argument("--repeats", type=int, default=2, help="stage runs; forward runs (per layout) are one more")
    p.add_argument("--no_cli", action="store_true", help="skip the CLI runs in a subprocess")
    p.add_argument("--cli_repeats", type=int, default=2,
                   help="CLI runs, each followed by a forward run of the stage's layout (paired against the load of a "
                   "shared machine)")
    p.add_argument("--no_append", action="store_true", help="do not append to BENCHMARKS.md")
    return p


def main(args: argparse.Namespace) -> int:
    setup_logging()
    logging.getLogger("actionbert").setLevel(logging.WARNING)
    device = resolve_device(args.gpu_id)
    precision = resolve_precision(args.precision, device)
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        tmp = Path(tmp)
        if args.frames_dir:
            frames_dir, split_json = Path(args.frames_dir), Path(args.json_file)
        else:
            from tests.test_prepare_data import write_frames_fixture  # the shared clips, at UCF-101's 320x240

            frames_dir, split_json = write_frames_fixture(tmp / "stage1", BENCH_STEPS, short_side=240,
                                                          copies=args.copies)
        entries = [(r["video_name"], r["label_idx"]) for r in read_split_json(split_json)]
        plans, _ = prepare_data.plan_videos(entries, frames_dir, None)
        num_frames = sum(len(p.frames) for p in plans)
        threads = torch.get_num_threads()

        model, record = build_backbone(args.model, args.weights, seed=0, image_size=args.image_size)
        image_size = record.image_size
        model = model.to(device)
        stage_layout = record.channels_last  # what the stage picks by default: the record's preference

        def forward(channels_last: bool) -> None:
            m = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            time_forward(m, num_frames, args.batch_size, image_size, device, precision, channels_last,
                         (record.mean, record.std))

        stage_argv = ["-s", "bench", "-f", str(frames_dir), "-j", str(split_json), "-m", args.model, "--weights",
                      args.weights, "--image_size", str(image_size), "-bs", str(args.batch_size), "-nw",
                      str(args.num_workers), "-g", str(args.gpu_id), "--precision", precision]

        def stage(k: int) -> None:
            out = tmp / f"out{k}"
            prepare_data.main(prepare_data.get_args_parser().parse_args([*stage_argv, "-o", str(out)]))
            logging.getLogger("actionbert").setLevel(logging.WARNING)
            meta = json.loads((out / "bench.json").read_text())
            assert sum(r["video_length"] for r in meta["data"]) == num_frames
            (out / "bench.npy").unlink()

        layouts = (False, True)
        fwd_runs = {cl: [timed(lambda cl=cl: forward(cl))] for cl in layouts}
        stage_runs = []
        for k in range(args.repeats):
            stage_runs.append(timed(lambda k=k: stage(k)))
            for cl in layouts:
                fwd_runs[cl].append(timed(lambda cl=cl: forward(cl)))
        cli, cli_pairs = None, []
        if not args.no_cli:
            for k in range(args.cli_repeats):
                start = time.perf_counter()
                subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), *stage_argv, "-o", str(tmp / f"cli{k}")],
                               check=True, capture_output=True, cwd=ROOT)
                run = time.perf_counter() - start
                fwd_runs[stage_layout].append(timed(lambda: forward(stage_layout)))
                cli_pairs.append(fwd_runs[stage_layout][-1][0] / run)
                cli = run if cli is None else min(cli, run)
    best_layout = min(layouts, key=lambda cl: min(w for w, _ in fwd_runs[cl]))
    fwd = min(w for w, _ in fwd_runs[best_layout])
    fwd_cpu = min(c for _, c in fwd_runs[best_layout])
    stage, stage_cpu = min(w for w, _ in stage_runs), min(c for _, c in stage_runs)
    ratio, cpu_ratio = fwd / stage, fwd_cpu / stage_cpu
    name = {False: "NCHW", True: "channels_last"}
    per_layout = ", ".join(f"{name[cl]} {num_frames / min(w for w, _ in fwd_runs[cl]):.1f}" for cl in layouts)
    cli_paired = sorted(cli_pairs)[len(cli_pairs) // 2] if cli_pairs else None
    cli_text = f"; the CLI in a subprocess, imports included: {num_frames / cli:.1f} frames/s (CLI/model " \
               f"{fwd / cli:.3f}, each CLI run against the forward run after it: " \
               f"{', '.join(f'{r:.3f}' for r in cli_pairs)})" if cli else ""
    print(f"stage/model = {ratio:.3f}  (stage {num_frames / stage:.1f} frames/s in {name[stage_layout]}, fastest "
          f"forward alone {num_frames / fwd:.1f} frames/s in {name[best_layout]} [{per_layout}]; {num_frames} frames, "
          f"{args.model} {image_size}px, bs {args.batch_size}, {args.num_workers} workers, {threads} torch "
          f"threads, {device}, {precision}; CPU-time ratio {cpu_ratio:.3f}{cli_text})")
    if not args.no_append:
        command = "  ".join(["python benchmarks/bench_embed.py", *sys.argv[1:]]).replace("  ", " ")
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
        rows = [
            f"\n## Embedding extraction vs forward pass ({datetime.date.today().isoformat()})\n",
            f"Machine: {device_name}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
            f"torchvision {__import__('torchvision').__version__}. Command: `{command}`\n",
            "| backbone | image | frames | batch | workers | torch threads | device | precision | forward alone, "
            "NCHW / channels_last (frames/s) | stage layout | whole stage (frames/s) | stage/model | stage/model in "
            "CPU seconds | CLI, imports included (frames/s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {args.model} | {image_size} | {num_frames} | {args.batch_size} | {args.num_workers} | {threads} | "
            f"{device.type} | {precision} | {per_layout.replace(', ', ' / ')} | {name[stage_layout]} | "
            f"{num_frames / stage:.2f} | {ratio:.3f} | {cpu_ratio:.3f} | {f'{num_frames / cli:.2f}' if cli else '-'} |",
            f"\nstage/model: the fastest stage run against the fastest forward run of the better layout "
            f"({name[best_layout]}). Wall seconds, forward alone: "
            + "; ".join(f"{name[cl]} {[round(w, 1) for w, _ in fwd_runs[cl]]}" for cl in layouts)
            + f"; whole stage: {[round(w, 1) for w, _ in stage_runs]} (model build, worker start-up, planning and the "
            f"final rename included). CPU seconds: forward {[round(c, 1) for _, c in fwd_runs[best_layout]]}, stage "
            f"{[round(c, 1) for _, c in stage_runs]}. Load average at the end: {os.getloadavg()[0]:.1f}."
            + (f" CLI (`python prepare_data.py ...`, interpreter and imports included) against the forward run of "
               f"the stage's layout right after it, run by run: {', '.join(f'{r:.3f}' for r in cli_pairs)} (the "
               f"middle one {cli_paired:.3f}); fastest CLI against fastest forward {fwd / cli:.3f}." if cli else "")
            + "\n",
        ]
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as fh:
            fh.write("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
