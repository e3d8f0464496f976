"""Does storing embeddings as float16 cost accuracy? The demo's heads trained on float32 and on float16 embeddings of
the same frames, several seeds each, compared video by video with compare_runs.py's paired test.

    python benchmarks/dtype_accuracy.py --prepared demo/prepared --seeds 0 1 2

`--prepared` is stage 1's output folder of the demo (`make demo` leaves it at demo/prepared); stage 2 is run here
twice (`--dtype float32` and `--dtype float16`, otherwise the demo's command), then every head of `--heads` with
the demo's recipe on each, then `compare_runs.py --pair <head>_float16 <head>_float32` per head. Prints one line per
head (difference, 95% CI, intersection-union p, t-test p) and a markdown table; `--out FILE` appends the table.
Accuracy only: the numbers do not depend on the machine's load. Every step resumes (stage 2 and main.py do).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_TRAIN = ["--batch_size", "16", "--lr", "1e-3", "--hidden_size", "128", "--num_layers", "2", "--num_heads", "4",
              "--dropout", "0.1", "--weight_decay", "0.01", "--gpu_id", "0", "--num_workers", "0", "--opt_lvl", "0"]
EPOCHS = {"meanpool": 20, "attnpool": 20, "bilstm": 20, "bert": 10, "roberta": 10}  # the Makefile's demo


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", required=True, help="stage 1's output of the demo (frames/, *_ucf101.json)")
    p.add_argument("--work_dir", default=".bench_work/dtype", help="embeddings and runs go here")
    p.add_argument("--heads", nargs="+", default=list(EPOCHS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--out", default=None, help="append the table to this markdown file")
    return p


def run(*cmd: object) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    argv = [sys.executable, *map(str, cmd)]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main(args: argparse.Namespace) -> int:
    prepared, work = Path(args.prepared), Path(args.work_dir)
    expts = work / "expts"
    for dtype in ("float32", "float16"):
        for split in ("train", "val", "test"):
            run("prepare_data.py", "-s", split, "-f", prepared / "frames", "-j", prepared / f"{split}_ucf101.json",
                "-o", work / f"emb_{dtype}", "-m", "resnet18", "--weights", "none", "--image_size", args.image_size,
                "-g", 0, "-nw", 0, "--dtype", dtype)
        for head in args.heads:
            for seed in args.seeds:
                name = f"{head}_{dtype}_s{seed}"
                common = ["--expt_dir", expts, "--expt_name", "dtype", "--run_name", name,
                          "--data_dir", work / f"emb_{dtype}", "--seed", seed]
                run("main.py", "--mode", "train", "--model", head, "--epochs", EPOCHS.get(head, 10), *DEMO_TRAIN,
                    *common)
                run("main.py", "--mode", "test", "--split", "test", "--gpu_id", 0, "--num_workers", 0, *common,
                    "--model_ckpt", expts / "dtype" / name / "checkpoints" / "best.pth")
                print(f"{name} done", flush=True)
    rows = []
    for head in args.heads:
        out = run("compare_runs.py", expts / "dtype", "--pair", f"{head}_float16", f"{head}_float32")
        top = re.search(r"top-1 ([\d.]+) vs ([\d.]+): difference ([+-][\d.]+) \(95% CI ([+-][\d.]+) to ([+-][\d.]+)",
                        out)
        iu = re.search(r"intersection-union p = (\S+):", out) or re.search(r"exact McNemar p = (\S+)", out)
        t = re.search(r"run pairs: p = (\S+)", out)
        rows.append((head, *top.groups(), iu.group(1), t.group(1) if t else "-"))
        print(out, flush=True)
    command = shlex.join(["python", "benchmarks/dtype_accuracy.py", *sys.argv[1:]])
    lines = [f"Command: `{command}` (seeds {' '.join(map(str, args.seeds))})", "",
             "| head | top-1 float16 | top-1 float32 | difference (95% CI) | p (IU) | p mean (t) |", "|---|---|---|---|---|---|"]
    lines += [f"| {h} | {a} | {b} | {d} ({lo} to {hi}) | {p} | {q} |" for h, a, b, d, lo, hi, p, q in rows]
    table = "\n".join(lines) + "\n"
    print(table, end="")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(f"\n## Embeddings stored as float16 vs float32 ({datetime.date.today()})\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
