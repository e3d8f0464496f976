"""Cost per frame of the recommended backbones relative to resnet18: the README's "relative cost" column.

    python benchmarks/bench_backbones.py [-m timm:vit_base_patch16_clip_224.openai ...] [-bs 8] [--repeats 5]
                                         [--image_size N] [--device cpu|cuda] [--no_append]

Each backbone is built with --weights none (nothing is downloaded; the architecture decides the cost) at its own
input size from its record (DINOv2's is 518 px) unless --image_size is given, in the memory layout stage 2 runs it
in (its record's: channels_last for resnet18), and its forward pass alone (inference mode, fp32 on the CPU, bf16
autocast on CUDA) is timed on a batch of random frames: one warm-up, then the fastest
of --repeats runs counts. Prints ms/frame and the ratio to resnet18 per backbone, and appends the table to
BENCHMARKS.md with the machine (unless --no_append). Run it on a quiet machine: the ratio is what the README keeps.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.bench_embed import cpu_model  # noqa: E402
from models.backbone import build_backbone, embed_batch  # noqa: E402
from precision import resolve_precision  # noqa: E402
from transforms import normalize_batch  # noqa: E402

BASELINE = "resnet18"
# The README's table of recommended backbones, in its order.
RECOMMENDED = (
    "resnet50",
    "timm:convnext_tiny.in12k_ft_in1k",
    "timm:vit_small_patch16_224.augreg_in21k_ft_in1k",
    "timm:vit_base_patch16_clip_224.openai",
    "timm:vit_base_patch16_siglip_224.webli",
    "timm:vit_small_patch14_dinov2.lvd142m",
    "timm:vit_base_patch14_dinov2.lvd142m",
)


def time_backbone(name: str, batch_size: int, repeats: int, image_size: int | None, device: torch.device,
                  precision: str) -> tuple[float, int, int]:
    """(seconds per frame, D, input size) of the forward pass alone, fastest of `repeats` batches."""
    model, record = build_backbone(name, "none", seed=0, image_size=image_size)
    layout = torch.channels_last if record.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=layout)
    size = record.image_size
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    xn = normalize_batch(x, device, record.mean, record.std, bool(record.channels_last))
    embed_batch(model, xn, precision)  # warm-up: allocator, kernel choice
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        embed_batch(model, xn, precision).cpu()
        best = min(best, time.perf_counter() - t0)
    return best / batch_size, int(record.dim), size


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", action="append", default=None, help="backbone to time (repeatable; default: "
                   "the README's recommended list); resnet18 is always timed first as the reference")
    p.add_argument("-bs", "--batch_size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--image_size", type=int, default=None, help="one size for all (default: each backbone's own)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no_append", action="store_true", help="do not append to BENCHMARKS.md")
    return p


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    precision = resolve_precision("auto" if device.type == "cuda" else "fp32", device)
    names = [BASELINE, *[m for m in (args.model or RECOMMENDED) if m != BASELINE]]
    rows = []
    for name in names:
        per_frame, dim, size = time_backbone(name, args.batch_size, args.repeats, args.image_size, device, precision)
        rows.append((name, dim, size, per_frame))
        print(f"{name}: D={dim}, {size}px, {per_frame * 1e3:.2f} ms/frame, {per_frame / rows[0][3]:.2f}x resnet18",
              flush=True)
    if not args.no_append:
        machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
        command = " ".join(["python benchmarks/bench_backbones.py", *sys.argv[1:]])
        lines = [f"\n## Backbone cost per frame relative to resnet18 ({datetime.date.today().isoformat()})\n",
                 f"Machine: {machine}, {len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} torch threads, "
                 f"torch {torch.__version__}, {precision}, batch {args.batch_size}, fastest of {args.repeats}. "
                 f"Command: `{command}`\n",
                 "| backbone | D | input | ms/frame | relative to resnet18 |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {d} | {s} | {t * 1e3:.2f} | {t / rows[0][3]:.2f} |" for n, d, s, t in rows]
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
