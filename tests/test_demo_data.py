"""make_demo_data.py: UCF-101 layout and split files, determinism, decodable videos, and a real order-only difference."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import make_demo_data as demo
from tests.conftest import ROOT, SHARED_DATA

SMALL = ["--groups", "3", "--clips", "2", "--size", "64", "--fps", "8", "--min_seconds", "4", "--max_seconds", "5"]
PAIR = ["GrowingDisc", "ShrinkingDisc"]
NAME_RE = re.compile(r"^v_([A-Za-z]+)_g(\d\d)_c(\d\d)\.avi$")


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "make_demo_data.py"), "-o", str(out), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _read_frames(path: Path) -> tuple[list[np.ndarray], float, float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps, header_count = cap.get(cv2.CAP_PROP_FPS), cap.get(cv2.CAP_PROP_FRAME_COUNT)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps, header_count


def _parse_list(path: Path) -> list[list[str]]:
    """The simplest parser a user would write: splitlines, then whitespace split."""
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = _run(out, *SMALL, "--classes", *PAIR, "RedToBlue", "BlueToRed", "Triangle")
    assert result.returncode == 0, result.stderr
    return out


def test_layout_and_names_follow_ucf101(small_demo: Path):
    videos = sorted(p.relative_to(small_demo / "videos") for p in (small_demo / "videos").rglob("*.avi"))
    assert len(videos) == 5 * 3 * 2
    for rel in videos:
        match = NAME_RE.match(rel.name)
        assert match, rel
        assert match.group(1) == rel.parent.name
    assert not [p for p in small_demo.rglob("*") if p.name.startswith(".")], "temporary files left behind"
    info = json.loads((small_demo / "demo_classes.json").read_text())
    assert info["order_pairs"] == [PAIR, ["RedToBlue", "BlueToRed"]]
    assert info["appearance"] == ["Triangle"]
    assert sorted(info["classes"]) == sorted(p.name for p in (small_demo / "videos").iterdir())


@pytest.mark.needs_shared_data
def test_split_files_parse_like_official_and_split_by_group(small_demo: Path):
    splits = small_demo / "splits"
    # Same line endings as the official files, so one parser reads both.
    official = (SHARED_DATA / "ucf101_splits" / "trainlist01.txt").read_bytes()
    ours = (splits / "trainlist01.txt").read_bytes()
    assert (b"\r\n" in official) == (b"\r\n" in ours)
    class_ind = {int(i): name for i, name in _parse_list(splits / "classInd.txt")}
    assert sorted(class_ind) == list(range(1, len(class_ind) + 1))
    assert list(class_ind.values()) == sorted(class_ind.values())
    train = _parse_list(splits / "trainlist01.txt")
    test = _parse_list(splits / "testlist01.txt")
    assert all(len(row) == 2 for row in train) and all(len(row) == 1 for row in test)
    groups: dict[str, set[str]] = {"train": set(), "test": set()}
    listed = set()
    for split, rows in (("train", train), ("test", test)):
        for row in rows:
            cls, name = row[0].split("/")
            assert (small_demo / "videos" / cls / name).is_file()
            if split == "train":
                assert class_ind[int(row[1])] == cls
            groups[split].add(cls + NAME_RE.match(name).group(2))
            listed.add(row[0])
    assert not groups["train"] & groups["test"], "a group is in both train and test"
    assert groups["test"] and groups["train"]
    assert listed == {str(p.relative_to(small_demo / "videos")) for p in (small_demo / "videos").rglob("*.avi")}


def test_videos_decode_with_intended_frames_and_fps(small_demo: Path):
    info = json.loads((small_demo / "demo_classes.json").read_text())
    lengths = set()
    for path in sorted((small_demo / "videos").rglob("*.avi"))[:6]:
        frames, fps, header_count = _read_frames(path)
        assert fps == pytest.approx(8.0)
        assert len(frames) == header_count
        seconds = (len(frames) - 1) / 8.0
        assert seconds == int(seconds) and 4 <= seconds <= 5, "clips last whole seconds plus one frame"
        assert frames[0].shape == (64, 64, 3)
        lengths.add(len(frames))
    assert info["fps"] == 8.0 and info["size"] == [64, 64]


def test_same_seed_byte_identical_other_seed_differs(small_demo: Path):
    before = _tree_hashes(small_demo)
    # Rerun in place with another worker count: every file is written again, byte for byte the same.
    mtimes = {p: p.stat().st_mtime_ns for p in small_demo.rglob("*.avi")}
    rerun = _run(small_demo, *SMALL, "--classes", *PAIR, "RedToBlue", "BlueToRed", "Triangle", "--workers", "1")
    assert rerun.returncode == 0, rerun.stderr
    assert _tree_hashes(small_demo) == before
    assert all(p.stat().st_mtime_ns != m for p, m in mtimes.items()), "rerun did not rewrite the videos"
    spec = demo.all_class_specs()["Triangle"]
    clip = lambda seed: np.stack(list(demo.render_clip(spec, 1, 1, seed, 8.0, (64, 64), (4, 5))))  # noqa: E731
    assert np.array_equal(clip(0), clip(0)) and not np.array_equal(clip(0), clip(1))


def _area(frame: np.ndarray) -> float:
    """Fraction of pixels far from the background colour (estimated in the top-left corner)."""
    background = np.median(frame[:6, :6].reshape(-1, 3), axis=0)
    return float((np.abs(frame.astype(np.float32) - background).max(axis=-1) > 40).mean())


def _centre_colour(frame: np.ndarray) -> np.ndarray:
    return frame[24:40, 24:40].reshape(-1, 3).mean(axis=0)  # BGR at the middle of the object


def test_order_pair_is_a_time_reverse(small_demo: Path):
    """Growing's first frame looks like Shrinking's last frame, not like its own last frame; colour the same."""
    vids = small_demo / "videos"
    for group in (1, 3):
        grow, _, _ = _read_frames(vids / "GrowingDisc" / f"v_GrowingDisc_g{group:02d}_c01.avi")
        shrink, _, _ = _read_frames(vids / "ShrinkingDisc" / f"v_ShrinkingDisc_g{group:02d}_c01.avi")
        assert _area(grow[0]) < 0.1 < 0.35 < _area(grow[-1])
        assert _area(shrink[-1]) < 0.1 < 0.35 < _area(shrink[0])
        assert abs(_area(grow[0]) - _area(shrink[-1])) < abs(_area(grow[0]) - _area(grow[-1])) / 4
        areas = [_area(f) for f in grow]
        assert all(b >= a - 0.02 for a, b in zip(areas, areas[1:], strict=False)), "growth is monotonic"
        red_blue, _, _ = _read_frames(vids / "RedToBlue" / f"v_RedToBlue_g{group:02d}_c01.avi")
        blue_red, _, _ = _read_frames(vids / "BlueToRed" / f"v_BlueToRed_g{group:02d}_c01.avi")
        for first, last in ((red_blue[0], blue_red[-1]), (blue_red[0], red_blue[-1])):
            assert np.abs(_centre_colour(first) - _centre_colour(last)).max() < 60
        assert _centre_colour(red_blue[0])[2] > _centre_colour(red_blue[0])[0] + 100  # starts red (BGR)
        assert _centre_colour(red_blue[-1])[0] > _centre_colour(red_blue[-1])[2] + 100  # ends blue


def test_pair_classes_share_their_state_distribution():
    """Pooled over a clip, the two classes of a pair see the same states: only the order differs."""
    specs = demo.all_class_specs()
    fwd, rev = specs["RotatingClockwise"], specs["RotatingAnticlockwise"]
    progress = {spec.name: [] for spec in (fwd, rev)}
    for spec in (fwd, rev):
        for group in range(1, 41):
            params = demo.make_clip_params(0, spec, group, 1, 8.0, (64, 64), (4, 9))
            sampled = params.progress[::8]  # the 1 fps frames
            assert sampled[0] in (0.0, 1.0) and sampled[-1] in (0.0, 1.0) and sampled[0] != sampled[-1]
            progress[spec.name].extend(sampled)
    means = {k: np.mean(v) for k, v in progress.items()}
    assert abs(means[fwd.name] - means[rev.name]) < 0.08
    first_fwd = demo.make_clip_params(0, fwd, 1, 1, 8.0, (64, 64), (4, 9)).progress
    assert np.all(np.diff(first_fwd) >= 0) and first_fwd[0] == 0.0 and first_fwd[-1] == 1.0


def test_reversed_class_replays_its_forward_clips_backwards():
    """Same look and clip parameters, progress reversed: within a pair only the order differs, so a head cannot
    separate the two classes by remembering a group's background (the demo's meanpool would otherwise beat chance)."""
    specs = demo.all_class_specs()
    for fwd_name, rev_name, _ in demo.ORDER_PAIRS:
        fwd, rev = specs[fwd_name], specs[rev_name]
        for group, clip in ((1, 1), (5, 3)):
            look_f, look_r = (demo.make_group_look(0, s, group, (64, 64)) for s in (fwd, rev))
            assert np.array_equal(look_f.background, look_r.background)
            assert (look_f.colour, look_f.first_colour, look_f.second_colour) == (
                look_r.colour, look_r.first_colour, look_r.second_colour)
            par_f, par_r = (demo.make_clip_params(0, s, group, clip, 8.0, (64, 64), (4, 9)) for s in (fwd, rev))
            assert np.array_equal(par_f.progress[::-1], par_r.progress) and par_f.progress[0] != par_f.progress[-1]
            assert (par_f.centre, par_f.extra, par_f.noise_sigma) == (par_r.centre, par_r.extra, par_r.noise_sigma)
        # Another group (or a class of another pair) looks different.
        assert not np.array_equal(demo.make_group_look(0, fwd, 1, (64, 64)).background,
                                  demo.make_group_look(0, fwd, 2, (64, 64)).background)
    grow = np.stack(list(demo.render_clip(specs["GrowingDisc"], 2, 1, 0, 8.0, (64, 64), (4, 5)))).astype(np.float32)
    shrink = np.stack(list(demo.render_clip(specs["ShrinkingDisc"], 2, 1, 0, 8.0, (64, 64), (4, 5)))).astype(np.float32)
    assert np.abs(grow[::-1] - shrink).mean() < np.abs(grow - shrink).mean() / 3


def test_plan_and_split_texts_pure():
    classes = demo.select_classes(["Triangle", "GrowingDisc"])
    assert [c.name for c in classes] == ["GrowingDisc", "Triangle"]
    plan = demo.plan_videos(classes, groups=4, clips=2, test_groups=1)
    texts = demo.split_file_texts(classes, plan)
    assert texts["classInd.txt"] == "1 GrowingDisc\r\n2 Triangle\r\n"
    assert texts["trainlist01.txt"].splitlines()[0] == "GrowingDisc/v_GrowingDisc_g01_c01.avi 1"
    assert texts["testlist01.txt"].splitlines() == [
        "GrowingDisc/v_GrowingDisc_g04_c01.avi",
        "GrowingDisc/v_GrowingDisc_g04_c02.avi",
        "Triangle/v_Triangle_g04_c01.avi",
        "Triangle/v_Triangle_g04_c02.avi",
    ]
    summary = demo.class_summary(demo.select_classes(["GrowingDisc", "Triangle"]))
    assert summary["order_pairs"] == [] and summary["appearance"] == ["Triangle"]


def test_bad_arguments_give_one_line_errors(tmp_path: Path):
    result = _run(tmp_path / "out", "--classes", "Jumping")
    assert result.returncode == 2
    assert "unknown demo class" in result.stderr and "Traceback" not in result.stderr
    parser = demo.get_args_parser()
    for extra, message in ((["--groups", "1"], "--groups"), (["--min_seconds", "4.2", "--max_seconds", "4.8"], "whole")):
        with pytest.raises(demo.BadInputError, match=message):
            demo.check_args(parser.parse_args(["-o", str(tmp_path / "out"), *extra]))


def test_refuses_folder_with_foreign_videos(tmp_path: Path):
    stray = tmp_path / "videos" / "Other" / "v_Other_g01_c01.avi"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x")
    result = _run(tmp_path, *SMALL, "--classes", "Triangle")
    assert result.returncode == 2 and "would not write" in result.stderr
