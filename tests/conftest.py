"""Paths shared by the tests: the project root and ../shared/data beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
VIDEOS = SHARED_DATA / "videos"

# Keep the tests to the cores CI has and off any GPU.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"reference data missing: {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine run several times faster on one torch thread than on two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
