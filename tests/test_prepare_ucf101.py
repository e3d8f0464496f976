"""prepare_ucf101.py end to end: outputs and their contract, official splits, bad input, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from prepare_ucf101 import assign_video_names
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
    names = {i.rel_path: i.video_name for i in items}
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
