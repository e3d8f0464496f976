"""Trainable parameters of every head at the sizes of a recipe: the matched-budget table of the README.

    python benchmarks/head_budget.py                          # the README's recipe at D=512 (resnet18), 101 classes
    python benchmarks/head_budget.py --dim 768 --num_classes 51

Each recipe line is the main.py flags of one head; the head is built exactly as main.py builds it (models.build_model
with the same keyword names), so the count is what a run's checkpoint records as num_params. Prints a markdown table
of flags, parameters and the ratio to the recipe's median.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model  # noqa: E402

# head -> main.py flags; sizes chosen so that the heads hold ~0.4M trainable parameters at D=512 and 101 classes
# (meanpool has no size: its count is D * classes + classes whatever the flags)
RECIPE = {
    "meanpool": "",
    "concat_linear": "--num_frames 8",
    "attnpool": "--hidden_size 256 --num_heads 4 --num_layers 1",
    "attnpool (deep)": "--hidden_size 144 --num_heads 4 --num_layers 2",
    "bilstm": "--hidden_size 80",
    "gru": "--hidden_size 104",
    "tcn": "--hidden_size 160 --num_layers 4",
    "trn": "--hidden_size 112 --num_frames 6",
    "bert": "--hidden_size 112 --num_layers 2 --num_heads 4",
    "roberta": "--hidden_size 112 --num_layers 2 --num_heads 4",
}
FLAGS = {"--hidden_size": ("hidden_size", int), "--num_layers": ("num_layers", int), "--num_heads": ("num_heads", int),
         "--num_frames": ("num_frames", int), "--kernel_size": ("kernel_size", int),
         "--subsets_per_scale": ("subsets_per_scale", int), "--intermediate_size": ("intermediate_size", int),
         "--positions": ("positions", str)}


def head_kwargs(flags: str) -> dict[str, object]:
    words = shlex.split(flags)
    if len(words) % 2:
        raise SystemExit(f"flags must come as '--name value' pairs, got {flags!r}")
    kwargs = {}
    for flag, value in zip(words[::2], words[1::2], strict=True):
        if flag not in FLAGS:
            raise SystemExit(f"unknown head flag {flag} (known: {', '.join(FLAGS)})")
        key, kind = FLAGS[flag]
        kwargs[key] = kind(value)
    return kwargs


def trainable(name: str, dim: int, num_classes: int, flags: str) -> int:
    model = build_model(name.split(" ")[0], dim, num_classes, **head_kwargs(flags))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main(args: argparse.Namespace) -> int:
    counts = {name: trainable(name, args.dim, args.num_classes, flags) for name, flags in RECIPE.items()}
    median = statistics.median(v for k, v in counts.items() if k != "meanpool")
    print(f"Command: `python benchmarks/head_budget.py --dim {args.dim} --num_classes {args.num_classes}`\n")
    print("| head | flags | trainable parameters | / median |")
    print("|---|---|---|---|")
    for name, flags in RECIPE.items():
        print(f"| {name} | `{flags or '(none)'}` | {counts[name]:,} | {counts[name] / median:.2f} |")
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512, help="frame embedding size D (resnet18: 512)")
    p.add_argument("--num_classes", type=int, default=101)
    return p


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
