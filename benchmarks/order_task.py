"""How fast does each head learn frame order, and at what cost? Val accuracy per epoch on a synthetic order task,
through main.py, with each run's parameter count and training seconds per epoch.

`--task pairs` (tests/synthetic.py's make_order_task): classes come in pairs that hold the same frames in opposite
order, so a head that ignores order is at 0.50 (chance within a pair, the pair itself is easy) and one that uses
order reaches 1.00. Defaults: 960 training and 240 validation videos of 8-24 frames, 4 pairs (8 classes), D=64.
`--task local_swap` (make_local_swap_task) is harder: the two classes of a pair differ only in the order of the
two middle segments of six, each video at its own speed (every segment 1-6 frames long), with more noise; the
multiset of frames is the same in both, so again 0.50 is the order-blind ceiling.
`--task random_swap` (make_random_swap_task) is harder again: eight prototypes, the odd class of a pair swaps two
neighbours at a position drawn per video, and each prototype is held for its own 1-4 frames, so the speed changes
within a video and no fixed slot lines up with the swap (local_swap's swap always sat at the same relative
position, which concat_linear's uniform resampling lined up). Same multiset of frames in both classes.
`--models all` runs every registered head; the table gives each head's val top-1 per epoch, the first epoch at
>= 0.9, its trainable parameters and its mean training seconds per epoch.
Every run trains through main.py's own code (argument parsing, data loading from a .npy memmap, the optimiser,
warm-up and cosine schedule, evaluation), so what it measures is what a user of main.py gets.

    python benchmarks/order_task.py --models bert roberta bilstm --epochs 4 --seeds 0 1 2
    python benchmarks/order_task.py --models bert --epochs 15 -- --no-group_by_length   # extra main.py flags after --
    python benchmarks/order_task.py --models bert roberta --epochs 4 --frame_norm off   # the heads before the fix

`--frame_norm off` builds bert/roberta as they were before their frame tokens were layer-normalised (the plain
projection, `frame_norm=False`: what a checkpoint from before the fix rebuilds to), to reproduce the old curves with
today's main.py; main.py itself has no such flag.

Prints one line per run (val top-1 after each epoch) and a markdown table; `--out FILE` appends the table.
Accuracy only: the numbers do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import logging
import runpy
import shlex
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's modules, not those of another one the environment was installed from

import routes  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402
from models import head_class, head_names  # noqa: E402
from tests.synthetic import (  # noqa: E402
    make_local_swap_task,
    make_order_task,
    make_random_swap_task,
    write_embedding_split,
)

log = logging.getLogger("actionbert.order_task")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["bert", "roberta", "bilstm"], help="heads, or 'all' (every "
                   "registered head)")
    p.add_argument("--task", choices=("pairs", "local_swap", "random_swap"), default="pairs", help="see above")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="main.py --seed of each run")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--hidden_size", type=int, default=256)
    p.add_argument("--num_heads", type=int, default=4)
    p.add_argument("--num_train", type=int, default=960)
    p.add_argument("--num_val", type=int, default=240)
    p.add_argument("--num_pairs", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="frame embedding size D")
    p.add_argument("--min_len", type=int, default=8)
    p.add_argument("--max_len", type=int, default=24)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--frame_norm", choices=("on", "off"), default="on", help="off: bert/roberta without the frame "
                   "LayerNorm (the head before the fix, for the 'before' curves)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny models run best on one)")
    p.add_argument("--work_dir", default=None, help="where data and runs go (default: a temporary folder)")
    p.add_argument("--out", default=None, help="append the table to this markdown file")
    p.add_argument("extra", nargs="*", help="more main.py flags, after `--` (e.g. -- --group_by_length)")
    return p


def write_task(folder: Path, args: argparse.Namespace) -> None:
    """train.npy/json and val.npy/json in stage 2's format; the classes (prototypes) are the same in both."""
    if args.task == "pairs":
        make = functools.partial(make_order_task, num_pairs=args.num_pairs, dim=args.dim, min_len=args.min_len,
                                 max_len=args.max_len, noise=args.noise)
    elif args.task == "local_swap":
        make = functools.partial(make_local_swap_task, num_pairs=args.num_pairs, dim=args.dim,
                                 noise=max(args.noise, 0.5))
    else:
        make = functools.partial(make_random_swap_task, num_pairs=args.num_pairs, dim=args.dim,
                                 noise=max(args.noise, 0.5))
    for split, n, seed in (("train", args.num_train, 0), ("val", args.num_val, 1)):
        videos, labels = make(n, seed=seed)
        write_embedding_split(folder, split, videos, labels)


def run_argv(args: argparse.Namespace, data_dir: Path, expt_dir: Path, model: str, seed: int) -> list[str]:
    """The main.py command line of one run."""
    return ["--mode", "train", "--model", model, "--data_dir", str(data_dir), "--expt_dir", str(expt_dir),
            "--expt_name", "order", "--run_name", f"{model}_s{seed}", "--resume", "none",
            "--epochs", str(args.epochs), "--batch_size", str(args.batch_size), "--lr", str(args.lr),
            "--num_layers", str(args.num_layers), "--hidden_size", str(args.hidden_size),
            "--num_heads", str(args.num_heads), "--seed", str(seed), "--gpu_id", "0", "--num_workers", "0",
            "--opt_lvl", "0", "--save_interval", "0", *args.extra]


@contextlib.contextmanager
def frame_norm_setting(enabled: bool):
    """While active, main.py builds bert/roberta with `frame_norm=enabled` (recorded in their checkpoints' config)."""
    if enabled:
        yield
        return
    build = routes.build_model

    def build_without(name: str, *a, **config):
        if head_class(name).has_positions:
            config["frame_norm"] = False
        return build(name, *a, **config)

    routes.build_model = functools.wraps(build)(build_without)
    try:
        yield
    finally:
        routes.build_model = build


def run_main_py(argv: list[str]) -> int:
    """main.py as its command line runs it (`runpy`, in this process so `frame_norm_setting` applies): its exit
    status."""
    saved = sys.argv
    sys.argv = [str(ROOT / "main.py"), *argv]
    try:
        runpy.run_path(str(ROOT / "main.py"), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        sys.argv = saved
    return 0


def val_curve(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [float(json.loads(line)["val_top1"]) for line in lines if line.strip()]


def run_cost(run_dir: Path) -> tuple[int, float]:
    """(trainable parameters, mean training seconds per epoch) of a finished run."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    params = int(load_checkpoint(run_dir / "checkpoints" / "last.pth").get("num_params") or 0)
    return params, sum(r["epoch_time_s"] for r in records) / max(len(records), 1)


def first_epoch_at(curve: list[float], threshold: float = 0.9) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= threshold), None)


def format_table(results: list[tuple[str, int, list[float], tuple[int, float]]], command: str) -> str:
    epochs = max(len(c) for _, _, c, _ in results)
    lines = [f"Command: `{command}`", "",
             "| head | seed | " + " | ".join(f"ep {e}" for e in range(1, epochs + 1))
             + " | first epoch >= 0.9 | params | s/epoch |",
             "|---|---|" + "---|" * (epochs + 3)]
    for model, seed, curve, (params, seconds) in results:
        first = first_epoch_at(curve)
        lines.append(f"| {model} | {seed} | " + " | ".join(f"{v:.3f}" for v in curve)
                     + f" | {first if first is not None else 'never'} | {params:,} | {seconds:.2f} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    logging.getLogger("actionbert").setLevel(logging.WARNING)  # main.py's per-epoch lines; the curves say it all
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        data_dir, expt_dir = work / "data", work / "expts"
        write_task(data_dir, args)
        results = []
        models = list(head_names()) if args.models == ["all"] else args.models
        for model in models:
            for seed in args.seeds:
                argv = run_argv(args, data_dir, expt_dir, model, seed)
                log.warning("main.py %s", shlex.join(argv))
                with frame_norm_setting(args.frame_norm == "on"):
                    status = run_main_py(argv)
                if status != 0:
                    raise SystemExit(f"main.py {shlex.join(argv)} failed with status {status}")
                curve = val_curve(expt_dir / "order" / f"{model}_s{seed}")
                results.append((model, seed, curve, run_cost(expt_dir / "order" / f"{model}_s{seed}")))
                print(f"{model} seed {seed}: val top-1 per epoch " + " ".join(f"{v:.3f}" for v in curve), flush=True)
    command = shlex.join(["python", "benchmarks/order_task.py", *sys.argv[1:]])
    table = format_table(results, command)
    print(table, end="")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(f"\n## Order task ({args.task}): val top-1 per epoch ({datetime.date.today()})\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
