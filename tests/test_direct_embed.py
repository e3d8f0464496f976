"""prepare_data.py --videos_dir: equal to stage 1 + stage 2 (exactly through JPEG, within a stated tolerance on
raw pixels), one bad video fails only itself, a rerun resumes with the same bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import prepare_data as pd
from tests.conftest import ROOT
from utils import BadInputError

# The raw-pixel route differs from the JPEG one by JPEG's loss (and stage 1's resizing in YUV before encoding). At
# this test's sizes (48 px demo videos, 32 px input, random resnet18) its mean |diff| measured 3.1% of the features'
# mean magnitude and its max 3.2% of their max; on the demo at 112 px and 64 px input, 1.5% and 5.6% (BENCHMARKS.md).
# About twice that is allowed.
RAW_MEAN_TOL, RAW_MAX_TOL = 0.06, 0.08
COMMON = ["-m", "resnet18", "--weights", "none", "--image_size", "32", "-bs", "1"]


def cli(script: str, *args: str | Path, check: int = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert proc.returncode == check, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("direct")
    cli("make_demo_data.py", "-o", root / "data", "--groups", "2", "--clips", "1", "--test_groups", "1", "--classes",
        "GrowingDisc", "ShrinkingDisc", "Triangle", "--size", "48", "--max_seconds", "5")
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def direct(demo: Path, out: Path, *extra: str, check: int = 0, env: dict[str, str] | None = None):
    return cli("prepare_data.py", "--videos_dir", demo / "data" / "videos", "--split_dir", demo / "data" / "splits",
               "-fps", "1", "-o", out, "-nw", "2", *COMMON, *extra, check=check, env=env)


@pytest.mark.slow  # runs stages 1 and 2 and the direct route
def test_direct_route_equals_stage_1_plus_stage_2(demo):
    prepared, emb = demo / "prepared", demo / "emb"
    cli("prepare_ucf101.py", "-v", demo / "data" / "videos", "-o", prepared, "--split_dir", demo / "data" / "splits",
        "-fps", "1", "--workers", "2")
    splits = [s for s in ("train", "val", "test") if json.loads((prepared / f"{s}_ucf101.json").read_text())]
    for s in splits:
        cli("prepare_data.py", "-s", s, "-f", prepared / "frames", "-j", prepared / f"{s}_ucf101.json", "-o", emb,
            "-nw", "0", *COMMON)
    out = demo / "direct"
    direct(demo, out)
    for name in (*(f"{s}_ucf101.json" for s in ("train", "val", "test")), "classInd.txt", "failed_videos.json"):
        assert (out / name).read_bytes() == (prepared / name).read_bytes(), name
    assert (out / "manifest.json").read_bytes() == (prepared / "frames" / "manifest.json").read_bytes()
    for s in splits:  # through JPEG at stage 1's quality: the same pixels, so the same rows and the same JSON
        assert (out / f"{s}.npy").read_bytes() == (emb / f"{s}.npy").read_bytes(), s
        assert (out / f"{s}.json").read_bytes() == (emb / f"{s}.json").read_bytes(), s

    raw = demo / "raw"
    direct(demo, raw, "--jpeg_quality", "0")
    for s in splits:
        a, b = np.load(emb / f"{s}.npy"), np.load(raw / f"{s}.npy")
        assert a.shape == b.shape and not np.array_equal(a, b)  # JPEG's loss is gone, so the rows differ a little
        diff = np.abs(a - b)
        print(f"{s}: mean |diff| {diff.mean() / np.abs(a).mean():.4f} of mean |x|, max {diff.max() / np.abs(a).max():.4f}")
        assert diff.mean() <= RAW_MEAN_TOL * np.abs(a).mean() and diff.max() <= RAW_MAX_TOL * np.abs(a).max(), s
        assert json.loads((raw / f"{s}.json").read_text())["jpeg_quality"] is None


@pytest.mark.slow  # runs the direct route three times
def test_a_bad_video_fails_only_itself_and_a_rerun_resumes(demo, tmp_path):
    videos = tmp_path / "videos"
    src = demo / "data" / "videos"
    for cls in sorted(p.name for p in src.iterdir()):
        for f in sorted((src / cls).iterdir()):
            (videos / cls).mkdir(parents=True, exist_ok=True)
            os.symlink(f, videos / cls / f.name)
    (videos / "Triangle" / "v_Triangle_g09_c01.avi").write_text("not a video\n")
    crashing = sorted((videos / "GrowingDisc").iterdir())[0].stem
    out = tmp_path / "out"
    args = ["--videos_dir", videos, "-fps", "1", "-o", out, "-nw", "2", "--split_ratio", "0.5", "--group_videos", "2",
            *COMMON]
    cli("prepare_data.py", *args, env={"ACTIONBERT_TEST_FAULT": f"segfault:{crashing}"})
    failed = {f["file"]: f["reason"] for f in json.loads((out / "failed_videos.json").read_text())}
    assert set(failed) == {"Triangle/v_Triangle_g09_c01.avi", f"GrowingDisc/{crashing}.avi"}
    assert "SIGSEGV" in failed[f"GrowingDisc/{crashing}.avi"]
    data = [r["video_name"] for s in ("train", "val") for r in json.loads((out / f"{s}.json").read_text())["data"]]
    assert len(data) == 5 and crashing not in data  # the 5 other videos (of 6 demo videos) are embedded

    before = snapshot(out)
    # No fault now: the groups (pairs in name order) holding the crashed and the unreadable video are redone; the
    # other two pairs, 4 videos, are skipped.
    proc = cli("prepare_data.py", *args)
    assert "4 video(s) already embedded" in proc.stderr
    after = snapshot(out)
    assert crashing in json.loads((out / "manifest.json").read_text())["videos"]
    assert all(after[k] == v for k, v in before.items() if k.startswith(".videos/"))  # redone rows: same bytes

    ref = tmp_path / "ref"  # one uninterrupted run without the fault ends with the same bytes
    cli("prepare_data.py", *args[:5], ref, *args[6:])
    assert snapshot(ref) == after


@pytest.mark.parametrize(("argv", "words"), [
    (["--videos_dir", "v", "-o", "o", "-s", "train"], "drop -s"),
    (["--videos_dir", "v", "-o", "o", "--jpeg_quality", "101"], "0..100"),
    (["-o", "o"], "-s/--split, -f/--frames_dir, -j/--json_file required"),
])
def test_bad_direct_route_flags_are_refused(argv, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInputError, match=words):
        pd.validate_args(pd.get_args_parser().parse_args(argv))


def test_predict_refuses_rows_made_from_raw_pixels():
    from checkpoint import DataRecord
    from routes import _frame_settings

    data = DataRecord("run/best.pth", ["a"], {"fps": 1.0, "frame_size": None, "jpeg_quality": None})
    with pytest.raises(BadInputError, match="raw pixels .*--jpeg_quality 0"):
        _frame_settings(data)


def test_video_groups_are_consecutive_runs_of_the_sorted_names():
    from direct_embed import video_groups
    from prepare_ucf101 import VideoItem

    items = [VideoItem("A", f"A/{n}.mp4", n, n) for n in "edcba"]
    assert [[it.video_name for it in g] for g in video_groups(items, 2)] == [["a", "b"], ["c", "d"], ["e"]]
    assert video_groups(items[::-1], 2) == video_groups(items, 2)  # the reader's order does not matter
