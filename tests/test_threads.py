"""The CPU thread policy (threads.py)."""

from __future__ import annotations

import torch

from threads import default_threads, set_default_threads


def test_an_explicit_omp_num_threads_wins_over_the_default(monkeypatch):
    """predict.py and prepare_data.py size torch's thread pool by the cores and ranks, but a job script's
    OMP_NUM_THREADS (a shared node, or torchrun's 1 per rank) is what the user asked for."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        set_default_threads()
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        set_default_threads()
        assert torch.get_num_threads() == default_threads()
    finally:
        torch.set_num_threads(before)
