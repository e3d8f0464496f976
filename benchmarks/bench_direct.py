"""Embeddings straight from videos (prepare_data.py --videos_dir) against stage 1 + stage 2 on the same files: frames
per second of each route as a user runs it (every command a fresh process, start-up included), how far the rows
differ, and whether a head's predictions change.

    .venv/bin/python benchmarks/bench_direct.py [--demo_args "--groups 3 --clips 1 --test_groups 1"] [-nw 2] [-bs 32]

The videos are make_demo_data.py's (the Makefile's demo target, fewer groups by default so that it runs in minutes),
sampled at 1 fps, embedded by a random resnet18 (--weights none) at the demo's 64 px. Routes: `two-stage`
(prepare_ucf101.py, then prepare_data.py once per split), `direct` (--videos_dir, through JPEG at stage 1's
quality in memory) and `direct raw` (--jpeg_quality 0: the decoded pixels). Differences are taken against the
two-stage rows: max and mean |diff| over real (unpadded) rows, and relative to the rows' own max and mean |x|.
Predictions: a nearest-centroid head over standardised, mean-pooled train embeddings of the two-stage route,
applied to each route's test rows; the count of test videos whose top-1 changes. Prints
`direct/two-stage = R` and appends a table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")


def run(*args: str | Path) -> float:
    """Wall seconds of one command, a fresh interpreter as a user starts it."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def rows(folder: Path, split: str) -> tuple[np.ndarray, list[dict]] | None:
    if not (folder / f"{split}.json").is_file():
        return None
    meta = json.loads((folder / f"{split}.json").read_text())
    return np.load(folder / f"{split}.npy"), meta["data"]


def real_rows(arr: np.ndarray, data: list[dict]) -> np.ndarray:
    return np.concatenate([arr[r["video_idx"], : r["video_length"]] for r in data])


def pooled(arr: np.ndarray, data: list[dict]) -> np.ndarray:
    return np.stack([arr[r["video_idx"], : r["video_length"]].mean(0) for r in data])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo_args", default="--groups 3 --clips 1 --test_groups 1", help="make_demo_data.py flags")
    p.add_argument("-nw", "--num_workers", type=int, default=2, help="decode processes of every route")
    p.add_argument("-bs", "--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--work_dir", default=None, help="keep the outputs here (default: a temporary folder)")
    p.add_argument("--no_append", action="store_true", help="do not append to BENCHMARKS.md")
    args = p.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_direct_"))
    data = work / "data"
    run("make_demo_data.py", "-o", data, *shlex.split(args.demo_args))
    videos, ann = data / "videos", data / "splits"
    emb = ["-m", "resnet18", "--weights", "none", "--image_size", str(args.image_size), "-bs", str(args.batch_size),
           "-g", "0"]
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

    t1 = run("prepare_ucf101.py", "-v", videos, "-o", work / "prepared", "--split_dir", ann, "-fps", "1",
             "--workers", str(args.num_workers))
    t2 = 0.0
    for s in SPLITS:
        split_json = work / "prepared" / f"{s}_ucf101.json"
        if json.loads(split_json.read_text()):
            t2 += run("prepare_data.py", "-s", s, "-f", work / "prepared" / "frames", "-j", split_json,
                      "-o", work / "two_stage", "-nw", str(args.num_workers), *emb)
    direct_args = ["prepare_data.py", "--videos_dir", videos, "--split_dir", ann, "-fps", "1",
                   "-nw", str(args.num_workers), *emb]
    t_direct = run(*direct_args, "-o", work / "direct")
    t_raw = run(*direct_args, "-o", work / "direct_raw", "--jpeg_quality", "0")

    manifest = json.loads((work / "prepared" / "frames" / "manifest.json").read_text())
    frames = sum(v["num_frames"] for v in manifest["videos"].values())
    two = {s: r for s in SPLITS if (r := rows(work / "two_stage", s)) is not None}
    table = []
    for name, folder in (("direct", work / "direct"), ("direct raw", work / "direct_raw")):
        ref = np.concatenate([real_rows(*two[s]) for s in two])
        got = np.concatenate([real_rows(*rows(folder, s)) for s in two])
        diff = np.abs(ref - got)
        table.append((name, diff.max(), diff.mean(), diff.max() / np.abs(ref).max(),
                      diff.mean() / np.abs(ref).mean(), bool(np.array_equal(ref, got))))
    train = pooled(*two["train"])
    mean, std = train.mean(0), train.std(0) + 1e-6
    labels = np.array([r["label_idx"] for r in two["train"][1]])
    centroids = np.stack([((train - mean) / std)[labels == c].mean(0) for c in np.unique(labels)])
    classes = np.unique(labels)

    def predict(folder: Path) -> np.ndarray:
        x = (pooled(*rows(folder, "test")) - mean) / std
        return classes[np.argmin(((x[:, None] - centroids[None]) ** 2).sum(-1), 1)]

    base = predict(work / "two_stage")
    truth = np.array([r["label_idx"] for r in two["test"][1]])
    changed = {name: int((predict(folder) != base).sum())
               for name, folder in (("direct", work / "direct"), ("direct raw", work / "direct_raw"))}

    fps = {"two-stage": frames / (t1 + t2), "direct": frames / t_direct, "direct raw": frames / t_raw}
    print(f"direct/two-stage = {fps['direct'] / fps['two-stage']:.2f} (frames/s {fps['direct']:.1f} vs "
          f"{fps['two-stage']:.1f}; raw {fps['direct raw']:.1f})")
    cmd = "python benchmarks/bench_direct.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "",
        f"## Embeddings straight from videos vs stage 1 + stage 2 ({datetime.date.today()})",
        "",
        f"`{cmd}` on {platform.machine()} with {os.cpu_count()} cores, shared with other jobs (not quiet); "
        f"{len(manifest['videos'])} demo videos ({frames} frames at 1 fps), resnet18 --weights none at "
        f"{args.image_size} px, -bs {args.batch_size}, -nw {args.num_workers}; each command a fresh process.",
        "",
        "| route | wall s | frames/s | vs two-stage |",
        "|---|---|---|---|",
        f"| stage 1 + stage 2 | {t1:.1f} + {t2:.1f} | {fps['two-stage']:.1f} | 1.00 |",
        f"| direct (JPEG in memory) | {t_direct:.1f} | {fps['direct']:.1f} | {fps['direct'] / fps['two-stage']:.2f} |",
        f"| direct raw (--jpeg_quality 0) | {t_raw:.1f} | {fps['direct raw']:.1f} | "
        f"{fps['direct raw'] / fps['two-stage']:.2f} |",
        "",
        "| route vs two-stage rows | max abs | mean abs | max / max abs x | mean / mean abs x | equal | test top-1 "
        f"changed (of {len(base)}) |",
        "|---|---|---|---|---|---|---|",
        *(f"| {n} | {mx:.3g} | {mn:.3g} | {rmx:.4f} | {rmn:.4f} | {eq} | {changed[n]} |"
          for n, mx, mn, rmx, rmn, eq in table),
        "",
        f"Nearest-centroid head (standardised mean-pooled two-stage train rows): test top-1 {np.mean(base == truth):.3f} "
        "on the two-stage rows.",
    ]
    if not args.no_append:
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
