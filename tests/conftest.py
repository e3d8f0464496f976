"""Paths and fixtures shared by the tests: the project root, ../shared/data beside it (real clips and official
split files), frames in stage 1's layout cut from those clips, and the `needs_shared_data` and `slow` markers.

Tests that read ../shared/data carry `@pytest.mark.needs_shared_data` (or the module's `pytestmark`); without that
folder they are skipped with one reason, the rest still run. `slow` marks tests that train to a threshold, launch
processes (torchrun, CLIs end to end) or run the demo: `pytest -m "not slow"` is the quick loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
VIDEOS = SHARED_DATA / "videos"
MISSING_SHARED_DATA = f"needs the reference clips and split files in {SHARED_DATA} (see its README.md): not found"


def pytest_configure(config: pytest.Config) -> None:
    """Keep the tests to the cores CI has and off any GPU. A hook, not an import-time line: benchmarks import test
    helpers (bench_embed's frames fixture), and importing them must not hide the GPU the benchmark measures."""
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=MISSING_SHARED_DATA)
    for item in items:
        if item.get_closest_marker("needs_shared_data") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(MISSING_SHARED_DATA)
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


# ----------------------------------------------------------------------------------------------- clip frames

# (video file, frames to keep, label): tree.avi gives a video shorter than a clip of 4.
CLIP_SOURCES = [("carphone_pristine.mp4", 12, 0), ("bikes.mp4", 10, 1), ("tree.avi", 3, 2), ("vtest.avi", 9, 0)]


def write_video_frames(frames_dir: Path, name: str, frames_bgr: list[np.ndarray]) -> None:
    """frames_dir/name/frame_000001.jpg ... as stage 1 writes them (JPEG quality 95)."""
    import cv2

    from layout import frame_path

    (frames_dir / name).mkdir(parents=True)
    for k, img in enumerate(frames_bgr):
        cv2.imwrite(str(frame_path(frames_dir, name, k)), img, [cv2.IMWRITE_JPEG_QUALITY, 95])


def _decode(path: Path, keep: int, shorter: int = 80, max_read: int = 150) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < max_read:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    cap.release()
    assert len(frames) >= keep, path
    picked = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, keep)]
    h, w = picked[0].shape[:2]
    scale = shorter / min(h, w)
    return [cv2.resize(f, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) for f in picked]


@pytest.fixture(scope="session")
def clip_frames(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, list[dict]]:
    """(frames_dir, split entries) cut from the real clips with cv2, 3 classes; read-only for the tests."""
    root = tmp_path_factory.mktemp("clip_frames")
    entries = []
    for file, keep, label in CLIP_SOURCES:
        name = file.split(".")[0]
        write_video_frames(root, name, _decode(shared_data / "videos" / file, keep))
        entries.append({"video_name": name, "label_idx": label, "class_name": f"c{label}"})
    return root, entries


# ----------------------------------------------------------------------------------------------- fuzz corpus


@pytest.fixture(scope="session")
def fuzz_video_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, list[Path], list[str]]:
    """(VIDEO_DIR, damaged files, good videos relative to VIDEO_DIR), built once and read-only for the tests:
    `Bad/` holds tests/fuzz_corpus.py's seeded damaged files plus one whole clip (`Bad/fine.mp4`), `Good/` two
    whole clips; corpus sources and probes sit in a hidden folder, which no stage reads."""
    from tests import fuzz_corpus

    root = tmp_path_factory.mktemp("fuzz") / "videos"
    bad = fuzz_corpus.make_corpus(root)
    good = ["Good/g0.mp4", "Good/g1.mp4", "Bad/fine.mp4"]
    for rel in good:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(shared_data / "videos" / "carphone_pristine.mp4", root / rel)
    return root, bad, good


# ----------------------------------------------------------------------------------------------- tiny backbones


@pytest.fixture(scope="session")
def tiny_hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny Hugging Face vision encoders (random weights from small configs, 32 px, patch 8, 2 layers of width 32)
    saved with their image processor config, as `hf:DIR` backbones work offline: CLIP with its projection (24-d),
    DINOv2 (shortest edge 36, centre crop 32) and SigLIP (squashed to 32x32, mean/std 0.5)."""
    import torch
    from transformers import (
        BitImageProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    root = tmp_path_factory.mktemp("hf_models")
    size = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "patch_size": 8, "image_size": 32}
    crop = {"height": 32, "width": 32}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        models = {
            "clip": (CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=24, **size)),
                     CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop)),
            "dinov2": (Dinov2Model(Dinov2Config(**size)),
                       BitImageProcessor(size={"shortest_edge": 36}, crop_size=crop, do_center_crop=True,
                                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])),
            "siglip": (SiglipVisionModel(SiglipVisionConfig(**size)), SiglipImageProcessor(size=crop)),
        }
    for name, (model, processor) in models.items():
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    return {name: root / name for name in models}
