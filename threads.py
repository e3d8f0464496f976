"""CPU thread policy shared by the stages that run torch on the CPU (prepare_data.py, predict.py)."""

from __future__ import annotations

import os

import torch


def default_threads(local_world_size: int = 1) -> int:
    """torch threads per process so that K ranks on one machine do not oversubscribe its cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


def set_default_threads(local_world_size: int = 1) -> None:
    """Give torch `default_threads` unless the user set OMP_NUM_THREADS (an explicit setting wins: a shared
    node's job script, or torchrun, which sets 1 per rank when it starts several)."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(default_threads(local_world_size))
