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
