"""benchmarks/gpu_check.py, the one command for the first GPU, runs every part at tiny sizes on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PARTS = ("data", "stage 2 forward", "stage 2 whole stage", "stage 3 epoch", "stage 3 largest batch", "end to end",
         "ViT-B/16 stage 2 forward", "ViT-B/16 end to end", "torchrun nproc 1", "predict.py")


@pytest.mark.slow
def test_gpu_check_runs_every_part_at_tiny_sizes_without_cuda(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    # PYTHONPATH: the checkout importable in the child as pytest's pythonpath makes it here, whether or not this
    # venv has the project installed (`make venv` does: `pip install -e .`).
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(out), "--work_dir",
                           str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "no CUDA device: running every step at tiny sizes on the CPU" in proc.stdout
    table = out.read_text()
    assert "## GPU check on" in table and "no CUDA: tiny sizes on the CPU" in table and "TINY sizes" in table
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert {r[0].removeprefix("| ") for r in rows} == set(PARTS)
    assert not any("FAILED" in line or "skipped" in line for line in table.splitlines())
    stage3 = [r for r in rows if r[0] == "| stage 3 epoch"]
    assert len(stage3) == 10  # 4 heads x fp16/bf16, plus bert with fixed padding in both
    vit = [r for r in rows if r[0].startswith("| ViT-B/16")]  # a tiny timm ViT stands in on the CPU
    assert len(vit) == 4 and all("timm:test_vit 32px NCHW" in r[1] for r in vit)
    assert sorted((r[0], next(p for p in ("fp16", "bf16") if f" {p}" in r[1])) for r in vit) == sorted(
        (f"| ViT-B/16 {what}", p) for what in ("stage 2 forward", "end to end") for p in ("fp16", "bf16"))
    assert all(float(r[3].split(" ")[0]) > 0 for r in vit)
    assert any("gloo, DDP" in r[1] for r in rows)  # main.py under torchrun joined a process group
    assert (tmp_path / "work" / "attention.png").stat().st_size > 0


def test_full_check_fits_in_eight_minutes():
    """Issue 13: at most 8 minutes on one GPU. Each part stops at its own budget, so the budgets must add up to the
    whole check's limit, and that limit must leave room for the interpreter's start-up and a configuration that
    runs past its part's deadline."""
    from benchmarks import gpu_check
    budgets = gpu_check.full_sizes(16).budgets
    assert sum(budgets.values()) <= gpu_check.FULL_BUDGET_S <= 8 * 60 - 20
