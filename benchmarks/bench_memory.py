"""Peak memory of prepare_data.py at two dataset sizes: rows stream into the memmap, so peak RSS must stay flat
as the number of videos grows.

    .venv/bin/python benchmarks/bench_memory.py [--small 1] [--large 8] [--image_size 112] [-nw 2]

Each size runs the real CLI in a fresh process on frames of the real clips (each clip repeated `copies` times
under new names); peak RSS is the kernel's max resident set of that process (os.wait4), workers reported apart.
Prints `peak_rss large/small = R` and appends a table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.bench_embed import cpu_model  # noqa: E402
from tests.test_prepare_data import write_frames_fixture  # noqa: E402

MEM_STEPS = {"vtest.avi": 20, "bikes.mp4": 8, "carphone_pristine.mp4": 4, "tree.avi": 2}

# Runs the stage in a child and reports the child's own peak RSS and that of its reaped DataLoader workers.
PROBE = """
import resource, runpy, sys, json
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("PEAK_RSS " + json.dumps({"self_kb": self_kb, "children_kb": kids_kb, "code": code}), file=sys.stderr)
"""


def measure(copies: int, tmp: Path, image_size: int, num_workers: int, batch_size: int) -> dict:
    frames_dir, split_json = write_frames_fixture(tmp / f"stage1_{copies}", MEM_STEPS, short_side=240, copies=copies)
    out = tmp / f"out_{copies}"
    cmd = [sys.executable, "-c", PROBE, str(ROOT / "prepare_data.py"), "-s", "train", "-f", str(frames_dir),
           "-j", str(split_json), "-o", str(out), "--weights", "none", "--image_size", str(image_size),
           "-bs", str(batch_size), "-nw", str(num_workers)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK_RSS ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"stage failed:\n{proc.stderr[-3000:]}")
    peak = json.loads(line[-1].split(" ", 1)[1])
    meta = json.loads((out / "train.json").read_text())
    n, length, dim = meta["memmap_size"]
    return {"videos": n, "frames": sum(r["video_length"] for r in meta["data"]), "max_len": length,
            "npy_mb": (out / "train.npy").stat().st_size / 2**20, "main_mb": peak["self_kb"] / 1024,
            "workers_mb": peak["children_kb"] / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=1, help="copies of each clip in the small dataset")
    p.add_argument("--large", type=int, default=8, help="copies of each clip in the large dataset")
    p.add_argument("--image_size", type=int, default=112)
    p.add_argument("-nw", "--num_workers", type=int, default=2)
    p.add_argument("-bs", "--batch_size", type=int, default=32)
    p.add_argument("--no_append", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        small = measure(args.small, Path(tmp), args.image_size, args.num_workers, args.batch_size)
        large = measure(args.large, Path(tmp), args.image_size, args.num_workers, args.batch_size)
    ratio = large["main_mb"] / small["main_mb"]
    print(f"peak_rss large/small = {ratio:.3f}  (main {small['main_mb']:.0f} -> {large['main_mb']:.0f} MB for "
          f"{small['videos']} -> {large['videos']} videos, {small['frames']} -> {large['frames']} frames; workers "
          f"{small['workers_mb']:.0f} -> {large['workers_mb']:.0f} MB)")
    if not args.no_append:
        command = " ".join(["python benchmarks/bench_memory.py", *sys.argv[1:]])
        lines = [
            f"\n## Embedding extraction peak memory vs dataset size ({datetime.date.today().isoformat()})\n",
            f"Machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}. "
            f"Command: `{command}` (resnet18, --weights none, --image_size {args.image_size}, -bs {args.batch_size}, "
            f"-nw {args.num_workers})\n",
            "| videos | frames | .npy (MB) | peak RSS main process (MB) | peak RSS largest worker (MB) |",
            "|---|---|---|---|---|",
            *(f"| {r['videos']} | {r['frames']} | {r['npy_mb']:.1f} | {r['main_mb']:.0f} | {r['workers_mb']:.0f} |"
              for r in (small, large)),
            f"\npeak_rss large/small = {ratio:.3f} for {large['videos'] / small['videos']:.0f}x the videos.\n",
        ]
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
