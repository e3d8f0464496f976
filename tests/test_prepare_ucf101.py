"""prepare_ucf101.py end to end: outputs and their contract, official splits, bad input, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest

from prepare_ucf101 import get_args_parser
from readers.base import assign_video_names
from tests.conftest import ROOT, VIDEOS
from tests.video_reference import decode_all_timestamps, select_frames

pytestmark = pytest.mark.needs_shared_data

SCRIPT = str(ROOT / "prepare_ucf101.py")


def run(*args: str | Path, check: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if check is not None:
        assert proc.returncode == check, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def link(dst: Path, clip: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(VIDEOS / clip, dst)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def expected_frames(clip: str, fps: float) -> int:
    ts, nominal = decode_all_timestamps(VIDEOS / clip)
    return len(select_frames(ts, fps, nominal))


def test_random_split_end_to_end(tmp_path):
    vids = tmp_path / "videos"
    clips = {
        "Biking/bikes.mp4": "bikes.mp4",
        "Biking/v_Biking_g01_c01.mp4": "carphone_pristine.mp4",
        "Biking/v_biking_g01_c02.MP4": "carphone_pristine.mp4",
        "Biking/v_Biking_g02_c01.mp4": "carphone_pristine.mp4",
        "Walk [odd]/we[ir]d! (x) & y.avi": "tree.avi",
        "Walk [odd]/bikes.mp4": "carphone_pristine.mp4",
        "Walk [odd]/v_Walk_g03_c01.avi": "tree.avi",
    }
    for rel, clip in clips.items():
        link(vids / rel, clip)
    out = tmp_path / "out"
    proc = run("-v", vids, "-o", out, "-fps", "0.5", "--frame_size", "64", "--workers", "2", "-s", "0.6")
    assert "<Class>__<stem>" in proc.stderr  # the clash of the two bikes.mp4 is announced

    assert (out / "classInd.txt").read_text() == "1 Biking\n2 Walk [odd]\n"
    train = json.loads((out / "train_ucf101.json").read_text())
    val = json.loads((out / "val_ucf101.json").read_text())
    assert not (out / "test_ucf101.json").exists()
    assert json.loads((out / "failed_videos.json").read_text()) == []
    records = train + val
    assert sorted(r["video_path"] for r in records) == sorted(clips)
    assert not any("split_id" in r for r in records)  # a random split is no official one
    names = {r["video_path"]: r["video_name"] for r in records}
    assert names["Biking/bikes.mp4"] == "Biking__bikes" and names["Walk [odd]/bikes.mp4"] == "Walk [odd]__bikes"
    assert names["Walk [odd]/we[ir]d! (x) & y.avi"] == "we[ir]d! (x) & y"
    for r in records:
        assert r["label_idx"] == ["Biking", "Walk [odd]"].index(r["video_path"].split("/")[0])
    assert not {r["group"] for r in train} & {r["group"] for r in val}
    g01 = [r for r in records if r["group"] == "v_biking_g01"]
    assert len(g01) == 2  # case-insensitive group, kept on one side

    manifest = json.loads((out / "frames" / "manifest.json").read_text())
    assert (manifest["fps"], manifest["frame_size"], manifest["jpeg_quality"]) == (0.5, 64, 95)
    assert set(manifest["videos"]) == set(names.values())
    for rel, clip in clips.items():
        entry = manifest["videos"][names[rel]]
        n = expected_frames(clip, 0.5)
        assert entry["num_frames"] == n and entry["source"] == rel
        assert entry["timestamps"] == [k / 0.5 for k in range(n)]
        folder = out / "frames" / names[rel]
        assert sorted(p.name for p in folder.iterdir()) == [f"frame_{i:06d}.jpg" for i in range(1, n + 1)]
        img = cv2.imread(str(folder / "frame_000001.jpg"))
        assert min(img.shape[:2]) == 64
        assert next(r for r in records if r["video_path"] == rel)["num_frames"] == n
    assert manifest["videos"]["we[ir]d! (x) & y"]["num_frames"] == 15  # tree.avi spans ~29.9 s

    # a rerun skips everything and rewrites the same bytes
    before = snapshot(out)
    proc = run("-v", vids, "-o", out, "-fps", "0.5", "--frame_size", "64", "--workers", "2", "-s", "0.6")
    assert "already extracted" in proc.stderr
    assert snapshot(out) == before

    # another fps in the same frames folder is refused, naming both settings
    proc = run("-v", vids, "-o", out, "-fps", "2", "--frame_size", "64", check=2)
    assert "fps=0.5" in proc.stderr and "fps=2.0" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before


def write_crlf(path: Path, lines: list[str]) -> None:
    path.write_bytes("".join(line + "\r\n" for line in lines).encode())


def test_official_ucf101_layout(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    write_crlf(splits / "classInd.txt", ["1 ApplyEyeMakeup", "2 HandstandPushups"])
    train = [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi 1",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi 1",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2",  # case differs from the file on disk
        "HandstandPushups/v_HandStandPushups_g09_c01.avi 2",
    ]
    test = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "HandstandPushups/v_HandStandPushups_g01_c01.avi"]
    write_crlf(splits / "trainlist01.txt", train)
    write_crlf(splits / "testlist01.txt", test)
    vids = tmp_path / "videos"
    for line in train + test:
        cls, name = line.split()[0].split("/")
        if cls == "HandstandPushups":
            name = name.replace("HandStand", "Handstand")
        link(vids / cls / name, "tree.avi")
    link(vids / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g25_c01.avi", "tree.avi")  # in neither list
    write_crlf(splits / "testlist01.txt", [*test, "HandstandPushups/v_HandStandPushups_g02_c01.avi"])

    out = tmp_path / "out"
    common = ["-v", vids, "-o", out, "-fps", "0.2", "--frame_size", "32", "--split_dir", splits, "--val_ratio", "0.5"]
    proc = run(*common, check=2)
    assert "1 video(s) named in the split files are not in the video folder" in proc.stderr
    assert "v_HandStandPushups_g02_c01.avi" in proc.stderr

    run(*common, "--allow_missing")
    failed = json.loads((out / "failed_videos.json").read_text())
    assert [f["file"] for f in failed] == ["HandstandPushups/v_HandStandPushups_g02_c01.avi"]
    assert (out / "classInd.txt").read_text() == "1 ApplyEyeMakeup\n2 HandstandPushups\n"
    sides = {s: json.loads((out / f"{s}_ucf101.json").read_text()) for s in ("train", "val", "test")}
    assert sorted(r["video_name"] for r in sides["test"]) == ["v_ApplyEyeMakeup_g01_c01", "v_HandstandPushups_g01_c01"]
    assert len(sides["train"]) + len(sides["val"]) == 5 and sides["val"]
    for side in sides.values():
        for r in side:
            assert r["label_idx"] == (0 if "ApplyEyeMakeup" in r["video_name"] else 1)
            assert r["split_id"] == 1  # which official split, for every later stage and compare_runs.py
    groups = {s: {r["group"] for r in rs} for s, rs in sides.items()}
    assert not groups["train"] & groups["val"] and not groups["test"] & (groups["train"] | groups["val"])
    assert not (out / "frames" / "v_ApplyEyeMakeup_g25_c01").exists()  # not in the split: not extracted
    run(*common, "--allow_missing", "--strict", check=1)


def test_official_hmdb51_layout(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "class_list.txt").write_text("wave\nbrush_hair\n")  # label order: as listed, not sorted
    names = {
        "brush_hair": [
            ("Hair [1]!_brush_hair_u_nm_np1_ba_goo_0.avi", 1),
            ("Hair [1]!_brush_hair_u_nm_np1_ba_goo_1.avi", 1),
            ("Other_brush_hair_h_cm_np1_le_med_0.avi", 2),
            ("Unused_brush_hair_f_nm_np2_fr_bad_0.avi", 0),
        ],
        "wave": [("Hi (there) & bye_wave_u_cm_np1_fr_goo_0.avi", 1), ("Bye_wave_u_cm_np1_fr_goo_3.avi", 2)],
    }
    for cls, entries in names.items():
        (splits / f"{cls}_test_split1.txt").write_text("".join(f"{n} {i} \n" for n, i in entries))
        for n, _ in entries:
            link(tmp_path / "videos" / cls / n, "tree.avi")
    out = tmp_path / "out"
    run(
        "-v",
        tmp_path / "videos",
        "-o",
        out,
        "-fps",
        "0.2",
        "--frame_size",
        "32",
        "--split_dir",
        splits,
        "--val_ratio",
        "0",
    )
    assert (out / "classInd.txt").read_text() == "1 wave\n2 brush_hair\n"
    train = json.loads((out / "train_ucf101.json").read_text())
    test = json.loads((out / "test_ucf101.json").read_text())
    assert json.loads((out / "val_ucf101.json").read_text()) == []
    assert {(r["video_name"], r["label_idx"]) for r in train} == {
        ("Hi (there) & bye_wave_u_cm_np1_fr_goo_0", 0),
        ("Hair [1]!_brush_hair_u_nm_np1_ba_goo_0", 1),
        ("Hair [1]!_brush_hair_u_nm_np1_ba_goo_1", 1),
    }
    assert {(r["video_name"], r["label_idx"]) for r in test} == {
        ("Bye_wave_u_cm_np1_fr_goo_3", 0),
        ("Other_brush_hair_h_cm_np1_le_med_0", 1),
    }
    assert not (out / "frames" / "Unused_brush_hair_f_nm_np2_fr_bad_0").exists()


def make_bad_inputs(root: Path) -> dict[str, str]:
    """One file or folder per kind of bad input; returns {relative path: expected words in the reason}."""
    (root / "Bad").mkdir(parents=True)
    (root / "Bad" / "text.avi").write_text("this is not a video\n")
    (root / "Bad" / "empty.mp4").touch()
    data = (VIDEOS / "bikes.mp4").read_bytes()
    (root / "Bad" / "half.mp4").write_bytes(data[: len(data) // 2])
    data = (VIDEOS / "tree.avi").read_bytes()
    (root / "Bad" / "half.avi").write_bytes(data[: len(data) // 2])
    os.symlink(root / "nowhere.mp4", root / "Bad" / "dangling.mp4")
    (root / "Bad" / "notes.txt").write_text("not a video, not an error\n")
    (root / "Empty").mkdir()
    (root / "stray.avi").write_bytes(data)
    return {
        "Bad/text.avi": "not a readable video",
        "Bad/empty.mp4": "empty file",
        "Bad/half.mp4": "not a readable video",
        "Bad/half.avi": "truncated",
        "Bad/dangling.mp4": "unreadable",
        "Empty/": "empty class folder",
        "stray.avi": "outside any class folder",
    }


def test_bad_inputs_are_reported_not_fatal(tmp_path):
    vids = tmp_path / "videos"
    expected = make_bad_inputs(vids)
    link(vids / "Good" / "tree.avi", "tree.avi")
    link(vids / "Good" / "clip2.avi", "tree.avi")
    out = tmp_path / "out"
    args = ["-v", vids, "-o", out, "-fps", "0.2", "--frame_size", "32", "--workers", "2"]
    proc = run(*args)
    failed = json.loads((out / "failed_videos.json").read_text())
    assert [f["file"] for f in failed] == sorted(expected)
    for f in failed:
        assert expected[f["file"]] in f["reason"]
    assert "notes.txt" in proc.stderr and "notes.txt" not in json.dumps(failed)  # ignored, with a log line
    assert "7 input(s) left out" in proc.stderr
    records = json.loads((out / "train_ucf101.json").read_text()) + json.loads((out / "val_ucf101.json").read_text())
    assert sorted(r["video_path"] for r in records) == ["Good/clip2.avi", "Good/tree.avi"]
    assert (out / "classInd.txt").read_text() == "1 Good\n"
    assert sorted(p.name for p in (out / "frames").iterdir()) == [".meta", "clip2", "manifest.json", "tree"]

    proc = run(*args, "--strict", check=1)
    assert "--strict" in proc.stderr

    only_bad = tmp_path / "only_bad"
    make_bad_inputs(only_bad)
    proc = run("-v", only_bad, "-o", tmp_path / "out2", "-fps", "0.2", check=1)
    assert "nothing usable" in proc.stderr
    assert len(json.loads((tmp_path / "out2" / "failed_videos.json").read_text())) == 7


def test_missing_video_dir_is_a_clear_error(tmp_path):
    proc = run("-v", tmp_path / "absent", "-o", tmp_path / "out", check=2)
    assert "video folder not found" in proc.stderr


@pytest.mark.slow
def test_resume_after_sigkill_is_byte_identical(tmp_path):
    vids = tmp_path / "videos"
    for i in range(6):
        link(vids / "A" / f"clip {i} [a].mp4", "bikes.mp4")
    for i in range(2):
        link(vids / "B" / f"v_B_g0{i}_c01.mp4", "carphone_pristine.mp4")
    common = ["-v", vids, "-fps", "4", "--frame_size", "48"]
    ref = tmp_path / "ref"
    run(*common, "-o", ref, "--workers", "2")

    out = tmp_path / "out"
    cmd = [sys.executable, SCRIPT, *map(str, common), "-o", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    frames = out / "frames"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = [p for p in frames.iterdir() if not p.name.startswith(".")] if frames.is_dir() else []
            if len(done) >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "train_ucf101.json").exists()
    assert (frames / ".tmp").is_dir()  # the in-progress video's temporary folder is left behind
    assert 2 <= len([p for p in frames.iterdir() if not p.name.startswith(".")]) < 8

    proc = run(*common, "-o", out, "--workers", "1")
    assert "already extracted" in proc.stderr
    assert not (frames / ".tmp").exists()
    assert snapshot(out) == snapshot(ref)


def test_assign_video_names_is_deterministic_and_unique():
    found = [("B", "x.avi"), ("A", "x.mp4"), ("A", "y.avi"), ("A", "X.avi"), ("C", "Y.mkv"), ("A", "z.avi")]
    items = assign_video_names(found)
    names = {f"{c}/{f}": name for (c, f), name in items.items()}
    assert names["A/z.avi"] == "z"
    assert names["B/x.avi"] == "B__x" and names["C/Y.mkv"] == "C__Y" and names["A/y.avi"] == "A__y"
    assert len({n.casefold() for n in names.values()}) == len(found)
    assert assign_video_names(list(reversed(found))) == items


def test_concealed_decoder_errors_are_recorded(tmp_path):
    """A video with a corrupt stretch is kept (FFmpeg conceals it) and its manifest entry counts the errors."""
    vids = tmp_path / "videos"
    link(vids / "A" / "good.mp4", "bikes.mp4")
    data = bytearray((VIDEOS / "bikes.mp4").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 20000] = bytes(20000)
    (vids / "B").mkdir(parents=True)
    (vids / "B" / "damaged.mp4").write_bytes(bytes(data))
    out = tmp_path / "out"
    run("-v", vids, "-o", out, "-fps", "1", "--frame_size", "32", "--workers", "1")
    videos = json.loads((out / "frames" / "manifest.json").read_text())["videos"]
    assert videos["damaged"]["num_frames"] == 10 and videos["damaged"]["decoder_errors"] > 0
    assert "decoder_errors" not in videos["good"]
    assert json.loads((out / "failed_videos.json").read_text()) == []


# ----- bad input never stops, hangs or corrupts a run (issue 11) ------------------------------------------------


def run_guarded(*args: str | Path, check: int | None = 0, env: dict[str, str] | None = None,
                timeout: float = 240) -> subprocess.CompletedProcess:
    """run() with a wall-clock guard that fails the test on a hang, and extra environment variables."""
    proc = subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check is not None:
        assert proc.returncode == check, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def good_videos(vids: Path, n: int = 2) -> list[str]:
    names = [f"Good/g{i}.mp4" for i in range(n)]
    for rel in names:
        link(vids / rel, "carphone_pristine.mp4")
    return names


def outputs(out: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """(manifest videos, {failed file: reason})."""
    manifest = json.loads((out / "frames" / "manifest.json").read_text())["videos"]
    failed = {f["file"]: f["reason"] for f in json.loads((out / "failed_videos.json").read_text())}
    return manifest, failed


# Test-only faults (prepare_ucf101.FAULT_ENV) and how failed_videos.json words each.
FAULTS = {"segfault": "died of SIGSEGV", "kill": "died of SIGKILL", "exit": "exited with code 3",
          "raise": "unexpected error while extracting (RuntimeError: test fault"}


@pytest.mark.slow  # launches the stage-1 CLI
@pytest.mark.parametrize("workers", ["1", "2"])
def test_workers_dying_mid_video_fail_only_their_videos(tmp_path, workers):
    """A worker that crashes (a codec segfault, an OOM kill, os._exit) or raises mid-video: the stage finishes,
    lists that video with the reason, leaves no half folder, and a rerun completes it. One run meets all four
    faults, each on its own video (g1..g4), between good ones."""
    vids = tmp_path / "videos"
    good = good_videos(vids, 2 + len(FAULTS))
    out = tmp_path / "out"
    args = ["-v", vids, "-o", out, "-fps", "1", "--frame_size", "32", "--workers", workers]
    faulty = {f"g{i}": fault for i, fault in enumerate(FAULTS, 1)}
    proc = run_guarded(*args, env={"ACTIONBERT_TEST_FAULT": ",".join(f"{f}:{v}" for v, f in faulty.items())})
    manifest, failed = outputs(out)
    assert sorted(failed) == [f"Good/{v}.mp4" for v in faulty]
    for v, fault in faulty.items():
        assert FAULTS[fault] in failed[f"Good/{v}.mp4"] and not (out / "frames" / v).exists()
    assert sorted(manifest) == ["g0", f"g{len(good) - 1}"]
    assert not (out / "frames" / ".tmp").exists()
    assert f"{len(faulty)} input(s) left out" in proc.stderr
    ref = tmp_path / "ref"
    run_guarded("-v", vids, "-o", ref, "-fps", "1", "--frame_size", "32")
    proc = run_guarded(*args)
    assert "2 video(s) already extracted" in proc.stderr
    assert outputs(out) == (outputs(ref)[0], {}) and snapshot(out) == snapshot(ref)
    assert sorted(v["source"] for v in outputs(out)[0].values()) == good


@pytest.mark.slow  # launches the stage-1 CLI
def test_unexpected_error_traceback_is_logged_at_debug_level_only(tmp_path):
    vids = tmp_path / "videos"
    good_videos(vids, 2)
    args = ["-v", vids, "-o", tmp_path / "out", "-fps", "1", "--frame_size", "32", "--workers", "1"]
    proc = subprocess.run([sys.executable, SCRIPT, *map(str, args), "--verbose"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "ACTIONBERT_TEST_FAULT": "raise:g0"})
    assert proc.returncode == 0
    assert "DEBUG" in proc.stderr and "Traceback" in proc.stderr and "_test_fault" in proc.stderr


@pytest.mark.slow  # launches the stage-1 CLI
def test_video_timeout_stops_a_hanging_video(tmp_path):
    vids = tmp_path / "videos"
    good_videos(vids, 3)
    out = tmp_path / "out"
    start = time.monotonic()
    run_guarded("-v", vids, "-o", out, "-fps", "1", "--frame_size", "32", "--workers", "2", "--video_timeout", "3",
                env={"ACTIONBERT_TEST_FAULT": "hang:g2"}, timeout=90)
    assert time.monotonic() - start < 60
    manifest, failed = outputs(out)
    assert sorted(manifest) == ["g0", "g1"]
    assert "took longer than 3 s (--video_timeout)" in failed["Good/g2.mp4"]


def _wait_for(predicate, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def _start_hanging_run(vids: Path, out: Path) -> subprocess.Popen:
    """A stage-1 run whose worker hangs on g0 (so it holds OUT), in its own process group."""
    cmd = [sys.executable, SCRIPT, "-v", str(vids), "-o", str(out), "-fps", "1", "--frame_size", "32",
           "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "ACTIONBERT_TEST_FAULT": "hang:g0"})
    _wait_for(lambda: (out / "frames" / ".tmp" / "g0" / "frame_000001.jpg").is_file())
    return proc


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow  # launches the stage-1 CLI
def test_second_run_on_one_output_folder_is_refused(tmp_path):
    """Item 5: two stage-1 runs on one OUT corrupted it (316 of 1500 frames kept, records saying 1500)."""
    vids = tmp_path / "videos"
    good_videos(vids, 2)
    out = tmp_path / "out"
    first = _start_hanging_run(vids, out)
    try:
        proc = run_guarded("-v", vids, "-o", out, "-fps", "1", check=2, timeout=60)
        assert f"pid {first.pid}" in proc.stderr and "in use by another run" in proc.stderr
        assert (out / "frames" / ".tmp" / "g0").is_dir()  # the first run's work was not touched
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    _wait_for(lambda: _group_gone(first.pid))
    run_guarded("-v", vids, "-o", out, "-fps", "1", "--frame_size", "32")  # the OS released the lock: no stale lock
    assert sorted(outputs(out)[0]) == ["g0", "g1"]


@pytest.mark.slow  # launches the stage-1 CLI
def test_ctrl_c_prints_one_line_and_stops_every_worker(tmp_path):
    vids = tmp_path / "videos"
    good_videos(vids, 3)
    proc = _start_hanging_run(vids, tmp_path / "out")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground process group
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.count("interrupted; rerun the same command to resume") == 1
    _wait_for(lambda: _group_gone(proc.pid), 10)


@pytest.mark.slow  # launches the stage-1 CLI
def test_long_names_fit_the_file_system_and_stay_stable(tmp_path):
    """Item 2: a 246-byte video name (or 80 CJK characters) stopped every run with ENAMETOOLONG on its record's
    temporary name; a long class folder before a clashing long stem cannot even make a frames folder."""
    vids = tmp_path / "videos"
    long_cls = "C" * 200
    files = {f"A/{'a' * 246}.mp4", f"A/{'動' * 80}.mp4", f"A/{'x' * 240}.mp4", f"{long_cls}/{'x' * 240}.mp4"}
    for rel in files:
        link(vids / rel, "carphone_pristine.mp4")
    out = tmp_path / "out"
    args = ["-v", vids, "-o", out, "-fps", "1", "--frame_size", "32", "--workers", "2"]
    run_guarded(*args)
    records = json.loads((out / "train_ucf101.json").read_text()) + json.loads((out / "val_ucf101.json").read_text())
    names = {r["video_path"]: r["video_name"] for r in records}
    assert set(names) == files
    assert names[f"A/{'a' * 246}.mp4"] == "a" * 246 and names[f"A/{'動' * 80}.mp4"] == "動" * 80
    clashed = names[f"{long_cls}/{'x' * 240}.mp4"]
    assert clashed.startswith(f"{long_cls}__xxx") and len(clashed.encode()) <= 250
    for name in names.values():
        assert len(name.encode()) <= 250 and (out / "frames" / name / "frame_000001.jpg").is_file()
    before = snapshot(out)
    proc = run_guarded(*args)
    assert "4 video(s) already extracted" in proc.stderr and snapshot(out) == before


@pytest.mark.slow  # launches the stage-1 CLI
def test_symlink_loops_and_unreadable_entries_are_failures(tmp_path):
    """Item 3: a symlink loop in a class folder crashed the scan (ELOOP); nothing was extracted."""
    vids = tmp_path / "videos"
    good = good_videos(vids, 2)
    (vids / "Loop").mkdir()
    os.symlink("b.mp4", vids / "Loop" / "a.mp4")
    os.symlink("a.mp4", vids / "Loop" / "b.mp4")
    os.symlink("self", vids / "Good" / "self")  # an entry with no extension that loops: could have been a folder
    os.symlink("top", vids / "top")
    out = tmp_path / "out"
    run_guarded("-v", vids, "-o", out, "-fps", "1", "--frame_size", "32")
    manifest, failed = outputs(out)
    assert sorted(v["source"] for v in manifest.values()) == good
    for rel in ("Loop/a.mp4", "Loop/b.mp4", "Good/self", "top"):
        assert "symbolic-link loop" in failed[rel]
    assert "Loop/" not in failed  # its entries are listed; it is not also called empty


@pytest.mark.slow  # launches the stage-1 CLI
def test_changed_source_is_redone_and_recorded(tmp_path):
    """Item 6: a video replaced under the same name (4 s -> 10 s, 5 -> 10 frames at 1 fps) was skipped as already
    extracted, the manifest keeping the old frame count."""
    vids = tmp_path / "videos"
    good_videos(vids, 2)
    (vids / "Good" / "g1.mp4").unlink()
    shutil.copy(VIDEOS / "carphone_pristine.mp4", vids / "Good" / "g1.mp4")
    out = tmp_path / "out"
    args = ["-v", vids, "-o", out, "-fps", "1", "--frame_size", "32"]
    run_guarded(*args)
    assert outputs(out)[0]["g1"]["num_frames"] == 5
    shutil.copy(VIDEOS / "bikes.mp4", vids / "Good" / "g1.mp4")  # same name, other content
    proc = run_guarded(*args)
    assert "1 video(s) already extracted" in proc.stderr and "source changed" in proc.stderr
    manifest = outputs(out)[0]
    assert manifest["g1"]["num_frames"] == 10 and manifest["g1"]["source_size"] == (VIDEOS / "bikes.mp4").stat().st_size
    assert len(list((out / "frames" / "g1").iterdir())) == 10
    records = json.loads((out / "train_ucf101.json").read_text()) + json.loads((out / "val_ucf101.json").read_text())
    assert {r["video_name"]: r["num_frames"] for r in records}["g1"] == 10
    os.utime(vids / "Good" / "g1.mp4", ns=(0, 0))  # touched, same bytes: redone too (size and mtime are the check)
    assert "1 video(s) already extracted" in run_guarded(*args).stderr


def _official(tmp_path: Path, train: list[str], test: list[str], class_dir: str = "Jump") -> tuple[Path, Path]:
    splits = tmp_path / "splits"
    splits.mkdir()
    write_crlf(splits / "classInd.txt", ["1 Jump"])
    write_crlf(splits / "trainlist01.txt", [f"Jump/{n} 1" for n in train])
    write_crlf(splits / "testlist01.txt", [f"Jump/{n}" for n in test])
    vids = tmp_path / "videos"
    for n in sorted(set(train + test)):
        link(vids / class_dir / n, "carphone_pristine.mp4")
    return splits, vids


@pytest.mark.slow  # launches the stage-1 CLI
@pytest.mark.parametrize(("train", "test", "words"), [
    (["v_Jump_g01_c01.avi", "v_Jump_g02_c01.avi"], ["v_Jump_g02_c01.avi", "v_Jump_g03_c01.avi"],
     "1 video(s) are in both the train and the test list (a train/test leak): Jump/v_Jump_g02_c01.avi"),
    (["v_Jump_g01_c01.avi", "v_Jump_g02_c01.avi", "v_Jump_g01_c01.avi"], ["v_Jump_g03_c01.avi"],
     "1 video(s) are listed more than once in the train list: Jump/v_Jump_g01_c01.avi"),
])
def test_split_files_with_a_leak_or_a_duplicate_are_refused(tmp_path, train, test, words):
    """Item 7: a video in both lists went to both splits silently; one listed twice was written twice."""
    splits, vids = _official(tmp_path, train, test)
    out = tmp_path / "out"
    proc = run_guarded("-v", vids, "-o", out, "--split_dir", splits, "-fps", "1", check=2)
    assert words in proc.stderr
    assert not out.exists()  # refused before OUT was made


@pytest.mark.slow  # launches the stage-1 CLI
def test_nfd_class_folder_matches_nfc_split_lists(tmp_path):
    """Item 7: a class folder in NFD form (as macOS writes it) while the lists use NFC: the videos match, the
    files keep their on-disk names, and labels follow the lists."""
    nfc = unicodedata.normalize("NFC", "Café_Sauté")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    splits = tmp_path / "splits"
    splits.mkdir()
    write_crlf(splits / "classInd.txt", [f"1 {nfc}"])
    names = [f"v_{nfc}_g0{i}_c01.avi" for i in range(1, 4)]
    write_crlf(splits / "trainlist01.txt", [f"{nfc}/{n} 1" for n in names[:2]])
    write_crlf(splits / "testlist01.txt", [f"{nfc}/{names[2]}"])
    vids = tmp_path / "videos"
    for n in names:
        link(vids / nfd / unicodedata.normalize("NFD", n), "carphone_pristine.mp4")
    out = tmp_path / "out"
    run_guarded("-v", vids, "-o", out, "--split_dir", splits, "-fps", "1", "--frame_size", "32", "--val_ratio", "0")
    train = json.loads((out / "train_ucf101.json").read_text())
    test = json.loads((out / "test_ucf101.json").read_text())
    assert len(train) == 2 and len(test) == 1
    for r in train + test:
        assert r["class_name"] == nfc and r["label_idx"] == 0
        assert r["video_path"].startswith(nfd + "/") and (vids / r["video_path"]).is_symlink()  # on-disk names
        assert (out / "frames" / r["video_name"]).is_dir()


@pytest.mark.slow  # launches the stage-1 CLI
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_keep_the_users_umask(tmp_path, umask):
    """Item 10: files written atomically were -rw------- whatever the umask."""
    vids = tmp_path / "videos"
    good_videos(vids, 2)
    out = tmp_path / "out"
    args = ["-v", vids, "-o", out, "-fps", "1", "--frame_size", "32"]
    proc = subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, umask=umask)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = 0o666 & ~umask
    for path in (out / "train_ucf101.json", out / "classInd.txt", out / "failed_videos.json",
                 out / "frames" / "manifest.json", out / "frames" / ".meta" / "g0.json",
                 out / "frames" / "g0" / "frame_000001.jpg"):
        assert path.stat().st_mode & 0o777 == want, path


@pytest.mark.slow  # launches the stage-1 CLI
def test_output_folder_that_is_a_file_is_refused(tmp_path):
    vids = tmp_path / "videos"
    good_videos(vids, 1)
    (tmp_path / "file").write_text("x")
    proc = run_guarded("-v", vids, "-o", tmp_path / "file", check=2)
    assert "-o/--out_dir" in proc.stderr and "is a file" in proc.stderr
    proc = run_guarded("-v", vids, "-o", tmp_path / "file" / "sub", check=2)
    assert "lies under" in proc.stderr


@pytest.mark.parametrize(("flag", "value"), [("-fps", "-1"), ("--frame_rate", "nan"), ("--workers", "0"),
                                             ("--jpeg_quality", "101"), ("--frame_size", "0"), ("-s", "0"),
                                             ("--val_ratio", "1"), ("--video_timeout", "-5")])
def test_bad_flag_values_are_argparse_errors(tmp_path, flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        get_args_parser().parse_args(["-v", str(tmp_path), "-o", str(tmp_path / "out"), flag, value])
    err = capsys.readouterr().err
    named = re.search(r"error: argument (\S+): must be", err)
    assert exc.value.code == 2 and "usage:" in err and named and flag in named[1].split("/")


@pytest.mark.slow  # launches the stage-1 CLI
@pytest.mark.parametrize("workers", ["1", "2"])
def test_fuzz_corpus_every_file_extracted_or_listed(fuzz_video_dir, tmp_path, workers):
    """38 damaged files (headerless cuts of six containers, truncations, flipped bytes, empty and random files,
    wrong extensions) among good videos: no hang, no traceback, every file accounted for, the good ones whole.
    Item 1 among them: a piece cut from the middle of an MPEG program stream opens with a video stream but no codec
    context; it crashed --workers 1 (AttributeError) and hung --workers 2 (Pool.terminate)."""
    vids, bad, good = fuzz_video_dir
    out = tmp_path / "out"
    start = time.monotonic()
    run_guarded("-v", vids, "-o", out, "-fps", "1", "--frame_size", "32", "--workers", workers,
                "--video_timeout", "60", timeout=300)
    assert time.monotonic() - start < 240
    manifest, failed = outputs(out)
    done = {v["source"] for v in manifest.values()}
    every = {str(p.relative_to(vids)) for p in bad} | set(good)
    assert done | set(failed) == every and not done & set(failed)
    for rel in good:
        assert rel in done
    assert {manifest[Path(g).stem]["num_frames"] for g in good} == {5}
    assert all(reason for reason in failed.values())
    assert "unknown video codec" in failed["Bad/cut_nocodec.mpg"]
    assert "zero frame dimensions" in failed["Bad/cut_zerodim.mp4"]
    assert (out / "train_ucf101.json").is_file()


def test_full_disk_stops_the_stage_instead_of_failing_every_video(tmp_path, monkeypatch):
    """A write error no video could escape (no space left, a read-only or over-quota file system) is not one
    video's fault: extract_video reports it as fatal, and the stage stops with one line instead of listing all."""
    import errno

    import prepare_ucf101 as p1

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(p1, "open", full, raising=False)
    task = p1.ExtractTask("v", "A/v.mp4", str(VIDEOS / "carphone_pristine.mp4"), str(tmp_path / "frames"), 1.0, 32,
                          90, False)
    res = p1.extract_video(task)
    assert res["fatal"].startswith(f"cannot write frames under {tmp_path / 'frames'}: No space left on device")
    assert not (tmp_path / "frames" / ".tmp" / "v").exists()


def _frame_folder(folder: Path, n: int) -> None:
    """n numbered JPEG frames whose grey level is 20 * index (Jester's naming: 00001.jpg ...)."""
    folder.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i + 1:05d}.jpg"), np.full((30, 40, 3), 20 * i, np.uint8))


def test_frame_folders_are_resampled_and_bad_ones_listed(tmp_path):
    """--source_fps: <Class>/<video>/ frame folders at 4 fps become 1 fps frames by the exact-time rule, without a
    video decoder; a folder with a gap or an unreadable frame is listed like a bad video, the rest finish."""
    vids = tmp_path / "frames_in"
    _frame_folder(vids / "A" / "a1", 10)  # 2.5 s -> samples at 0, 1, 2 s: frames 0, 4, 8
    _frame_folder(vids / "A" / "a2", 4)
    _frame_folder(vids / "B" / "b1", 6)
    _frame_folder(vids / "B" / "gap", 6)
    (vids / "B" / "gap" / "00004.jpg").unlink()
    _frame_folder(vids / "B" / "bad", 6)
    (vids / "B" / "bad" / "00005.jpg").write_bytes(b"\xff\xd8\xff cut off")  # a kept frame: decoded, fails
    _frame_folder(vids / "B" / "empty", 6)
    (vids / "B" / "empty" / "00002.jpg").write_bytes(b"")  # a frame resampling skips: its header is checked
    out = tmp_path / "out"
    run("-v", vids, "-o", out, "--source_fps", "4", "-fps", "1", "--workers", "2", "-s", "0.5")
    manifest = json.loads((out / "frames" / "manifest.json").read_text())
    assert manifest["source_fps"] == 4.0 and manifest["fps"] == 1.0
    assert manifest["videos"]["a1"]["num_frames"] == 3 and manifest["videos"]["a1"]["timestamps"] == [0.0, 1.0, 2.0]
    levels = [int(round(cv2.imread(str(out / "frames" / "a1" / f"frame_{k:06d}.jpg")).mean() / 20)) for k in (1, 2, 3)]
    assert levels == [0, 4, 8]
    failed = {f["file"]: f["reason"] for f in json.loads((out / "failed_videos.json").read_text())}
    assert failed == {"B/gap": "1 frame(s) missing from the numbering 1..6: 4",
                      "B/bad": "frame 00005.jpg is not a readable JPEG/PNG image",
                      "B/empty": "frame 00002.jpg is not a JPEG/PNG file (empty)"}
    before = snapshot(out)
    proc = run("-v", vids, "-o", out, "--source_fps", "4", "-fps", "1", "--workers", "2", "-s", "0.5")
    assert "3 video(s) already extracted" in proc.stderr and snapshot(out) == before
    # the same folders read as videos: the class folders hold no video, and the message says why
    proc = run("-v", vids, "-o", tmp_path / "out2", "-fps", "1", check=1)
    assert "frame folders need --source_fps" in proc.stderr
    # and one frames folder cannot mix frames of video files with frames of frame folders
    proc = run("-v", vids, "-o", out, "-fps", "1", "--source_fps", "5", check=2)
    assert "source_fps=4.0" in proc.stderr and "source_fps=5.0" in proc.stderr


# ----------------------------------------------------------------------------------------------- shards


def test_shard_items_are_a_balanced_disjoint_cover_of_the_sorted_names():
    from prepare_ucf101 import VideoItem, shard_items

    items = [VideoItem("A", f"A/{n}.mp4", n, n) for n in ("e", "b", "g", "a", "d", "c", "f")]
    shares = [shard_items(items, i, 3) for i in range(3)]
    names = [[it.video_name for it in share] for share in shares]
    assert names == [["a", "d", "g"], ["b", "e"], ["c", "f"]]  # every third of the sorted list
    assert shard_items(list(reversed(items)), 1, 3) == shares[1]  # the order the reader lists them in is irrelevant
    assert [it.video_name for it in shard_items(items, 7, 9)] == []  # more shards than videos: an empty share


@pytest.mark.parametrize(("argv", "words"), [
    (["--shard", "0"], "go together"),
    (["--num_shards", "2"], "go together"),
    (["--shard", "2", "--num_shards", "2"], r"in 0\.\.1"),
    (["--shard", "0", "--num_shards", "2", "--merge_shards", "2"], "drop --shard"),
])
def test_bad_shard_flags_are_refused(argv, words):
    from prepare_ucf101 import check_shard_args
    from utils import BadInputError

    with pytest.raises(BadInputError, match=words):
        check_shard_args(get_args_parser().parse_args(["-v", "v", "-o", "o", *argv]))


def shard_inputs(root: Path) -> dict[str, str]:
    """The shared clips, synthetic videos of three codecs and the kinds of bad input, in one folder of classes."""
    from tests.fuzz_corpus import encode_clip

    expected = make_bad_inputs(root)
    link(root / "Shared" / "bikes.mp4", "bikes.mp4")
    link(root / "Shared" / "v_Shared_g01_c01.mp4", "carphone_pristine.mp4")
    link(root / "Shared" / "v_Shared_g02_c01.avi", "tree.avi")
    (root / "Synthetic").mkdir()
    encode_clip(root / "Synthetic" / "s0.mkv", "libx264", frames=40, options={"preset": "ultrafast"})
    encode_clip(root / "Synthetic" / "s1.mpg", "mpeg2video", fmt="mpeg", frames=30)
    encode_clip(root / "Synthetic" / "s2.avi", "mpeg4", size=(96, 80), frames=50, rate=10)
    return expected


def without_shard_records(snap: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in snap.items() if not k.startswith(".shards/")}


@pytest.mark.slow  # launches the stage-1 CLI five times
def test_two_shards_merged_equal_one_run_byte_for_byte(tmp_path):
    vids = tmp_path / "videos"
    expected = shard_inputs(vids)
    common = ["-v", vids, "-fps", "2", "--frame_size", "40", "--jpeg_quality", "90", "-s", "0.5", "--workers", "1"]
    ref = tmp_path / "ref"
    run(*common, "-o", ref)

    out = tmp_path / "out"
    cmds = [[sys.executable, SCRIPT, *map(str, common), "-o", str(out), "--shard", str(i), "--num_shards", "2"]
            for i in range(2)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True) for cmd in cmds]  # at once
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert not (out / "train_ucf101.json").exists() and not (out / "frames" / "manifest.json").exists()
    assert not (out / "classInd.txt").exists() and not (out / "frames" / ".tmp").exists()
    records = [json.loads((out / ".shards" / f"shard-{i}-of-2.json").read_text()) for i in range(2)]
    shares = [set(r["metas"]) | set(r["failures"]) for r in records]
    assert not shares[0] & shares[1] and abs(len(shares[0]) - len(shares[1])) <= 1

    proc = run(*common, "-o", out, "--merge_shards", "2")
    assert "5 input(s) left out" not in proc.stderr and "7 input(s) left out" in proc.stderr
    ref_snap, out_snap = snapshot(ref), without_shard_records(snapshot(out))
    assert sorted(out_snap) == sorted(ref_snap)
    assert out_snap == ref_snap  # split JSONs, classInd, manifest, failure report, .meta and every frame file
    failed = json.loads((out / "failed_videos.json").read_text())
    assert [f["file"] for f in failed] == sorted(expected)  # each shard's bad videos and the reader's, once

    # a rerun of a shard skips its finished videos and rewrites the same record
    before = snapshot(out)
    proc = run(*common, "-o", out, "--shard", "1", "--num_shards", "2")
    assert "already extracted" in proc.stderr
    assert snapshot(out) == before


@pytest.mark.slow  # launches the stage-1 CLI
def test_merge_refuses_a_missing_or_mismatched_shard(tmp_path):
    vids = tmp_path / "videos"
    for i in range(3):
        link(vids / "A" / f"v_A_g0{i}_c01.mp4", "carphone_pristine.mp4")
        link(vids / "B" / f"v_B_g0{i}_c01.mp4", "carphone_pristine.mp4")
    out = tmp_path / "out"
    common = ["-v", vids, "-o", out, "-fps", "1", "--frame_size", "32", "--workers", "1"]
    run(*common, "--shard", "0", "--num_shards", "2")
    proc = run(*common, "--merge_shards", "2", check=2)
    assert "shard-1-of-2 is not complete" in proc.stderr and "--shard 1 --num_shards 2" in proc.stderr
    assert not (out / "train_ucf101.json").exists() and not (out / "frames" / "manifest.json").exists()

    run(*common, "--seed", "3", "--shard", "1", "--num_shards", "2")  # the splits' seed differs from shard 0's
    proc = run(*common, "--merge_shards", "2", check=2)
    assert "shard-1-of-2" in proc.stderr and "seed=3 (this merge: 0)" in proc.stderr
    proc = run(*common, "--jpeg_quality", "80", "--merge_shards", "2", check=2)
    assert "shard-0-of-2" in proc.stderr and "jpeg_quality=95 (this merge: 80)" in proc.stderr
    link(vids / "B" / "v_B_g09_c01.mp4", "carphone_pristine.mp4")  # the video list changed after the shards ran
    proc = run(*common, "--seed", "3", "--merge_shards", "2", check=2)
    assert "shard-0-of-2" in proc.stderr and "num_videos=6 (this merge: 7)" in proc.stderr
    assert not (out / "train_ucf101.json").exists()

    (vids / "B" / "v_B_g09_c01.mp4").unlink()
    run(*common, "--seed", "3", "--shard", "0", "--num_shards", "2")  # shard 0 again, with shard 1's seed
    run(*common, "--seed", "3", "--merge_shards", "2")
    assert len(json.loads((out / "frames" / "manifest.json").read_text())["videos"]) == 6
    proc = run(*common, "--seed", "3", "--merge_shards", "3", check=2)  # shards of another count are not these
    assert "shard-0-of-3 is not complete" in proc.stderr
