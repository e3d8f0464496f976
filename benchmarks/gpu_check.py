"""GPU check: everything GPU-related measured in one command, for the first machine that has a GPU.

    python benchmarks/gpu_check.py           # CUDA: full sizes, at most 8 minutes on one H100/H200
    python benchmarks/gpu_check.py --tiny    # the same steps at tiny sizes, first backbone only (always so without
                                             # CUDA, on the CPU: tests/test_gpu_check.py runs it so it cannot rot)

No network and no dataset: the videos are generated (make_demo_data.py) and go through stage 1 (prepare_ucf101.py);
everything else runs on generated frames or synthetic tensors. The parts, each with its own time budget (a part
that runs out skips its remaining configurations and says so in the table; a part that fails is reported and the
others still run):

1. stage 2, forward alone: frames/s of each backbone in BACKBONES (resnet18, resnet50; append e.g. vit_b_16 to
   add its rows) at 224 px in fp32, fp16 and bf16, channels_last on and off;
2. stage 2, whole stage: prepare_data.py (in-process, as bench_embed.py: model build, worker start-up, planning,
   decoding, writing) with enough decode workers, per backbone in fp16 and bf16 with its default layout, against
   the forward alone in the same setting (stage/model);
3. stage 3: seconds per epoch on UCF-101-shaped data (9537 videos, bench_train.py's lengths, D=512) for each head
   in fp16 and bf16 with length-grouped batches (main.py's default), fixed padding for bert beside it, and the
   largest batch of the longest videos that a 12-layer bert trains on;
4. end to end: clips/s of e2e_bilstm at 224 px for resnet18 and resnet50 in bf16 with channels_last, with and
   without gradient checkpointing, at the largest batch that fits (doubling from 1);
   ViT-B/16 (timm:vit_base_patch16_224, --weights none: the GPU machine has no network either) in fp16 and bf16 at
   its own input (224 px, its record's layout, NCHW): stage 2's forward alone (frames/s) and one e2e_bilstm
   training step (main.py's: autocast, fp16's GradScaler, clipping) at a fixed batch of clips (s/step, clips/s,
   peak memory); a tiny timm ViT on the CPU;
5. torchrun --nproc_per_node=1 (NCCL on CUDA, gloo on the CPU): one prepare_data.py run and one epoch of main.py;
6. predict.py on a generated video with --attention_plot (the checkpoint of part 5).

Prints one table and appends it to BENCHMARKS.md (or --out) with the device's name; exits 1 if any part failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

import make_demo_data  # noqa: E402
import prepare_data  # noqa: E402
import prepare_ucf101  # noqa: E402
from benchmarks import bench_e2e  # noqa: E402
from benchmarks.bench_embed import time_forward  # noqa: E402
from benchmarks.bench_train import EpochData, plain_optimization, ucf101_like_lengths  # noqa: E402
from models import build_model  # noqa: E402
from models.backbone import build_backbone  # noqa: E402
from models.e2e import build_e2e_model  # noqa: E402
from precision import autocast  # noqa: E402
from utils import setup_logging  # noqa: E402

log = logging.getLogger("actionbert")

# Stage 2 and end-to-end backbones (any name prepare_data.py takes). The hook for more rows: append a name.
BACKBONES = ["resnet18", "resnet50"]
E2E_BACKBONES = ["resnet18", "resnet50"]
# The transformer backbone of part "vit" (fp16 and bf16 only), random weights: timm's ViT-B/16 at its own 224 px.
VIT = "timm:vit_base_patch16_224"
VIT_PRECISIONS = ("fp16", "bf16")
# Heads timed in stage 3 (main.py's names) and their settings: the transformers with bench_train.py's 4 layers.
HEADS: list[tuple[str, dict[str, Any]]] = [("meanpool", {}), ("bilstm", {}), ("bert", {"num_layers": 4}),
                                           ("roberta", {"num_layers": 4})]
PRECISIONS = ("fp32", "fp16", "bf16")
FULL_BUDGET_S = 450.0  # the parts' budgets add up to it: with start-up, within 8 minutes


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the full check on a GPU, or the same steps in miniature."""

    image_size: int
    forward_frames: int  # frames per forward-alone timing
    batch_size: int  # stage 2 frames per forward pass
    decode_workers: int
    backbones: int  # how many of BACKBONES and E2E_BACKBONES run
    demo: list[str]  # make_demo_data.py arguments (videos for stages 1 and 2, torchrun and predict.py)
    stage1_fps: float
    videos: int  # stage 3: UCF-101's 9537
    max_len: int  # stage 3: the longest video (UCF-101's 71 s at 1 fps)
    dim: int
    head_overrides: dict[str, Any]  # stage 3: settings on top of HEADS' (smaller heads for the tiny run)
    train_batch: int
    timed_batches: int  # stage 3: batches timed per epoch (0 = all)
    bert12_batches: tuple[int, int]  # first and last batch tried
    e2e_image_size: int
    e2e_clip_len: int
    e2e_max_batch: int
    e2e_steps: int
    vit: str  # the ViT of part "vit": VIT, or a tiny timm ViT on the CPU
    vit_image_size: int | None  # None: the ViT's own input size
    vit_batch: int  # clips per e2e step
    budgets: dict[str, float] = field(default_factory=dict)  # seconds per part


def full_sizes(cores: int) -> Sizes:
    return Sizes(image_size=224, forward_frames=2048, batch_size=256, decode_workers=max(2, min(cores - 2, 14)),
                 backbones=len(BACKBONES),
                 demo=["--groups", "8", "--clips", "3", "--size", "320x240", "--fps", "8"], stage1_fps=8.0,
                 videos=9537, max_len=71, dim=512, head_overrides={}, train_batch=256, timed_batches=0, bert12_batches=(256, 65536),
                 e2e_image_size=224, e2e_clip_len=8, e2e_max_batch=1024, e2e_steps=2,
                 vit=VIT, vit_image_size=None, vit_batch=16,
                 budgets={"data": 50, "forward": 50, "stage": 70, "epochs": 50, "bert12": 25, "e2e": 90,
                          "vit": 45, "torchrun": 50, "predict": 20})


def tiny_sizes() -> Sizes:
    return Sizes(image_size=32, forward_frames=8, batch_size=4, decode_workers=1, backbones=1,
                 demo=["--groups", "3", "--clips", "1", "--size", "96x72", "--fps", "2", "--min_seconds", "2",
                       "--max_seconds", "3", "--classes", "GrowingDisc", "ShrinkingDisc", "PlainSquare"],
                 stage1_fps=2.0, videos=64, max_len=16, dim=16, head_overrides={"hidden_size": 16, "num_heads": 2},
                 train_batch=8, timed_batches=1, bert12_batches=(2, 4), e2e_image_size=32, e2e_clip_len=2,
                 e2e_max_batch=2, e2e_steps=1, vit="timm:test_vit", vit_image_size=32, vit_batch=2,
                 budgets={"data": 300, "forward": 300, "stage": 300, "epochs": 300, "bert12": 300, "e2e": 300,
                          "vit": 300, "torchrun": 300, "predict": 300})


@dataclass
class Check:
    """The run's device, sizes, working folder, clock and the table it fills."""

    device: torch.device
    sizes: Sizes
    work: Path
    deadline: float
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    part_seconds: dict[str, float] = field(default_factory=dict)
    part_deadline: float = 0.0

    def left(self) -> float:
        return min(self.deadline, self.part_deadline) - time.monotonic()

    def row(self, part: str, setting: str, metric: str, value: str) -> None:
        self.rows.append((part, setting, metric, value))
        print(f"{part} | {setting} | {metric} | {value}", flush=True)

    def out_of_time(self, part: str, setting: str) -> bool:
        if self.left() > 0:
            return False
        self.row(part, setting, "skipped", "time budget spent")
        return True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a CLI of the project; (wall seconds, its output); a failure raises with the output's end."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, timeout),
                          env={**os.environ, **(env or {})})
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        script = next((Path(a).name for a in cmd if a.endswith(".py")), cmd[0])
        raise RuntimeError(f"{script} exited {proc.returncode}: {out[-1500:]}")
    return time.perf_counter() - start, out


# ----------------------------------------------------------------------------------------------- parts


def in_process(module: Any, argv: list[str]) -> None:
    """A stage's main(args) in this process (no interpreter start-up), its logging quiet again afterwards."""
    code = module.main(module.get_args_parser().parse_args(argv))
    logging.getLogger().setLevel(logging.WARNING)
    if code:
        raise RuntimeError(f"{module.__name__}.main exited {code}")


def make_data(c: Check) -> None:
    """Generated videos (UCF-101's 320x240 on a GPU) through stage 1: frames for stage 2, torchrun, predict.py."""
    workers = str(max(1, os.cpu_count() or 1))
    in_process(make_demo_data, ["-o", str(c.work / "demo"), "--workers", workers, *c.sizes.demo])
    in_process(prepare_ucf101, ["-v", str(c.work / "demo" / "videos"), "-o", str(c.work / "prepared"), "--split_dir",
                                str(c.work / "demo" / "splits"), "--split_id", "1", "-fps", str(c.sizes.stage1_fps),
                                "--workers", workers])
    frames = sum(1 for _ in (c.work / "prepared" / "frames").rglob("frame_*.jpg"))
    c.row("data", f"generated videos through stage 1 ({' '.join(c.sizes.demo)})", "frames", str(frames))


def forward_part(c: Check) -> dict[tuple[str, str, bool], float]:
    """Stage 2's forward pass alone: frames/s per backbone, precision and layout."""
    s, fps = c.sizes, {}
    for name in BACKBONES[: s.backbones]:
        model, record = build_backbone(name, "none", seed=0, image_size=s.image_size)
        model = model.to(c.device)
        for precision in PRECISIONS:
            for channels_last in (False, True):
                setting = f"{name} {s.image_size}px {precision} {'channels_last' if channels_last else 'NCHW'} " \
                          f"bs {s.batch_size}"
                if c.out_of_time("stage 2 forward", setting):
                    continue
                model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                seconds = time_forward(model, s.forward_frames, s.batch_size, s.image_size, c.device, precision,
                                       channels_last, (record.mean, record.std))
                fps[(name, precision, channels_last)] = s.forward_frames / seconds
                c.row("stage 2 forward", setting, "frames/s", f"{s.forward_frames / seconds:.1f}")
        del model
        free(c.device)
    return fps


def stage_part(c: Check, forward_fps: dict[tuple[str, str, bool], float]) -> None:
    """prepare_data.py in-process on stage 1's training frames, against the forward alone in the same setting."""
    s = c.sizes
    prepared = c.work / "prepared"
    for name in BACKBONES[: s.backbones]:
        layout = build_backbone(name, "none", seed=0, image_size=s.image_size)[1].channels_last
        for precision in ("fp16", "bf16"):
            setting = f"{name} {s.image_size}px {precision} {'channels_last' if layout else 'NCHW'} (its default) " \
                      f"bs {s.batch_size}, {s.decode_workers} decode workers"
            if c.out_of_time("stage 2 whole stage", setting):
                continue
            out = c.work / f"stage_{name}_{precision}"
            args = prepare_data.get_args_parser().parse_args(
                ["-s", "train", "-f", str(prepared / "frames"), "-j", str(prepared / "train_ucf101.json"),
                 "-o", str(out), "-m", name, "--weights", "none", "--image_size", str(s.image_size),
                 "-bs", str(s.batch_size), "-nw", str(s.decode_workers), "-g", str(c.device.index or 0),
                 "--precision", precision])
            start = time.perf_counter()
            prepare_data.main(args)
            seconds = time.perf_counter() - start
            logging.getLogger().setLevel(logging.WARNING)
            frames = sum(r["video_length"] for r in json.loads((out / "train.json").read_text())["data"])
            (out / "train.npy").unlink()
            stage_fps = frames / seconds
            model_fps = forward_fps.get((name, precision, layout))
            ratio = f" (stage/model {stage_fps / model_fps:.2f})" if model_fps else ""
            c.row("stage 2 whole stage", setting, f"frames/s over {frames} frames", f"{stage_fps:.1f}{ratio}")


def epochs_part(c: Check) -> None:
    """Seconds per epoch of each head on UCF-101-shaped lengths, fp16 and bf16, length-grouped (and fixed for bert)."""
    s = c.sizes
    lengths = ucf101_like_lengths(s.videos, s.max_len, np.random.default_rng(0))
    with EpochData(lengths, s.dim, 101, s.train_batch, ["fixed", "grouped"], s.timed_batches) as data:
        for head, head_kwargs in HEADS:
            kwargs = {**head_kwargs, **s.head_overrides}
            for precision in ("fp16", "bf16"):
                modes = ["grouped", "fixed"] if head == "bert" else ["grouped"]
                for mode in modes:
                    setting = f"{head} {json.dumps(kwargs) if kwargs else '(defaults)'} {precision} {mode}, batch " \
                              f"{s.train_batch}, {s.videos} videos D={s.dim}"
                    if c.out_of_time("stage 3 epoch", setting):
                        continue
                    torch.manual_seed(0)
                    model = build_model(head, input_dim=s.dim, num_classes=101, **kwargs).to(c.device)
                    r = data.time_epoch(model, mode, c.device, precision)
                    scope = "" if r.timed >= r.batches else f" ({r.timed} of {r.batches} batches timed)"
                    c.row("stage 3 epoch", setting, "s / epoch", f"{r.epoch_s:.2f}{scope}")
                    del model
                    free(c.device)


def largest_batch(c: Check, part: str, setting: str, first: int, last: int,
                  try_batch: Callable[[int], float]) -> None:
    """Double the batch from `first` until it does not fit (CUDA out of memory), `last`, or the budget; report the
    largest that fits with its rate (try_batch returns items per second)."""
    best, size = None, first
    while size <= last and c.left() > 0:
        try:
            rate = try_batch(size)
        except torch.cuda.OutOfMemoryError:
            rate = None
        free(c.device)  # after the handler: its traceback held the failed try's tensors
        if rate is None:
            break
        best = (size, rate)
        size *= 2
    if best is None:
        c.row(part, setting, "largest batch", "none fits" if c.left() > 0 else "time budget spent")
        return
    why = "out of memory above it" if size <= last and c.left() > 0 else (
        f"search capped at {last}" if size > last else "time budget spent before the next size")
    c.row(part, setting, "largest batch (items/s)", f"{best[0]} ({best[1]:.1f}/s; {why})")


def bert12_part(c: Check) -> None:
    """The largest batch of videos at UCF-101's longest length (71 frames) that a 12-layer bert trains on: what a
    length-grouped batch of the longest videos needs."""
    s = c.sizes

    def try_batch(size: int) -> float:
        torch.manual_seed(0)
        model = build_model("bert", input_dim=s.dim, num_classes=101, num_layers=12, **s.head_overrides)
        model = model.to(c.device).train()
        opt = plain_optimization(model, c.device, "bf16")
        feats = torch.randn(size, s.max_len, s.dim, device=c.device)
        lengths = torch.full((size,), s.max_len, device=c.device)
        labels = torch.randint(0, 101, (size,), device=c.device)
        times = []
        for _ in range(2):  # the first step allocates optimizer state and picks kernels
            sync(c.device)
            start = time.perf_counter()
            with autocast("bf16", c.device):
                logits = model(feats, lengths)
            opt.step(opt.criterion(logits.float(), labels), model.parameters())
            sync(c.device)
            times.append(time.perf_counter() - start)
        return size / times[-1]

    largest_batch(c, "stage 3 largest batch", f"bert 12 layers {json.dumps(s.head_overrides) if s.head_overrides else '(head defaults)'}, "
                  f"bf16, {s.max_len} frames per video, D={s.dim}", *s.bert12_batches, try_batch)


def e2e_part(c: Check) -> None:
    """End-to-end clips/s at the largest batch, bf16, channels_last, with and without gradient checkpointing."""
    s = c.sizes
    for backbone in E2E_BACKBONES[: s.backbones]:
        first = 1
        for ckpt in (False, True):
            cfg = {"model": "e2e_bilstm", "backbone": backbone, "grad_checkpointing": ckpt, "num_classes": 101,
                   "clip_len": s.e2e_clip_len, "image_size": s.e2e_image_size, "steps": s.e2e_steps}
            setting = f"e2e_bilstm {backbone} {s.e2e_image_size}px bf16 channels_last, {s.e2e_clip_len}-frame " \
                      f"clips, grad checkpointing {'on' if ckpt else 'off'}"
            if c.out_of_time("end to end", setting):
                continue
            found: list[int] = []

            def try_batch(size: int, cfg=cfg, found=found) -> float:
                model = bench_e2e.build(cfg, c.device)
                step = bench_e2e.make_step(model, c.device, "bf16")
                batch = bench_e2e.synthetic_batch(size, cfg["clip_len"], cfg["image_size"], 101, c.device)
                rate, _ = bench_e2e.time_steps(step, batch, cfg["steps"], c.device)
                found.append(size)
                return rate

            largest_batch(c, "end to end", setting, first, s.e2e_max_batch, try_batch)
            first = max(found, default=1)  # checkpointing fits at least the plain model's batch


def vit_part(c: Check) -> None:
    """ViT-B/16 in fp16 and bf16: stage 2's forward alone (frames/s) at its own input and layout, and one e2e
    training step (main.py's Optimization.step under autocast) on a fixed batch of clips."""
    s = c.sizes
    model, record = build_backbone(s.vit, "none", seed=0, image_size=s.vit_image_size)
    size, layout = record.image_size, bool(record.channels_last)
    model = model.to(c.device).to(memory_format=torch.channels_last if layout else torch.contiguous_format)
    where = f"{s.vit} {size}px {'channels_last' if layout else 'NCHW'} (its layout)"
    for precision in VIT_PRECISIONS:
        setting = f"{where} {precision} bs {s.batch_size}"
        if c.out_of_time("ViT-B/16 stage 2 forward", setting):
            continue
        seconds = time_forward(model, s.forward_frames, s.batch_size, size, c.device, precision, layout,
                               (record.mean, record.std))
        c.row("ViT-B/16 stage 2 forward", setting, "frames/s", f"{s.forward_frames / seconds:.1f}")
    del model
    free(c.device)
    for precision in VIT_PRECISIONS:
        setting = f"e2e_bilstm {where} {precision}, {s.vit_batch} clips of {s.e2e_clip_len} frames"
        if c.out_of_time("ViT-B/16 end to end", setting):
            continue
        torch.manual_seed(0)
        e2e = build_e2e_model("e2e_bilstm", num_classes=101, backbone=s.vit, weights="none", image_size=size)
        e2e = e2e.prepare_for_device(c.device).train()
        opt = plain_optimization(e2e, c.device, precision)
        clips, lengths, labels = bench_e2e.synthetic_batch(s.vit_batch, s.e2e_clip_len, size, 101, c.device)

        def step(clips=clips, lengths=lengths, labels=labels, e2e=e2e, opt=opt, precision=precision) -> None:
            with autocast(precision, c.device):
                logits = e2e(clips, lengths)
            opt.step(opt.criterion(logits.float(), labels), e2e.parameters())

        if c.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(c.device)
        rate, _ = bench_e2e.time_steps(step, (clips, lengths, labels), s.e2e_steps, c.device)
        peak = f", peak {torch.cuda.max_memory_allocated(c.device) / 2**30:.1f} GiB" if c.device.type == "cuda" else ""
        c.row("ViT-B/16 end to end", setting, "s / training step (clips/s)",
              f"{s.vit_batch / rate:.3f} ({rate:.1f}/s{peak})")
        del e2e, opt, clips
        free(c.device)


def torchrun_part(c: Check) -> Path:
    """prepare_data.py and one epoch of main.py under torchrun with one process (NCCL on CUDA); returns the run."""
    s, prepared, emb = c.sizes, c.work / "prepared", c.work / "torchrun_emb"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    backend = "cpu:gloo,cuda:nccl" if c.device.type == "cuda" else "gloo"
    stage = ["-f", str(prepared / "frames"), "-o", str(emb), "--weights", "none", "--image_size",
             str(s.image_size), "-bs", str(s.batch_size), "-nw", str(s.decode_workers)]
    seconds, out = run([*torchrun, "prepare_data.py", "-s", "train", "-j", str(prepared / "train_ucf101.json"),
                        *stage], c.left())
    if f"backend {backend}" not in out:
        raise RuntimeError(f"prepare_data.py under torchrun did not join a {backend} process group:\n{out[-1500:]}")
    c.row("torchrun nproc 1", f"prepare_data.py -s train ({backend})", "wall s (start-up included)", f"{seconds:.1f}")
    in_process(prepare_data, ["-s", "val", "-j", str(prepared / "val_ucf101.json"), *stage])
    precision = "bf16" if c.device.type == "cuda" else "fp32"
    seconds, out = run([*torchrun, "main.py", "--mode", "train", "--model", "bert", "--data_dir", str(emb),
                        "--expt_dir", str(c.work / "expts"), "--expt_name", "gpu_check", "--run_name", "bert",
                        "--epochs", "1", "--batch_size", "16", "--num_workers", "2", "--precision", precision,
                        "--num_layers", "2"], c.left())
    if f"backend {backend}" not in out:
        raise RuntimeError(f"main.py under torchrun did not join a {backend} process group:\n{out[-1500:]}")
    c.row("torchrun nproc 1", f"main.py bert 1 epoch {precision} ({backend}, DDP)", "wall s (start-up included)",
          f"{seconds:.1f}")
    return c.work / "expts" / "gpu_check" / "bert"


def predict_part(c: Check, run_dir: Path) -> None:
    video = sorted((c.work / "demo" / "videos").rglob("*.avi"))[0]
    plot = c.work / "attention.png"
    seconds, _ = run([sys.executable, "predict.py", str(video), "--model_ckpt", str(run_dir / "checkpoints" /
                      "best.pth"), "--attention_plot", str(plot), "--json", str(c.work / "predict.json")], c.left())
    if not plot.is_file() or plot.stat().st_size == 0:
        raise RuntimeError(f"predict.py wrote no attention plot {plot}")
    c.row("predict.py", f"{video.name} --attention_plot", "wall s (start-up included)", f"{seconds:.1f}")


# ----------------------------------------------------------------------------------------------- driver


def run_part(c: Check, name: str, fn: Callable[[], Any]) -> Any:
    """One part under its budget; an exception becomes a FAILED row, and the check goes on."""
    start = time.monotonic()
    c.part_deadline = start + c.sizes.budgets[name]
    try:
        return fn()
    except Exception as exc:  # a broken part must not cost the measurements of the others
        c.failed.append(name)
        c.row(name, "FAILED", type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
        traceback.print_exc()
        return None
    finally:
        c.part_seconds[name] = time.monotonic() - start
        print(f"part {name}: {c.part_seconds[name]:.0f} s of its {c.sizes.budgets[name]:.0f} s budget", flush=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or "unknown CPU")
    return f"{cpu} (no CUDA: tiny sizes on the CPU)"


def table(c: Check, tiny: bool, seconds: float) -> str:
    lines = [
        "",
        f"## GPU check on {device_name(c.device)} ({datetime.date.today().isoformat()})",
        "",
        f"`python benchmarks/gpu_check.py{' --tiny' if tiny else ''}`: {'TINY sizes (a smoke run, not a measurement)' if tiny else 'full sizes'}; "
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores, {seconds:.0f} s in all ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in c.part_seconds.items()) + ")"
        + (f"; FAILED parts: {', '.join(c.failed)}" if c.failed else "") + ".",
        "",
        "| part | setting | metric | value |",
        "|---|---|---|---|",
    ]
    lines += [f"| {p} | {s} | {m} | {v} |" for p, s, m, v in c.rows]
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes (always so without CUDA)")
    p.add_argument("--gpu_id", type=int, default=0)
    p.add_argument("--budget_s", type=float, default=None, help=f"whole-check time limit (default {FULL_BUDGET_S:.0f} "
                   "s on a GPU, none for tiny sizes)")
    p.add_argument("--work_dir", default=None, help="keep the generated data and runs here (default: a temporary "
                   "folder, deleted)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="where the table is appended")
    return p


def main(args: argparse.Namespace) -> int:
    setup_logging()
    logging.getLogger("actionbert").setLevel(logging.WARNING)
    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    device = torch.device("cuda", args.gpu_id) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not cuda:
        print("no CUDA device: running every step at tiny sizes on the CPU (a smoke run, not a measurement)")
    sizes = tiny_sizes() if tiny else full_sizes(os.cpu_count() or 1)
    budget = args.budget_s if args.budget_s is not None else (FULL_BUDGET_S if not tiny else 1e9)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        c = Check(device, sizes, work, start + budget)
        run_part(c, "data", lambda: make_data(c))
        fps = run_part(c, "forward", lambda: forward_part(c)) or {}
        run_part(c, "stage", lambda: stage_part(c, fps))
        run_part(c, "epochs", lambda: epochs_part(c))
        run_part(c, "bert12", lambda: bert12_part(c))
        run_part(c, "e2e", lambda: e2e_part(c))
        run_part(c, "vit", lambda: vit_part(c))
        run_dir = run_part(c, "torchrun", lambda: torchrun_part(c))
        if run_dir is not None:
            run_part(c, "predict", lambda: predict_part(c, run_dir))
        else:
            c.row("predict.py", "skipped", "-", "needs part torchrun's checkpoint")
    text = table(c, tiny, time.monotonic() - start)
    print(text)
    with open(args.out, "a", encoding="utf-8") as fh:
        fh.write(text)
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
